"""``recxfer evaluate``: the offline report of an artifact (cold-start and warm users,
JSON, CSV and the nightly's HTML report), checked against the nightly job's own
figures for the same artifact and split.

Artifacts come from the nightly job on data_samples/ with the fastest config of
tests/nightly/test_job.py (MF + EMCDR, 2 epochs): one published without the refit
(its embeddings are the evaluated model's, so everything can be recomputed) and one
refit on every row (the default: on the same data only stored metrics can be reported).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from recxfer.artifacts import CURRENT, load_domain, read_artifact
from recxfer.cli import main
from recxfer.config import from_dict
from recxfer.eval import split_popularity
from recxfer.eval.report import CSV_COLUMNS, write_text_atomic
from recxfer.nightly import nightly_config_from_dict, run_nightly
from recxfer.pipeline import JobConfig, evaluate_artifact, hold_out_warm, load_job_data, split_data

SAMPLES = Path(__file__).resolve().parents[1] / "data_samples"
FAST = {"method": "emcdr", "train": {"mf": {"epochs": 2, "dim": 16, "batch_size": 256, "lr": 0.05},
                                     "emcdr": {"epochs": 30, "hidden": 32}},
        "nightly": {"report_ks": [5, 10, 50], "torch_threads": 1}}
TARGETS = ("books", "music")
GROUPS = ("cold_start", "warm")
_IMG = re.compile(r'<img alt="([^"]+)" src="(data:image/png;base64,[^"]+)"')


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    for name in ("interactions.csv", "items.csv"):
        shutil.copy(SAMPLES / name, out / name)
    return out


def _night(data_dir: Path, root: Path, refit: bool):
    return run_nightly(data_dir, root, nightly_config_from_dict({**FAST, "refit": refit}))


@pytest.fixture(scope="module")
def unrefit(data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("unrefit")
    return root, _night(data_dir, root, refit=False)


@pytest.fixture(scope="module")
def refit(data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("refit")
    return root, _night(data_dir, root, refit=True)


def _evaluate(data_dir: Path, root: Path, out: Path, *extra: str) -> dict:
    argv = ["evaluate", "--data", str(data_dir), "--artifact", str(root / CURRENT),
            "--out", str(out / "e.json"), "--csv", str(out / "e.csv"), "--html", str(out / "e.html"),
            "--threads", "1", *extra]
    assert main(argv) == 0
    return json.loads((out / "e.json").read_text())


def _images(path: Path) -> dict[str, str]:
    return dict(_IMG.findall(path.read_text(encoding="utf-8")))


def test_ks_groups_version_csv_and_self_contained_html(
    data_dir: Path, unrefit, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root, night = unrefit
    got = _evaluate(data_dir, root, tmp_path, "--ks", "20,5,10")
    printed = capsys.readouterr().out
    # --ks is respected everywhere: JSON, stdout, CSV
    assert got["ks"] == [5, 10, 20]
    assert "| books | model |" in printed and "recall@5" in printed and "recall@50" not in printed
    # the artifact's version and manifest hash
    artifact = read_artifact(root / CURRENT)
    assert got["artifact"]["version"] == artifact.version == night.version
    assert got["artifact"]["manifest_sha256"] == hashlib.sha256(
        (artifact.path / "manifest.json").read_bytes()).hexdigest()
    assert got["artifact"]["refit"] is False and got["data"]["same_as_artifact"] is True
    # cold-start and warm users, model and the popularity baseline, all recomputed
    assert set(got["results"]) == set(GROUPS)
    for group in GROUPS:
        for target in TARGETS:
            methods = got["results"][group][target]
            assert set(methods) == {"model", "popularity"}
            assert {k for k in methods["model"] if "@" in k} == {
                f"{m}@{k}" for m in ("recall", "ndcg", "hr") for k in (5, 10, 20)}
            assert got["basis"][group][target] == "evaluated"
    assert got["stored_metrics_only"] is False

    with open(tmp_path / "e.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        rows = list(reader)
    # domain x group x method x (3 metrics x 3 ks + mrr)
    assert len(rows) == len(TARGETS) * len(GROUPS) * 2 * (3 * 3 + 1)
    assert {r["k"] for r in rows} == {"5", "10", "20", ""}
    assert {r["method"] for r in rows} == {"model", "popularity"}
    assert {r["artifact_version"] for r in rows} == {night.version}
    for r in rows:
        name = r["metric"] if r["k"] == "" else f"{r['metric']}@{r['k']}"
        assert float(r["value"]) == got["results"][r["group"]][r["domain"]][r["method"]][name]
        assert int(r["users"]) == got["results"][r["group"]][r["domain"]][r["method"]]["users"]

    page = (tmp_path / "e.html").read_text(encoding="utf-8")
    links = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']*)', page, flags=re.I)
    assert links and all(link.startswith("data:image/png;base64,") for link in links)
    assert "<script" not in page.lower() and "<link" not in page.lower() and "url(" not in page
    assert len(_images(tmp_path / "e.html")) >= 5
    assert night.version in page and got["artifact"]["manifest_sha256"] in page
    assert "<h2>Gate</h2>" not in page
    # written atomically: nothing but the three files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.csv", "e.html", "e.json"]


def test_figures_equal_the_nightly_reports_for_the_same_artifact_and_split(
    data_dir: Path, unrefit, tmp_path: Path
) -> None:
    root, night = unrefit
    got = _evaluate(data_dir, root, tmp_path)  # default ks: the artifact's own (job ks + report_ks)
    assert got["results"] == json.loads(json.dumps(night.evaluated))
    nightly_images = _images(night.report_dir / "report.html")
    assert nightly_images == _images(tmp_path / "e.html")  # every plot, byte for byte
    assert len(nightly_images) == 5


def test_popularity_is_the_splits_training_counts(data_dir: Path, unrefit, refit) -> None:
    """The one popularity definition: counts of the split's training rows. They equal
    the counts of a model trained on exactly those rows, not a refit's (which counted
    the held-out rows too: ranking by those is what made the figures differ)."""
    for (root, _), same in ((unrefit, True), (refit, False)):
        artifact = read_artifact(root / CURRENT)
        config = from_dict(JobConfig, artifact.manifest["config"])
        split = split_data(load_job_data(data_dir, config), config)
        train, _ = hold_out_warm(split.train, config.train.targets, config.split.seed)
        for target in TARGETS:
            emb = load_domain(artifact, target)
            counts = split_popularity(emb.item_ids, train[train["domain"] == target])
            assert np.array_equal(counts, emb.item_popularity) == same
            if not same:
                assert emb.item_popularity.sum() > counts.sum()


def test_refit_artifact_on_its_own_data_reports_stored_metrics_in_every_output(
    data_dir: Path, refit, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture,
) -> None:
    root, night = refit
    got = _evaluate(data_dir, root, tmp_path)
    assert "was refit on every row of this data" in caplog.text
    assert got["artifact"]["refit"] is True and got["stored_metrics_only"] is True
    assert got["results"] == json.loads(json.dumps(night.evaluated))  # the evaluated model's
    assert all(b == "stored" for by in got["basis"].values() for b in by.values())
    assert any("stored metrics" in note for note in got["notes"])
    assert "stored metrics" in capsys.readouterr().out
    with open(tmp_path / "e.csv", newline="") as f:
        assert {r["basis"] for r in csv.DictReader(f)} == {"stored"}
    page = (tmp_path / "e.html").read_text(encoding="utf-8")
    assert "stored metrics" in page and "not recomputed" in page
    ours, nightly = _images(tmp_path / "e.html"), _images(night.report_dir / "report.html")
    for title in nightly:  # the same figures, but no score distributions of the refit
        if title != "Score distributions":
            assert ours[title] == nightly[title], title
    # the cold-start figures through the library function too
    assert evaluate_artifact(data_dir, root / CURRENT) == got["results"]["cold_start"]


def test_stored_metrics_lacking_a_requested_k_say_so(data_dir: Path, refit, tmp_path: Path) -> None:
    root, _ = refit
    got = _evaluate(data_dir, root, tmp_path, "--ks", "7,10")
    assert got["ks"] == [7, 10]
    assert "recall@10" in got["results"]["cold_start"]["books"]["model"]
    assert "recall@7" not in got["results"]["cold_start"]["books"]["model"]
    assert "recall@50" not in got["results"]["cold_start"]["books"]["model"]
    assert any("no cut-off [7]" in note for note in got["notes"])


@pytest.mark.parametrize("ks", ["0,5", "five", ","])
def test_bad_ks_is_a_usage_error(ks: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--data", "d", "--ks", ks])
    assert exc.value.code == 2 and "--ks" in capsys.readouterr().err


def test_atomic_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "sub" / "r.json"
    write_text_atomic(target, "old\n")

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("recxfer.eval.report.os.replace", broken)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic(target, "new\n")
    assert target.read_text() == "old\n" and [p.name for p in target.parent.iterdir()] == ["r.json"]
