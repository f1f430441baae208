"""``recxfer serve --processes N`` as real processes on a real port: every worker
listens on the one port (SO_REUSEPORT) and answers, each hot-reloads a new publish,
SIGTERM drains the calls in flight and exits 0; a worker that dies is restarted;
``/metrics`` aggregates the workers (prometheus_client multiprocess mode)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest

from recxfer.artifacts import publish
from recxfer.cli import main
from recxfer.types import DomainEmbeddings, SeenItems
from recxfer.v1 import recommender_pb2 as pb
from recxfer.v1 import recommender_pb2_grpc

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and SO_REUSEPORT")

BIG_ITEMS, BIG_DIM, BIG_USERS = 100_000, 64, 256
START_TIMEOUT = 120.0


def _big_domain() -> DomainEmbeddings:
    """A domain whose full BatchRecommend takes a while (256 users x 100k items),
    so that calls are still in flight when SIGTERM comes."""
    rng = np.random.default_rng(3)
    return DomainEmbeddings(
        domain="big",
        user_ids=np.array([f"u{i:03d}" for i in range(BIG_USERS)], dtype=object),
        user_emb=rng.standard_normal((BIG_USERS, BIG_DIM)).astype(np.float32),
        user_origin=np.array(["warm"] * BIG_USERS, dtype=object),
        item_ids=np.array([f"i{j:06d}" for j in range(BIG_ITEMS)], dtype=object),
        item_emb=rng.standard_normal((BIG_ITEMS, BIG_DIM)).astype(np.float32),
        seen=SeenItems(np.zeros(BIG_USERS + 1, np.int64), np.zeros(0, np.int64)),
        item_popularity=np.zeros(BIG_ITEMS, np.int64),
    )


def _start(args: list[str]) -> tuple[subprocess.Popen, str, list[int], list[str]]:
    """``recxfer serve`` in a subprocess; waits for its banner. Returns the process,
    the address, the workers' pids and the stdout lines read so far."""
    process = subprocess.Popen(
        [sys.executable, "-m", "recxfer.cli", "-v", "--log-format", "json", "serve",
         "--address", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    stderr: list[str] = []
    threading.Thread(target=lambda: stderr.extend(process.stderr), daemon=True).start()
    lines: list[str] = []
    deadline = time.monotonic() + START_TIMEOUT
    while not lines or not lines[0].startswith("serving"):
        line = process.stdout.readline()
        if not line:
            process.wait(10)
            pytest.fail(f"server did not start (exit {process.returncode}): {''.join(stderr)[-3000:]}")
        lines.append(line)
        assert time.monotonic() < deadline
    # "serving V on 127.0.0.1:PORT (plaintext) in N processes (pids P1 P2) (Ctrl-C stops)"
    words = lines[0].split()
    pids = [int(w.strip("()")) for w in lines[0].split("(pids ", 1)[1].split(")")[0].split()]
    process.stderr_lines = stderr  # type: ignore[attr-defined]
    return process, words[3], pids, lines


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


def _events(process: subprocess.Popen) -> list[dict]:
    return [json.loads(x) for x in process.stderr_lines if x.startswith("{")]  # type: ignore[attr-defined]


def _children(pid: int) -> set[int]:
    """The worker processes (spawned interpreters) whose parent is ``pid``."""
    children = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"spawn_main" in cmdline:
            children.add(int(proc.name))
    return children


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on ``port`` (state 0A in /proc/net/tcp*)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                inodes.add(fields[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[len("socket:["):-1])
    return out


def _fresh_call(address: str, request: pb.RecommendRequest) -> pb.RecommendResponse:
    """One Recommend on a new connection (a local subchannel pool: grpc would
    otherwise reuse one connection for every channel to the same target)."""
    with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        return recommender_pb2_grpc.RecommenderStub(channel).Recommend(request, timeout=10)


def test_two_processes_share_the_port_reload_and_drain(tmp_path, make_artifact, domains, domains_v2,
                                                       expected):
    big = _big_domain()
    make_artifact(tmp_path, {**domains, "big": big}, version="v1")
    make_artifact(tmp_path, {**domains_v2, "big": replace(big, item_emb=-big.item_emb)}, version="v2",
                  use_faiss=False)
    publish(tmp_path, "v1")
    process, address, pids, _ = _start(["--artifacts", str(tmp_path), "--processes", "2",
                                        "--reload-interval", "0.1", "--grace", "20",
                                        "--max-message-bytes", str(1 << 26)])
    try:
        port = int(address.rsplit(":", 1)[1])
        # Two workers, children of the server, each listening on the one port.
        assert len(set(pids)) == 2 and set(pids) <= _children(process.pid)
        listening = _listening_inodes(port)
        for pid in pids:
            assert _socket_inodes(pid) & listening, f"worker {pid} does not listen on {port}"
        assert not _socket_inodes(process.pid) & listening  # the parent only holds the port

        # Right answers over many connections, spread by the kernel over both workers.
        want, _ = expected(domains["books"], "alice", 3)
        request = pb.RecommendRequest(user_id="alice", domain="books", k=3)
        for _ in range(30):
            response = _fresh_call(address, request)
            assert response.model_version == "v1"
            assert [i.item_id for i in response.items] == want
        answered = {e["pid"] for e in _events(process) if e.get("event") == "rpc"}
        assert answered == set(pids), answered

        # Every worker reloads: all fresh connections see v2.
        publish(tmp_path, "v2")
        want_v2, _ = expected(domains_v2["books"], "alice", 3)
        deadline, streak = time.monotonic() + 60, 0
        while streak < 30:
            assert time.monotonic() < deadline, "not every worker reloaded"
            response = _fresh_call(address, request)
            streak = streak + 1 if response.model_version == "v2" else 0
            if response.model_version == "v2":
                assert [i.item_id for i in response.items] == want_v2
        reloaded = {e["pid"] for e in _events(process)
                    if e.get("event") == "artifact_reloaded" and e.get("version") == "v2"}
        assert reloaded == set(pids)

        # SIGTERM while slow calls are in flight (six callers back to back, spread
        # over the workers): every call that had reached a worker finishes OK.
        batch = pb.BatchRecommendRequest(requests=[
            pb.RecommendRequest(user_id=f"u{i:03d}", domain="big", k=1000) for i in range(BIG_USERS)
        ])
        results: list[tuple[float, float, str]] = []  # (start, end, code)
        stop_calling = threading.Event()

        def call() -> None:
            with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1),
                                                         ("grpc.max_receive_message_length", 1 << 26)]) as ch:
                stub = recommender_pb2_grpc.RecommenderStub(ch)
                while not stop_calling.is_set():
                    start = time.monotonic()
                    try:
                        answer = stub.BatchRecommend(batch, timeout=60)
                        code = "OK" if len(answer.results) == BIG_USERS and all(
                            len(r.response.items) == 1000 for r in answer.results) else "short"
                    except grpc.RpcError as exc:
                        code = exc.code().name
                    results.append((start, time.monotonic(), code))
                    if code != "OK":
                        break

        threads = [threading.Thread(target=call) for _ in range(6)]
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        stop_calling.set()
        for thread in threads:
            thread.join(90)
        assert process.wait(timeout=90) == 0, "".join(process.stderr_lines)[-3000:]  # type: ignore[attr-defined]
        events = _events(process)
        # Every call a worker's handler took finished OK. A call no handler had taken
        # yet (still in the kernel's or gRPC's queue when the worker began to drain:
        # on a loaded host even one sent well before the signal) is refused
        # UNAVAILABLE by gRPC, which a client may retry elsewhere; nothing else.
        codes = [code for _, _, code in results]
        assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
        handled = [e for e in events if e.get("event") == "rpc" and "BatchRecommend" in e.get("method", "")]
        assert handled and {e["code"] for e in handled} == {"OK"}, handled
        # Each handled call reached its client as OK, or (rarely, on a loaded 2-core
        # host) as UNAVAILABLE when the worker's process exited while the response bytes
        # were still in flight (the handler had finished OK): a retryable code, never a
        # wrong answer. Workers now linger 0.5 s after the drain (recxfer/cli.py); with
        # this assertion made strict and two busy loops beside it, 1 run in 10 failed
        # before the linger and 0 in 10 after: one such call is still tolerated.
        assert codes.count("OK") <= len(handled) <= codes.count("OK") + codes.count("UNAVAILABLE")
        assert codes.count("OK") >= len(handled) - 1, (codes, len(handled))
        assert any(end > signalled and code == "OK" for _, end, code in results), \
            "no call was in flight at SIGTERM"
        assert {e["pid"] for e in events if e.get("event") == "server_stopped"} == set(pids)
        assert not [e for e in events if e.get("level") == "ERROR"]
        assert "shutting down" in process.stdout.read()
    finally:
        _stop(process)


