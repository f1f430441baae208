"""Single-process ``train_shared`` stays bit-identical to the code before the
distributed (DDP) support was added, when ``torch.distributed`` is not initialised.

Two anchors:

* ``reference_train_shared`` below is a frozen, verbatim copy of the loop as it was
  before DDP (commit 5022760). The current loop must give exactly the same epoch
  losses, validation history and weights (``rtol=0, atol=0``) on this machine, for
  configs covering cold-drop, every alignment part, attention pooling + MLP +
  dropout, a text tower, early stopping with best-weight restore and checkpoint
  resume. Do not edit the copy: it is the definition of "the current results".
* ``SAVED`` holds the epoch losses that copy produced when it was frozen (this CPU,
  torch 2.13.0). They are compared to 1e-6 relative, not exactly, because other
  CPUs may pick other float kernels; they catch an edit of the frozen copy.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch
from tqdm.auto import tqdm

from recxfer.data.synthetic import DomainSpec, SyntheticConfig, generate
from recxfer.losses.alignment import AlignmentConfig, AlignmentLoss
from recxfer.losses.ranking import InBatchSoftmaxLoss
from recxfer.train.checkpoint import Checkpointer
from recxfer.train.device import resolve_device
from recxfer.train.histories import build_multi_domain_index
from recxfer.train.shared import SharedTrainConfig, SharedTrainResult, train_shared
from recxfer.transfer.shared import SharedModelConfig, SharedTransferModel

SOURCE, TARGETS = "video", ("books", "music")


# --------------------------------------------------------------------------- frozen copy
# Verbatim from recxfer/train/shared.py at 975341c (unchanged since 5022760); only the
# function's name changed.
log = logging.getLogger(__name__)


def reference_train_shared(
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


# --------------------------------------------------------------------------- cases
@pytest.fixture(scope="module")
def index():
    interactions, _ = generate(SyntheticConfig(
        n_users=150,
        domains=(DomainSpec(SOURCE, 50, 1.0, 10.0), DomainSpec("books", 30, 0.7, 5.0),
                 DomainSpec("music", 20, 0.5, 4.0)),
        seed=1,
    ))
    return build_multi_domain_index(interactions, (SOURCE, *TARGETS), max_history=20)


def _config(**kwargs) -> SharedTrainConfig:
    # sparse=False: the loop's dense-Adam mode, the one the frozen copy defines. The
    # default (row-wise SparseAdam on the id table, one projection of the touched
    # items per step; issue 11) is a different optimiser by design, checked against
    # this mode in tests/train/test_scale_training.py.
    base = dict(model=SharedModelConfig(dim=8), epochs=2, batch_size=128, lr=1e-2, device="cpu",
                sparse=False)
    return SharedTrainConfig(**(base | kwargs))


ALL_PARTS = AlignmentConfig(mmd=0.5, coral=0.5, adversarial=0.5, contrastive=0.5,
                            adversarial_hidden=8, adversarial_dropout=0.1)
CASES = {
    "plain": dict(config=_config(), scores=None, text=False),
    "aligned_attention_mlp_dropout": dict(
        config=_config(epochs=3, alignment=ALL_PARTS, align_batch=32, patience=5,
                       model=SharedModelConfig(dim=8, pooling="attention", hidden=16,
                                               dropout=0.1)),
        scores=[1.0, 3.0, 2.0], text=False),
    "text_early_stop": dict(
        config=_config(epochs=4, patience=1, logq=False, temperature=0.5, weight_decay=1e-4,
                       cold_drop=0.3, alignment=AlignmentConfig(mmd=1.0), align_batch=16, seed=5),
        scores=[2.0, 1.0, 9.0, 9.0], text=True),
}
# Epoch losses of the frozen copy, as float.hex, when it was frozen (see the docstring).
SAVED = {
    "plain": ["0x1.37b5eaac5a152p+2", "0x1.3560a72e30b7dp+2"],
    "aligned_attention_mlp_dropout": ["0x1.69203276ced28p+2", "0x1.6589da2e6b8c3p+2",
                                      "0x1.5f233d2ccfbddp+2"],
    "text_early_stop": ["0x1.7be9e87c17e64p+2", "0x1.4b684148d8ef0p+2"],
}


class Scripted:
    """A validator returning ``scores`` in turn."""

    def __init__(self, scores) -> None:
        self.scores, self.calls = list(scores), 0

    def __call__(self, model) -> float:
        self.calls += 1
        return self.scores[self.calls - 1]


def _run(fn, index, case: dict, checkpointer=None) -> SharedTrainResult:
    text = None
    if case["text"]:
        text = np.random.default_rng(0).standard_normal((index.n_items_total, 12)).astype(np.float32)
    validate = Scripted(case["scores"]) if case["scores"] is not None else None
    return fn(index, SOURCE, TARGETS, case["config"], validate, text, checkpointer)


def _assert_identical(a: SharedTrainResult, b: SharedTrainResult, index) -> None:
    assert [x.hex() for x in a.epoch_losses] == [x.hex() for x in b.epoch_losses]
    assert a.val_scores == b.val_scores
    assert (a.best_epoch, a.resumed_from) == (b.best_epoch, b.resumed_from)
    state_a, state_b = a.model.state_dict(), b.model.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        torch.testing.assert_close(state_a[key], state_b[key], rtol=0, atol=0, msg=key)
    np.testing.assert_array_equal(a.model.export_users(index.history),
                                  b.model.export_users(index.history))
    np.testing.assert_array_equal(a.model.export_items(0, index.n_items_total),
                                  b.model.export_items(0, index.n_items_total))


@pytest.mark.parametrize("name", list(CASES))
def test_single_process_is_bit_identical_to_the_pre_ddp_loop(index, name: str) -> None:
    assert not torch.distributed.is_initialized()
    expected = _run(reference_train_shared, index, CASES[name])
    got = _run(train_shared, index, CASES[name])
    _assert_identical(got, expected, index)


@pytest.mark.parametrize("name", list(CASES))
def test_frozen_copy_still_gives_the_saved_losses(index, name: str) -> None:
    losses = _run(reference_train_shared, index, CASES[name]).epoch_losses
    saved = [float.fromhex(x) for x in SAVED[name]]
    np.testing.assert_allclose(losses, saved, rtol=1e-6, atol=0)


def test_resume_from_checkpoint_is_bit_identical(index, tmp_path) -> None:
    case = dict(config=_config(epochs=2, alignment=AlignmentConfig(coral=1.0), align_batch=16),
                scores=[1.0, 2.0, 3.0], text=False)
    longer = dict(case, config=_config(epochs=3, alignment=AlignmentConfig(coral=1.0),
                                       align_batch=16))
    results = []
    for fn, folder in ((reference_train_shared, "ref"), (train_shared, "new")):
        ckpt = Checkpointer(tmp_path / folder, {"case": "resume"})
        _run(fn, index, case, ckpt)  # writes epoch-0002
        results.append(_run(fn, index, longer, ckpt))  # resumes at epoch 2, runs epoch 3
    assert results[0].resumed_from == 2
    _assert_identical(results[1], results[0], index)
