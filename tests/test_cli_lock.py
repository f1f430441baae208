"""Every command that publishes or rolls back takes the artifacts root's lock: while a
real ``recxfer train`` (or ``nightly``) process is inside its job, the others exit 4
at once naming its pid, and killing it frees the root."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recxfer.artifacts import RootLock, list_versions, read_lock
from recxfer.cli import EXIT_LOCKED, main
from recxfer.nightly import EXIT_LOCKED as NIGHTLY_EXIT_LOCKED

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data_samples"

# The real command, stalled inside its job (after taking the lock, before training).
_STALLED = {
    "train": "import recxfer.pipeline as m; m.load_job_data = stall",
    "nightly": "import recxfer.nightly.job as m; m.ingest = stall",
}
_SCRIPT = """
import sys, time
def stall(*args, **kwargs):
    print("inside the job", flush=True)
    time.sleep(300)
{patch}
from recxfer.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _start(command: str, root: Path, out: Path) -> subprocess.Popen:
    with out.open("w") as handle:
        return subprocess.Popen(
            [sys.executable, "-c", _SCRIPT.format(patch=_STALLED[command]), command,
             "--data", str(SAMPLES), "--artifacts", str(root)],
            cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
        )


def _wait_inside(proc: subprocess.Popen, out: Path) -> None:
    deadline = time.monotonic() + 180
    while "inside the job" not in out.read_text():
        assert proc.poll() is None, out.read_text()
        assert time.monotonic() < deadline, out.read_text()
        time.sleep(0.05)


def test_the_cli_lock_code_is_the_nightly_one() -> None:
    assert EXIT_LOCKED == NIGHTLY_EXIT_LOCKED == 4


@pytest.mark.parametrize("holder", ["train", "nightly"])
def test_commands_contend_for_the_root_lock(holder: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "artifacts"
    out = tmp_path / "holder.out"
    proc = _start(holder, root, out)
    try:
        _wait_inside(proc, out)
        assert read_lock(root / ".lock").pid == proc.pid
        for argv in (
            ["train", "--data", str(SAMPLES), "--artifacts", str(root)],
            ["run", "--data", str(SAMPLES), "--artifacts", str(root), "--address", "127.0.0.1:0"],
            ["rollback", "--artifacts", str(root)],
        ):
            capsys.readouterr()
            assert main(argv) == EXIT_LOCKED, argv
            err = capsys.readouterr().err
            assert f"locked by pid {proc.pid}" in err, (argv, err)
        assert main(["nightly", "--data", str(SAMPLES), "--artifacts", str(root)]) == EXIT_LOCKED
        assert list_versions(root) == []
    finally:
        proc.send_signal(signal.SIGKILL)  # no cleanup code runs in the holder
        proc.wait(30)
    with RootLock(root) as lock:  # the kernel released the dead holder's lock
        assert lock.held()
