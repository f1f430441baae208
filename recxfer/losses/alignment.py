"""Domain-adaptation losses between source and target representations.

Tensors in, scalar out. As in ``ranking.py`` the maths lives in plain functions
of tensors (testable without a model) and the ``nn.Module`` wrappers validate
their inputs, then delegate.

* ``mmd_loss`` / ``MMDLoss``: multi-kernel Gaussian maximum mean discrepancy.
* ``coral_loss`` / ``CORALLoss``: distance between covariances (Sun & Saenko 2016).
* ``grad_reverse`` / ``DomainAdversarialLoss``: DANN (Ganin & Lempitsky 2015), a
  domain classifier trained through a gradient-reversal layer.
* ``ContrastiveAlignmentLoss``: NT-Xent (pytorch-metric-learning) between the
  source and target embeddings of the same users.
* ``AlignmentConfig`` / ``AlignmentLoss``: a weighted sum of the above.

Conventions: ``src`` is ``(n, d)``, ``tgt`` is ``(m, d)``. An empty side means
there is nothing to align: the loss is a zero that is still attached to the
graph (``backward()`` works, gradients are zero), never ``nan``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

DEFAULT_BANDWIDTH_SCALES: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
_MIN_EXPONENT = -80.0


# --------------------------------------------------------------------------- validation
def _check_2d(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-d (rows, d), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")


def _check_pair(
    src: torch.Tensor,
    tgt: torch.Tensor,
    src_name: str = "src",
    tgt_name: str = "tgt",
    same_rows: bool = False,
) -> None:
    """Both 2-d floating point, same ``d`` (and same rows when ``same_rows``)."""
    _check_2d(src_name, src)
    _check_2d(tgt_name, tgt)
    if src.shape[1] != tgt.shape[1]:
        raise ValueError(
            f"{tgt_name} has d={tgt.shape[1]} but {src_name} has d={src.shape[1]} "
            f"(shapes {tuple(tgt.shape)} and {tuple(src.shape)})"
        )
    if same_rows and src.shape[0] != tgt.shape[0]:
        raise ValueError(
            f"{tgt_name} {tuple(tgt.shape)} must have the same rows as "
            f"{src_name} {tuple(src.shape)}: row i of each is the same user"
        )
    if src.dtype != tgt.dtype:
        raise ValueError(f"{tgt_name} is {tgt.dtype} but {src_name} is {src.dtype}")


def _zero(*tensors: torch.Tensor) -> torch.Tensor:
    """A scalar 0 attached to the graph of ``tensors`` (grads are zeros, not ``nan``)."""
    total = tensors[0].sum() * 0.0
    for x in tensors[1:]:
        total = total + x.sum() * 0.0
    return total


# --------------------------------------------------------------------------- MMD
def _sq_dists(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(n, m)`` squared Euclidean distances, without a ``sqrt`` (finite grads at 0)."""
    x_sq = (x * x).sum(dim=1, keepdim=True)  # (n, 1)
    y_sq = (y * y).sum(dim=1, keepdim=True).T  # (1, m)
    return (x_sq + y_sq - 2.0 * (x @ y.T)).clamp_min(0.0)  # (n, m)


def median_bandwidths(
    src: torch.Tensor,
    tgt: torch.Tensor,
    scales: Sequence[float] = DEFAULT_BANDWIDTH_SCALES,
) -> list[float]:
    """Median heuristic: median distance between distinct pooled rows times ``scales``.

    Computed without gradient. Falls back to a median of 1.0 when fewer than two
    pooled rows exist or all rows coincide.
    """
    with torch.no_grad():
        pooled = torch.cat([src, tgt]).detach()  # (n + m, d)
        n = pooled.shape[0]
        median = 0.0
        if n >= 2:
            rows, cols = torch.triu_indices(n, n, offset=1, device=pooled.device)
            dists = _sq_dists(pooled, pooled)[rows, cols].sqrt()  # (n (n - 1) / 2,)
            median = float(dists.median())
        if not math.isfinite(median) or median <= 0.0:
            median = 1.0
    return [median * s for s in scales]


