"""``dae``: a multinomial denoising autoencoder of the cold-start task itself: the
overlapping users' source histories in, their target rows out.

The model (``DAEScorer``) is one tanh hidden layer between the L2-normalised
source history and a softmax over the target catalogue, trained on the overlapping
users with input dropout and the multinomial log-likelihood of their target items
(as Mult-DAE, Liang et al. 2018, with the input and the output in different
domains). It is the nonlinear counterpart of ``ridge`` (a linear map fit by
squared error): on the Douban pairs, where users have long histories, it is the
strongest single method (see the README), and in ``blend`` it is one more term.

The input history is first expanded through similar source items (``expand``: ``x =
(h / ||h||) @ (I + expand * S)``, ``S`` the source item cosine over *every* user with
source rows, single-domain users included, each row summing to 1), so a source item
few overlapping users have still reaches the hidden layer through its neighbours;
after training ``E = I + expand * S`` is folded into the input weights (``w_in = E @
W``), so the served network keeps its form. CDRIB, dae alone, 3 seeds, test NDCG@10 /
HR@10 / full recall@50 (README): sports->clothing 0.158 / 0.221 / 0.164 -> 0.175 /
0.234 / 0.183 and clothing->sports 0.144 / 0.213 / 0.195 -> 0.163 / 0.228 / 0.219,
where most source users are single-domain; about level where every user overlaps
(seed 0: electronics->phones 0.096 / 0.175 / 0.257 -> 0.097 / 0.175 / 0.251,
phones->sports 0.056 / 0.107 / 0.153 -> 0.058 / 0.108 / 0.160) and on Douban
music->books (0.052 / 0.096 / 0.131 -> 0.051 / 0.096 / 0.132).

Cost per epoch: ``O(n_overlap * hidden * (|history| + n_out))`` — the softmax over
the ``n_out`` target items some overlapping user has (the others, never a label, sit
below every trained item: 74 % of clothing's items are in it, so a quarter of the
cost is saved there). Fits whose ``n_overlap * n_out`` is above
``max_cells`` are refused with ``CatalogueTooLargeError`` (``blend`` then leaves
the term out, as it does ``ridge`` above its size). Cost per served query:
``O(hidden * n_tgt)`` (one read of ``w_out``), so the hidden units of all networks
together are capped at ``max_serve_cells / n_tgt`` (``dae_hidden``): 256 units up
to 25 k target items, 64 at 100 k (about 2 ms a query on this 2-core host, 1.4 ms
of it the product over ``DAEScorer``'s contiguous ``(hidden, n_tgt)`` copy; 256
units measured 11 ms before that copy). Where training is cheap (``ensemble_cells``) up to ``networks``
networks of different seeds are trained and their logits averaged, which is one
network again (``DAEScorer``), so serving does not change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from recxfer.transfer.ease import CatalogueTooLargeError
from recxfer.transfer.interactions import SourceTargetMatrices
from recxfer.transfer.twohop import source_similarity
from recxfer.types import DAEScorer

log = logging.getLogger(__name__)

# how far below the smallest trained bias a target item without training users sits
INACTIVE_LOGIT = 30.0


@dataclass(frozen=True)
class DAEConfig:
    """Training of the dae network(s).

    Validation (when ``fit_dae`` gets a validator) runs every ``eval_every`` epochs;
    training stops after ``patience`` evaluations without a better value, and the
    best evaluated weights are kept. Without a validator all ``epochs`` run.

    ``networks`` networks (seeds ``seed``, ``seed + 1``, ...) are trained and their
    logits averaged (one network with the hidden units side by side) while
    ``networks * n_overlap * n_tgt <= ensemble_cells``; fewer above, down to one.
    ``fixed_epochs`` (the refit) trains one network per entry for exactly that many
    epochs, nothing validated."""

    hidden: int = 256
    dropout: float = 0.5
    lr: float = 3e-3
    batch_size: int = 256
    epochs: int = 60
    eval_every: int = 2
    patience: int = 3
    max_cells: int = 400_000_000
    max_serve_cells: int = 6_400_000
    min_hidden: int = 16
    networks: int = 3
    ensemble_cells: int = 60_000_000
    fixed_epochs: tuple[int, ...] = ()
    seed: int = 0
    # the input history expanded through similar source items: ``x = (h / ||h||) @
    # (I + expand * S)``, ``S`` the source cosine over every user with source rows
    # (``expand_top_n`` neighbours per item, shrinkage ``expand_shrink``, rows summing
    # to 1); 0 turns it off. Folded into ``w_in`` after training (``E @ w_in``), so the
    # served network is unchanged in form.
    expand: float = 1.0
    expand_top_n: int = 50
    expand_shrink: float = 0.0

    def __post_init__(self) -> None:
        for name in ("hidden", "batch_size", "epochs", "eval_every", "patience", "max_cells",
                     "max_serve_cells", "min_hidden", "networks", "ensemble_cells"):
            if getattr(self, name) < 1:
                raise ValueError(f"dae {name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dae dropout must be in [0, 1), got {self.dropout}")
        if self.lr <= 0:
            raise ValueError(f"dae lr must be > 0, got {self.lr}")
        if self.expand < 0 or self.expand_shrink < 0 or self.expand_top_n < 1:
            raise ValueError(f"dae expand and expand_shrink must be >= 0 and expand_top_n >= 1, got "
                             f"{self.expand}, {self.expand_shrink}, {self.expand_top_n}")
        if any(e < 1 for e in self.fixed_epochs):
            raise ValueError(f"dae fixed_epochs must be >= 1, got {self.fixed_epochs}")


def dae_networks(config: DAEConfig, n_overlap: int, n_tgt: int) -> int:
    """How many networks a fit trains: ``len(fixed_epochs)`` when given, else
    ``networks`` capped by ``ensemble_cells`` (at least one)."""
    if config.fixed_epochs:
        return len(config.fixed_epochs)
    return max(1, min(config.networks, config.ensemble_cells // max(n_overlap * n_tgt, 1)))


def dae_hidden(config: DAEConfig, n_tgt: int, networks: int = 1) -> int:
    """The hidden size of each of ``networks`` networks over ``n_tgt`` target items:
    ``config.hidden``, capped so that ``networks * hidden * n_tgt <= max_serve_cells``
    (the ``w_out`` a served query reads), and at least ``min(min_hidden, hidden)``."""
    cap = config.max_serve_cells // max(n_tgt * networks, 1)
    return max(min(config.min_hidden, config.hidden), min(config.hidden, cap))


class _Net(torch.nn.Module):
    """The ``DAEScorer`` as a torch module: the input layer is an embedding bag
    over the history's items (a sparse product, not a dense ``(b, n_src)`` one)."""

    def __init__(self, n_src: int, n_tgt: int, hidden: int) -> None:
        super().__init__()
        self.w_in = torch.nn.EmbeddingBag(n_src, hidden, mode="sum")
        self.b_in = torch.nn.Parameter(torch.zeros(hidden))
        self.dec = torch.nn.Linear(hidden, n_tgt)
        torch.nn.init.uniform_(self.w_in.weight, -hidden ** -0.5, hidden ** -0.5)

    def forward(self, items: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Histories as a bag (``items`` ``(nnz,)`` source positions, ``offsets``
        ``(b,)`` each row's start, ``weights`` ``(nnz,)`` each entry's input value)
        -> ``(b, n_tgt)`` logits."""
        return self.dec(torch.tanh(self.w_in(items, offsets, per_sample_weights=weights) + self.b_in))

    def encoder(self, outputs: np.ndarray, n_tgt: int, expand: sp.csr_matrix | None = None) -> DAEScorer:
        """The ``DAEScorer`` over all ``n_tgt`` target items; this net's outputs are
        the items at ``outputs`` (``(n_out,)`` positions). An item that no training user
        has gets no weights and a bias ``INACTIVE_LOGIT`` below the smallest, so its
        score is ``exp(-INACTIVE_LOGIT)`` of the others at most (numerically 0).
        ``expand`` (``(n_src, n_src)``, the input expansion ``E`` the net was trained
        behind) is folded into the input weights: ``w_in = E @ W``."""
        def arr(t: torch.Tensor) -> np.ndarray:
            return np.array(t.detach().cpu().numpy(), np.float32, copy=True)  # not a view of training

        w_out, b_out = arr(self.dec.weight), arr(self.dec.bias)
        if len(outputs) < n_tgt:
            full_w = np.zeros((n_tgt, w_out.shape[1]), np.float32)
            full_w[outputs] = w_out
            full_b = np.full(n_tgt, b_out.min(initial=0.0) - INACTIVE_LOGIT, np.float32)
            full_b[outputs] = b_out
            w_out, b_out = full_w, full_b
        w_in = arr(self.w_in.weight)  # (n_src, hidden)
        if expand is not None:
            w_in = np.asarray(expand @ w_in, np.float32)
        return DAEScorer(w_in, arr(self.b_in), w_out, b_out)


def _bag(rows: sp.csr_matrix, dropout: float, gen: torch.Generator,
         expand: sp.csr_matrix | None = None) -> tuple[torch.Tensor, ...]:
    """``rows`` ``(b, n_src)`` 0/1 as ``(items, offsets, weights)``: each row over its
    L2 norm, times ``expand`` (``(n_src, n_src)``) when given, then (``dropout > 0``)
    inverted dropout of its entries."""
    length = np.diff(rows.indptr)
    if expand is not None:
        rows = sp.csr_matrix(sp.diags((1.0 / np.sqrt(np.maximum(length, 1))).astype(np.float32)) @ rows @ expand,
                             dtype=np.float32)
        weights = torch.from_numpy(np.asarray(rows.data, np.float32))
    else:
        norm = np.repeat(np.sqrt(np.maximum(length, 1)), length).astype(np.float32)  # (nnz,)
        weights = torch.from_numpy(np.asarray(rows.data, np.float32) / norm)
    if dropout > 0:
        keep = torch.rand(len(weights), generator=gen) >= dropout
        weights = weights * keep / (1.0 - dropout)
    return (torch.from_numpy(rows.indices.astype(np.int64)), torch.from_numpy(rows.indptr[:-1].astype(np.int64)),
            weights)


def expansion(src: sp.csr_matrix, config: DAEConfig) -> sp.csr_matrix | None:
    """``(n_src, n_src)`` csr ``I + expand * S`` (``S``: the source cosine over the rows
    of ``src``, every user's, rows scaled to sum 1), or ``None`` when ``expand`` is 0."""
    if config.expand == 0:
        return None
    similar = source_similarity(src, config.expand_shrink, config.expand_top_n)
    total = np.asarray(similar.sum(axis=1), np.float64).ravel()  # (n_src,)
    scale = np.divide(config.expand, total, out=np.zeros_like(total), where=total > 0)
    return sp.csr_matrix(sp.identity(src.shape[1], np.float32, format="csr")
                         + sp.diags(scale.astype(np.float32)) @ similar, dtype=np.float32)


def fit_dae(
    m: SourceTargetMatrices,
    config: DAEConfig = DAEConfig(),
    valid_hist: sp.csr_matrix | None = None,
    validator: Callable[[np.ndarray], float] | None = None,
) -> tuple[DAEScorer, dict]:
    """Train the dae network(s) on the overlapping users of ``m``.

    Args:
        valid_hist: ``(n_valid, n_src)`` the validation users' source histories.
        validator: their ``(n_valid, n_tgt)`` scores -> higher is better; chooses
            the epoch.

    Returns:
        the (averaged) network and what training did: ``networks``, ``hidden`` (per
        network), the first network's ``epochs``, ``best_epoch`` and ``valid``
        (value per evaluated epoch), every network's ``best_epochs``, ``seconds``.

    Raises:
        CatalogueTooLargeError: ``n_overlap * n_tgt`` is above ``config.max_cells``.
        ValueError: no user has rows in both domains.
    """
    rows = m.overlap_rows
    n_src, n_tgt = m.src.shape[1], m.tgt.shape[1]
    if len(rows) == 0:
        raise ValueError("dae needs users with rows in both domains; there are none")
    start = time.perf_counter()
    src, tgt = m.src[rows], m.tgt[rows]
    # the softmax spans the target items some overlapping user has (the others are
    # never a label: ``_Net.encoder`` puts them below every trained one)
    outputs = np.flatnonzero(np.diff(tgt.tocsc().indptr) > 0)
    if len(rows) * len(outputs) > config.max_cells:
        raise CatalogueTooLargeError(
            f"dae: {len(rows)} overlapping users x {len(outputs)} target items = {len(rows) * len(outputs)} "
            f"softmax cells per epoch is above max_cells={config.max_cells}")
    tgt = tgt[:, outputs]
    expand = expansion(m.src, config)  # every user's source rows: source-only users count
    n_nets = dae_networks(config, len(rows), len(outputs))
    hidden = dae_hidden(config, n_tgt, n_nets)
    fits = [_train_one(src, tgt, n_src, outputs, n_tgt, expand, hidden, config, config.seed + k,
                       config.fixed_epochs[k] if config.fixed_epochs else config.epochs,
                       None if config.fixed_epochs else valid_hist,
                       None if config.fixed_epochs else validator)
            for k in range(n_nets)]
    nets = [net for net, _ in fits]
    info = {"networks": n_nets, "hidden": hidden, "outputs": int(len(outputs)),
            "epochs": fits[0][1]["epochs"], "best_epoch": fits[0][1]["best_epoch"],
            "valid": fits[0][1]["valid"], "best_epochs": [f["best_epoch"] for _, f in fits],
            "seconds": round(time.perf_counter() - start, 3)}
    if n_nets > 1:
        info["valid_per_network"] = [f["valid"] for _, f in fits]
    log.info("dae: %d overlapping users, %d network(s) of %d units, best epochs %s, %.1f s", len(rows),
             n_nets, hidden, info["best_epochs"], info["seconds"])
    return (nets[0] if n_nets == 1 else _averaged(nets)), info


def _averaged(nets: list[DAEScorer]) -> DAEScorer:
    """One network whose logits are the mean of ``nets``' logits: hidden units side
    by side, output weights over ``len(nets)``, output biases averaged."""
    n = np.float32(len(nets))
    return DAEScorer(np.concatenate([d.w_in for d in nets], axis=1), np.concatenate([d.b_in for d in nets]),
                     np.concatenate([d.w_out for d in nets], axis=1) / n,
                     (np.sum([d.b_out for d in nets], axis=0, dtype=np.float32) / n).astype(np.float32))


def _train_one(src: sp.csr_matrix, tgt: sp.csr_matrix, n_src: int, outputs: np.ndarray, n_tgt: int,
               expand: sp.csr_matrix | None, hidden: int, config: DAEConfig, seed: int, epochs: int,
               valid_hist: sp.csr_matrix | None,
               validator: Callable[[np.ndarray], float] | None) -> tuple[DAEScorer, dict]:
    """One network on the overlapping users' ``(n, n_src)`` / ``(n, n_out)`` rows
    (``tgt``'s columns are the target items at ``outputs``, of ``n_tgt``), its input
    behind ``expand`` (``expansion``)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    n_rows = src.shape[0]
    net = _Net(n_src, len(outputs), hidden)
    # foreach: the same update as the per-tensor loop, 1.7x faster a step on CPU
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, foreach=True)
    searched = validator is not None and valid_hist is not None
    best: tuple[float, int, DAEScorer] | None = None
    values: dict[int, float] = {}
    stale, epoch = 0, 0
    for epoch in range(1, epochs + 1):
        order = rng.permutation(n_rows)
        for lo in range(0, n_rows, config.batch_size):
            b = order[lo: lo + config.batch_size]
            log_p = torch.log_softmax(net(*_bag(src[b], config.dropout, gen, expand)), dim=1)  # (b, n_out)
            y = tgt[b]  # (b, n_tgt) 0/1: the loss reads only its nonzeros
            picked = log_p[torch.from_numpy(np.repeat(np.arange(len(b)), np.diff(y.indptr))),
                           torch.from_numpy(y.indices.astype(np.int64))]
            loss = -picked.sum() / len(b)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if searched and (epoch % config.eval_every == 0 or epoch == epochs):
            encoder = net.encoder(outputs, n_tgt, expand)
            value = float(validator(encoder.score(valid_hist)))
            values[epoch] = value
            if best is None or value > best[0]:
                best, stale = (value, epoch, encoder), 0
            else:
                stale += 1
                if stale >= config.patience:
                    break
    if best is None:
        best = (float("nan"), epoch, net.encoder(outputs, n_tgt, expand))
    return best[2], {"epochs": epoch, "best_epoch": best[1], "valid": values}
