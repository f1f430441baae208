"""Training cost that grows with the batch, not the catalogue (issue 11): CSR
histories, per-step projection of the touched items only, row-wise SparseAdam,
one projection of the item table per export, sampled validation users."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from recxfer.data.synthetic import DomainSpec, SyntheticConfig, generate
from recxfer.encoders.text import ItemTower, TextTower
from recxfer.losses.alignment import AlignmentConfig
from recxfer.train.histories import HistoryTensors, build_multi_domain_index
from recxfer.train.shared import RowAdam, RowSparseAdam, SharedTrainConfig, train_shared
from recxfer.train.shared_domains import (
    export_domains,
    export_user_embeddings,
    sample_validation_users,
)
from recxfer.transfer.shared import SharedModelConfig, SharedTransferModel

DOMAINS = ("video", "books", "music")


def dense_reference(train: pd.DataFrame, domains, max_history: int, index) -> np.ndarray:
    """The dense ``users x domains x max_history`` int64 layout, built by loops (the
    layout the index stored before it went CSR)."""
    history = np.full((len(index.users), len(domains) * max_history), -1, dtype=np.int64)
    for d_idx, d in enumerate(domains):
        part = train[train["domain"] == d]
        for row, u in enumerate(index.users.ids):
            mine = part[part["user_id"] == u]
            pairs = sorted(zip(-mine["timestamp"], range(len(mine)), mine["item_id"]))[:max_history]
            pos = [int(index.offsets[d_idx] + index.items[d].to_idx([i])[0]) for _, _, i in pairs]
            history[row, d_idx * max_history : d_idx * max_history + len(pos)] = pos
    return history


@pytest.fixture(scope="module")
def small():
    interactions, items = generate(SyntheticConfig(
        n_users=60,
        domains=(DomainSpec("video", 40, 1.0, 9.0), DomainSpec("books", 25, 0.6, 4.0),
                 DomainSpec("music", 15, 0.5, 3.0)),
        seed=4,
    ))
    interactions["timestamp"] = interactions["timestamp"] // 7200  # ties: row order decides
    return interactions, items


@pytest.mark.parametrize("max_history", [1, 3, 50])
def test_csr_gather_equals_the_dense_reference(small, max_history: int) -> None:
    train, _ = small
    index = build_multi_domain_index(train, DOMAINS, max_history=max_history,
                                     extra_users=["zz-new"])
    reference = dense_reference(train, DOMAINS, max_history, index)
    assert index.indices.dtype == np.int32 and index.indptr.dtype == np.int64
    assert index.indices.nbytes < reference.nbytes or max_history == 1
    np.testing.assert_array_equal(index.history, reference)
    rng = np.random.default_rng(0)
    users = rng.integers(0, len(index.users), size=40)  # repeats and any order
    np.testing.assert_array_equal(index.gather(users), reference[users])
    tensors = HistoryTensors(index, torch.device("cpu"))
    got = tensors.gather(torch.as_tensor(users, dtype=torch.int32))
    assert got.dtype == torch.int64
    np.testing.assert_array_equal(got.numpy(), reference[users])
    only_books = index.gather(users, ["books"])
    cols = index.position_domain == 1
    np.testing.assert_array_equal(only_books[:, cols], reference[users][:, cols])
    assert (only_books[:, ~cols] == -1).all()
    assert index.gather(np.zeros(0, np.int64)).shape == (0, 3 * max_history)
    assert tensors.gather(torch.zeros(0, dtype=torch.int64)).shape == (0, 3 * max_history)
    new = index.users.to_idx(["zz-new"])
    assert (tensors.gather(torch.as_tensor(new)) == -1).all()
    # the compact rows: the same items per domain, in order, without the fixed width
    hist, dom = tensors.gather_compact(torch.as_tensor(users))
    assert hist.shape[1] == max(1, int((reference[users] >= 0).sum(1).max()))
    for r, u in enumerate(users):
        real = reference[u][reference[u] >= 0]
        np.testing.assert_array_equal(hist[r][hist[r] >= 0].numpy(), real)
        np.testing.assert_array_equal(dom[r][hist[r] >= 0].numpy(), index.position_domain[reference[u] >= 0])
        assert (hist[r][len(real):] == -1).all() and (dom[r][len(real):] == -1).all()
    empty, empty_dom = tensors.gather_compact(torch.as_tensor(new))
    assert empty.shape == (1, 1) and int(empty[0, 0]) == -1 == int(empty_dom[0, 0])


def _catalogue_index(n_items: int = 3000):
    """A catalogue of a few thousand items, short histories."""
    interactions, items = generate(SyntheticConfig(
        n_users=1500,
        domains=(DomainSpec("video", n_items, 1.0, 6.0), DomainSpec("books", 600, 0.5, 3.0)),
        seed=2,
    ))
    return interactions, build_multi_domain_index(interactions, ("video", "books"), max_history=5)


def test_training_steps_project_only_the_batch_items(monkeypatch) -> None:
    _, index = _catalogue_index()
    catalogue = index.n_items_total
    assert catalogue > 2500
    sizes: list[tuple[bool, int]] = []
    original = TextTower.forward

    def spy(self, item_idx):
        sizes.append((torch.is_grad_enabled(), int(item_idx.numel())))
        return original(self, item_idx)

    monkeypatch.setattr(TextTower, "forward", spy)
    text = np.random.default_rng(0).standard_normal((catalogue, 16)).astype(np.float32)
    batch, align_batch, width = 32, 16, 2 * 5
    config = SharedTrainConfig(model=SharedModelConfig(dim=8), epochs=1, batch_size=batch,
                               align_batch=align_batch, alignment=AlignmentConfig(mmd=0.5),
                               lr=1e-2, device="cpu")
    exports: list[int] = []

    def validate(model) -> float:
        before = len(sizes)
        export_domains(model, index)
        exports.append(len(sizes) - before)
        return 0.0

    train_shared(index, "video", ("books",), config, validate, text)
    steps = [n for grad, n in sizes if grad]
    assert len(steps) == sum(-(-len(index.rows[d][0]) // batch) for d in index.domains)
    bound = batch * (width + 1) + align_batch * width  # distinct items a step can touch
    assert max(steps) <= bound < catalogue / 5, (max(steps), catalogue)
    # the export projects the whole table once (no grad), not once per user chunk
    assert exports == [1]
    assert [n for grad, n in sizes if not grad] == [catalogue]


def test_export_projects_the_item_table_once_for_any_number_of_user_chunks(monkeypatch) -> None:
    _, index = _catalogue_index(n_items=300)
    text = np.random.default_rng(1).standard_normal((index.n_items_total, 6)).astype(np.float32)
    torch.manual_seed(0)
    model = SharedTransferModel(index.n_items_total, SharedModelConfig(dim=4), text).eval()
    calls = []
    original = ItemTower.forward
    monkeypatch.setattr(ItemTower, "forward", lambda self, idx: calls.append(idx.numel()) or original(self, idx))
    emb = export_user_embeddings(model, index, batch=7)  # ~60 chunks of users
    assert calls == [index.n_items_total]
    monkeypatch.setattr(ItemTower, "forward", original)
    with torch.no_grad():
        hist = torch.as_tensor(index.history)
        expected = model.users(hist, hist >= 0).numpy()
    np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("text", [False, True])
def test_fused_step_vectors_equal_the_per_call_towers(small, text: bool) -> None:
    train, _ = small
    index = build_multi_domain_index(train, DOMAINS, max_history=4)
    text_emb = np.random.default_rng(2).standard_normal((index.n_items_total, 5)).astype(np.float32) \
        if text else None
    torch.manual_seed(0)
    model = SharedTransferModel(index.n_items_total, SharedModelConfig(dim=6, pooling="attention"),
                                text_emb).eval()
    with torch.no_grad():
        model.user_encoder.query.normal_()
    hist = torch.as_tensor(index.gather(np.arange(20)))
    items = torch.as_tensor(index.rows["video"][1][:20]).long()
    mask = hist != items[:, None]
    extra = torch.as_tensor(index.gather(np.arange(20, 32)))
    src = torch.as_tensor(index.position_domain == 0)[None, :]
    tgt = torch.as_tensor(index.position_domain == 1)[None, :]
    user_vec, item_vec, (src_vec, tgt_vec) = model.step_vectors(hist, mask, items, extra, (src, tgt))
    torch.testing.assert_close(user_vec, model.users(hist, mask))
    torch.testing.assert_close(item_vec, model.items(items))
    torch.testing.assert_close(src_vec, model.users(extra, src))
    torch.testing.assert_close(tgt_vec, model.users(extra, tgt))


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_sparse_optimiser_updates_only_touched_rows(weight_decay: float) -> None:
    torch.manual_seed(0)
    table = torch.nn.Embedding(50, 4, sparse=True)
    head = torch.nn.Linear(4, 1)
    optim = RowSparseAdam(table.weight, list(head.parameters()), lr=0.1, weight_decay=weight_decay)
    dense_table = torch.nn.Embedding(50, 4)
    dense_table.weight.data.copy_(table.weight.data)
    dense = torch.optim.Adam(list(dense_table.parameters()), lr=0.1, weight_decay=weight_decay)
    for rows in ([1, 5, 7, 5], [2, 3]):
        before = table.weight.detach().clone()
        idx = torch.tensor(rows)
        optim.zero_grad()
        head(table(idx)).pow(2).sum().backward()
        assert table.weight.grad.is_sparse
        optim.step()
        dense.zero_grad()
        dense_table(idx).pow(2).sum().backward()
        dense.step()
        moved = torch.nonzero((table.weight.detach() != before).any(1)).flatten().tolist()
        assert moved == sorted(set(rows))
    # dense Adam keeps moving step 1's rows on step 2 (momentum); the row-wise state does not
    assert not torch.equal(dense_table.weight[1], table.weight[1])
    state = optim.state_dict()
    again = RowSparseAdam(table.weight, list(head.parameters()), lr=0.1, weight_decay=weight_decay)
    again.load_state_dict(state)
    assert again.state_dict()["rows"]["step"] == 2
    torch.testing.assert_close(again.state_dict()["rows"]["exp_avg"], state["rows"]["exp_avg"])


def test_row_adam_is_torch_sparse_adam() -> None:
    torch.manual_seed(1)
    ours = torch.nn.Embedding(40, 3, sparse=True)
    ref = torch.nn.Embedding(40, 3, sparse=True)
    ref.weight.data.copy_(ours.weight.data)
    row_adam = RowAdam(ours.weight, lr=0.05)
    sparse_adam = torch.optim.SparseAdam([ref.weight], lr=0.05)
    for step in range(6):
        idx = torch.randint(0, 40, (12,))  # repeated rows within a step
        target = torch.randn(12, 3)
        for module, optim in ((ours, row_adam), (ref, sparse_adam)):
            module.weight.grad = None
            (module(idx) - target).pow(2).sum().backward()
            optim.step()
        torch.testing.assert_close(ours.weight, ref.weight, rtol=1e-5, atol=1e-6)


def test_sparse_training_moves_only_rows_its_steps_touch(small) -> None:
    train, _ = small
    index = build_multi_domain_index(train, ("video", "books"), max_history=4)
    # an epoch of the books rows only (video batch rows still enter histories)
    config = SharedTrainConfig(model=SharedModelConfig(dim=4), epochs=0, device="cpu")
    torch.manual_seed(0)
    start = train_shared(index, "video", ("books",), config).model.id_table().detach().clone()
    one = train_shared(index, "video", ("books",),
                       SharedTrainConfig(model=SharedModelConfig(dim=4), epochs=1, batch_size=10_000,
                                         device="cpu")).model
    touched = np.zeros(index.n_items_total, dtype=bool)
    for d in index.domains:
        users, items = index.rows[d]
        touched[items] = True
        hist = index.gather(users)
        touched[hist[hist >= 0]] = True
    moved = (one.id_table().detach() != start).any(1).numpy()
    assert not (moved & ~touched).any()
    assert moved[touched].mean() > 0.9
    assert not one.item_tower.id_encoder.table.sparse  # reset after training


def test_validation_sample_is_seeded(small) -> None:
    train, _ = small
    index = build_multi_domain_index(train, DOMAINS, max_history=4)
    users = {"books": list(index.users.ids[:40]) + ["nobody"], "music": list(index.users.ids[30:55])}
    a = sample_validation_users(index, users, 10, seed=3)
    assert np.array_equal(a, sample_validation_users(index, users, 10, seed=3))
    assert not np.array_equal(a, sample_validation_users(index, users, 10, seed=4))
    assert len(a) <= 20 and np.all(np.diff(a) > 0)
    books = set(index.users.to_idx(users["books"][:40]))
    assert 1 <= len(set(a) & books) <= 20
    everyone = sample_validation_users(index, users, 0, seed=3)
    assert set(everyone) == books | set(index.users.to_idx(users["music"]))


def test_export_of_sampled_users_equals_the_full_export_rows(small) -> None:
    train, _ = small
    index = build_multi_domain_index(train, DOMAINS, max_history=4)
    torch.manual_seed(0)
    model = SharedTransferModel(index.n_items_total, SharedModelConfig(dim=4)).eval()
    full = export_domains(model, index)
    pos = np.array([0, 3, 4, 17, 30])
    part = export_domains(model, index, user_pos=pos)
    for d in DOMAINS:
        np.testing.assert_array_equal(part[d].user_ids, full[d].user_ids[pos])
        np.testing.assert_allclose(part[d].user_emb, full[d].user_emb[pos], rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(part[d].user_origin, full[d].user_origin[pos])
        np.testing.assert_array_equal(part[d].item_emb, full[d].item_emb)
        np.testing.assert_array_equal(part[d].item_popularity, full[d].item_popularity)
        for row, p in enumerate(pos):
            np.testing.assert_array_equal(part[d].seen.row(row), full[d].seen.row(p))


def test_validation_exports_only_the_sampled_users(small) -> None:
    from recxfer.train.shared_domains import SharedJobConfig, train_shared_cross_domain

    train, _ = small
    seen = []

    def validator(domains) -> float:
        seen.append({d: len(e.user_ids) for d, e in domains.items()})
        return 0.0

    job = SharedJobConfig(SharedTrainConfig(model=SharedModelConfig(dim=4), epochs=2, batch_size=64,
                                            device="cpu"), use_text=False, val_users=5)
    books_users = np.sort(train.loc[train["domain"] == "books", "user_id"].unique())[:12]
    model = train_shared_cross_domain(train, "video", ("books",), job, validator=validator,
                                      validation_users={"books": books_users})
    assert seen == [{"video": 5, "books": 5}] * 2  # a seeded sample, every epoch the same
    assert len(model.domains["books"].user_ids) == train["user_id"].nunique()  # the export: all
    assert len(model.seconds_per_epoch) == 2


def test_fused_step_gives_the_id_table_one_gradient_row_per_distinct_item(small) -> None:
    train, _ = small
    index = build_multi_domain_index(train, DOMAINS, max_history=4)
    model = SharedTransferModel(index.n_items_total, SharedModelConfig(dim=4))
    model.set_sparse_grad(True)
    tensors = HistoryTensors(index, torch.device("cpu"))
    hist, _ = tensors.gather_compact(torch.arange(30))
    items = torch.as_tensor(index.rows["video"][1][:30]).long()
    user_vec, item_vec, _ = model.step_vectors(hist, hist != items[:, None], items)
    (user_vec * item_vec).sum().backward()
    rows = model.id_table().grad._indices()[0]  # what RowAdam(unique_rows=True) reads
    assert len(torch.unique(rows)) == len(rows)
    expected = torch.unique(torch.cat([hist[hist >= 0], items]))
    assert torch.equal(torch.sort(rows).values, expected)
