"""``recxfer recommend`` / ``recxfer.serve.bulk``: batch answers equal the serving
model's unary answers (warm, transfer and history users), the seen-item exclusion
holds, CSV and Parquet, and refused runs leave no output file. Also ``recxfer
query`` reaching BatchRecommend and RecommendFromHistory.

Uses the hand-made domains of ``conftest.py`` (video: 12 items, books: 20 items;
in books alice/bob/erin are warm, carol is a cold ``transfer`` user with a video
history) plus, built here, the same domains with an item-to-item transfer
video -> books, and with a mean-pooling history encoder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recxfer.artifacts import Artifact, publish, save_domain, save_transfer, write_artifact
from recxfer.cli import EXIT_BAD_INPUT, EXIT_OK, main
from recxfer.serve import ModelHolder, ServingModel
from recxfer.serve.bulk import (
    BulkInputError,
    read_histories,
    read_user_ids,
    recommend_histories_to_file,
    recommend_users_to_file,
)
from recxfer.serve.model import UnknownItemError
from recxfer.types import DomainEmbeddings, DomainTransfer, ItemToItemScorer

SRC, TGT = "video", "books"


def _write(
    root: Path, domains: dict[str, DomainEmbeddings], version: str, *,
    transfer: DomainTransfer | None = None, encoder: bool = False,
) -> Artifact:
    """An exact-index artifact laid out as the pipeline writes it."""
    with write_artifact(root, config={}, data_fingerprint="x", version=version) as builder:
        meta = {}
        for name, emb in domains.items():
            save_domain(builder.path, emb)
            meta[name] = {"role": "source" if name == SRC else "target", "users": len(emb.user_ids),
                          "items": len(emb.item_ids), "dim": int(emb.item_emb.shape[1]),
                          "index": {"factory": "Flat", "file": None}}
        if transfer is not None:
            save_transfer(builder.path, transfer)
            meta[TGT]["transfer"] = {"source": SRC}
            builder.extra["transfer"] = {TGT: {"source": SRC}}
        if encoder:
            builder.extra["user_encoder"] = {"inductive": True, "method": "shared",
                                             "pooling": "mean", "max_history": 50}
        builder.extra["domains"] = meta
    assert builder.artifact is not None
    return builder.artifact


def _transfer(domains: dict[str, DomainEmbeddings], seed: int = 3) -> DomainTransfer:
    rng = np.random.default_rng(seed)
    n_src, n_tgt = len(domains[SRC].item_ids), len(domains[TGT].item_ids)

    def component(density: float) -> sp.csr_matrix:
        dense = rng.random((n_src, n_tgt)) * (rng.random((n_src, n_tgt)) < density)
        return sp.csr_matrix(dense.astype(np.float32))

    popularity = rng.random(n_tgt).astype(np.float32)
    scorer = ItemToItemScorer(
        src_item_ids=domains[SRC].item_ids, tgt_item_ids=domains[TGT].item_ids,
        names=("itemknn", "ridge"), matrices=(component(0.5), component(0.4)),
        weights=(0.6, 0.4), popularity=popularity, pop_weight=0.05,
    )
    return DomainTransfer(SRC, TGT, scorer)


@pytest.fixture(scope="module")
def transfer_artifact(tmp_path_factory, domains) -> Artifact:
    return _write(tmp_path_factory.mktemp("bulk-transfer"), domains, "bt1", transfer=_transfer(domains))


@pytest.fixture(scope="module")
def transfer_model(transfer_artifact) -> ServingModel:
    return ServingModel.from_artifact(transfer_artifact.path, device="cpu")


@pytest.fixture(scope="module")
def encoder_model(tmp_path_factory, domains) -> ServingModel:
    root = tmp_path_factory.mktemp("bulk-encoder")
    artifact = _write(root, domains, "be1", encoder=True)
    return ServingModel.from_artifact(artifact.path, device="cpu")


def read_out(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    else:
        frame = pd.read_csv(path, dtype={"user_id": str, "item_id": str}, keep_default_na=False)
    assert list(frame.columns) == ["user_id", "rank", "item_id", "score"]
    return frame


def assert_rows_equal_unary(frame: pd.DataFrame, expected: dict[str, object]) -> None:
    """``expected``: user -> ``Recommendation``; rows in user order, ranks 1..k'."""
    assert list(dict.fromkeys(frame["user_id"])) == list(expected)
    for user, rec in expected.items():
        rows = frame[frame["user_id"] == user]
        assert rows["rank"].tolist() == list(range(1, len(rec.item_ids) + 1))
        assert rows["item_id"].tolist() == [str(i) for i in rec.item_ids]
        np.testing.assert_allclose(rows["score"].to_numpy(np.float32), rec.scores, rtol=0, atol=1e-6)