def _mean_kernel(sq: torch.Tensor, bandwidths: Sequence[float]) -> torch.Tensor:
    """Mean over bandwidths of ``exp(-||x - y||^2 / (2 sigma^2))``; same shape as ``sq``."""
    total = torch.zeros_like(sq)
    for sigma in bandwidths:
        # Exponents below -80 would give subnormal floats (very slow on CPU); the
        # clamp changes the kernel by at most exp(-80) ~ 2e-35.
        total = total + torch.exp((-sq / (2.0 * sigma * sigma)).clamp_min(_MIN_EXPONENT))
    return total / len(bandwidths)


def mmd_loss(
    src: torch.Tensor,
    tgt: torch.Tensor,
    bandwidths: Sequence[float] | None = None,
    unbiased: bool = False,
) -> torch.Tensor:
    """Squared maximum mean discrepancy with a mixture of Gaussian kernels.

    ``k(x, y) = mean_b exp(-||x - y||^2 / (2 sigma_b^2))`` (the mean, not the sum, of
    the kernels, so ``0 <= MMD^2 <= 2``).

    By default the **biased V-statistic**
    ``mean K(src, src) + mean K(tgt, tgt) - 2 mean K(src, tgt)`` (diagonals included):
    always ``>= 0`` and exactly 0 when ``src`` and ``tgt`` hold the same rows. With
    ``unbiased=True`` the U-statistic (diagonals of the within-domain terms left out;
    may be slightly negative; needs at least 2 rows per side).

    Args:
        src: ``(n, d)`` source representations.
        tgt: ``(m, d)`` target representations.
        bandwidths: kernel widths ``sigma_b``; ``None`` uses ``median_bandwidths``
            (median pooled pairwise distance times 0.25, 0.5, 1, 2, 4, detached).
        unbiased: U-statistic instead of the V-statistic.

    Returns:
        Scalar loss.
    """
    if bandwidths is None:
        bandwidths = median_bandwidths(src, tgt)
    n, m = src.shape[0], tgt.shape[0]
    k_ss = _mean_kernel(_sq_dists(src, src), bandwidths)  # (n, n)
    k_tt = _mean_kernel(_sq_dists(tgt, tgt), bandwidths)  # (m, m)
    k_st = _mean_kernel(_sq_dists(src, tgt), bandwidths)  # (n, m)
    if unbiased:
        # The kernel is 1 on the diagonal: drop those n (resp. m) terms.
        within_s = (k_ss.sum() - k_ss.diagonal().sum()) / (n * (n - 1))
        within_t = (k_tt.sum() - k_tt.diagonal().sum()) / (m * (m - 1))
        return within_s + within_t - 2.0 * k_st.mean()
    return k_ss.mean() + k_tt.mean() - 2.0 * k_st.mean()


class MMDLoss(nn.Module):
    """Module form of ``mmd_loss``.

    Args:
        bandwidths: fixed kernel widths, or ``None`` for the median heuristic per call.
        unbiased: U-statistic instead of the (default) biased V-statistic.
    """

    def __init__(self, bandwidths: Sequence[float] | None = None, unbiased: bool = False) -> None:
        super().__init__()
        if bandwidths is not None:
            bandwidths = tuple(float(b) for b in bandwidths)
            if not bandwidths or any(not (b > 0 and math.isfinite(b)) for b in bandwidths):
                raise ValueError(f"bandwidths must be non-empty and > 0, got {bandwidths}")
        self.bandwidths: tuple[float, ...] | None = bandwidths
        self.unbiased = bool(unbiased)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        _check_pair(src, tgt)
        min_rows = 2 if self.unbiased else 1
        if src.shape[0] < min_rows or tgt.shape[0] < min_rows:
            return _zero(src, tgt)
        return mmd_loss(src, tgt, self.bandwidths, self.unbiased)

    def extra_repr(self) -> str:
        return f"bandwidths={self.bandwidths}, unbiased={self.unbiased}"


