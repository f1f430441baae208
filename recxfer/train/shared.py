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
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from recxfer.losses.alignment import AlignmentConfig, AlignmentLoss
from recxfer.losses.ranking import InBatchSoftmaxLoss
from recxfer.train.checkpoint import Checkpointer
from recxfer.train.device import resolve_device
from recxfer.train.histories import MultiDomainIndex
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


@dataclass
class SharedTrainResult:
    """The trained model (best validation epoch) and its history."""

    model: SharedTransferModel
    epoch_losses: list[float]
    val_scores: list[float]
    best_epoch: int
    seconds_per_epoch: list[float]
    device: str
    resumed_from: int = 0


def train_shared(
    index: MultiDomainIndex,
    source: str,
    targets: tuple[str, ...],
    config: SharedTrainConfig,
    validate: Callable[[SharedTransferModel], float] | None = None,
    text_emb: np.ndarray | None = None,
    checkpointer: Checkpointer | None = None,
) -> SharedTrainResult:
    """Train on every domain of ``index``; ``validate(model)`` (higher is better)
    picks the epoch and stops after ``patience`` epochs without improvement.

    Args:
        text_emb: ``(index.n_items_total, text_dim)`` item text embeddings or ``None``.
        checkpointer: saves model, optimizer, RNG and early-stopping state after every
            epoch; a run finding a checkpoint resumes after its epoch (same result).
    """
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    model = SharedTransferModel(index.n_items_total, config.model, text_emb).to(device)
    align = AlignmentLoss(config.alignment, config.model.dim).to(device)
    params = list(model.parameters()) + list(align.parameters())
    optim = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    softmax = InBatchSoftmaxLoss(config.temperature)

    history = torch.as_tensor(index.history, device=device)  # (U, L)
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

    best_state, best_score, best_epoch, bad_epochs = None, -np.inf, -1, 0
    losses, val_scores, seconds = [], [], []
    modules = torch.nn.ModuleDict({"model": model, "align": align})
    start_epoch = 0
    if checkpointer is not None and (found := checkpointer.load_latest()) is not None:
        start_epoch = found.restore(modules, optim, {"gen": gen})
        state = found.extra
        losses, val_scores, seconds = state["losses"], state["val_scores"], state["seconds"]
        best_score, best_epoch, bad_epochs = state["best_score"], state["best_epoch"], state["bad_epochs"]
        best_state = state["best_state"]
        log.info("shared: resumed from checkpoint epoch %d/%d (%s)", start_epoch, config.epochs,
                 found.path)
        if state["stopped"]:
            start_epoch = config.epochs  # early stopping had already ended the run
    for epoch in range(start_epoch, config.epochs):
        start_time = time.perf_counter()
        model.train()
        schedule = []
        perms = {}
        for d_idx, d in enumerate(index.domains):
            n = rows[d][0].shape[0]
            perms[d] = torch.randperm(n, generator=gen).to(device)
            schedule += [(d_idx, s) for s in range(0, n, config.batch_size)]
        order = torch.randperm(len(schedule), generator=gen).tolist()
        total, n_rows = 0.0, 0
        progress = min(1.0, epoch / max(1, config.epochs - 1))
        lambda_ = float(2.0 / (1.0 + np.exp(-10 * progress)) - 1.0)  # DANN schedule
        for step in tqdm(order, desc=f"epoch {epoch}", leave=False, disable=None):
            d_idx, s = schedule[step]
            domain = index.domains[d_idx]
            sel = perms[domain][s : s + config.batch_size]  # (B,)
            users, items = rows[domain][0][sel], rows[domain][1][sel]  # (B,), (B,)
            hist = history[users]  # (B, L)
            mask = hist != items.unsqueeze(1)  # leave the predicted item out
            drop = (torch.rand(users.shape[0], generator=gen).to(device) < config.cold_drop)
            drop &= any_other[domain][users]
            mask &= ~(drop.unsqueeze(1) & (pos_domain == d_idx).unsqueeze(0))
            user_vec = model.users(hist, mask)  # (B, dim)
            item_vec = model.items(items)  # (B, dim)
            loss = softmax(user_vec, item_vec, log_q[items] if config.logq else None, items)
            if use_align and domain in overlap and overlap[domain].numel() > 1:
                n_overlap = overlap[domain].numel()  # distinct users: NT-Xent needs unique pairs
                pick = overlap[domain][
                    torch.randperm(n_overlap, generator=gen)[: config.align_batch].to(device)
                ]
                h = history[pick]  # (A, L)
                src_vec = model.users(h, pos_domain.unsqueeze(0) == index.domains.index(source))
                tgt_vec = model.users(h, pos_domain.unsqueeze(0) == d_idx)
                align_loss, _ = align(src_vec, tgt_vec, src_vec, tgt_vec, lambda_)
                loss = loss + align_loss
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            total += float(loss.detach()) * users.shape[0]
            n_rows += users.shape[0]
        losses.append(total / max(1, n_rows))
        seconds.append(time.perf_counter() - start_time)
        stop = False
        if validate is not None:
            model.eval()
            score = float(validate(model))
            val_scores.append(score)
            log.info("epoch %d loss %.4f val %.4f (%.1fs)", epoch, losses[-1], score, seconds[-1])
            if score > best_score:
                best_score, best_epoch, bad_epochs = score, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad_epochs += 1
                stop = bad_epochs >= config.patience
        if checkpointer is not None:
            checkpointer.save(epoch + 1, modules, optim, {
                "losses": losses, "val_scores": val_scores, "seconds": seconds,
                "best_score": best_score, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                "best_state": best_state, "stopped": stop,
            }, {"gen": gen})
        if stop:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = len(losses) - 1
    model.eval()
    return SharedTrainResult(model, losses, val_scores, best_epoch, seconds, device.type, start_epoch)
