"""The nightly job end to end on data_samples/, in process (small, fast config).

Night 1 trains from scratch on the users below u01800 (``day1.csv``); night 2 reads
``day1.csv`` plus a folder of Parquet partitions with 200 new users, warm-starts
from night 1's production artifact, compares with it on the same split and
publishes. The other tests start from a copy of that artifacts root.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recxfer.artifacts import (
    CURRENT,
    RootLock,
    current_version,
    list_versions,
    read_artifact,
    read_lock,
)
from recxfer.nightly import (
    EXIT_BAD_INPUT,
    EXIT_GATED,
    EXIT_LOCKED,
    EXIT_OK,
    nightly_config_from_dict,
    nightly_main,
    rollback_production,
    run_nightly,
)
from recxfer.nightly.job import REPORT_HTML, REPORTS_DIR, WORK_DIR
from recxfer.serve import ServingModel

SAMPLES = Path(__file__).resolve().parents[2] / "data_samples"
# The MF + EMCDR method: it exercises warm start and per-domain checkpoints.
FAST = {"method": "emcdr", "train": {"mf": {"epochs": 2, "dim": 16, "batch_size": 256, "lr": 0.05},
                  "emcdr": {"epochs": 30, "hidden": 32}},
        "nightly": {"report_ks": [5, 10, 50], "torch_threads": 1}}
# Random embeddings: the mapping has nothing to learn, so the gate must stop it.
REGRESSED = {"method": "emcdr", "train": {"mf": {"epochs": 0, "dim": 16}, "emcdr": {"epochs": 30, "hidden": 32}},
             "nightly": {"warm_start": False, "interactions": ["day1.csv", "day2"],
                         "report_ks": [5, 10, 50], "torch_threads": 1}}


def _config(data: dict, **nightly) -> dict:
    return {**data, "nightly": {**data.get("nightly", {}), **nightly}}


def _write(tmp: Path, data: dict) -> Path:
    path = tmp / "config.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data_samples as a day-1 CSV and a day-2 folder of Parquet partitions."""
    out = tmp_path_factory.mktemp("data")
    frame = pd.read_csv(SAMPLES / "interactions.csv", dtype=str)
    new = frame["user_id"] >= "u01800"
    frame[~new].to_csv(out / "day1.csv", index=False)
    (out / "day2").mkdir()
    day2 = frame[new].astype({"timestamp": "int64"})
    half = len(day2) // 2
    day2.iloc[:half].to_parquet(out / "day2" / "part-0.parquet", index=False)
    day2.iloc[half:].to_parquet(out / "day2" / "part-1.parquet", index=False)
    shutil.copy(SAMPLES / "items.csv", out / "items.csv")
    return out