def no_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- known users ----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
@pytest.mark.parametrize("exclude_seen", [True, False])
def test_all_users_equal_the_unary_answers(model, tmp_path, suffix, exclude_seen):
    out = tmp_path / f"recs{suffix}"
    summary = recommend_users_to_file(model, TGT, None, 5, out, exclude_seen=exclude_seen,
                                      batch_size=3)  # 4 users: two batches
    users = [str(u) for u in model.domains[TGT].emb.user_ids]
    expected = {u: model.recommend(u, TGT, 5, exclude_seen) for u in users}
    frame = read_out(out)
    assert_rows_equal_unary(frame, expected)
    assert (summary.users, summary.rows, summary.skipped) == (4, len(frame), ())
    assert summary.model_version == model.version
    assert no_leftovers(tmp_path) == [out.name]


def test_seen_items_are_excluded(model, domains, tools, tmp_path):
    out = tmp_path / "recs.parquet"
    recommend_users_to_file(model, TGT, ["alice", "erin"], 10, out)
    frame = read_out(out)
    for user in ("alice", "erin"):
        assert not set(frame[frame.user_id == user].item_id) & tools.seen(domains[TGT], user)
    assert (frame.user_id == "erin").sum() == 3  # only 3 of her 20 items are admissible
    recommend_users_to_file(model, TGT, ["alice"], 10, out, exclude_seen=False)
    assert set(read_out(out).item_id) & tools.seen(domains[TGT], "alice")


def test_transfer_and_warm_users_go_the_servers_way(transfer_model, tmp_path):
    out = tmp_path / "recs.csv"
    recommend_users_to_file(transfer_model, TGT, ["carol", "alice"], 7, out, batch_size=1)
    expected = {u: transfer_model.recommend(u, TGT, 7) for u in ("carol", "alice")}
    assert expected["carol"].user_origin == "transfer"  # scored by the item-to-item transfer
    assert_rows_equal_unary(read_out(out), expected)


def test_filters_apply_as_in_recommend(model, tmp_path):
    from recxfer.serve import ItemFilter

    out = tmp_path / "recs.parquet"
    deny = ItemFilter(deny=("b00", "b01", "b02", "b03"))
    recommend_users_to_file(model, TGT, ["bob"], 6, out, item_filter=deny)
    assert_rows_equal_unary(read_out(out), {"bob": model.recommend("bob", TGT, 6, True, deny)})


def test_matches_the_real_server(served, model, tmp_path):
    from recxfer.serve.client import RecommendArgs, RecommenderClient

    out = tmp_path / "recs.parquet"
    recommend_users_to_file(model, TGT, ["alice", "bob", "carol"], 4, out)
    frame = read_out(out)
    with RecommenderClient(served.address) as client:
        answers = client.batch_recommend([RecommendArgs(u, TGT, 4) for u in ("alice", "bob", "carol")])
    for user, answer in zip(("alice", "bob", "carol"), answers):
        rows = frame[frame.user_id == user]
        assert rows.item_id.tolist() == answer.item_ids
        np.testing.assert_allclose(rows.score.to_numpy(), answer.scores, rtol=0, atol=1e-6)


# --- histories ------------------------------------------------------------------------