def test_a_dead_worker_is_restarted_and_metrics_cover_all(tmp_path, make_artifact, domains):
    make_artifact(tmp_path, domains, version="v1")
    publish(tmp_path, "v1")
    process, address, pids, lines = _start([
        "--artifacts", str(tmp_path), "--processes", "2", "--reload-interval", "0.2",
        "--metrics-address", "127.0.0.1:0", "--grace", "1",
    ])
    try:
        metrics_line = process.stdout.readline() if len(lines) < 2 else lines[1]
        metrics_url = metrics_line.split()[-1]
        request = pb.RecommendRequest(user_id="alice", domain="books", k=3)
        for _ in range(10):
            _fresh_call(address, request)
        text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
        assert 'recxfer_model_info{version="v1"} 2.0' in text  # both workers serve v1
        assert 'recxfer_requests_total{code="OK",method="recxfer.v1.Recommender/Recommend"} 10.0' in text

        os.kill(pids[0], signal.SIGKILL)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            ready = [e for e in _events(process) if e.get("event") == "worker_ready"]
            if len(ready) >= 3:
                break
            assert time.monotonic() < deadline, "the dead worker was not restarted"
            time.sleep(0.2)
        died = [e for e in _events(process) if e.get("event") == "worker_died"]
        assert died and died[0]["worker"] == 0 and died[0]["code"] == -signal.SIGKILL
        new = _children(process.pid) - {pids[1]}
        assert len(new) == 1 and pids[0] not in new
        assert _socket_inodes(new.pop()) & _listening_inodes(int(address.rsplit(":", 1)[1]))
        for _ in range(10):
            assert _fresh_call(address, request).model_version == "v1"
        text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
        assert 'recxfer_model_info{version="v1"} 2.0' in text  # the dead one forgotten
        assert 'recxfer_requests_total{code="OK",method="recxfer.v1.Recommender/Recommend"} 20.0' in text
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 1  # drained, but a worker had died
    finally:
        _stop(process)


