"""The ``recxfer`` command in-process: train, evaluate, and clear errors on bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from recxfer.artifacts import list_versions
from recxfer.cli import EXIT_BAD_INPUT, EXIT_OK, main

SAMPLES = Path(__file__).resolve().parents[1] / "data_samples"


def _fast_config(tmp_path: Path) -> Path:
    path = tmp_path / "fast.json"
    path.write_text('{"train": {"mf": {"epochs": 2}, "emcdr": {"epochs": 10}}, '
                    '"shared": {"train": {"epochs": 2, "batch_size": 1024}}}')
    return path


def test_train_then_evaluate_print_the_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "artifacts"
    assert main(["train", "--data", str(SAMPLES), "--artifacts", str(root),
                 "--config", str(_fast_config(tmp_path))]) == EXIT_OK
    out = capsys.readouterr().out
    assert "| books | model |" in out and "| music | popularity |" in out
    assert (root / "current").is_symlink()
    json_out = tmp_path / "eval.json"
    assert main(["evaluate", "--data", str(SAMPLES), "--artifact", str(root / "current"),
                 "--out", str(json_out)]) == EXIT_OK
    assert "| books | model |" in capsys.readouterr().out and json_out.is_file()
    # `recxfer info` of the real artifact: the manifest's domains and metrics.
    assert main(["info", str(root / "current"), "--json"]) == EXIT_OK
    info = json.loads(capsys.readouterr().out)
    assert info["current"] is True and set(info["domains"]) == {"video", "books", "music"}
    assert all(d["users"] > 0 and d["items"] > 0 and d["dim"] > 0 for d in info["domains"].values())
    assert info["domains"]["books"]["transfer_from"] == "video"
    assert set(info["metrics"]["cold_start"]) == {"books", "music"}
    assert main(["info", str(root)]) == EXIT_OK
    assert "cold_start/books/model/recall@10" in capsys.readouterr().out


def test_bad_input_exits_2_naming_file_and_column(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data"
    shutil.copytree(SAMPLES, data)
    lines = (data / "interactions.csv").read_text().splitlines()
    lines[0] = lines[0].replace("item_id", "item")
    (data / "interactions.csv").write_text("\n".join(lines) + "\n")
    root = tmp_path / "artifacts"
    assert main(["train", "--data", str(data), "--artifacts", str(root)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "interactions.csv" in err and "item_id" in err
    assert list_versions(root) == []  # nothing published, nothing half-written
    assert not root.exists() or not any(root.iterdir())


def test_serve_refuses_a_missing_artifact(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["serve", "--artifacts", str(tmp_path), "--address", "127.0.0.1:0"]) == EXIT_BAD_INPUT
    assert "artifact" in capsys.readouterr().err


def test_generate_samples_reproduces_the_committed_files(tmp_path: Path) -> None:
    assert main(["generate-samples", "--out", str(tmp_path)]) == EXIT_OK
    for name in ("interactions.csv", "items.csv"):
        assert (tmp_path / name).read_bytes() == (SAMPLES / name).read_bytes()


def test_rollback_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from recxfer.artifacts import current_version, publish, write_artifact

    root = tmp_path / "artifacts"
    for _ in range(2):
        with write_artifact(root, {}, "fp") as builder:
            (builder.path / "x.bin").write_bytes(b"x")
    old, new = list_versions(root)
    publish(root, new)
    capsys.readouterr()
    assert main(["rollback", "--artifacts", str(root)]) == EXIT_OK
    assert f"{new} -> {old}" in capsys.readouterr().out and current_version(root) == old
    assert main(["rollback", "--artifacts", str(root)]) == EXIT_BAD_INPUT  # nothing older
    assert "no version older" in capsys.readouterr().err
    assert main(["rollback", "--artifacts", str(root), "--to", new]) == EXIT_OK
    assert current_version(root) == new


def test_nightly_command_refuses_a_bad_config(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = tmp_path / "bad.json"
    config.write_text('{"nightly": {"gate": {"metrics": ["recall@50"]}}}')
    root = tmp_path / "artifacts"
    assert main(["nightly", "--data", str(SAMPLES), "--artifacts", str(root), "--config", str(config)]) == EXIT_BAD_INPUT
    assert "bad config" in caplog.text and not root.exists()
