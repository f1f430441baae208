"""``recxfer serve`` as a real process: serves ROOT/current, hot-reloads a new
publish, logs JSON, and exits 0 after a graceful SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from recxfer.artifacts import publish
from recxfer.serve.client import RecommenderClient


def test_serve_process_reloads_and_stops_on_sigterm(tmp_path, make_artifact, domains, domains_v2, expected):
    make_artifact(tmp_path, domains, version="v1")
    make_artifact(tmp_path, domains_v2, version="v2", use_faiss=False)
    publish(tmp_path, "v1")
    process = subprocess.Popen(
        [sys.executable, "-m", "recxfer.cli", "--log-format", "json", "serve",
         "--artifacts", str(tmp_path), "--address", "127.0.0.1:0", "--reload-interval", "0.1",
         "--grace", "1", "--processes", "1"],  # one process (test_multiprocess.py: several)
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = process.stdout.readline()  # "serving v1 on 127.0.0.1:PORT (plaintext) ..."
        assert line.startswith("serving v1 on 127.0.0.1:"), (line, process.stderr.read())
        address = line.split()[3]
        with RecommenderClient(address) as client:
            rec = client.recommend("alice", "books", 3)
            assert rec.model_version == "v1"
            assert rec.item_ids == expected(domains["books"], "alice", 3)[0]
            publish(tmp_path, "v2")
            deadline = time.monotonic() + 20
            while client.recommend("alice", "books", 3).model_version != "v2":
                assert time.monotonic() < deadline, "no hot reload"
                time.sleep(0.05)
            assert client.recommend("alice", "books", 3).item_ids == expected(
                domains_v2["books"], "alice", 3
            )[0]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    events = [json.loads(x) for x in process.stderr.read().splitlines() if x.startswith("{")]
    reloads = [e for e in events if e.get("event") == "artifact_reloaded"]
    assert [e["version"] for e in reloads] == ["v1", "v2"]
    assert any(e.get("event") == "server_stopped" for e in events)
    assert "shutting down" in process.stdout.read()


@pytest.mark.parametrize("flags, words", [(["--tls-cert", "x.pem"], "--tls-key")])
def test_serve_flag_errors_exit_2(tmp_path, capsys, flags, words):
    from recxfer.cli import main

    assert main(["serve", "--artifacts", str(tmp_path), *flags]) == 2
    assert words in capsys.readouterr().err