@pytest.fixture(scope="module")
def nights(data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("artifacts")
    first = run_nightly(data_dir, root, nightly_config_from_dict(_config(FAST, interactions=["day1.csv"])))
    # A killed earlier run left a staging folder; the next run clears it under the lock.
    (root / ".staging-20000101T000000Z-0000-000000-xyz").mkdir()
    (root / WORK_DIR / "0123456789abcdef" / "checkpoints").mkdir(parents=True)
    second = run_nightly(
        data_dir, root, nightly_config_from_dict(_config(FAST, interactions=["day1.csv", "day2"]))
    )
    return root, first, second


def _copy_root(root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "artifacts"
    shutil.copytree(root, copy, symlinks=True)
    return copy


def test_first_night_publishes_from_scratch(nights) -> None:
    root, first, _ = nights
    assert first.status == "published" and first.exit_code == EXIT_OK
    assert first.production is None and "first publish" in first.decision.reason
    assert set(first.results) == {"cold_start", "warm"}
    assert "production" not in first.results["cold_start"]["books"]


def test_second_night_warm_starts_compares_and_publishes(nights) -> None:
    root, first, second = nights
    assert second.status == "published" and second.production == first.version
    assert current_version(root) == second.version == second.run_id
    assert list_versions(root) == [first.version, second.version]
    for group in ("cold_start", "warm"):
        for target in ("books", "music"):
            methods = second.results[group][target]
            assert set(methods) == {"model", "production", "popularity"}
            assert methods["model"]["known_users"] == methods["model"]["users"]
            # the new model on every held-out row; the comparison on fewer (see below)
            assert set(second.evaluated[group][target]) == {"model", "popularity"}
            assert second.evaluated[group][target]["model"]["users"] > methods["model"]["users"]
    # Production was refit on every day-1 row: only day-2 users' rows are new to it,
    # and it knows none of those users (scored by its popularity ranking).
    prod_books = second.results["warm"]["books"]["production"]
    assert prod_books["known_users"] == 0 < prod_books["users"]
    checks = second.decision.checks
    assert len(checks) == 4 and all(c.passed for c in checks)
    assert second.resumed_from == {"video": 0, "books": 0, "music": 0}
    # Timings of every step.
    assert set(second.timings) >= {"ingest", "production", "split", "train", "evaluate", "gate",
                                   "report", "publish", "finish", "total"}


def test_published_artifact_links_its_report_and_serves(nights) -> None:
    root, first, second = nights
    artifact = read_artifact(root / CURRENT)  # every checksum, the report's included
    manifest = artifact.manifest
    assert manifest["report"] == {"html": REPORT_HTML, "metrics": "report/metrics.json"}
    page = artifact.file(REPORT_HTML).read_text()
    assert page.count("data:image/png;base64,") == 5 and second.run_id in page
    assert "Model selection" in page and "no validation for this method" in page  # emcdr
    metrics = json.loads(artifact.file("report/metrics.json").read_text())
    assert metrics["gate"]["passed"] and metrics["production"] == first.version
    nightly = manifest["nightly"]
    assert nightly["warm_start_from"] == first.version and nightly["gate"]["publish"]
    assert manifest["metrics"]["warm"]["books"]["model"]["recall@50"] == pytest.approx(
        second.evaluated["warm"]["books"]["model"]["recall@50"]
    )
    assert nightly["comparison"]["warm"]["books"]["production"]["recall@50"] == pytest.approx(
        second.results["warm"]["books"]["production"]["recall@50"]
    )
    assert manifest["config"]["train"]["mf"]["epochs"] == 2  # the job config, as `recxfer evaluate` reads it
    assert len(manifest["epoch_losses"]["video"]) == 2
    model = ServingModel.from_artifact(root / CURRENT)
    assert model.version == second.version
    assert len(model.recommend("u01999", "books", 5).item_ids) == 5  # a day-2 user is served


def test_runs_leave_reports_and_no_leftovers(nights) -> None:
    root, first, second = nights
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [WORK_DIR, CURRENT, REPORTS_DIR, first.version, second.version]
    )
    assert list((root / WORK_DIR).iterdir()) == []  # finished runs delete their checkpoints
    assert sorted(p.name for p in (root / REPORTS_DIR).iterdir()) == [first.run_id, second.run_id]
    run = json.loads((second.report_dir / "run.json").read_text())
    assert run["status"] == "published" and run["exit_code"] == 0 and run["version"] == second.version
    assert (second.report_dir / "report.html").read_text() == (root / second.version / REPORT_HTML).read_text()


def test_regressed_model_is_gated_forced_then_rolled_back(
    nights, data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _copy_root(nights[0], tmp_path)
    good = current_version(root)
    caplog.set_level(logging.INFO)
    # 1. Gated: exit 3, production kept, nothing new under a final name, a report says why.
    assert nightly_main(data_dir, root, _write(tmp_path, REGRESSED)) == EXIT_GATED
    assert current_version(root) == good
    assert list_versions(root) == list_versions(nights[0])
    assert "gate failed, production" in caplog.text
    runs = sorted((root / REPORTS_DIR).iterdir())
    gated = json.loads((runs[-1] / "run.json").read_text())
    assert gated["status"] == "gated" and gated["version"] is None and not gated["gate"]["passed"]
    assert gated["exit_code"] == EXIT_GATED
    # Same data as production's night: it trained on every held-out row, so the gate
    # compared with its recorded evaluation (and a model of random rows fails it).
    summary = json.loads((runs[-1] / "metrics.json").read_text())
    assert summary["comparison_rows"]["warm"]["books"]["basis"] == "recorded"
    assert summary["results"]["warm"]["books"]["production"]["recall@50"] == pytest.approx(
        read_artifact(root / CURRENT).manifest["metrics"]["warm"]["books"]["model"]["recall@50"])
    assert ">gated</span>" in (runs[-1] / "report.html").read_text()
    # 2. --force publishes it anyway, logged and recorded in the manifest.
    assert nightly_main(data_dir, root, _write(tmp_path, REGRESSED), force=True) == EXIT_OK
    forced = current_version(root)
    assert forced != good and "--force was given" in caplog.text
    assert read_artifact(root / CURRENT).manifest["nightly"]["gate"]["forced"] is True
    # 3. Rollback points current back at the previous (verified) version.
    assert rollback_production(root) == (forced, good)
    assert current_version(root) == good
    read_artifact(root / CURRENT)


def test_corrupt_input_stops_before_training(nights, data_dir: Path, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    root = _copy_root(nights[0], tmp_path)
    bad_data = tmp_path / "data"
    shutil.copytree(data_dir, bad_data)
    (bad_data / "day2" / "part-1.parquet").write_bytes(b"PAR1 this is not parquet")
    config = _write(tmp_path, _config(FAST, interactions=["day1.csv", "day2"]))
    assert nightly_main(bad_data, root, config) == EXIT_BAD_INPUT
    assert "part-1.parquet: cannot be read as interactions" in caplog.text
    assert "step train" not in caplog.text
    assert current_version(root) == current_version(nights[0])
    assert sorted(p.name for p in root.iterdir()) == sorted(p.name for p in nights[0].iterdir())
    assert not (root / ".lock").exists()


def test_bad_config_and_busy_lock_have_their_own_codes(nights, data_dir: Path, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    root = _copy_root(nights[0], tmp_path)
    assert nightly_main(data_dir, root, _write(tmp_path, {"nightly": {"gate": {"tolerance": -1}}})) == EXIT_BAD_INPUT
    with RootLock(root):
        holder = read_lock(root / ".lock")
        assert nightly_main(data_dir, root, _write(tmp_path, FAST)) == EXIT_LOCKED
        assert read_lock(root / ".lock") == holder  # not broken: its holder (us) is alive
    assert "another run holds the lock" in caplog.text
    assert current_version(root) == current_version(nights[0])


def test_sigterm_becomes_an_exception_so_cleanup_runs() -> None:
    import os
    import signal

    from recxfer.nightly.job import Terminated, _sigterm_raises

    with pytest.raises(Terminated):
        with _sigterm_raises():
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


# The shared-encoder method (the default), small: warm start carries its weights.
SHARED = {"method": "shared",
          "shared": {"use_text": False, "train": {"epochs": 2, "batch_size": 512, "lr": 0.01,
                                                  "model": {"dim": 16}}},
          "nightly": {"report_ks": [5, 10, 50], "torch_threads": 1}}


def test_shared_method_warm_starts_from_production_weights(
    data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "artifacts"
    caplog.set_level(logging.INFO)
    first = run_nightly(data_dir, root, nightly_config_from_dict(_config(SHARED, interactions=["day1.csv"])))
    entry = read_artifact(root / CURRENT).manifest["user_encoder"]
    assert entry["weights_file"] == "model/shared.pt" and entry["domain_order"] == ["video", "books", "music"]
    assert first.status == "published" and "training shared from scratch" in caplog.text

    second = run_nightly(
        data_dir, root, nightly_config_from_dict(_config(SHARED, interactions=["day1.csv", "day2"]))
    )
    assert f"training shared warm-started from production {first.version}" in caplog.text
    summary = json.loads((second.report_dir / "metrics.json").read_text())
    assert summary["warm_start_from"] == first.version
    # The warm start is night 1's *evaluated* model (it never trained on a row the
    # split holds out); day 2 brings users only, so every one of its items keeps its row.
    entry = read_artifact(root / first.version).manifest["user_encoder"]
    assert entry["weights_model"] == "evaluated"
    weight_items = json.loads(read_artifact(root / first.version).file(entry["weights_items_file"]).read_text())
    for domain in ("video", "books", "music"):
        assert summary["warm_rows"][domain] == [0, len(weight_items[domain])]
    # The report shows model selection: validation per epoch, the chosen epoch marked.
    page = (second.report_dir / "report.html").read_text()
    selection = summary["model_selection"]
    assert len(selection["val_scores"]) == selection["epochs_run"] >= 1
    assert "Model selection" in page and "validation score per epoch" in page
    if selection["kept_production_weights"]:
        assert selection["best_epoch"] == 0 and "Production's weights were kept." in page
    else:
        assert f"Epoch {selection['best_epoch']} of {selection['epochs_run']} chosen" in page
    # Training loss per domain (one panel each), refit included.
    assert set(read_artifact(root / CURRENT).manifest["epoch_losses"]) == {"video", "books", "music"}
    # Switched off: from scratch.
    caplog.clear()
    third = run_nightly(data_dir, root, nightly_config_from_dict(
        _config(SHARED, interactions=["day1.csv", "day2"], warm_start=False)))
    assert "training shared from scratch" in caplog.text and third.status in ("published", "gated")


def _frame(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "domain"])


def test_comparable_heldout_drops_what_production_trained_on() -> None:
    """Hand-made: production trained on (u1, b1) and knows u2 as warm in books."""
    from recxfer.nightly.job import comparable_heldout
    from recxfer.pipeline import pair_keys
    from recxfer.types import DomainEmbeddings, SeenItems, UserOrigin

    prod_rows = _frame([("u1", "b1", "books"), ("u2", "b2", "books"), ("u3", "v1", "video")])
    pairs = np.unique(pair_keys(prod_rows))
    users = np.array(["u1", "u2", "u3"], dtype=object)
    books = DomainEmbeddings(
        domain="books", user_ids=users, user_emb=np.zeros((3, 2), np.float32),
        user_origin=np.array([UserOrigin.WARM.value, UserOrigin.WARM.value, UserOrigin.TRANSFER.value],
                             dtype=object),
        item_ids=np.array(["b1", "b2", "b3"], dtype=object), item_emb=np.zeros((3, 2), np.float32),
        seen=SeenItems.from_pairs(3, np.array([0, 1]), np.array([0, 1])),
        item_popularity=np.array([1, 1, 0]),
    )
    heldout = _frame([("u1", "b1", "books"), ("u1", "b3", "books"), ("u2", "b3", "books"),
                      ("u3", "b3", "books"), ("u9", "b1", "books")])
    warm, counts = comparable_heldout(heldout, "warm", books, pairs)
    assert list(zip(warm["user_id"], warm["item_id"])) == [("u1", "b3"), ("u2", "b3"), ("u3", "b3"),
                                                           ("u9", "b1")]
    assert counts == {"heldout_rows": 5, "comparable_rows": 4, "rows_production_trained_on": 1,
                      "users_warm_in_production": 0}
    cold, counts = comparable_heldout(heldout, "cold_start", books, pairs)
    # u1 and u2 have target rows in production: it would not serve them as cold-start
    assert list(zip(cold["user_id"], cold["item_id"])) == [("u3", "b3"), ("u9", "b1")]
    assert counts["users_warm_in_production"] == 2 and counts["comparable_rows"] == 2
    # A production without a record of its training pairs: only the user rule applies.
    legacy, counts = comparable_heldout(heldout, "warm", books, None)
    assert len(legacy) == 5 and counts["rows_production_trained_on"] == 0


def test_production_comparison_excludes_rows_production_trained_on(nights, data_dir: Path) -> None:
    """Night 1's production was refit on every day-1 row; night 2 compares with it
    only on held-out rows it never trained on: checked against a naive recount."""
    from recxfer.data import load_sources
    from recxfer.nightly.job import hold_out_warm
    from recxfer.pipeline import split_data

    root, first, second = nights
    day1 = pd.read_csv(data_dir / "day1.csv", dtype=str)
    prod = read_artifact(root / first.version)
    training = prod.manifest["training"]
    assert training["published"]["refit"] is True and training["published"]["rows"] == len(day1)
    assert training["evaluated"]["rows"] < training["published"]["rows"]
    assert len(np.load(prod.file(training["published"]["pairs_file"]))) == len(day1)
    # Naive: tonight's held-out rows, minus pairs in day 1, minus (cold) users with day-1 target rows.
    config = nightly_config_from_dict(_config(FAST, interactions=["day1.csv", "day2"]))
    data = load_sources([data_dir / "day1.csv", data_dir / "day2"], None, config.job.domains)
    split = split_data(data, config.job)
    _, warm_test = hold_out_warm(split.train, config.job.train.targets, config.job.split.seed)
    seen = set(zip(day1["domain"], day1["user_id"], day1["item_id"]))
    for group, heldout_of in (("cold_start", split.test), ("warm", warm_test)):
        for target in ("books", "music"):
            heldout = heldout_of[target]
            warm_in_prod = set(day1.loc[day1["domain"] == target, "user_id"])
            kept = [(u, i) for u, i in zip(heldout["user_id"], heldout["item_id"])
                    if (target, u, i) not in seen and (group == "warm" or u not in warm_in_prod)]
            counts = second.comparison_rows[group][target]
            assert counts["heldout_rows"] == len(heldout)
            assert counts["comparable_rows"] == len(kept) > 0
            assert counts["rows_production_trained_on"] > 0
            assert second.results[group][target]["production"]["users"] == len({u for u, _ in kept})
            assert all(u >= "u01800" for u, _ in kept)  # only day-2 users are new to production


def test_held_out_users_are_warm_in_the_published_model(nights, data_dir: Path) -> None:
    """The published model is refit on every row: a user whose target rows were
    held out tonight (cold-start test) is WARM in it, and warm users' held-out
    latest rows are among its seen items."""
    from recxfer.artifacts import load_domain
    from recxfer.data import load_sources
    from recxfer.pipeline import split_data
    from recxfer.types import UserOrigin

    root, _, second = nights
    config = nightly_config_from_dict(_config(FAST, interactions=["day1.csv", "day2"]))
    data = load_sources([data_dir / "day1.csv", data_dir / "day2"], None, config.job.domains)
    split = split_data(data, config.job)
    artifact = read_artifact(root / second.version)
    published = artifact.manifest["training"]["published"]
    assert published["rows"] == len(data.interactions) and published["refit_epochs"] == 2
    for target in ("books", "music"):
        emb = load_domain(artifact, target)
        origin = dict(zip(emb.user_ids, emb.user_origin))
        cold = split.test[target]["user_id"].unique()
        assert len(cold) > 10 and all(origin[u] == UserOrigin.WARM.value for u in cold)
        # and the held-out items are in their seen lists (not recommended again)
        row_of = {u: r for r, u in enumerate(emb.user_ids)}
        item_of = {i: c for c, i in enumerate(emb.item_ids)}
        for user, item in zip(split.test[target]["user_id"][:50], split.test[target]["item_id"][:50]):
            assert item_of[item] in set(emb.seen.row(row_of[user]))
