"""Training loop of the shared-encoder transfer model (``recxfer.transfer.shared``).

Each step takes one batch of rows of one domain (domains interleaved at random,
every row once per epoch). A row ``(user, item)`` is predicted from the user's
history in every domain minus the item itself; with probability ``cold_drop``
the history in the row's own domain is hidden too, so the encoder learns to
serve cold-start users from their other domains. Ranking: in-batch sampled
softmax (log-Q corrected). On target steps, source-only and target-only
representations of overlapping users are aligned (MMD, CORAL, adversarial,
contrastive; weights in ``AlignmentConfig``). Validation after each epoch keeps
the best weights and stops early.

Distributed data parallel (``torch.distributed`` initialised, e.g. under
``torchrun``; see ``recxfer.train.distributed``): the step's loss is one module
(``SharedStepLoss``) wrapped in ``DistributedDataParallel``, so gradients are
averaged over ranks after every step (the effective batch is ``world_size *
batch_size``; ``lr`` is not rescaled). Every rank draws the same seeded epoch
schedule and takes the positions ``rank, rank + world_size, ...`` of it, padded
with its first steps to a multiple of ``world_size`` so all ranks run the same
number of steps. Every rank also draws the per-step random numbers (cold drop,
aligned users) of the other ranks' steps, so the schedule generator stays in step
everywhere and a step's randomness does not depend on which rank runs it. Rank 0
validates and its score is broadcast, so early stopping and the best epoch are
the same everywhere; rank 0 alone reads and writes checkpoints (the state is
broadcast on resume, a barrier follows every save); the best weights are restored
and then broadcast from rank 0. On CUDA the towers run under bfloat16 autocast
(``config.amp``). Without an initialised process group the loop is exactly the
single-process one (bit-identical results, float32 on CUDA too).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from recxfer.losses.alignment import AlignmentConfig, AlignmentLoss
from recxfer.losses.ranking import InBatchSoftmaxLoss
from recxfer.train.checkpoint import Checkpointer
from recxfer.train.device import resolve_device
from recxfer.train.distributed import (
    all_reduce_sum,
    barrier,
    broadcast_floats,
    broadcast_module_state,
    broadcast_object,
    rank_and_world,
)
from recxfer.train.histories import HistoryTensors, MultiDomainIndex
from recxfer.train.warm_start import ID_TABLE, SharedWarmStart, WarmStartReport, apply_warm_start
from recxfer.transfer.shared import SharedModelConfig, SharedTransferModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SharedTrainConfig:
    """Configures ``train_shared``."""

    model: SharedModelConfig = field(default_factory=SharedModelConfig)
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    epochs: int = 30
    batch_size: int = 1024
    lr: float = 2e-3
    weight_decay: float = 0.0
    temperature: float = 1.0
    logq: bool = True
    cold_drop: float = 0.5
    max_history: int = 20
    align_batch: int = 512
    patience: int = 3
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bfloat16 autocast of the towers in DDP runs on CUDA (else ignored)
    # Linear-cost steps: each step projects only the items it touches, once, and the
    # id embedding gets row-wise (sparse) gradients with SparseAdam (lazy Adam: only
    # the rows a step touches move; weight decay applied to those rows), the other
    # weights Adam. False: the loop of before (dense Adam over the whole id table,
    # one projection per tower call), kept as the numerical reference.
    sparse: bool = True

    def __post_init__(self) -> None:
        for name, low in (("epochs", 0), ("batch_size", 1), ("max_history", 1), ("align_batch", 1),
                          ("patience", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        for name in ("lr", "weight_decay"):  # lr 0: the weights stay as initialised
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.cold_drop <= 1.0:
            raise ValueError(f"cold_drop must be in [0, 1], got {self.cold_drop}")


@dataclass
class SharedTrainResult:
    """The trained model (best validation epoch) and its history.

    Attributes:
        epoch_losses: mean training loss per epoch (over all ranks when distributed).
        rank, world_size: this process in the process group (0 of 1 without one).
        steps: per epoch run by this process, the schedule indices of the steps it
            ran, in order (an epoch's schedule lists ``(domain, batch start)`` pairs:
            every domain's batches, domains in ``index.domains`` order).
        warm: what a warm start carried over, ``None`` without one.
        warm_score: validation score of the warm-started weights before training;
            ``best_epoch`` is ``-1`` when no epoch beat it (those weights are kept,
            except the rows of items new to the warm start: they keep the rows
            training gave them, so no new item ships with its random row).
        domain_losses: domain -> mean training loss per epoch over that domain's rows.
        untrained_positions: ``(n,)`` global item positions whose rows no epoch
            trained (new items of a warm start when no epoch ran); callers should
            not serve them.

    ``best_epoch`` is the 0-based index into ``epoch_losses``; logs and reports
    number epochs from 1 (``best_epoch + 1``; 0 there means the warm weights).
    """

    model: SharedTransferModel
    epoch_losses: list[float]
    val_scores: list[float]
    best_epoch: int
    seconds_per_epoch: list[float]
    device: str
    resumed_from: int = 0
    rank: int = 0
    world_size: int = 1
    steps: list[list[int]] = field(default_factory=list)
    warm: WarmStartReport | None = None
    warm_score: float | None = None
    domain_losses: dict[str, list[float]] = field(default_factory=dict)
    untrained_positions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


class SharedStepLoss(nn.Module):
    """The loss of one training step as one ``forward`` (what DDP wraps): in-batch
    softmax of the batch's users against their items, plus, when aligned users are
    given, the alignment loss between their source-only and target-only
    representations.

    With ``amp`` the towers run under bfloat16 autocast and the losses in float32
    (a no-op cast when ``amp`` is off).
    """

    def __init__(
        self,
        model: SharedTransferModel,
        align: AlignmentLoss,
        softmax: InBatchSoftmaxLoss,
        amp_device: str | None = None,
        fused: bool = False,
    ) -> None:
        """Args:
        amp_device: device type to autocast to bfloat16 on (``"cuda"``), or ``None``.
        fused: one projection of the distinct items the step touches
            (``SharedTransferModel.step_vectors``) instead of one per tower call.
        """
        super().__init__()
        self.model = model
        self.align = align
        self.softmax = softmax
        self.amp_device = amp_device
        self.fused = fused

    def _autocast(self):
        if self.amp_device is None:
            return contextlib.nullcontext()
        return torch.autocast(self.amp_device, dtype=torch.bfloat16)

    def forward(
        self,
        hist: torch.Tensor,
        mask: torch.Tensor,
        items: torch.Tensor,
        item_log_q: torch.Tensor | None,
        align_hist: torch.Tensor | None = None,
        src_mask: torch.Tensor | None = None,
        tgt_mask: torch.Tensor | None = None,
        lambda_: float = 1.0,
    ) -> torch.Tensor:
        """Args:
        hist: ``(B, L)`` histories of the batch's users; ``mask`` ``(B, L)`` positions used.
        items: ``(B,)`` their positive items; ``item_log_q`` ``(B,)`` or ``None``.
        align_hist: ``(A, L)`` histories of overlapping users to align, or ``None``.
        src_mask, tgt_mask: ``(1, L)`` source / target history columns, or ``(A, L)``
            per-entry masks (the compact layout of ``HistoryTensors.gather_compact``).
        lambda_: gradient-reversal strength (adversarial part).
        """
        if self.fused:
            with self._autocast():
                user_vec, item_vec, extra = self.model.step_vectors(
                    hist, mask, items, align_hist,
                    (src_mask, tgt_mask) if align_hist is not None else ())
            loss = self.softmax(user_vec.float(), item_vec.float(), item_log_q, items)
            if align_hist is not None:
                src_vec, tgt_vec = extra[0].float(), extra[1].float()  # (A, dim) each
                align_loss, _ = self.align(src_vec, tgt_vec, src_vec, tgt_vec, lambda_)
                loss = loss + align_loss
            return loss
        with self._autocast():
            user_vec = self.model.users(hist, mask)  # (B, dim)
            item_vec = self.model.items(items)  # (B, dim)
        loss = self.softmax(user_vec.float(), item_vec.float(), item_log_q, items)
        if align_hist is not None:
            with self._autocast():
                src_vec = self.model.users(align_hist, src_mask).float()  # (A, dim)
                tgt_vec = self.model.users(align_hist, tgt_mask).float()  # (A, dim)
            align_loss, _ = self.align(src_vec, tgt_vec, src_vec, tgt_vec, lambda_)
            loss = loss + align_loss
        return loss


class RowAdam:
    """Lazy Adam on the rows of one embedding table: the update of
    ``torch.optim.SparseAdam`` (moments and weights change only at the rows a
    step's sparse gradient touches; bias correction by the global step count),
    done with row gathers and scatters, so a step costs O(touched rows x dim).

    State: ``step`` and the ``(rows, dim)`` first and second moments.
    ``unique_rows``: the caller guarantees a sparse gradient lists each row once
    (an embedding looked up at distinct positions), so it is used uncoalesced.
    """

    def __init__(self, table: nn.Parameter, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, unique_rows: bool = False) -> None:
        self.table = table
        self.unique_rows = unique_rows
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.step_count = 0
        self.exp_avg = torch.zeros_like(table, memory_format=torch.preserve_format).detach()
        self.exp_avg_sq = torch.zeros_like(self.exp_avg)

    @torch.no_grad()
    def step(self) -> None:
        grad = self.table.grad
        if grad is None:
            return
        if grad.is_sparse and self.unique_rows:  # one entry per row already: no sort
            rows, values = grad._indices()[0], grad._values()
        elif grad.is_sparse:
            grad = grad.coalesce()  # repeated rows (several ranks) summed once
            rows, values = grad.indices()[0], grad.values()
        else:  # a dense gradient (e.g. reduced by NCCL): its non-zero rows
            rows = torch.nonzero(grad.abs().sum(1)).squeeze(1)
            values = grad[rows]
        if rows.numel() == 0:
            return
        self.step_count += 1
        beta1, beta2 = self.betas
        weight = self.table.detach()
        if self.weight_decay > 0:  # L2 on the touched rows, as Adam's weight_decay
            values = values + self.weight_decay * weight.index_select(0, rows)
        # index_select / index_copy_: row gathers and scatters (fast on CPU)
        m = self.exp_avg.index_select(0, rows).mul_(beta1).add_(values, alpha=1 - beta1)  # (n, dim)
        v = self.exp_avg_sq.index_select(0, rows).mul_(beta2).addcmul_(values, values, value=1 - beta2)
        self.exp_avg.index_copy_(0, rows, m)
        self.exp_avg_sq.index_copy_(0, rows, v)
        step_size = self.lr * math.sqrt(1 - beta2**self.step_count) / (1 - beta1**self.step_count)
        # (no alpha=: index_add_'s scaled path is several times slower on CPU)
        weight.index_add_(0, rows, m.div_(v.sqrt_().add_(self.eps)).mul_(-step_size))

    def state_dict(self) -> dict:
        return {"step": self.step_count, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step"])
        self.exp_avg.copy_(state["exp_avg"])
        self.exp_avg_sq.copy_(state["exp_avg_sq"])


class RowSparseAdam:
    """Row-wise Adam (``RowAdam``) over the id-embedding table, whose sparse
    gradients touch only the rows a step used, and Adam over every other weight,
    as one optimiser (``zero_grad``/``step``/``state_dict``/``load_state_dict``).

    ``weight_decay`` is added to the touched rows' gradients (L2, as Adam's own
    ``weight_decay`` does for the dense weights), lazily: untouched rows do not decay.
    """

    def __init__(self, table: nn.Parameter, dense: list[nn.Parameter], lr: float,
                 weight_decay: float = 0.0, unique_rows: bool = False) -> None:
        self.table = table
        self.rows = RowAdam(table, lr, weight_decay=weight_decay, unique_rows=unique_rows)
        self.dense = torch.optim.Adam(dense, lr=lr, weight_decay=weight_decay) if dense else None

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.table.grad = None
        if self.dense is not None:
            self.dense.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.rows.step()
        if self.dense is not None:
            self.dense.step()

    def state_dict(self) -> dict:
        return {"rows": self.rows.state_dict(),
                "dense": None if self.dense is None else self.dense.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.rows.load_state_dict(state["rows"])
        if self.dense is not None and state.get("dense") is not None:
            self.dense.load_state_dict(state["dense"])


def pad_schedule(order: list[int], world_size: int) -> list[int]:
    """``order`` extended with its own first steps to a multiple of ``world_size``
    (unchanged for one process). Rank ``r`` runs positions ``r::world_size``: every
    rank the same number of steps, disjoint except for the (at most
    ``world_size - 1``) repeated steps."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not order:
        return []
    pad = -len(order) % world_size
    return order + [order[i % len(order)] for i in range(pad)]


def _rank_seed(seed: int, epoch: int, rank: int) -> int:
    """A seed of the global RNG (dropout) per (seed, epoch, rank), so ranks do not
    share dropout masks and a resumed run re-seeds exactly as an uninterrupted one."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


# Buffers (the frozen text table) are constants: synced once at construction, not
# before every forward. torch 2.13 renamed ``broadcast_buffers`` (now deprecated).
_NO_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else {"broadcast_buffers": False}
)


def _training_device(name: str, distributed: bool) -> torch.device:
    device = resolve_device(name)
    if distributed and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # LOCAL_RANK's, see init
    return device


def train_shared(
    index: MultiDomainIndex,
    source: str,
    targets: tuple[str, ...],
    config: SharedTrainConfig,
    validate: Callable[[SharedTransferModel], float] | None = None,
    text_emb: np.ndarray | None = None,
    checkpointer: Checkpointer | None = None,
    warm: SharedWarmStart | None = None,
) -> SharedTrainResult:
    """Train on every domain of ``index``; ``validate(model)`` (higher is better)
    picks the epoch and stops after ``patience`` epochs without improvement.

    Under an initialised ``torch.distributed`` process group every rank calls this
    with the same data and config; it trains data-parallel (see the module
    docstring). Only rank 0's ``validate`` and ``checkpointer`` are used (other ranks
    may pass ``None``); every rank returns the same weights.

    Args:
        text_emb: ``(index.n_items_total, text_dim)`` item text embeddings or ``None``.
        checkpointer: saves model, optimizer, RNG and early-stopping state after every
            epoch; a run finding a checkpoint resumes after its epoch (same result).
        warm: an earlier model's weights to start from instead of random ones
            (``recxfer.train.warm_start``); a checkpoint, when found, wins. With
            ``validate`` the starting weights are scored first and an epoch must
            beat them to replace them.
    """
    distributed = dist.is_initialized()
    rank, world_size = rank_and_world()
    device = _training_device(config.device, distributed)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    model = SharedTransferModel(index.n_items_total, config.model, text_emb).to(device)
    warm_report = apply_warm_start(model, warm, index) if warm is not None else None
    align = AlignmentLoss(config.alignment, config.model.dim).to(device)
    params = list(model.parameters()) + list(align.parameters())
    # Sparse gradients need a backend that reduces them (gloo); NCCL runs get dense
    # id-table gradients (SparseAdam still keeps row-wise state).
    sparse_grads = config.sparse and (not distributed or dist.get_backend() == "gloo")
    optim: torch.optim.Optimizer | RowSparseAdam
    if config.sparse:
        model.set_sparse_grad(sparse_grads)
        table = model.id_table()
        # one process: the step looks the table up at distinct rows (step_vectors), so
        # its sparse gradient needs no coalescing; reduced over ranks it may repeat rows
        optim = RowSparseAdam(table, [p for p in params if p is not table], config.lr,
                              config.weight_decay, unique_rows=not distributed)
    else:
        optim = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    softmax = InBatchSoftmaxLoss(config.temperature)
    # Mixed precision only for DDP on CUDA: a single process keeps float32, so its
    # results stay those of the loop before DDP support (benchmarks compare them).
    amp = "cuda" if config.amp and distributed and device.type == "cuda" else None
    step_loss: nn.Module = SharedStepLoss(model, align, softmax, amp, fused=config.sparse)
    if distributed:
        step_loss = DistributedDataParallel(
            step_loss,
            device_ids=[device.index] if device.type == "cuda" else None,
            # the domain classifier only runs on aligned (target) steps
            find_unused_parameters=any(p.requires_grad for p in align.parameters()),
            **_NO_BUFFER_SYNC,
        )

    history = HistoryTensors(index, device)  # CSR, gathered per batch: (B, L)
    pos_domain = torch.as_tensor(index.position_domain, device=device)  # (L,)
    rows = {d: tuple(torch.as_tensor(a, device=device) for a in index.rows[d]) for d in index.domains}
    counts = torch.zeros(index.n_items_total, device=device)
    for _, items in rows.values():
        counts += torch.bincount(items, minlength=index.n_items_total).float()
    log_q = torch.zeros_like(counts)
    for d in index.domains:  # sampling probability within the item's own domain
        sl = index.domain_slice(d)
        log_q[sl] = torch.log(counts[sl].clamp(min=1) / counts[sl].sum())
    has = {d: torch.as_tensor(index.has_history(d), device=device) for d in index.domains}
    any_other = {
        d: torch.stack([has[o] for o in index.domains if o != d]).any(0) if len(index.domains) > 1
        else torch.zeros_like(has[d])
        for d in index.domains
    }
    overlap = {t: torch.nonzero(has[source] & has[t]).squeeze(1) for t in targets}
    use_align = any(w > 0 for w in (config.alignment.mmd, config.alignment.coral,
                                    config.alignment.adversarial, config.alignment.contrastive))
    src_idx = index.domains.index(source)
    src_cols = pos_domain.unsqueeze(0) == src_idx  # (1, L)

    best_state, best_score, best_epoch, bad_epochs = None, -np.inf, -1, 0
    losses, val_scores, seconds, steps_run = [], [], [], []
    domain_losses: dict[str, list[float]] = {d: [] for d in index.domains}
    modules = torch.nn.ModuleDict({"model": model, "align": align})
    start_epoch = 0
    found = checkpointer.load_latest() if checkpointer is not None and rank == 0 else None
    if distributed:
        found = broadcast_object(found)  # rank 0's checkpoint (or None) on every rank
    if found is not None:
        start_epoch = found.restore(modules, optim, {"gen": gen})
        state = found.extra
        losses, val_scores, seconds = state["losses"], state["val_scores"], state["seconds"]
        domain_losses = {d: list(state.get("domain_losses", {}).get(d, [])) for d in index.domains}
        best_score, best_epoch, bad_epochs = state["best_score"], state["best_epoch"], state["bad_epochs"]
        best_state = state["best_state"]
        log.info("shared: resumed from checkpoint epoch %d/%d (%s)", start_epoch, config.epochs,
                 found.path)
        if state["stopped"]:
            start_epoch = config.epochs  # early stopping had already ended the run
    warm_score = None
    if warm_report is not None and found is None:
        # The epochs must beat the weights started from: on data that taught the
        # earlier model nothing new, its weights are kept (best epoch -1).
        warm_score = _rank0_score(validate, model, rank, distributed, device)
        if warm_score is not None:
            log.info("warm start: val %.4f before training", warm_score)
            best_score, best_state = warm_score, copy.deepcopy(model.state_dict())
    for epoch in range(start_epoch, config.epochs):
        start_time = time.perf_counter()
        model.train()
        schedule = []
        perms = {}
        for d_idx, d in enumerate(index.domains):
            n = rows[d][0].shape[0]
            perms[d] = torch.randperm(n, generator=gen).to(device)
            schedule += [(d_idx, s) for s in range(0, n, config.batch_size)]
        order = pad_schedule(torch.randperm(len(schedule), generator=gen).tolist(), world_size)
        if world_size > 1:
            torch.manual_seed(_rank_seed(config.seed, epoch, rank))
        total, n_rows, ran = 0.0, 0, []
        d_total, d_rows = [0.0] * len(index.domains), [0] * len(index.domains)
        progress = min(1.0, epoch / max(1, config.epochs - 1))
        lambda_ = float(2.0 / (1.0 + np.exp(-10 * progress)) - 1.0)  # DANN schedule
        bar = tqdm(total=len(order) // world_size, desc=f"epoch {epoch}", leave=False,
                   disable=None if rank == 0 else True)
        for position, step in enumerate(order):
            d_idx, s = schedule[step]
            domain = index.domains[d_idx]
            # This step's random draws, taken on every rank whichever rank runs it.
            n_batch = min(config.batch_size, rows[domain][0].shape[0] - s)
            drop_draw = torch.rand(n_batch, generator=gen)  # (B,)
            aligned = use_align and domain in overlap and overlap[domain].numel() > 1
            pick_draw = None
            if aligned:  # distinct users: NT-Xent needs unique pairs
                pick_draw = torch.randperm(overlap[domain].numel(), generator=gen)[: config.align_batch]
            if position % world_size != rank:
                continue
            sel = perms[domain][s : s + config.batch_size]  # (B,)
            users, items = rows[domain][0][sel], rows[domain][1][sel]  # (B,), (B,)
            items = items.long()
            drop = (drop_draw.to(device) < config.cold_drop)
            drop &= any_other[domain][users]
            if config.sparse:  # compact rows: the batch's real history entries only
                hist, hist_dom = history.gather_compact(users)  # (B, W), (B, W)
                own, src, tgt = hist_dom == d_idx, None, None
                align_hist = None
                if aligned:
                    align_hist, align_dom = history.gather_compact(
                        overlap[domain][pick_draw.to(device)])  # (A, W')
                    src, tgt = align_dom == src_idx, align_dom == d_idx
            else:  # the fixed-width layout of before
                hist = history.gather(users)  # (B, L)
                own = (pos_domain == d_idx).unsqueeze(0)  # (1, L)
                align_hist = history.gather(overlap[domain][pick_draw.to(device)]) if aligned else None  # (A, L)
                src, tgt = src_cols, pos_domain.unsqueeze(0) == d_idx
            mask = hist != items.unsqueeze(1)  # leave the predicted item out
            mask &= ~(drop.unsqueeze(1) & own)
            loss = step_loss(hist, mask, items, log_q[items] if config.logq else None,
                             align_hist, src, tgt, lambda_)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            total += float(loss.detach()) * users.shape[0]
            n_rows += users.shape[0]
            d_total[d_idx] += float(loss.detach()) * users.shape[0]
            d_rows[d_idx] += users.shape[0]
            ran.append(step)
            bar.update(1)
        bar.close()
        if distributed:
            total, n_rows, *per_domain = all_reduce_sum([total, n_rows, *d_total, *d_rows], device)
            d_total, d_rows = per_domain[: len(d_total)], per_domain[len(d_total):]
        losses.append(total / max(1, n_rows))
        for d_idx, d in enumerate(index.domains):
            domain_losses[d].append(d_total[d_idx] / max(1, d_rows[d_idx]))
        seconds.append(time.perf_counter() - start_time)
        steps_run.append(ran)
        stop = False
        score = _rank0_score(validate, model, rank, distributed, device)
        if score is not None:
            val_scores.append(score)
            log.info("epoch %d/%d loss %.4f val %.4f (%.1fs)", epoch + 1, config.epochs, losses[-1],
                     score, seconds[-1])
            if score > best_score:
                best_score, best_epoch, bad_epochs = score, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad_epochs += 1
                stop = bad_epochs >= config.patience
        if checkpointer is not None and rank == 0:
            checkpointer.save(epoch + 1, modules, optim, {
                "losses": losses, "val_scores": val_scores, "seconds": seconds,
                "domain_losses": domain_losses, "best_score": best_score, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                "best_state": best_state, "stopped": stop,
            }, {"gen": gen})
        barrier()  # no-op in one process; elsewhere nobody runs ahead of the checkpoint
        if stop:
            break
    untrained = np.zeros(0, np.int64)
    if warm_report is not None and warm_report.carried_table and len(warm_report.new_positions):
        if not losses:  # no epoch ran: the new items' rows are still random
            untrained = warm_report.new_positions
        elif best_state is not None and best_epoch == -1:
            # The warm weights are restored, but new items keep what training
            # taught them (the last epoch's rows): never their random rows.
            best_state = dict(best_state)
            table = best_state[ID_TABLE].clone()
            rows = torch.as_tensor(warm_report.new_positions, device=table.device)
            table[rows] = model.state_dict()[ID_TABLE][rows].to(table.device, table.dtype)
            best_state[ID_TABLE] = table
            log.info("warm weights kept; %d new item rows keep their trained values",
                     len(warm_report.new_positions))
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = len(losses) - 1
    broadcast_module_state(model)  # rank 0's weights everywhere (no-op in one process)
    model.set_sparse_grad(False)  # a later backward (fine-tuning, tests) gets dense grads
    model.eval()
    return SharedTrainResult(model, losses, val_scores, best_epoch, seconds, device.type,
                             start_epoch, rank, world_size, steps_run, warm_report, warm_score,
                             domain_losses, untrained)


def _rank0_score(
    validate: Callable[[SharedTransferModel], float] | None,
    model: SharedTransferModel,
    rank: int,
    distributed: bool,
    device: torch.device,
) -> float | None:
    """Rank 0's validation score of ``model`` (in eval mode) on every rank; ``None``
    without a validator. Every rank must call it at the same point."""
    score = None
    if validate is not None and rank == 0:
        model.eval()
        score = float(validate(model))
    if distributed:  # rank 0's score (or its absence) decides on every rank
        has_score, value = broadcast_floats([score is not None, score or 0.0], device)
        score = value if has_score else None
    return score