def test_histories_equal_recommend_from_history(transfer_model, encoder_model, domains, tmp_path):
    histories = tmp_path / "histories.csv"
    pd.DataFrame({
        "user_id": ["n1", "n1", "n2", "n1", "n3", "n3", "n2"],
        "item_id": ["v03", "b01", "v07", "v00", "zz", "v11", "v02"],  # b01 is a book: unknown
        "domain": ["video", "books", "video", "video", "video", "video", "video"],
    }).to_csv(histories, index=False)
    read = read_histories(histories, SRC)
    assert read == {"n1": ["v03", "v00"], "n2": ["v07", "v02"], "n3": ["zz", "v11"]}
    for model in (transfer_model, encoder_model):
        for suffix in (".parquet", ".csv"):
            out = tmp_path / f"hist-{model.version}{suffix}"
            summary = recommend_histories_to_file(model, read, SRC, TGT, 6, out, batch_size=2)
            expected = {u: model.recommend_from_history(SRC, h, TGT, 6) for u, h in read.items()}
            assert_rows_equal_unary(read_out(out), expected)
            assert summary.users == 3


def test_a_known_cold_users_history_gives_its_recommend_answer(transfer_model, domains):
    """The transfer scores carol's stored video history: the history path agrees."""
    history = [str(i) for i in domains[SRC].item_ids[domains[SRC].seen.row(2)]]  # carol
    (batch,) = transfer_model.recommend_from_histories(SRC, [history], TGT, 5)
    unary = transfer_model.recommend("carol", TGT, 5)
    assert list(batch.item_ids) == list(unary.item_ids)


def test_batched_histories_equal_one_by_one(transfer_model, encoder_model):
    histories = [["v01", "v05"], ["nope"], ["v09"], ["v02", "v02", "v04"]]
    for model in (transfer_model, encoder_model):
        results = model.recommend_from_histories(SRC, histories, TGT, 4)
        assert isinstance(results[1], UnknownItemError)
        for history, result in zip(histories, results):
            if history != ["nope"]:
                unary = model.recommend_from_history(SRC, history, TGT, 4)
                assert list(result.item_ids) == list(unary.item_ids)
                np.testing.assert_allclose(result.scores, unary.scores, rtol=0, atol=1e-6)


def test_unknown_histories_and_an_artifact_without_encoder(model, transfer_model, tmp_path):
    out = tmp_path / "h.parquet"
    histories = {"n1": ["v01"], "n2": ["zz"]}
    with pytest.raises(BulkInputError, match=r"1 of 2 users have no item known .*'n2'"):
        recommend_histories_to_file(transfer_model, histories, SRC, TGT, 3, out)
    assert not out.exists()
    summary = recommend_histories_to_file(transfer_model, histories, SRC, TGT, 3, out,
                                          skip_unknown=True)
    assert summary.skipped == ("n2",) and set(read_out(out).user_id) == {"n1"}
    out2 = tmp_path / "h2.parquet"
    with pytest.raises(BulkInputError, match="encoder"):
        recommend_histories_to_file(model, {"n1": ["v01"]}, SRC, TGT, 3, out2)
    assert no_leftovers(tmp_path) == ["h.parquet"]


# --- refused runs leave nothing -------------------------------------------------------


def test_unknown_users_are_listed_and_nothing_is_written(model, tmp_path):
    out = tmp_path / "recs.parquet"
    users = ["alice", "x1", "x2", "bob", "x3", "x4", "x5", "x6", "x7"]
    with pytest.raises(BulkInputError) as info:
        recommend_users_to_file(model, TGT, users, 3, out)
    message = str(info.value)
    assert "7 of 9 users are unknown in domain 'books'" in message
    assert "'x1', 'x2', 'x3', 'x4', 'x5' and 2 more" in message and "skip-unknown" in message
    assert no_leftovers(tmp_path) == []
    summary = recommend_users_to_file(model, TGT, users, 3, out, skip_unknown=True)
    assert summary.skipped == ("x1", "x2", "x3", "x4", "x5", "x6", "x7")
    assert list(dict.fromkeys(read_out(out).user_id)) == ["alice", "bob"]


@pytest.mark.parametrize("k", [0, -1, 1001])
def test_k_out_of_range_is_refused(model, tmp_path, k):
    out = tmp_path / "recs.csv"
    with pytest.raises(BulkInputError, match=r"k: must be in \[1, 1000\]"):
        recommend_users_to_file(model, TGT, None, k, out)
    with pytest.raises(BulkInputError, match=r"k: must be in \[1, 5\]"):
        recommend_users_to_file(model, TGT, None, 6, out, max_k=5)
    assert no_leftovers(tmp_path) == []


