"""Serving benchmark: raw in-process faiss search vs the gRPC server, over loopback.

    python bench/serving.py --items 100000 --out bench/results/serving_100k.json

Builds a synthetic artifact (``--items`` random items, ``--users`` users with
``--seen`` training items each, d=``--dim``, a faiss ``--factory`` index), then

1. **raw faiss** (the baseline): ``index.search`` in this process, batches of
   ``--batch`` queries (``raw_faiss_qps``) and single queries
   (``raw_faiss_unary_qps``), ``--duration`` seconds each, the best of three ways
   (1 caller x all threads, 1 caller x 1 thread, one caller per core x 1 thread);
2. **gRPC**: ``recxfer serve`` on that artifact in a subprocess, driven from an
   asyncio gRPC load generator in this process with ``Recommend`` (one user per
   call) and ``BatchRecommend`` (``--batch`` users per call) at each
   ``--concurrency`` (calls in flight), ``--duration`` seconds each, after a
   warm-up call; calls started within the window are all waited for and
   counted (closed loop), so slow configurations finish their last calls.

The two are measured **interleaved**, ``--rounds`` times: A B A B ... (the
server stays up, idle while raw faiss runs). Each round gives its own ratios
(best gRPC q/s over that round's raw q/s), and the JSON reports each ratio as
the median over rounds with its min/max spread: a host whose load drifts (other
jobs) moves both sides of a round alike, and a burst shows as spread rather than
a biased figure. Every q/s and latency figure is likewise the median over
rounds (per round in ``rounds``). ``os.getloadavg()`` is recorded at the start,
after each round and at the end.

QPS always counts users (queries) per second, so the gRPC and raw figures
compare directly. The server excludes each user's seen items (faiss fetches
k + seen candidates), like production; the raw baseline searches plain top-k.
Both sides share the machine's cores with the load generator (the server and the
client run on the same host), which the JSON records.

The run is bounded: about ``rounds * (6 + 2 * len(concurrency)) * duration +
duration * 3`` seconds, plus the slowest call of each gRPC measurement (up to
``--call-timeout``), plus building and loading the artifact. A quick check::

    python bench/serving.py --items 20000 --users 2000 --duration 0.5 --rounds 2 \
        --concurrency 1,8 --out /tmp/serving_quick.json

Without faiss (or with ``--exact-index``) the artifact carries no faiss index
(``Flat`` only) and the server searches with torch exact top-k (with
``--index-device cuda`` too where faiss has no GPU build); the "raw"
baseline is then that same index (``recxfer.index.load_index``) searched in this
process on the same device (``raw_backend`` in the JSON). On a GPU host::

    python bench/serving.py --items 1000000 --index-device cuda --exact-index \
        --processes 2 --rounds 1 --duration 2 --out gpu_out/serving_1m.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from recxfer.artifacts import index_file, publish, save_domain, write_artifact
from recxfer.index import FaissIndex, faiss_available, faiss_gpu_count, load_index
from recxfer.types import DomainEmbeddings, SeenItems
from recxfer.v1 import recommender_pb2 as pb
from recxfer.v1 import recommender_pb2_grpc

DOMAIN = "items"


def build_artifact(root: Path, args: argparse.Namespace) -> tuple[Path, np.ndarray]:
    """Write and publish a one-domain artifact; returns its path and the user
    embeddings ``(users, dim)``."""
    rng = np.random.default_rng(args.seed)
    items = rng.standard_normal((args.items, args.dim), dtype=np.float32)
    users = rng.standard_normal((args.users, args.dim), dtype=np.float32)
    user_idx = np.repeat(np.arange(args.users), args.seen)
    item_idx = rng.integers(0, args.items, args.users * args.seen)
    emb = DomainEmbeddings(
        domain=DOMAIN,
        user_ids=np.array([f"u{i}" for i in range(args.users)], dtype=object),
        user_emb=users,
        user_origin=np.array(["warm"] * args.users, dtype=object),
        item_ids=np.array([f"i{j}" for j in range(args.items)], dtype=object),
        item_emb=items,
        seen=SeenItems.from_pairs(args.users, user_idx, item_idx),
        item_popularity=rng.integers(0, 1000, args.items).astype(np.int64),
    )
    with write_artifact(root, config={"bench": vars(args)}, data_fingerprint="bench") as builder:
        save_domain(builder.path, emb)
        file = None  # no index file: the server searches exactly (torch)
        if faiss_available() and not args.exact_index:
            FaissIndex.build(items, args.factory, use_gpu=False, params=args.params).save(
                builder.path / index_file(DOMAIN)
            )
            file = index_file(DOMAIN)
        builder.extra["domains"] = {
            DOMAIN: {
                "role": "target", "users": args.users, "items": args.items, "dim": args.dim,
                "index": {"factory": args.factory, "params": args.params, "file": file},
            }
        }
    assert builder.artifact is not None
    publish(root, builder.artifact.version)
    return builder.artifact.path, users


def percentiles(latencies_s: list[float]) -> dict[str, float]:
    ms = np.asarray(latencies_s) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean())}


class RawIndex:
    """The in-process baseline: the artifact's faiss index read with faiss (CPU),
    or, without faiss or with ``--index-device cuda``, the index the server
    loads (``load_index``: torch exact top-k on that device)."""

    def __init__(self, artifact: Path, args: argparse.Namespace) -> None:
        path = artifact / index_file(DOMAIN)
        if faiss_available() and args.index_device != "cuda" and path.exists():
            import faiss

            self.backend = "faiss CPU"
            self._index = faiss.read_index(str(path))
            self._faiss = faiss
        else:
            index = load_index(None, "Flat", np.load(artifact / "domains" / DOMAIN / "item_emb.npy"),
                               device=args.index_device)
            self.backend = f"recxfer ExactIndex (torch, {index.device})"
            self._index = index
            self._faiss = None

    def search(self, queries: np.ndarray, k: int) -> Any:
        return self._index.search(queries, k)

    def set_threads(self, n: int) -> None:
        """faiss OpenMP threads of the calling thread (torch: left as they are)."""
        if self._faiss is not None:
            self._faiss.omp_set_num_threads(n)


def _raw_loop(index: RawIndex, users: np.ndarray, size: int, k: int, duration: float,
              threads: int, seed: int) -> tuple[list[float], int]:
    """Search batches of ``size`` back to back for ``duration`` s with ``threads``
    OpenMP threads (set in the calling thread); returns latencies and queries."""
    index.set_threads(threads)
    rng = np.random.default_rng(seed)
    index.search(users[:size], k)  # warm-up
    latencies, queries = [], 0
    start = time.perf_counter()
    while time.perf_counter() - start < duration:
        rows = rng.integers(0, len(users), size)
        t0 = time.perf_counter()
        index.search(users[rows], k)
        latencies.append(time.perf_counter() - t0)
        queries += size
    return latencies, queries


def bench_raw(index: RawIndex, users: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """In-process ``faiss.Index.search`` throughput, batched and single-query, three
    ways: one caller with faiss's default threads (all cores), one caller with 1
    thread, and one caller per core with 1 thread each (faiss releases the GIL).
    The best of the three is the baseline."""
    cores = os.cpu_count() or 1
    out: dict[str, Any] = {}
    for name, size in (("batch", args.batch), ("unary", 1)):
        for label, callers, threads in (
            (f"1 caller x {cores} threads", 1, cores),
            ("1 caller x 1 thread", 1, 1),
            (f"{cores} callers x 1 thread", cores, 1),
        ):
            results: list[tuple[list[float], int]] = [None] * callers  # type: ignore[list-item]

            def run(slot: int) -> None:
                results[slot] = _raw_loop(index, users, size, args.k, args.duration, threads, slot)

            start = time.perf_counter()
            workers = [threading.Thread(target=run, args=(i,)) for i in range(callers)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            elapsed = time.perf_counter() - start
            latencies = [t for lat, _ in results for t in lat]
            out[f"{name}: {label}"] = {
                "qps": sum(q for _, q in results) / elapsed, "calls": len(latencies),
                **percentiles(latencies),
            }
    index.set_threads(cores)
    for name in ("batch", "unary"):
        best = max((k for k in out if k.startswith(f"{name}:")), key=lambda k: out[k]["qps"])
        out[name] = {"how": best.split(": ", 1)[1], **out[best]}
    return out


def breakdown(artifact: Path, raw: RawIndex, users: np.ndarray,
              args: argparse.Namespace) -> dict[str, Any]:
    """Where a BatchRecommend's server time goes, measured in-process on one thread
    (no gRPC, no competing load generator): the faiss search alone, the model's
    search (id lookup, seen-item exclusion, over-fetch), building the response
    and serialising it. Each figure is the minimum of repeated runs, which is
    robust to other jobs on a shared host."""
    from recxfer.serve import RecommendQuery, ServingModel
    from recxfer.serve.servicer import RecommenderServicer

    raw.set_threads(1)
    model = ServingModel.from_artifact(
        artifact, device="cuda" if args.index_device == "cuda" else "cpu"
    )
    faiss_index = raw
    rng = np.random.default_rng(2)
    rows = rng.integers(0, len(users), args.batch)
    queries = [RecommendQuery(f"u{r}", DOMAIN, args.k) for r in rows]
    results = model.recommend_many(queries)

    def build() -> pb.BatchRecommendResponse:
        out = pb.BatchRecommendResponse(model_version=model.version)
        for result in results:
            RecommenderServicer._fill(out.results.add().response, result, model.version)
        return out

    message = build()
    steps = {
        "faiss_search": lambda: faiss_index.search(users[rows], args.k),
        "model_search": lambda: model.recommend_many(queries),
        "build_response": build,
        "serialize": message.SerializeToString,
        "faiss_search_unary": lambda: faiss_index.search(users[rows[:1]], args.k),
        "model_search_unary": lambda: model.recommend_many(queries[:1]),
    }
    out: dict[str, Any] = {"batch": args.batch}
    for name, step in steps.items():
        times = []
        start = time.perf_counter()
        while len(times) < 3 or (time.perf_counter() - start < args.duration / 2 and len(times) < 200):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        out[f"{name}_ms"] = round(min(times) * 1000, 3)
    raw.set_threads(os.cpu_count() or 1)
    server_ms = out["model_search_ms"] + out["build_response_ms"] + out["serialize_ms"]
    out["server_batch_vs_faiss_time"] = round(server_ms / out["faiss_search_ms"], 3)
    out["server_unary_vs_faiss_time"] = round(
        out["model_search_unary_ms"] / out["faiss_search_unary_ms"], 3
    )
    return out


def start_server(root: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    command = [
        sys.executable, "-m", "recxfer.cli", "serve", "--artifacts", str(root),
        "--address", "127.0.0.1:0", "--reload-interval", "0", "--workers", str(args.workers),
        "--max-batch", str(max(args.batch, 256)), "--index-device", args.index_device,
        "--max-message-bytes", str(64 * 1024 * 1024), "--search-threads", str(args.search_threads),
        # Admit every call the load generator keeps in flight (the default queue is 64).
        "--max-concurrent-rpcs", str(max([64] + [int(c) for c in args.concurrency.split(",")])),
    ]
    if args.processes:
        command += ["--processes", str(args.processes)]
    if args.serve_config:  # e.g. {"batching": {"enabled": false}} (flags above still win)
        command += ["--serve-config", args.serve_config]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()
    match = re.search(r" on (\S+:\d+) ", line)
    if not match:
        process.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return process, match.group(1)


async def drive(address: str, mode: str, concurrency: int, duration: float,
                args: argparse.Namespace) -> dict[str, Any]:
    """``concurrency`` loops calling the server back to back for ``duration`` s."""
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        rng = np.random.default_rng(concurrency)
        size = args.batch if mode == "batch" else 1

        def request() -> Any:
            users = [f"u{u}" for u in rng.integers(0, args.users, size)]
            if mode == "batch":
                return stub.BatchRecommend(pb.BatchRecommendRequest(requests=[
                    pb.RecommendRequest(user_id=u, domain=DOMAIN, k=args.k, packed=args.packed)
                    for u in users
                ]), timeout=args.call_timeout)
            return stub.Recommend(pb.RecommendRequest(user_id=users[0], domain=DOMAIN, k=args.k,
                                                      packed=args.packed),
                                  timeout=args.call_timeout)

        latencies: list[float] = []
        errors = 0
        await request()  # warm-up: the connection and the first call
        start = time.perf_counter()
        stop_at = start + duration

        async def loop() -> None:
            # Closed loop: a call started before the end of the window is waited
            # for and counted, so every task completes at least one call even when
            # a call takes longer than the window (1M items, batch, c=32).
            nonlocal errors
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                try:
                    response = await request()
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t0)
                n = len(response.results) if mode == "batch" else 1
                assert n == size

        await asyncio.gather(*[loop() for _ in range(concurrency)])
        elapsed = time.perf_counter() - start
    calls = len(latencies)
    return {"mode": mode, "concurrency": concurrency, "calls": calls, "errors": errors,
            "qps": calls * size / elapsed, **percentiles(latencies or [float("nan")])}


def device_info(args: argparse.Namespace) -> str:
    gpus = faiss_gpu_count()
    cuda = ""
    try:
        import torch

        if torch.cuda.is_available() and args.index_device in ("auto", "cuda"):
            cuda = f", torch CUDA {torch.cuda.get_device_name(0)}"
    except ImportError:  # pragma: no cover
        pass
    if not faiss_available() or args.exact_index:
        where = "torch exact top-k" + ("" if faiss_available() else " (no faiss)")
    elif gpus and args.index_device != "cpu":
        where = f"faiss GPU x{gpus}"
    elif args.index_device == "cuda":
        where = "faiss CPU build (torch exact top-k on CUDA)"
    else:
        where = "faiss CPU"
    return f"{where}{cuda}; {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()})"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its live children (the
    workers of ``serve --processes``), from ``/proc``; 0 where ``/proc`` is absent."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:  # fields[1]: the parent pid
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def spread(values: list[float], digits: int = 3) -> dict[str, Any]:
    """Median over rounds, with the min/max spread and the per-round values."""
    return {"median": round(float(np.median(values)), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "rounds": [round(v, digits) for v in values]}


def run_round(number: int, index: RawIndex, users: np.ndarray, address: str,
              concurrency: list[int], args: argparse.Namespace,
              server_pid: int | None = None) -> dict[str, Any]:
    """One A B round: raw faiss, then gRPC at every mode and concurrency. Each gRPC
    run records the CPU time per query the server (``server_pid`` and its
    children) and this process (the load generator) spent."""
    raw = bench_raw(index, users, args)
    print(f"round {number}: raw faiss batch {raw['batch']['qps']:.0f} q/s, "
          f"unary {raw['unary']['qps']:.0f} q/s", flush=True)
    runs = []
    for mode in ("unary", "batch"):
        for c in concurrency:
            server0 = cpu_seconds(server_pid) if server_pid else 0.0
            client0 = time.process_time()
            run = asyncio.run(drive(address, mode, c, args.duration, args))
            queries = max(1, run["calls"] * (args.batch if mode == "batch" else 1))
            run["client_cpu_ms_per_query"] = round((time.process_time() - client0) * 1e3 / queries, 4)
            if server_pid:
                run["server_cpu_ms_per_query"] = round((cpu_seconds(server_pid) - server0) * 1e3 / queries, 4)
            runs.append(run)
            print(f"round {number}: grpc {mode:5s} c={c:<3d} {run['qps']:8.0f} q/s  "
                  f"p50 {run['p50_ms']:7.2f} ms  p99 {run['p99_ms']:7.2f} ms  "
                  f"errors {run['errors']}  cpu/query server "
                  f"{run.get('server_cpu_ms_per_query', float('nan')):.3f} ms, "
                  f"client {run['client_cpu_ms_per_query']:.3f} ms", flush=True)
    best = {mode: max(r["qps"] for r in runs if r["mode"] == mode) for mode in ("unary", "batch")}
    return {
        "round": number, "raw_faiss": raw, "grpc": runs,
        "batch_vs_raw": best["batch"] / raw["batch"]["qps"],
        "unary_vs_raw_unary": best["unary"] / raw["unary"]["qps"],
        # the serving issue's unary goal: unary at the highest concurrency / raw batch
        "unary_top_c_vs_raw_batch": [r["qps"] for r in runs if r["mode"] == "unary"][-1]
        / raw["batch"]["qps"],
        "load_average_after": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, required=True, help="catalogue size")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--seen", type=int, default=10, help="training items per user (excluded)")
    parser.add_argument("--batch", type=int, default=64, help="users per BatchRecommend")
    parser.add_argument("--concurrency", default="1,8,32", help="calls in flight, comma-separated")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved raw/gRPC rounds (ratios: median over rounds)")
    parser.add_argument("--factory", default="Flat", help="faiss index factory string")
    parser.add_argument("--params", default="", help="faiss search parameters, e.g. nprobe=16")
    parser.add_argument("--workers", type=int, default=8, help="server RPC threads")
    parser.add_argument("--index-device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="recxfer serve --index-device; cuda: the raw baseline is the "
                             "same torch CUDA index in-process")
    parser.add_argument("--exact-index", action="store_true",
                        help="write no faiss index (Flat only): the server and the raw baseline "
                             "search with torch exact top-k (recxfer.index.ExactIndex)")
    parser.add_argument("--processes", type=int, default=None,
                        help="recxfer serve --processes (default: the server's, one per core)")
    parser.add_argument("--search-threads", type=int, default=1,
                        help="server threads per search (recxfer serve --search-threads)")
    parser.add_argument("--call-timeout", type=float, default=120.0, help="deadline per call, s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve-config", metavar="FILE",
                        help="recxfer serve --serve-config FILE, e.g. "
                             '{"batching": {"enabled": false}} to measure without dynamic batching')
    parser.add_argument("--packed", action="store_true",
                        help="ask for the packed answer layout (parallel item_ids/scores)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    concurrency = [int(c) for c in args.concurrency.split(",")]
    if args.factory != "Flat" and (args.exact_index or not faiss_available()):
        parser.error(f"--factory {args.factory}: needs faiss (without it, or with --exact-index, "
                     "only Flat, searched exactly)")

    load_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="recxfer-bench-"))
    process = None
    rounds: list[dict[str, Any]] = []
    try:
        t0 = time.perf_counter()
        artifact, users = build_artifact(tmp, args)
        build_s = time.perf_counter() - t0
        print(f"artifact built in {build_s:.1f}s: {args.items} items, {args.factory}", flush=True)
        raw_index = RawIndex(artifact, args)
        print(f"raw baseline: {raw_index.backend}", flush=True)
        costs = breakdown(artifact, raw_index, users, args)
        print(f"in-process batch: faiss {costs['faiss_search_ms']} ms, model "
              f"{costs['model_search_ms']} ms, response {costs['build_response_ms']} ms", flush=True)
        recall = None
        if args.factory != "Flat":  # a faiss index (checked above)
            from recxfer.index import index_recall

            recall = index_recall(FaissIndex.load(artifact / index_file(DOMAIN), args.factory,
                                                  use_gpu=False),
                                  np.load(artifact / "domains" / DOMAIN / "item_emb.npy"),
                                  users, (args.k,), max_queries=200)
            print(f"recall vs exact: {recall}", flush=True)
        t0 = time.perf_counter()
        process, address = start_server(tmp, args)
        load_s = time.perf_counter() - t0
        for number in range(args.rounds):
            rounds.append(run_round(number, raw_index, users, address, concurrency, args,
                                    process.pid))
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    def median(values: list[float]) -> float:
        return round(float(np.median(values)), 3)

    def by_c(mode: str, key: str) -> dict[str, float]:
        return {str(c): median([r[key] for rnd in rounds for r in rnd["grpc"]
                                if r["mode"] == mode and r["concurrency"] == c])
                for c in concurrency}

    batch_ratio = spread([r["batch_vs_raw"] for r in rounds])
    unary_ratio = spread([r["unary_vs_raw_unary"] for r in rounds])
    unary_batch_ratio = spread([r["unary_top_c_vs_raw_batch"] for r in rounds])
    result = {
        "command": "python bench/serving.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "items": args.items, "dim": args.dim, "k": args.k, "users": args.users,
        "seen_per_user": args.seen, "batch_size": args.batch, "factory": args.factory,
        "params": args.params, "server_workers": args.workers,
        "server_search_threads": args.search_threads, "duration_s": args.duration,
        "serve_config": json.loads(Path(args.serve_config).read_text()) if args.serve_config else None,
        "packed": args.packed,
        "rounds_run": args.rounds, "order": "interleaved: raw, gRPC, raw, gRPC, ...",
        "device": device_info(args),
        "index_device": args.index_device, "server_processes": args.processes,
        "exact_index": args.exact_index,
        "raw_backend": raw_index.backend,
        "load_average_at_start": load_start,
        "load_average_at_end": os.getloadavg(),
        "concurrency": concurrency,
        # Medians over rounds; the per-round figures are under "rounds".
        "raw_faiss_qps": round(float(np.median([r["raw_faiss"]["batch"]["qps"] for r in rounds])), 1),
        "raw_faiss_unary_qps": round(float(np.median([r["raw_faiss"]["unary"]["qps"] for r in rounds])), 1),
        "grpc_unary_qps": by_c("unary", "qps"),
        "grpc_unary_p50_ms": by_c("unary", "p50_ms"),
        "grpc_unary_p99_ms": by_c("unary", "p99_ms"),
        "grpc_batch_qps": by_c("batch", "qps"),
        "grpc_batch_p50_ms": by_c("batch", "p50_ms"),
        "grpc_batch_p99_ms": by_c("batch", "p99_ms"),
        "batch_vs_raw": batch_ratio["median"],
        "unary_vs_raw_unary": unary_ratio["median"],
        "batch_vs_raw_spread": batch_ratio,
        "unary_vs_raw_unary_spread": unary_ratio,
        f"unary_c{concurrency[-1]}_vs_raw_batch": unary_batch_ratio,
        "server_cpu_ms_per_query": {m: by_c(m, "server_cpu_ms_per_query") for m in ("unary", "batch")},
        "client_cpu_ms_per_query": {m: by_c(m, "client_cpu_ms_per_query") for m in ("unary", "batch")},
        "errors": sum(r["errors"] for rnd in rounds for r in rnd["grpc"]),
        "inprocess_breakdown": costs,
        "index_recall_vs_exact": recall,
        "artifact_build_s": round(build_s, 1),
        "server_start_s": round(load_s, 1),
        "rounds": rounds,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"batch/raw {batch_ratio['median']} (min {batch_ratio['min']}, max {batch_ratio['max']} "
          f"over {args.rounds} rounds), unary/raw {unary_ratio['median']}, unary "
          f"c={concurrency[-1]}/raw batch {unary_batch_ratio['median']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
