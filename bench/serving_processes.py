"""Memory of ``recxfer serve --processes N``: do N server processes share one copy
of the artifact (memory-mapped arrays and faiss index) or hold N?

Builds a moderately sized random artifact (one domain, faiss ``Flat``), then:

1. ``servers``: ``recxfer serve --processes 1`` and ``--processes 2`` on it, each
   warmed by ``--requests`` Recommend calls on fresh connections (every worker
   searches the whole index, so every page of it is touched in every worker);
   RSS and PSS (``/proc/PID/smaps_rollup``: shared pages split between the
   processes mapping them) of the parent and each worker, summed.
2. ``loaders``: the model alone (``ServingModel.from_artifact``), loaded by two
   processes at once, mapped (``mmap=True``, what serving does) and read into
   memory (``mmap=False``, before): the sharing that mapping buys.

The goal: PSS of the 2-process server < 1.5x that of the 1-process server.

    .venv/bin/python bench/serving_processes.py --out bench/results/serving_processes.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recxfer.artifacts import index_file, publish, save_domain, write_artifact  # noqa: E402
from recxfer.index import FaissIndex  # noqa: E402
from recxfer.types import DomainEmbeddings, SeenItems  # noqa: E402

FIELDS = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Shared_Clean", "Private_Clean", "Private_Dirty")


def memory_kb(pid: int) -> dict[str, int]:
    """``/proc/PID/smaps_rollup`` fields (kB)."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        if key in FIELDS:
            out[key] = int(rest.split()[0])
    return out


def children(pid: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in cmdline:
                found.append(int(proc.name))
    return sorted(found)


def build(root: Path, n_items: int, n_users: int, dim: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    seen_per_user = 10
    pairs_u = np.repeat(np.arange(n_users), seen_per_user)
    pairs_i = rng.integers(0, n_items, n_users * seen_per_user)
    emb = DomainEmbeddings(
        domain="books",
        user_ids=np.array([f"u{i:07d}" for i in range(n_users)], dtype=object),
        user_emb=rng.standard_normal((n_users, dim)).astype(np.float32),
        user_origin=np.array(["warm"] * n_users, dtype=object),
        item_ids=np.array([f"b{j:07d}" for j in range(n_items)], dtype=object),
        item_emb=rng.standard_normal((n_items, dim)).astype(np.float32),
        seen=SeenItems.from_pairs(n_users, pairs_u, pairs_i),
        item_popularity=np.bincount(pairs_i, minlength=n_items).astype(np.int64),
    )
    with write_artifact(root, config={}, data_fingerprint="bench", version="v1") as builder:
        save_domain(builder.path, emb)
        FaissIndex.build(emb.item_emb, "Flat", use_gpu=False).save(builder.path / index_file("books"))
        builder.extra["domains"] = {"books": {
            "role": "target", "users": n_users, "items": n_items, "dim": dim,
            "index": {"factory": "Flat", "file": index_file("books")},
        }}
    time.sleep(0.05)
    publish(root, "v1")  # (records the verification: the servers do not re-hash)
    return root / "v1"


def warm(address: str, n_users: int, requests: int) -> None:
    import grpc

    from recxfer.v1 import recommender_pb2 as pb
    from recxfer.v1 import recommender_pb2_grpc

    rng = np.random.default_rng(0)
    for i in range(requests):
        with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            recommender_pb2_grpc.RecommenderStub(ch).Recommend(
                pb.RecommendRequest(user_id=f"u{int(rng.integers(n_users)):07d}", domain="books", k=10),
                timeout=60,
            )


def server_memory(root: Path, processes: int, n_users: int, requests: int) -> dict[str, Any]:
    process = subprocess.Popen(
        [sys.executable, "-m", "recxfer.cli", "serve", "--artifacts", str(root),
         "--address", "127.0.0.1:0", "--processes", str(processes), "--reload-interval", "0",
         "--index-device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
    )
    try:
        started = time.monotonic()
        line = process.stdout.readline()
        match = re.search(r" on (\S+:\d+) ", line)
        if not match:
            raise RuntimeError(f"server did not start: {line!r}")
        start_s = time.monotonic() - started
        warm(match.group(1), n_users, requests)
        time.sleep(1.0)
        pids = [process.pid] + (children(process.pid) if processes > 1 else [])
        per = {str(pid): memory_kb(pid) for pid in pids}
        process.send_signal(signal.SIGTERM)
        code = process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return {
        "processes": processes, "start_s": round(start_s, 2), "exit_code": code,
        "per_process_kb": per,
        "total_kb": {f: sum(m.get(f, 0) for m in per.values()) for f in FIELDS},
    }


LOADER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from recxfer.serve import ServingModel
    model = ServingModel.from_artifact(sys.argv[1], device="cpu", mmap=sys.argv[2] == "1")
    served = model.domains["books"]
    served.index.search(served.emb.user_emb[:64], 10)  # touches the whole index
    float(served.emb.user_emb.sum()); float(served.emb.item_emb.sum())  # and the tables
    print("ready", flush=True)
    time.sleep(600)
""")


def loader_memory(artifact: Path, mmap: bool) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", LOADER, str(artifact), "1" if mmap else "0"],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env) for _ in range(2)]
    try:
        for proc in procs:
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("loader failed")
        time.sleep(0.5)
        per = {str(p.pid): memory_kb(p.pid) for p in procs}
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    return {"mmap": mmap, "per_process_kb": per,
            "total_kb": {f: sum(m.get(f, 0) for m in per.values()) for f in FIELDS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=300_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--requests", type=int, default=60, help="warm-up calls per server")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="recxfer-bench-procs-") as tmp:
        root = Path(tmp)
        artifact = build(root, args.items, args.users, args.dim, args.seed)
        files_mb = sum(p.stat().st_size for p in artifact.rglob("*") if p.is_file()) / 2**20
        servers = [server_memory(root, n, args.users, args.requests) for n in (1, 2)]
        loaders = [loader_memory(artifact, mmap) for mmap in (True, False)]
    one, two = (s["total_kb"] for s in servers)
    result = {
        "items": args.items, "users": args.users, "dim": args.dim, "artifact_mb": round(files_mb, 1),
        "cores": len(os.sched_getaffinity(0)), "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
        "servers": servers, "loaders": loaders,
        "pss_2_vs_1_processes": round(two["Pss"] / one["Pss"], 3),
        "rss_2_vs_1_processes": round(two["Rss"] / one["Rss"], 3),
        "loaders_pss_mmap_vs_read": round(loaders[0]["total_kb"]["Pss"] / loaders[1]["total_kb"]["Pss"], 3),
        "goal_pss_2_vs_1_below_1.5": two["Pss"] < 1.5 * one["Pss"],
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