def test_bad_domain_and_output_suffix(model, tmp_path):
    with pytest.raises(BulkInputError, match="domain: unknown domain 'music'"):
        recommend_users_to_file(model, "music", None, 3, tmp_path / "r.csv")
    with pytest.raises(BulkInputError, match=r"\.parquet or \.csv"):
        recommend_users_to_file(model, TGT, None, 3, tmp_path / "r.json")
    assert no_leftovers(tmp_path) == []


def test_an_error_mid_run_keeps_the_old_file_and_removes_the_temporary(model, tmp_path, monkeypatch):
    out = tmp_path / "recs.parquet"
    out.write_bytes(b"previous")
    calls = []
    original = ServingModel.recommend_many

    def failing(self, queries, popularity_fallback=False):
        calls.append(len(queries))
        if len(calls) == 2:
            raise RuntimeError("boom")
        return original(self, queries, popularity_fallback)

    monkeypatch.setattr(ServingModel, "recommend_many", failing)
    with pytest.raises(RuntimeError, match="boom"):
        recommend_users_to_file(model, TGT, None, 3, out, batch_size=2)
    assert out.read_bytes() == b"previous"
    assert no_leftovers(tmp_path) == ["recs.parquet"]


def test_read_user_ids_formats(tmp_path):
    (tmp_path / "u.txt").write_text("alice\n\nbob\nalice\n 007 \n")
    assert read_user_ids(tmp_path / "u.txt") == ["alice", "bob", "007"]
    pd.DataFrame({"user_id": ["007", "NA", "bob"]}).to_csv(tmp_path / "u.csv", index=False)
    assert read_user_ids(tmp_path / "u.csv") == ["007", "NA", "bob"]  # ids stay strings
    pd.DataFrame({"user_id": [7, 8]}).to_parquet(tmp_path / "u.parquet")
    assert read_user_ids(tmp_path / "u.parquet") == ["7", "8"]
    pd.DataFrame({"user": ["a"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(BulkInputError, match="no column"):
        read_user_ids(tmp_path / "bad.csv")


def test_histories_timestamp_orders_oldest_first(tmp_path):
    path = tmp_path / "h.parquet"
    pd.DataFrame({"user_id": ["b", "a", "a", "b"], "item_id": ["v1", "v2", "v3", "v4"],
                  "timestamp": [5, 9, 1, 2]}).to_parquet(path)
    assert read_histories(path) == {"b": ["v4", "v1"], "a": ["v3", "v2"]}


# --- the CLI --------------------------------------------------------------------------


def test_cli_recommend_from_a_root(make_artifact, domains, tmp_path, capsys):
    root = tmp_path / "root"
    artifact = make_artifact(root, domains, version="r1")  # faiss index, as the pipeline
    publish(root, artifact.version)
    model = ServingModel.from_artifact(root / "current")
    out = tmp_path / "out" / "recs.parquet"
    users = tmp_path / "users.txt"
    users.write_text("carol\nalice\n")
    code = main(["recommend", "--artifacts", str(root), "--domain", TGT, "--k", "4",
                 "--users", str(users), "--out", str(out), "--no-progress"])
    assert code == EXIT_OK
    assert "wrote" in capsys.readouterr().out
    assert_rows_equal_unary(read_out(out), {u: model.recommend(u, TGT, 4) for u in ("carol", "alice")})


def test_cli_recommend_allow_and_deny_together(make_artifact, domains, tmp_path):
    root = tmp_path / "root"
    artifact = make_artifact(root, domains, version="r1")
    publish(root, artifact.version)
    model = ServingModel.from_artifact(root / "current")
    first = [str(i) for i in model.recommend("alice", TGT, 6).item_ids]
    allow, deny = first[:5], first[:2]  # allowed and not denied: first[2:5]
    out = tmp_path / "recs.csv"
    users = tmp_path / "users.txt"
    users.write_text("alice\n")
    code = main(["recommend", "--artifacts", str(root), "--domain", TGT, "--k", "3", "--users", str(users),
                 "--allow", ",".join(allow), "--deny", ",".join(deny), "--out", str(out), "--no-progress"])
    assert code == EXIT_OK
    assert list(read_out(out)["item_id"]) == first[2:5]


def test_cli_recommend_histories_and_errors(transfer_artifact, transfer_model, tmp_path, capsys):
    path = transfer_artifact.path
    histories = tmp_path / "h.csv"
    pd.DataFrame({"user_id": ["n1", "n1"], "item_id": ["v01", "v04"]}).to_csv(histories, index=False)
    out = tmp_path / "h.csv.out.csv"
    base = ["recommend", "--artifact", str(path), "--domain", TGT, "--out", str(out), "--no-progress"]
    assert main(base + ["--k", "3", "--histories", str(histories), "--source-domain", SRC]) == EXIT_OK
    assert_rows_equal_unary(read_out(out), {"n1": transfer_model.recommend_from_history(
        SRC, ["v01", "v04"], TGT, 3)})
    out.unlink()
    capsys.readouterr()
    for extra, message in [
        (["--k", "0", "--all-users"], "k: must be in [1, 1000], got 0"),
        (["--k", "3", "--histories", str(histories)], "--histories and --source-domain go together"),
        (["--k", "3", "--histories", str(histories), "--source-domain", SRC, "--exclude-seen"],
         "does not apply to --histories"),
    ]:
        assert main(base + extra) == EXIT_BAD_INPUT
        assert message in capsys.readouterr().err
        assert not out.exists()
    users = tmp_path / "users.txt"
    users.write_text("alice\nghost\n")
    assert main(base + ["--k", "3", "--users", str(users)]) == EXIT_BAD_INPUT
    assert "'ghost'" in capsys.readouterr().err and not out.exists()
    assert main(base + ["--k", "3", "--users", str(users), "--skip-unknown"]) == EXIT_OK
    assert "skipped 1 unknown users ('ghost')" in capsys.readouterr().err
    assert set(read_out(out).user_id) == {"alice"}


# --- recxfer query: every RPC ---------------------------------------------------------


def test_query_users_is_batch_recommend(served, model, capsys):
    code = main(["query", "--address", served.address, "--users", "alice,carol", "--domain", TGT,
                 "--k", "3"])
    assert code == EXIT_OK
    answer = json.loads(capsys.readouterr().out)
    assert answer["model_version"] == model.version
    assert [r["user_id"] for r in answer["results"]] == ["alice", "carol"]
    for entry in answer["results"]:
        rec = model.recommend(entry["user_id"], TGT, 3)
        assert [i["item_id"] for i in entry["items"]] == list(rec.item_ids)
        assert entry["user_kind"] == rec.user_origin
    code = main(["query", "--address", served.address, "--users", "alice,ghost", "--domain", TGT])
    assert code == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    entries = json.loads(captured.out)["results"]
    assert entries[1]["error"]["code"] == "NOT_FOUND" and "ghost" in entries[1]["error"]["message"]
    assert "1 of 2 requests failed" in captured.err


def test_query_history_is_recommend_from_history(start_server, transfer_model, capsys):
    running = start_server(ModelHolder(transfer_model))
    code = main(["query", "--address", running.address, "--history", "v01,v04,zz",
                 "--source-domain", SRC, "--domain", TGT, "--k", "4"])
    assert code == EXIT_OK
    answer = json.loads(capsys.readouterr().out)
    rec = transfer_model.recommend_from_history(SRC, ["v01", "v04", "zz"], TGT, 4)
    assert [i["item_id"] for i in answer["items"]] == list(rec.item_ids)
    assert answer["user_kind"] == "transfer"
    assert main(["query", "--address", running.address, "--history", "v01", "--domain", TGT]) \
        == EXIT_BAD_INPUT
    assert "--history and --source-domain go together" in capsys.readouterr().err
    assert main(["query", "--address", running.address, "--user", "a", "--item", "b",
                 "--domain", TGT]) == EXIT_BAD_INPUT
    assert "got --user and --item" in capsys.readouterr().err