# --------------------------------------------------------------------------- CORAL
def _covariance(x: torch.Tensor) -> torch.Tensor:
    """``(d, d)`` unbiased sample covariance of ``(n, d)`` rows (``n >= 2``)."""
    centred = x - x.mean(dim=0, keepdim=True)  # (n, d)
    return centred.T @ centred / (x.shape[0] - 1)  # (d, d)


def coral_loss(src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Deep CORAL: ``||C_s - C_t||_F^2 / (4 d^2)`` (Sun & Saenko 2016).

    ``C`` is the unbiased (``n - 1``) sample covariance; needs at least 2 rows per side.

    Args:
        src: ``(n, d)`` source representations.
        tgt: ``(m, d)`` target representations.

    Returns:
        Scalar loss.
    """
    d = src.shape[1]
    diff = _covariance(src) - _covariance(tgt)  # (d, d)
    return (diff * diff).sum() / (4.0 * d * d)


class CORALLoss(nn.Module):
    """Module form of ``coral_loss``. A side with fewer than 2 rows has no
    covariance: the loss is then a zero attached to the graph."""

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        _check_pair(src, tgt)
        if src.shape[0] < 2 or tgt.shape[0] < 2 or src.shape[1] == 0:
            return _zero(src, tgt)
        return coral_loss(src, tgt)


# --------------------------------------------------------------------------- adversarial
class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``-lambda_``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lambda_: float) -> torch.Tensor:  # type: ignore[override]
        ctx.lambda_ = float(lambda_)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        return -ctx.lambda_ * grad_output, None


def grad_reverse(x: torch.Tensor, lambda_: float = 1.0) -> torch.Tensor:
    """``x`` unchanged forward; gradient ``-lambda_ * g`` backward."""
    return GradientReversal.apply(x, lambda_)


def domain_adversarial_loss(
    classifier: nn.Module,
    src: torch.Tensor,
    tgt: torch.Tensor,
    lambda_: float = 1.0,
) -> torch.Tensor:
    """BCE of ``classifier`` telling source (label 1) from target (label 0) on
    gradient-reversed features: the classifier descends the loss, the features
    (and whatever produced them) ascend it, scaled by ``lambda_``.

    Args:
        classifier: maps ``(rows, d)`` to ``(rows, 1)`` logits.
        src: ``(n, d)`` source representations.
        tgt: ``(m, d)`` target representations.
        lambda_: gradient-reversal strength (DANN ramps it from 0 to 1).

    Returns:
        Scalar loss: mean BCE over the ``n + m`` rows.
    """
    feats = grad_reverse(torch.cat([src, tgt]), lambda_)  # (n + m, d)
    logits = classifier(feats).squeeze(-1)  # (n + m,)
    labels = torch.cat([logits.new_ones(src.shape[0]), logits.new_zeros(tgt.shape[0])])  # (n + m,)
    return nn.functional.binary_cross_entropy_with_logits(logits, labels)


class DomainAdversarialLoss(nn.Module):
    """DANN loss holding its domain classifier ``dim -> hidden -> 1`` (an MLP).

    Put its parameters in the optimiser with the encoders: thanks to the
    gradient reversal one ``backward()`` trains the classifier to separate the
    domains and the encoders to confuse it.

    Args:
        dim: feature size ``d``.
        hidden: classifier hidden width.
        dropout: dropout inside the classifier.
    """

    def __init__(self, dim: int, hidden: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        if dim <= 0 or hidden <= 0:
            raise ValueError(f"dim ({dim}) and hidden ({hidden}) must be > 0")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dim = dim
        self.classifier = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )

    def _validate(self, src: torch.Tensor, tgt: torch.Tensor) -> None:
        _check_pair(src, tgt)
        if src.shape[1] != self.dim:
            raise ValueError(f"src has d={src.shape[1]} but the classifier expects {self.dim}")

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, lambda_: float = 1.0) -> torch.Tensor:
        self._validate(src, tgt)
        if src.shape[0] == 0 or tgt.shape[0] == 0:
            return _zero(src, tgt)
        return domain_adversarial_loss(self.classifier, src, tgt, lambda_)

    @torch.no_grad()
    def domain_accuracy(self, src: torch.Tensor, tgt: torch.Tensor) -> float:
        """Share of rows the classifier puts in the right domain (0.5 = confused)."""
        self._validate(src, tgt)
        if src.shape[0] + tgt.shape[0] == 0:
            return float("nan")
        logits = self.classifier(torch.cat([src, tgt])).squeeze(-1)  # (n + m,)
        right = torch.cat([logits[: src.shape[0]] > 0, logits[src.shape[0] :] <= 0])
        return float(right.float().mean())


# --------------------------------------------------------------------------- contrastive
def _ntxent_on_pairs(ntxent: nn.Module, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    batch = src.shape[0]
    embeddings = torch.cat([src, tgt])  # (2B, d)
    arange = torch.arange(batch, device=src.device)
    labels = torch.cat([arange, arange])  # (2B,): row i and row B + i are one user
    return ntxent(embeddings, labels)


def contrastive_alignment_loss(
    src: torch.Tensor, tgt: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """NT-Xent (SimCLR) between two views of the same users.

    Anchors are all ``2B`` rows of ``cat([src, tgt])``; each anchor's positive is the
    same user in the other domain, its negatives the ``2B - 2`` rows of other users
    (both domains), similarity is cosine over ``temperature``; mean over anchors.
    Delegates to ``pytorch_metric_learning.losses.NTXentLoss``. Rows are distinct
    users: two rows of the same user in one batch are treated as negatives.

    Args:
        src: ``(B, d)`` source embeddings; row ``i`` is user ``i``.
        tgt: ``(B, d)`` target embeddings of the same users.
        temperature: softmax temperature.

    Returns:
        Scalar loss.
    """
    return _ntxent_on_pairs(_ntxent(temperature), src, tgt)


def _ntxent(temperature: float) -> nn.Module:
    """pytorch-metric-learning's ``NTXentLoss``, imported here: the library (and the
    scipy.stats it pulls in) adds 1.4 s to every command that only imports recxfer."""
    from pytorch_metric_learning import losses as pml_losses

    return pml_losses.NTXentLoss(temperature=temperature)


class ContrastiveAlignmentLoss(nn.Module):
    """Module form of ``contrastive_alignment_loss``. With ``B < 2`` there are no
    negatives: the loss is a zero attached to the graph."""

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.ntxent = _ntxent(self.temperature)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        _check_pair(src, tgt, same_rows=True)
        if src.shape[0] < 2:
            return _zero(src, tgt)
        return _ntxent_on_pairs(self.ntxent, src, tgt)


# --------------------------------------------------------------------------- combined
@dataclass(frozen=True)
class AlignmentConfig:
    """Weights of the alignment parts (0 switches a part off) and their settings.

    Attributes:
        mmd: weight of ``MMDLoss``.
        coral: weight of ``CORALLoss``.
        adversarial: weight of ``DomainAdversarialLoss``.
        contrastive: weight of ``ContrastiveAlignmentLoss`` (needs paired users).
        temperature: NT-Xent temperature.
        mmd_bandwidths: fixed MMD kernel widths; ``None`` = median heuristic.
        mmd_unbiased: U-statistic instead of the biased V-statistic.
        adversarial_hidden: hidden width of the domain classifier.
        adversarial_dropout: dropout inside the domain classifier.
    """

    mmd: float = 0.0
    coral: float = 0.0
    adversarial: float = 0.0
    contrastive: float = 0.0
    temperature: float = 0.1
    mmd_bandwidths: tuple[float, ...] | None = None
    mmd_unbiased: bool = False
    adversarial_hidden: int = 64
    adversarial_dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("mmd", "coral", "adversarial", "contrastive"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} weight must be finite and >= 0, got {value}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.adversarial_hidden <= 0:
            raise ValueError(f"adversarial_hidden must be > 0, got {self.adversarial_hidden}")
        if self.mmd_bandwidths is not None:
            object.__setattr__(self, "mmd_bandwidths", tuple(float(b) for b in self.mmd_bandwidths))

    @property
    def active(self) -> tuple[str, ...]:
        """Names of the parts with a non-zero weight."""
        return tuple(
            name
            for name in ("mmd", "coral", "adversarial", "contrastive")
            if getattr(self, name) > 0
        )


class AlignmentLoss(nn.Module):
    """Weighted sum of the alignment losses whose weight in ``config`` is > 0.

    Only the active parts are built, so the domain classifier's parameters exist
    (``self.parts["adversarial"].parameters()``) only when ``adversarial > 0``.

    Args:
        config: weights and settings.
        dim: representation size ``d`` (for the domain classifier).
    """

    def __init__(self, config: AlignmentConfig, dim: int) -> None:
        super().__init__()
        if dim <= 0:
            raise ValueError(f"dim must be > 0, got {dim}")
        self.config = config
        self.dim = dim
        builders = {
            "mmd": lambda: MMDLoss(config.mmd_bandwidths, config.mmd_unbiased),
            "coral": lambda: CORALLoss(),
            "adversarial": lambda: DomainAdversarialLoss(
                dim, config.adversarial_hidden, config.adversarial_dropout
            ),
            "contrastive": lambda: ContrastiveAlignmentLoss(config.temperature),
        }
        self.parts = nn.ModuleDict({name: builders[name]() for name in config.active})

    def forward(
        self,
        src_users: torch.Tensor,
        tgt_users: torch.Tensor,
        paired_src: torch.Tensor | None = None,
        paired_tgt: torch.Tensor | None = None,
        lambda_: float = 1.0,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Args:
            src_users: ``(n, d)`` source-domain user representations.
            tgt_users: ``(m, d)`` target-domain user representations (other users allowed).
            paired_src: ``(B, d)`` source representations of users present in both domains.
            paired_tgt: ``(B, d)`` target representations of the same users, same order.
            lambda_: gradient-reversal strength of the adversarial part.

        Returns:
            ``(total, parts)``: ``total = sum(weight * part)``; ``parts`` maps each
            active part's name to its unweighted value, detached (0-d tensors: call
            ``float()`` to log).
        """
        _check_pair(src_users, tgt_users, "src_users", "tgt_users")
        if src_users.shape[1] != self.dim:
            raise ValueError(
                f"src_users has d={src_users.shape[1]} but this loss has dim={self.dim}"
            )
        if (paired_src is None) != (paired_tgt is None):
            missing = "paired_tgt" if paired_tgt is None else "paired_src"
            raise ValueError(f"{missing} is None: give both paired_src and paired_tgt or neither")
        if paired_src is not None:
            _check_pair(paired_src, paired_tgt, "paired_src", "paired_tgt", same_rows=True)
            if paired_src.shape[1] != self.dim:
                raise ValueError(
                    f"paired_src has d={paired_src.shape[1]} but this loss has dim={self.dim}"
                )
        elif "contrastive" in self.parts:
            raise ValueError(
                "paired_src and paired_tgt are required when the contrastive weight is > 0"
            )

        total = _zero(src_users, tgt_users)
        parts: dict[str, torch.Tensor] = {}
        for name, loss in self.parts.items():
            if name == "adversarial":
                value = loss(src_users, tgt_users, lambda_)
            elif name == "contrastive":
                value = loss(paired_src, paired_tgt)
            else:
                value = loss(src_users, tgt_users)
            parts[name] = value.detach()
            total = total + getattr(self.config, name) * value
        return total, parts