def test_processes_refuse_a_busy_port_and_a_missing_artifact(tmp_path, make_artifact, domains,
                                                              capsys):
    assert main(["serve", "--artifacts", str(tmp_path), "--processes", "2",
                 "--address", "127.0.0.1:0"]) == 2
    assert "no artifact published" in capsys.readouterr().err
    make_artifact(tmp_path, domains, version="v1")
    publish(tmp_path, "v1")
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        assert main(["serve", "--artifacts", str(tmp_path), "--processes", "2",
                     "--address", f"127.0.0.1:{port}"]) == 1
    assert "already in use" in capsys.readouterr().err
    assert main(["serve", "--artifacts", str(tmp_path), "--processes", "0"]) == 2


def test_a_bad_artifact_fails_once_with_exit_2(tmp_path, make_artifact, domains):
    artifact = make_artifact(tmp_path, domains, version="v1")
    with (artifact.path / "domains/books/item_emb.npy").open("r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        handle.write(b"\x01")
    publish_link = tmp_path / "current"
    publish_link.symlink_to("v1")  # published without verification: served, refused
    result = subprocess.run(
        [sys.executable, "-m", "recxfer.cli", "serve", "--artifacts", str(tmp_path),
         "--address", "127.0.0.1:0", "--processes", "2"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "sha256" in result.stderr
    assert result.stderr.count("started worker") == 1  # worker 1 never started
