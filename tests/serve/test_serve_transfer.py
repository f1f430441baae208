"""Item-to-item transfer in serving: a cold ``transfer`` user with a source history
(and any ``RecommendFromHistory`` from the transfer's source) is answered by the
artifact's ``DomainTransfer`` exactly as offline scoring ranks it; warm users keep
the embedding path; a malformed transfer refuses the artifact at load (so hot
reload keeps the old model).

Hand-made domains (dim 4, exact torch index):

- ``video`` (source): 10 items ``v00..v09``; users carol (seen v01 v04 v07),
  gina (v00 v02), ivy (nothing), alice (v03).
- ``books`` (target): 15 items ``b00..b14``; users alice (warm, seen b00 b01),
  carol (transfer, nothing seen), gina (transfer, seen b02 b05), hank (transfer,
  unknown in video), ivy (transfer, empty video history).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import numpy as np
import pytest
import scipy.sparse as sp

from recxfer.artifacts import (
    Artifact,
    ArtifactError,
    publish,
    save_domain,
    save_transfer,
    transfer_dir,
    write_artifact,
)
from recxfer.serve import ArtifactWatcher, ItemFilter, ModelHolder, RecommendQuery, ServingModel
from recxfer.serve.model import NoHistoryEncoderError, UnknownItemError
from recxfer.types import DAEScorer, DomainEmbeddings, DomainTransfer, ItemToItemScorer, SeenItems, UserOrigin
from recxfer.v1 import recommender_pb2 as pb

SRC, TGT = "video", "books"
DIM = 4
TIMEOUT = 5.0
SRC_ITEMS = [f"v{j:02d}" for j in range(10)]
TGT_ITEMS = [f"b{j:02d}" for j in range(15)]
SRC_SEEN = {"carol": [1, 4, 7], "gina": [0, 2], "ivy": [], "alice": [3]}
TGT_USERS = {  # user -> (origin, seen)
    "alice": ("warm", [0, 1]),
    "carol": ("transfer", []),
    "gina": ("transfer", [2, 5]),
    "hank": ("transfer", []),
    "ivy": ("transfer", []),
}


def _emb(name, users, origins, items, seen, rng) -> DomainEmbeddings:
    pairs = [(u, j) for u, user in enumerate(users) for j in seen[user]]
    seen_items = SeenItems.from_pairs(
        len(users), np.array([u for u, _ in pairs], np.int64), np.array([j for _, j in pairs], np.int64)
    )
    popularity = np.bincount(np.array([j for _, j in pairs], np.int64), minlength=len(items))
    return DomainEmbeddings(
        domain=name,
        user_ids=np.array(users, dtype=object),
        user_emb=rng.standard_normal((len(users), DIM)).astype(np.float32),
        user_origin=np.array(origins, dtype=object),
        item_ids=np.array(items, dtype=object),
        item_emb=rng.standard_normal((len(items), DIM)).astype(np.float32),
        seen=seen_items,
        item_popularity=popularity.astype(np.int64),
    )


def make_transfer_domains(seed: int = 7) -> dict[str, DomainEmbeddings]:
    rng = np.random.default_rng(seed)
    video = _emb(SRC, list(SRC_SEEN), ["warm"] * len(SRC_SEEN), SRC_ITEMS, SRC_SEEN, rng)
    books = _emb(TGT, list(TGT_USERS), [o for o, _ in TGT_USERS.values()], TGT_ITEMS,
                 {u: s for u, (_, s) in TGT_USERS.items()}, rng)
    return {SRC: video, TGT: books}


def make_transfer(domains: dict[str, DomainEmbeddings], seed: int = 11) -> DomainTransfer:
    """Two sparse components (one with negative weights) and a popularity term;
    columns b12..b14 are linked to nothing (ties, broken by position)."""
    rng = np.random.default_rng(seed)
    n_src, n_tgt = len(SRC_ITEMS), len(TGT_ITEMS)

    def component(density: float, signed: bool) -> sp.csr_matrix:
        dense = rng.random((n_src, n_tgt)) * (rng.random((n_src, n_tgt)) < density)
        if signed:
            dense *= rng.choice([-1.0, 1.0], size=dense.shape)
        dense[:, 12:] = 0.0
        return sp.csr_matrix(dense.astype(np.float32))

    popularity = np.zeros(n_tgt, np.float32)
    popularity[[3, 6, 9]] = [5.0, 2.0, 1.0]
    scorer = ItemToItemScorer(
        src_item_ids=domains[SRC].item_ids, tgt_item_ids=domains[TGT].item_ids,
        names=("itemknn", "ridge"), matrices=(component(0.4, False), component(0.5, True)),
        weights=(0.7, 0.3), popularity=popularity, pop_weight=0.05,
    )
    return DomainTransfer(SRC, TGT, scorer)


def write_transfer_artifact(
    root: Path,
    domains: dict[str, DomainEmbeddings],
    transfer: DomainTransfer | None,
    *,
    manifest_transfer: object = "default",
    tamper: Callable[[Path], None] | None = None,
    version: str | None = None,
) -> Artifact:
    """Write an artifact as ``recxfer.pipeline.write_model_artifact`` lays it out
    (exact index, no faiss file). ``tamper(staging_folder)`` edits the files before
    they are checksummed: the artifact is consistent, but wrong."""
    with write_artifact(root, config={}, data_fingerprint="x", version=version) as builder:
        meta = {}
        for name, emb in domains.items():
            save_domain(builder.path, emb)
            meta[name] = {
                "role": "source" if name == SRC else "target",
                "users": len(emb.user_ids), "items": len(emb.item_ids),
                "dim": int(emb.item_emb.shape[1]), "index": {"factory": "Flat", "file": None},
            }
        if transfer is not None:
            save_transfer(builder.path, transfer)
            meta[transfer.target]["transfer"] = {"source": transfer.source}
        builder.extra["domains"] = meta
        if manifest_transfer == "default":
            manifest_transfer = {} if transfer is None else {transfer.target: {"source": transfer.source}}
        if manifest_transfer is not None:
            builder.extra["transfer"] = manifest_transfer
        if tamper is not None:
            tamper(builder.path)
    assert builder.artifact is not None
    return builder.artifact


@pytest.fixture(scope="module")
def tdomains() -> dict[str, DomainEmbeddings]:
    return make_transfer_domains()


@pytest.fixture(scope="module")
def transfer(tdomains) -> DomainTransfer:
    return make_transfer(tdomains)


@pytest.fixture(scope="module")
def troot(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("transfer-artifacts")


@pytest.fixture(scope="module")
def tmodel(troot, tdomains, transfer) -> ServingModel:
    artifact = write_transfer_artifact(troot, tdomains, transfer, version="t1")
    return ServingModel.from_artifact(artifact.path, device="cpu")


@pytest.fixture(scope="module")
def plain_model(troot, tdomains) -> ServingModel:
    """The same domains without a transfer (no ``"transfer"`` manifest key at all)."""
    artifact = write_transfer_artifact(troot, tdomains, None, manifest_transfer=None, version="p1")
    return ServingModel.from_artifact(artifact.path, device="cpu")


def offline_topk(
    transfer: DomainTransfer, history_ids, k, exclude_ids=(), allow_ids=None,
    user_emb=None, item_emb=None,
) -> tuple[list[str], np.ndarray]:
    """What offline evaluation ranks: ``scorer.score`` of the history (with the
    user's ``(d,)`` embedding and the target items' for an embedding term),
    admissible items by score descending, ties by lower position."""
    scorer = transfer.scorer
    src = {str(i): j for j, i in enumerate(scorer.src_item_ids)}
    positions = [src[i] for i in history_ids if i in src]
    user_emb = None if user_emb is None else np.asarray(user_emb, np.float32)[None, :]
    scores = scorer.score(scorer.history_matrix([np.array(positions)]), user_emb, item_emb)[0]
    order = np.argsort(-scores, kind="stable")
    ids = [str(i) for i in scorer.tgt_item_ids]
    order = [j for j in order
             if ids[j] not in set(exclude_ids) and (allow_ids is None or ids[j] in set(allow_ids))][:k]
    return [ids[j] for j in order], scores[order]


def source_history(domains, user_id) -> list[str]:
    return [SRC_ITEMS[j] for j in SRC_SEEN[user_id]]


def target_seen(user_id) -> list[str]:
    return [TGT_ITEMS[j] for j in TGT_USERS[user_id][1]]


def assert_same(rec, ids, scores, origin=UserOrigin.TRANSFER.value):
    assert list(rec.item_ids) == ids
    np.testing.assert_allclose(rec.scores, scores, rtol=0, atol=1e-6)
    assert rec.scores.dtype == np.float32
    assert rec.user_origin == origin


# --- loading ----------------------------------------------------------------------------


def test_transfers_are_loaded_and_aligned(tmodel, plain_model, tdomains):
    assert set(tmodel.transfers) == {TGT} and plain_model.transfers == {}
    loaded = tmodel.transfers[TGT]
    assert (loaded.source, loaded.target) == (SRC, TGT)
    assert list(loaded.scorer.src_item_ids) == SRC_ITEMS
    assert list(loaded.scorer.tgt_item_ids) == TGT_ITEMS


def test_constructor_stays_backward_compatible(plain_model):
    model = ServingModel(plain_model.version, plain_model.domains, plain_model.history_encoder)
    assert model.transfers == {}
    model.self_check()


# --- (a) Recommend of a transfer user -----------------------------------------------------


@pytest.mark.parametrize("k", [1, 4, 15])
def test_transfer_user_equals_offline_scores(tmodel, tdomains, transfer, k):
    ids, scores = offline_topk(transfer, source_history(tdomains, "carol"), k)
    assert len(ids) == k
    assert_same(tmodel.recommend("carol", TGT, k), ids, scores)


def test_ties_are_broken_by_lower_position(tmodel, tdomains, transfer):
    rec = tmodel.recommend("carol", TGT, 15)
    tail = [i for i in rec.item_ids if i in {"b12", "b13", "b14"}]
    assert tail == ["b12", "b13", "b14"]  # all scored 0 by the matrices (pop 0 too)


# --- (b) RecommendFromHistory --------------------------------------------------------------


def test_from_history_equals_the_known_user(tmodel, tdomains, transfer):
    history = source_history(tdomains, "carol")
    ids, scores = offline_topk(transfer, history, 5)
    assert_same(tmodel.recommend_from_history(SRC, history, TGT, 5), ids, scores)
    # unknown ids ignored, duplicates and order do not matter
    noisy = ["zz", history[2], history[0], "b01", history[0], history[1]]
    assert_same(tmodel.recommend_from_history(SRC, noisy, TGT, 5), ids, scores)
    assert_same(tmodel.recommend("carol", TGT, 5), ids, scores)


def test_from_history_has_no_seen_exclusion(tmodel, tdomains, transfer):
    history = source_history(tdomains, "gina")
    ids, scores = offline_topk(transfer, history, 15)
    assert_same(tmodel.recommend_from_history(SRC, history, TGT, 15), ids, scores)
    assert set(target_seen("gina")) <= set(ids)


def test_from_history_errors(tmodel):
    with pytest.raises(UnknownItemError, match="video"):
        tmodel.recommend_from_history(SRC, ["nope", "b01"], TGT, 3)
    # no transfer into video and no inductive encoder
    with pytest.raises(NoHistoryEncoderError, match="no item-to-item transfer into 'video'"):
        tmodel.recommend_from_history(TGT, ["b01"], SRC, 3)


def test_from_history_without_transfer_is_refused(plain_model):
    with pytest.raises(NoHistoryEncoderError, match="no inductive user encoder.*no item-to-item"):
        plain_model.recommend_from_history(SRC, ["v01"], TGT, 3)


# --- (c) everyone else keeps the embedding path --------------------------------------------


@pytest.mark.parametrize("user_id", ["alice", "hank", "ivy"])
@pytest.mark.parametrize("exclude_seen", [True, False])
def test_other_users_keep_embeddings(tmodel, plain_model, tdomains, tools, user_id, exclude_seen):
    got = tmodel.recommend(user_id, TGT, 6, exclude_seen=exclude_seen)
    want = plain_model.recommend(user_id, TGT, 6, exclude_seen=exclude_seen)
    assert list(got.item_ids) == list(want.item_ids)
    np.testing.assert_array_equal(got.scores, want.scores)
    assert got.user_origin == want.user_origin == TGT_USERS[user_id][0]
    emb = tdomains[TGT]
    exclude = tools.seen(emb, user_id) if exclude_seen else set()
    ids, scores = tools.brute(emb, tools.vec(emb, user_id), 6, exclude=exclude)
    assert list(got.item_ids) == ids
    np.testing.assert_allclose(got.scores, scores, rtol=1e-5, atol=1e-6)


def test_source_domain_is_unchanged(tmodel, plain_model):
    for user in SRC_SEEN:
        got, want = tmodel.recommend(user, SRC, 4), plain_model.recommend(user, SRC, 4)
        assert list(got.item_ids) == list(want.item_ids) and got.user_origin == "warm"


# --- (d) filters and k --------------------------------------------------------------------


def test_exclude_seen_for_a_transfer_user(tmodel, tdomains, transfer):
    history, seen = source_history(tdomains, "gina"), target_seen("gina")
    ids, scores = offline_topk(transfer, history, 15, exclude_ids=seen)
    rec = tmodel.recommend("gina", TGT, 15)
    assert_same(rec, ids, scores)
    assert len(ids) == 13 and not set(seen) & set(rec.item_ids)
    ids, scores = offline_topk(transfer, history, 15)
    assert_same(tmodel.recommend("gina", TGT, 15, exclude_seen=False), ids, scores)


def test_deny_and_allow_lists(tmodel, tdomains, transfer):
    history = source_history(tdomains, "carol")
    best = offline_topk(transfer, history, 3)[0]
    deny = (best[0], best[2], "unknown")
    ids, scores = offline_topk(transfer, history, 4, exclude_ids=deny)
    assert_same(tmodel.recommend("carol", TGT, 4, item_filter=ItemFilter(deny=deny)), ids, scores)
    assert_same(tmodel.recommend_from_history(SRC, history, TGT, 4, ItemFilter(deny=deny)), ids, scores)

    allow = ("b13", "b07", "b00", "b07", "nope", "b12")
    ids, scores = offline_topk(transfer, history, 10, allow_ids=allow)
    assert len(ids) == 4  # k capped by the admissible items
    assert_same(tmodel.recommend("carol", TGT, 10, item_filter=ItemFilter(allow=allow)), ids, scores)
    assert_same(tmodel.recommend_from_history(SRC, history, TGT, 10, ItemFilter(allow=allow)),
                ids, scores)
    # allow-list and seen exclusion together
    gina = source_history(tdomains, "gina")
    allow = ("b02", "b03", "b05", "b09")
    ids, scores = offline_topk(transfer, gina, 10, exclude_ids=target_seen("gina"), allow_ids=allow)
    assert ids and set(ids) <= {"b03", "b09"}
    assert_same(tmodel.recommend("gina", TGT, 10, item_filter=ItemFilter(allow=allow)), ids, scores)


def test_k_larger_than_the_catalogue_returns_every_admissible_item(tmodel, tdomains, transfer):
    history = source_history(tdomains, "carol")
    ids, scores = offline_topk(transfer, history, 1000)
    rec = tmodel.recommend("carol", TGT, 1000)
    assert_same(rec, ids, scores)
    assert sorted(rec.item_ids) == TGT_ITEMS
    rec = tmodel.recommend_from_history(SRC, history, TGT, 1000, ItemFilter(deny=("b00",)))
    assert len(rec.item_ids) == 14 and "b00" not in rec.item_ids
    rec = tmodel.recommend("carol", TGT, 5, item_filter=ItemFilter(allow=("nope",)))
    assert len(rec.item_ids) == 0 and rec.user_origin == "transfer"


# --- (e) batch equals single ---------------------------------------------------------------


@dataclass(frozen=True)
class CountingScorer:
    """Wraps a scorer, counting ``score`` calls and their rows."""

    inner: ItemToItemScorer
    calls: list

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def score(self, hist, user_emb=None, item_emb=None, item_emb_t=None):
        self.calls.append(hist.shape[0])
        return self.inner.score(hist, user_emb, item_emb, item_emb_t)


def test_batch_equals_single_and_scores_transfer_users_in_one_call(tmodel):
    queries = [
        RecommendQuery("carol", TGT, 5),
        RecommendQuery("alice", TGT, 3),
        RecommendQuery("gina", TGT, 15),
        RecommendQuery("carol", TGT, 2, item_filter=ItemFilter(deny=("b01", "b03"))),
        RecommendQuery("hank", TGT, 4),
        RecommendQuery("carol", SRC, 3),
        RecommendQuery("gina", TGT, 4, exclude_seen=False, item_filter=ItemFilter(allow=("b02", "b11"))),
        RecommendQuery("ivy", TGT, 2),
        RecommendQuery("nobody", TGT, 2),
    ]
    calls: list[int] = []
    t = tmodel.transfers[TGT]
    counting = replace(tmodel, transfers={TGT: replace(t, scorer=CountingScorer(t.scorer, calls))})
    batch = counting.recommend_many(queries)
    assert calls == [4]  # the four transfer queries of books, one score call
    for query, got in zip(queries, batch):
        if query.user_id == "nobody":
            assert isinstance(got, KeyError)
            continue
        want = tmodel.recommend(query.user_id, query.domain, query.k, query.exclude_seen,
                                query.item_filter)
        assert list(got.item_ids) == list(want.item_ids)
        if got.user_origin == "transfer" and query.domain == TGT and query.user_id in ("carol", "gina"):
            np.testing.assert_array_equal(got.scores, want.scores)  # row-wise sparse maths
        else:  # one batched matmul vs one per query: BLAS may round differently
            np.testing.assert_allclose(got.scores, want.scores, rtol=0, atol=1e-6)
        assert got.user_origin == want.user_origin


@pytest.mark.parametrize("which", ["tmodel", "emb_model"])
def test_large_batches_are_scored_in_chunks(request, monkeypatch, which):
    import recxfer.serve.model as model_module

    tmodel = request.getfixturevalue(which)
    calls: list[int] = []
    t = tmodel.transfers[TGT]
    counting = replace(tmodel, transfers={TGT: replace(t, scorer=CountingScorer(t.scorer, calls))})
    queries = [RecommendQuery(u, TGT, 3) for u in ["carol", "gina"] * 5]
    want = [tmodel.recommend(q.user_id, TGT, 3) for q in queries]
    monkeypatch.setattr(model_module, "TRANSFER_SCORE_BUDGET", 3 * len(TGT_ITEMS))
    calls.clear()
    got = counting.recommend_many(queries)
    assert calls == [3, 3, 3, 1]
    for a, b in zip(got, want):
        assert list(a.item_ids) == list(b.item_ids)
        np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-6)  # dense term: BLAS rounding


# --- (f) a malformed transfer refuses the artifact ------------------------------------------


def _npy(folder: Path, name: str) -> Path:
    return folder / transfer_dir(TGT) / f"{name}.npy"


def _shift_indices(folder: Path) -> None:
    path = _npy(folder, "itemknn_indices")
    indices = np.load(path)
    indices[-1] = len(TGT_ITEMS)  # one past the last target item
    np.save(path, indices)


def _short_indptr(folder: Path) -> None:
    path = _npy(folder, "ridge_indptr")
    np.save(path, np.load(path)[:-1])


def _nan_data(folder: Path) -> None:
    path = _npy(folder, "ridge_data")
    data = np.load(path)
    data[0] = np.nan
    np.save(path, data)


def _meta(**changes) -> Callable[[Path], None]:
    def tamper(folder: Path) -> None:
        path = folder / transfer_dir(TGT) / "meta.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return tamper


def _bad_popularity(folder: Path) -> None:
    np.save(_npy(folder, "popularity"), np.zeros(len(TGT_ITEMS) + 1, np.float32))


CORRUPT = {
    "index out of range": (_shift_indices, "default", "does not fit"),
    "indptr too short": (_short_indptr, "default", "does not fit"),
    "missing component file": (lambda f: _npy(f, "ridge_data").unlink(), "default", "ridge_data"),
    "missing meta": (lambda f: (f / transfer_dir(TGT) / "meta.json").unlink(), "default", "meta.json"),
    "names/weights disagree": (_meta(weights=[1.0]), "default", "names/weights"),
    "unsafe component name": (_meta(names=["../x", "ridge"]), "default", "no file"),
    "meta names another source": (_meta(source="music"), "default", "meta.json names source"),
    "non-finite data": (_nan_data, "default", "non-finite"),
    "non-finite weight": (_meta(weights=[float("nan"), 0.3]), "default", "non-finite"),
    "popularity of the wrong length": (_bad_popularity, "default", "popularity"),
    "manifest not an object": (None, [TGT], "must be an object"),
    "entry without source": (None, {TGT: SRC}, "'source'"),
    "unknown source": (None, {TGT: {"source": "music"}}, "not another served domain"),
    "source is the target": (None, {TGT: {"source": TGT}}, "not another served domain"),
    "unknown target": (None, {"music": {"source": SRC}}, "not a served domain"),
    "listed but no files": ("no-files", "default", "meta.json"),
}


@pytest.mark.parametrize("case", list(CORRUPT), ids=list(CORRUPT))
def test_a_malformed_transfer_refuses_the_artifact(tmp_path, tdomains, transfer, case):
    tamper, manifest_transfer, message = CORRUPT[case]
    if tamper == "no-files":
        artifact = write_transfer_artifact(tmp_path, tdomains, None,
                                           manifest_transfer={TGT: {"source": SRC}})
    else:
        artifact = write_transfer_artifact(tmp_path, tdomains, transfer, tamper=tamper,
                                           manifest_transfer=manifest_transfer)
    with pytest.raises(ArtifactError, match=message):
        ServingModel.from_artifact(artifact.path, device="cpu")


def test_self_check_refuses_a_transfer_that_does_not_fit(tmodel):
    t = tmodel.transfers[TGT]
    wrong = replace(t, scorer=replace(t.scorer, tgt_item_ids=t.scorer.tgt_item_ids[::-1].copy()))
    with pytest.raises(ArtifactError, match="target items"):
        replace(tmodel, transfers={TGT: wrong}).self_check()
    with pytest.raises(ArtifactError, match="not served"):
        replace(tmodel, transfers={SRC: t}).self_check()


def test_empty_transfer_entry_changes_nothing(tmp_path, tdomains, plain_model):
    artifact = write_transfer_artifact(tmp_path, tdomains, None, manifest_transfer={})
    model = ServingModel.from_artifact(artifact.path, device="cpu")
    assert model.transfers == {}
    got, want = model.recommend("carol", TGT, 5), plain_model.recommend("carol", TGT, 5)
    assert list(got.item_ids) == list(want.item_ids)


def test_hot_reload_keeps_the_old_model_on_a_corrupt_transfer(tmp_path, tdomains, transfer):
    good = write_transfer_artifact(tmp_path, tdomains, transfer, version="a1")
    bad = write_transfer_artifact(tmp_path, tdomains, transfer, tamper=_shift_indices, version="a2")
    holder = ModelHolder()
    watcher = ArtifactWatcher(tmp_path, holder,
                              loader=lambda p: ServingModel.from_artifact(p, device="cpu"))
    publish(tmp_path, good.version)
    assert watcher.check_now() and holder.get().version == "a1"
    publish(tmp_path, bad.version)
    assert not watcher.check_now()
    assert holder.get().version == "a1" and "does not fit" in watcher.last_error


# --- (g) over gRPC ------------------------------------------------------------------------


def test_transfer_over_grpc(start_server, tmodel, tdomains, transfer):
    running = start_server(ModelHolder(tmodel))
    history = source_history(tdomains, "carol")
    ids, scores = offline_topk(transfer, history, 5)

    response = running.stub.Recommend(
        pb.RecommendRequest(user_id="carol", domain=TGT, k=5), timeout=TIMEOUT
    )
    assert [item.item_id for item in response.items] == ids
    np.testing.assert_allclose([item.score for item in response.items], scores, rtol=0, atol=1e-6)
    assert response.user_kind == pb.USER_KIND_TRANSFER and response.model_version == "t1"

    response = running.stub.RecommendFromHistory(
        pb.RecommendFromHistoryRequest(source_domain=SRC, source_item_ids=history,
                                       target_domain=TGT, k=5), timeout=TIMEOUT
    )
    assert [item.item_id for item in response.items] == ids
    np.testing.assert_allclose([item.score for item in response.items], scores, rtol=0, atol=1e-6)
    assert response.user_kind == pb.USER_KIND_TRANSFER

    batch = running.stub.BatchRecommend(pb.BatchRecommendRequest(requests=[
        pb.RecommendRequest(user_id="alice", domain=TGT, k=3),
        pb.RecommendRequest(user_id="carol", domain=TGT, k=5),
    ]), timeout=TIMEOUT)
    assert [item.item_id for item in batch.results[1].response.items] == ids
    assert batch.results[0].response.user_kind == pb.USER_KIND_WARM

    with pytest.raises(grpc.RpcError) as info:  # no transfer into video, no encoder
        running.stub.RecommendFromHistory(
            pb.RecommendFromHistoryRequest(source_domain=TGT, source_item_ids=["b01"],
                                           target_domain=SRC, k=3), timeout=TIMEOUT
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no item-to-item transfer into 'video'" in info.value.details()


# --- a transfer with an embedding term (the blend hybrid) ---------------------------------

EMB_WEIGHT = 0.4


@pytest.fixture(scope="module")
def emb_transfer(transfer) -> DomainTransfer:
    return replace(transfer, scorer=replace(transfer.scorer, embedding_weight=EMB_WEIGHT))


@pytest.fixture(scope="module")
def emb_model(troot, tdomains, emb_transfer) -> ServingModel:
    artifact = write_transfer_artifact(troot, tdomains, emb_transfer, version="e1")
    return ServingModel.from_artifact(artifact.path, device="cpu")


def _row(emb: DomainEmbeddings, user_id: str) -> int:
    return list(emb.user_ids).index(user_id)


def test_embedding_weight_round_trips(emb_model, tdomains):
    assert emb_model.transfers[TGT].scorer.embedding_weight == pytest.approx(EMB_WEIGHT)
    # the serving model keeps the target's item table transposed for the term's product
    item_emb_t = emb_model.transfers[TGT].item_emb_t
    assert item_emb_t.flags.c_contiguous and item_emb_t.dtype == np.float32
    np.testing.assert_array_equal(item_emb_t, tdomains[TGT].item_emb.T)


def test_no_transposed_table_without_an_embedding_term(tmp_path, tdomains, transfer):
    artifact = write_transfer_artifact(tmp_path, tdomains, transfer, version="n1")
    assert ServingModel.from_artifact(artifact.path, device="cpu").transfers[TGT].item_emb_t is None


@pytest.mark.parametrize("user_id", ["carol", "gina"])
def test_embedding_term_uses_the_users_target_embedding(emb_model, tdomains, emb_transfer, user_id):
    books = tdomains[TGT]
    ids, scores = offline_topk(emb_transfer, source_history(tdomains, user_id), 15,
                               exclude_ids=target_seen(user_id),
                               user_emb=books.user_emb[_row(books, user_id)], item_emb=books.item_emb)
    assert_same(emb_model.recommend(user_id, TGT, 15), ids, scores)
    # and the term matters here: without it the ranking differs
    assert ids != offline_topk(emb_transfer, source_history(tdomains, user_id), 15,
                               exclude_ids=target_seen(user_id), user_emb=np.zeros(DIM, np.float32),
                               item_emb=books.item_emb)[0]


def test_embedding_term_batch_equals_single(emb_model):
    queries = [RecommendQuery(u, TGT, 4) for u in ("gina", "alice", "carol", "hank")]
    for query, got in zip(queries, emb_model.recommend_many(queries)):
        want = emb_model.recommend(query.user_id, TGT, 4)
        assert list(got.item_ids) == list(want.item_ids) and got.user_origin == want.user_origin
        np.testing.assert_allclose(got.scores, want.scores, rtol=0, atol=1e-6)


def test_from_history_embedding_term_comes_from_the_history_encoder(emb_model, tdomains, emb_transfer):
    from recxfer.serve.history import HistoryEncoder

    video, books = tdomains[SRC], tdomains[TGT]
    history = ["v07", "v01", "zz", "v04"]
    pooled = video.item_emb[[7, 1, 4]].mean(axis=0)
    ids, scores = offline_topk(emb_transfer, history, 6, user_emb=pooled, item_emb=books.item_emb)
    model = replace(emb_model, history_encoder=HistoryEncoder("mean", 50))
    assert_same(model.recommend_from_history(SRC, history, TGT, 6), ids, scores)


def test_from_history_without_encoder_leaves_the_embedding_term_out(emb_model, tdomains, transfer):
    history = source_history(tdomains, "carol")
    ids, scores = offline_topk(transfer, history, 6)  # the same scorer, embedding_weight 0
    assert_same(emb_model.recommend_from_history(SRC, history, TGT, 6), ids, scores)


def test_non_finite_embedding_weight_is_refused(tmp_path, tdomains, emb_transfer):
    artifact = write_transfer_artifact(tmp_path, tdomains, emb_transfer,
                                       tamper=_meta(embedding_weight=float("inf")))
    with pytest.raises(ArtifactError, match="non-finite"):
        ServingModel.from_artifact(artifact.path, device="cpu")


def test_embedding_transfer_over_grpc(start_server, emb_model, tdomains, emb_transfer):
    books = tdomains[TGT]
    running = start_server(ModelHolder(emb_model))
    ids, scores = offline_topk(emb_transfer, source_history(tdomains, "carol"), 5,
                               user_emb=books.user_emb[_row(books, "carol")], item_emb=books.item_emb)
    response = running.stub.Recommend(
        pb.RecommendRequest(user_id="carol", domain=TGT, k=5), timeout=TIMEOUT
    )
    assert [item.item_id for item in response.items] == ids
    np.testing.assert_allclose([item.score for item in response.items], scores, rtol=0, atol=1e-6)


# --- a transfer with a dae term (the blend's history-to-target network) --------------------

DAE_WEIGHT = 0.6


@pytest.fixture(scope="module")
def dae_transfer(transfer) -> DomainTransfer:
    rng = np.random.default_rng(5)
    hidden = 3
    dae = DAEScorer(rng.normal(size=(len(SRC_ITEMS), hidden)).astype(np.float32),
                    rng.normal(size=hidden).astype(np.float32),
                    rng.normal(size=(len(TGT_ITEMS), hidden)).astype(np.float32),
                    rng.normal(size=len(TGT_ITEMS)).astype(np.float32))
    return replace(transfer, scorer=replace(transfer.scorer, dae=dae, dae_weight=DAE_WEIGHT))


@pytest.fixture(scope="module")
def dae_model(troot, tdomains, dae_transfer) -> ServingModel:
    artifact = write_transfer_artifact(troot, tdomains, dae_transfer, version="d1")
    return ServingModel.from_artifact(artifact.path, device="cpu")


def test_dae_term_round_trips(dae_model, dae_transfer):
    loaded = dae_model.transfers[TGT].scorer
    assert loaded.dae_weight == pytest.approx(DAE_WEIGHT)
    for name, array in dae_transfer.scorer.dae.arrays.items():
        np.testing.assert_array_equal(loaded.dae.arrays[name], array, err_msg=name)


@pytest.mark.parametrize("user_id", ["carol", "gina"])
def test_dae_term_served_equals_offline(dae_model, tdomains, dae_transfer, transfer, user_id):
    history = source_history(tdomains, user_id)
    ids, scores = offline_topk(dae_transfer, history, 15, exclude_ids=target_seen(user_id))
    assert_same(dae_model.recommend(user_id, TGT, 15), ids, scores)
    ids, scores = offline_topk(dae_transfer, history, 6)
    assert_same(dae_model.recommend_from_history(SRC, history, TGT, 6), ids, scores)
    # and the term matters: without it the ranking differs
    assert ids != offline_topk(transfer, history, 6)[0]


def _dae_file(name: str, change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def tamper(folder: Path) -> None:
        path = _npy(folder, f"dae_{name}")
        np.save(path, change(np.load(path)))
    return tamper


def _first_nan(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flat[0] = np.nan
    return a


DAE_CORRUPT = {
    "missing dae file": (lambda f: _npy(f, "dae_w_out").unlink(), "dae_w_out"),
    "dae over another catalogue": (_dae_file("w_in", lambda a: a[:-1]), "dae network maps"),
    "dae hidden sizes disagree": (_dae_file("b_in", lambda a: a[:-1]), "shapes do not fit"),
    "non-finite dae": (_dae_file("w_out", _first_nan), "non-finite"),
    "non-finite dae weight": (_meta(dae_weight=float("nan")), "non-finite"),
}


@pytest.mark.parametrize("case", list(DAE_CORRUPT), ids=list(DAE_CORRUPT))
def test_a_malformed_dae_term_refuses_the_artifact(tmp_path, tdomains, dae_transfer, case):
    tamper, message = DAE_CORRUPT[case]
    artifact = write_transfer_artifact(tmp_path, tdomains, dae_transfer, tamper=tamper)
    with pytest.raises(ArtifactError, match=message):
        ServingModel.from_artifact(artifact.path, device="cpu")


# --- a transfer with a head (one component's top items lead the list) ------------------------


@pytest.fixture(scope="module")
def head_transfer(transfer) -> DomainTransfer:
    """ridge (weight 0.3 of the blend) leads with its 3 best items."""
    return replace(transfer, scorer=replace(transfer.scorer, head="ridge", head_size=3))


@pytest.fixture(scope="module")
def head_model(troot, tdomains, head_transfer) -> ServingModel:
    artifact = write_transfer_artifact(troot, tdomains, head_transfer, version="h1")
    return ServingModel.from_artifact(artifact.path, device="cpu")


def test_head_round_trips(head_model):
    loaded = head_model.transfers[TGT].scorer
    assert (loaded.head, loaded.head_size) == ("ridge", 3)


@pytest.mark.parametrize("user_id", ["carol", "gina"])
def test_head_served_equals_offline(head_model, tdomains, head_transfer, transfer, user_id):
    history = source_history(tdomains, user_id)
    ids, scores = offline_topk(head_transfer, history, 15, exclude_ids=target_seen(user_id))
    assert_same(head_model.recommend(user_id, TGT, 15), ids, scores)
    ids, scores = offline_topk(head_transfer, history, 6)
    assert_same(head_model.recommend_from_history(SRC, history, TGT, 6), ids, scores)
    # the head leads: ridge's own best items (positive ones) come first
    ridge = replace(transfer.scorer, names=("ridge",), matrices=(transfer.scorer.matrices[1],), weights=(1.0,),
                    pop_weight=0.0)
    ridge_ids, ridge_scores = offline_topk(DomainTransfer(SRC, TGT, ridge), history, 3)
    lead = [i for i, s in zip(ridge_ids, ridge_scores) if s > 0]
    assert lead and ids[:len(lead)] == lead
    assert ids != offline_topk(transfer, history, 6)[0]  # and it changes the list


@pytest.mark.parametrize("meta,message", [({"head": "nope", "head_size": 2}, "head"),
                                          ({"head": "ridge", "head_size": -1}, "head")],
                         ids=["unknown component", "negative size"])
def test_a_malformed_head_refuses_the_artifact(tmp_path, tdomains, head_transfer, meta, message):
    artifact = write_transfer_artifact(tmp_path, tdomains, head_transfer, tamper=_meta(**meta))
    with pytest.raises(ArtifactError, match=message):
        ServingModel.from_artifact(artifact.path, device="cpu")
