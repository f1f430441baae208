"""The nightly job as a scheduler runs it: ``python -m jobs.nightly`` in real
processes. A run SIGKILLed mid-training resumes from its last checkpoint (and
the kernel released the dead run's flock; its lock file is taken over); two concurrent runs on one root cannot
both publish."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recxfer.artifacts import CURRENT, current_version, list_versions, read_artifact, read_lock
from recxfer.nightly import EXIT_LOCKED, EXIT_OK
from recxfer.nightly.job import WORK_DIR

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "data_samples"
MF = {"dim": 16, "batch_size": 256, "lr": 0.05}
EMCDR = {"epochs": 30, "hidden": 32}


def _config(tmp_path: Path, epochs: int) -> Path:
    path = tmp_path / f"config-{epochs}.json"
    path.write_text(json.dumps({"method": "emcdr",
                                "train": {"mf": {**MF, "epochs": epochs}, "emcdr": EMCDR},
                                "nightly": {"report_ks": [10, 50], "torch_threads": 1}}))
    return path


def _start(root: Path, config: Path, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "jobs.nightly", "--data", str(SAMPLES), "--artifacts", str(root),
             "--config", str(config)],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def _checkpoints(root: Path) -> dict[str, int]:
    """domain -> newest checkpoint epoch on disk."""
    found: dict[str, int] = {}
    for path in root.glob(f"{WORK_DIR}/*/checkpoints/mf-*/epoch-*.pt"):
        domain = path.parent.name.removeprefix("mf-")
        found[domain] = max(found.get(domain, 0), int(path.stem.split("-")[1]))
    return found


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    root, config, epochs = tmp_path / "artifacts", _config(tmp_path, 4), 4
    first = _start(root, config, tmp_path / "first.log")
    deadline = time.monotonic() + 240
    while not _checkpoints(root):
        assert first.poll() is None, (tmp_path / "first.log").read_text()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)  # a real kill: no cleanup code runs
    assert first.wait(30) == -signal.SIGKILL
    on_disk = _checkpoints(root)
    assert on_disk and (len(on_disk) < 3 or min(on_disk.values()) < epochs)  # mid-training
    assert current_version(root) is None and list_versions(root) == []  # nothing published
    assert read_lock(root / ".lock").pid == first.pid  # the dead run's lock file is still there

    second = subprocess.run(
        [sys.executable, "-m", "jobs.nightly", "--data", str(SAMPLES), "--artifacts", str(root),
         "--config", str(config)],
        cwd=REPO, capture_output=True, text=True, timeout=400,
    )
    log = second.stdout + second.stderr
    assert second.returncode == EXIT_OK, log
    assert f"was left by pid {first.pid}" in log  # its file taken over: the kernel freed the lock
    for domain, epoch in on_disk.items():
        assert f"mf[{domain}]: resumed from checkpoint epoch {epoch}/{epochs}" in log, log
    manifest = read_artifact(root / CURRENT).manifest
    assert manifest["nightly"]["resumed_from"] == {d: on_disk.get(d, 0) for d in ("video", "books", "music")}
    assert all(len(losses) == epochs for losses in manifest["epoch_losses"].values())
    assert not (root / ".lock").exists() and list((root / WORK_DIR).iterdir()) == []


def test_two_concurrent_runs_cannot_both_publish(tmp_path: Path) -> None:
    root, config = tmp_path / "artifacts", _config(tmp_path, 1)
    procs = [_start(root, config, tmp_path / f"run{i}.log") for i in range(2)]
    codes = [proc.wait(400) for proc in procs]
    logs = [(tmp_path / f"run{i}.log").read_text() for i in range(2)]
    assert sorted(codes) == [EXIT_OK, EXIT_LOCKED], logs
    loser = logs[codes.index(EXIT_LOCKED)]
    assert "another run holds the lock" in loser, loser  # "locked by pid N on HOST since ..."
    assert "step train" not in loser
    assert len(list_versions(root)) == 1 and current_version(root) == list_versions(root)[0]
    assert len(list((root / "reports").iterdir())) == 1


@pytest.mark.parametrize("args, code", [(["--help"], 0), (["--data", "nowhere"], 2)])
def test_entry_point_arguments(args: list[str], code: int) -> None:
    done = subprocess.run([sys.executable, "-m", "jobs.nightly", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == code, done.stderr
    if code == 0:
        assert "Exit codes: 0 published" in done.stdout
