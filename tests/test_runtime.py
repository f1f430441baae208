"""recxfer.runtime: the thread budget and the pre-flight checks of ``recxfer run``."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from recxfer import runtime


def test_available_cores_is_the_affinity_mask() -> None:
    assert runtime.available_cores() == len(os.sched_getaffinity(0))


def test_resolve_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert runtime.resolve_threads(None) == runtime.available_cores()
    assert runtime.resolve_threads(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert runtime.resolve_threads(None) == 1  # the operator's environment wins over the default
    assert runtime.resolve_threads(2) == 2  # --threads wins over the environment
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")
    assert runtime.resolve_threads(None) == runtime.available_cores()
    with pytest.raises(ValueError, match="--threads"):
        runtime.resolve_threads(0)


def test_limit_threads_caps_torch_blas_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    from threadpoolctl import threadpool_info

    for var in (*runtime.THREAD_ENV_VARS, "OMP_WAIT_POLICY"):
        monkeypatch.delenv(var, raising=False)
    previous = torch.get_num_threads()
    try:
        assert runtime.limit_threads(1) == 1
        assert torch.get_num_threads() == 1
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())
        assert all(os.environ[var] == "1" for var in runtime.THREAD_ENV_VARS)
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
        monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
        monkeypatch.delenv("OMP_NUM_THREADS")
        n = runtime.limit_threads(None)
        assert n == runtime.available_cores() == torch.get_num_threads()
        assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"  # set by the operator: kept
        assert os.environ["MKL_NUM_THREADS"] == "1"  # set (by the first call): kept without --threads
    finally:
        torch.set_num_threads(previous)
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=previous)


def test_split_address() -> None:
    assert runtime.split_address("127.0.0.1:50051") == ("127.0.0.1", 50051)
    assert runtime.split_address("[::1]:0") == ("::1", 0)
    assert runtime.split_address(":7") == ("", 7)
    for bad in ("localhost", "host:port", "host:70000"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            runtime.split_address(bad)


def test_check_bindable_accepts_a_free_port_and_port_0() -> None:
    runtime.check_bindable("127.0.0.1:0")
    runtime.check_bindable("localhost:0")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    runtime.check_bindable(f"127.0.0.1:{port}")


def test_check_bindable_refuses_a_port_in_use() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ValueError, match=f"cannot bind 127.0.0.1 port {port}.*another server"):
            runtime.check_bindable(f"127.0.0.1:{port}")


def test_check_bindable_refuses_an_unknown_host_and_a_foreign_address() -> None:
    with pytest.raises(ValueError, match="cannot resolve 'no-such-host.invalid'"):
        runtime.check_bindable("no-such-host.invalid:50051")
    with pytest.raises(ValueError, match="cannot bind 192.0.2.1"):  # TEST-NET: not this host's
        runtime.check_bindable("192.0.2.1:50051")


def test_check_writable_dir_leaves_no_trace(tmp_path: Path) -> None:
    runtime.check_writable_dir(tmp_path)
    assert list(tmp_path.iterdir()) == []
    runtime.check_writable_dir(tmp_path / "a" / "b")  # creatable: folders made for the test removed
    assert list(tmp_path.iterdir()) == []


def test_check_writable_dir_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="--artifacts .*file.*not a folder"):
        runtime.check_writable_dir(tmp_path / "file")
    with pytest.raises(ValueError, match="not writable"):
        runtime.check_writable_dir(tmp_path / "file" / "root")


def test_check_writable_dir_refuses_a_folder_it_cannot_write(tmp_path: Path, monkeypatch) -> None:
    """A permission error (as a read-only folder gives a non-root user; root writes
    through permissions, so the kernel's answer is simulated) names the folder and
    leaves no folder behind."""
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(runtime.tempfile, "mkstemp", refuse)
    with pytest.raises(ValueError, match=r"--artifacts .*new.*not writable: Permission denied"):
        runtime.check_writable_dir(tmp_path / "new" / "artifacts")
    assert list(tmp_path.iterdir()) == []
