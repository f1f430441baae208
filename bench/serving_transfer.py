"""Serving benchmark of the cold-start path: the item-to-item transfer vs warm users.

    python bench/serving_transfer.py --items 100000 --src-items 20000 \\
        --out bench/results/serving_transfer_100k.json

Question: does the shipped cold-start path, a ``transfer`` user scored by the
target's ``DomainTransfer`` (``ItemToItemScorer.score`` over all ``n_tgt`` items,
then ``topk_dense``), meet unary p99 < 10 ms at 100k target items?

Builds a synthetic artifact (written like ``pipeline.write_model_artifact``: the
same ``domains`` and ``transfer`` manifest entries, ``save_domain`` /
``save_transfer``, a Flat faiss index per domain):

* ``src``: ``--src-items`` items, d=``--dim``; the ``--transfer-users`` cold users
  with ``--hist-min``..``--hist-max`` seen items each, plus ``--src-users`` others;
* ``tgt``: ``--items`` items; ``--warm-users`` warm users with ``--seen`` seen items
  (embedding + faiss path) and the cold users (origin ``transfer``, no target
  history); a ``DomainTransfer`` ``src -> tgt`` of ``--components`` random csr
  ``(n_src, n_tgt)`` matrices with ``--per-row`` entries per source row,
  popularity, ``pop_weight`` 0.1, ``embedding_weight`` 0, and a random ``dae``
  term of weight 1 (``--dae-hidden`` units; by default what ``blend`` would train
  over ``--items`` target items, ``dae_hidden``: 64 at 100k), and a head: the
  first component's ``--head-size`` best items lead (10 by default, the middle of
  the blend's ``head_grid``; 0 for none);
* ``tgt_hybrid`` (unless ``--no-hybrid``): the same tables and matrices, with
  ``embedding_weight`` 1.0 (the hybrid: the transfer user's stored target
  embedding is scored against all items too).

Then, in one invocation, with the arms interleaved round by round (the order
reversed every other round, so drifting host load hits every arm alike):

1. in process (``ServingModel.recommend`` / ``recommend_from_history``, faiss at 1
   thread as the server runs it): transfer users vs warm users, and a
   ``--history-len``-item ``RecommendFromHistory``; the baseline;
2. over real gRPC (``recxfer serve --artifact`` in a subprocess on 127.0.0.1:0,
   an asyncio client here), unary ``Recommend`` / ``RecommendFromHistory`` at each
   ``--concurrency``;
3. a per-stage breakdown and a cProfile of one transfer ``Recommend``, and how
   the in-process transfer cost grows with ``n_tgt`` and history length.

Every window is bounded by ``--window`` seconds and ``--max-calls`` calls (closed
loop: calls started inside the window are waited for, under ``--call-timeout``).
About 2 minutes in all at the defaults on 2 (shared) cores, artifact build included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import os
import platform
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import grpc
import numpy as np
import scipy.sparse as sp

from flat_artifact import write_flat_artifact

from recxfer.artifacts import publish
from recxfer.index import set_search_threads, topk_dense
from recxfer.transfer.dae import DAEConfig, dae_hidden
from recxfer.types import DAEScorer, DomainEmbeddings, DomainTransfer, ItemToItemScorer, SeenItems
from recxfer.v1 import recommender_pb2 as pb
from recxfer.v1 import recommender_pb2_grpc

SRC, TGT, HYBRID = "src", "tgt", "tgt_hybrid"
COMPONENTS = ("ridge", "itemknn", "ease")
WEIGHTS = (0.5, 0.3, 0.2)
P99_TARGET_MS = 10.0


# --- the synthetic artifact ------------------------------------------------------------


def random_component(rng: np.random.Generator, n_src: int, n_tgt: int, per_row: int,
                     signed: bool) -> sp.csr_matrix:
    """``(n_src, n_tgt)`` float32 csr with ``per_row`` random columns per row (the
    rare duplicate column is summed, so a row holds ``per_row`` or slightly fewer)."""
    per_row = min(per_row, n_tgt)
    cols = rng.integers(0, n_tgt, (n_src, per_row), dtype=np.int64)
    data = (rng.standard_normal((n_src, per_row), dtype=np.float32) if signed
            else rng.random((n_src, per_row), dtype=np.float32))
    indptr = np.arange(0, n_src * per_row + 1, per_row, dtype=np.int64)
    matrix = sp.csr_matrix((data.ravel(), cols.ravel(), indptr), shape=(n_src, n_tgt))
    matrix.sum_duplicates()  # also sorts the indices
    return matrix


def build_artifact(root: Path, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """Write and publish the artifact; returns its path and the ids used by the load."""
    rng = np.random.default_rng(args.seed)
    d, n_src, n_tgt = args.dim, args.src_items, args.items
    cold = np.array([f"c{i}" for i in range(args.transfer_users)], dtype=object)
    warm = np.array([f"u{i}" for i in range(args.warm_users)], dtype=object)
    others = np.array([f"s{i}" for i in range(args.src_users)], dtype=object)

    # Source: the cold users' histories (hist-min..hist-max items) and other users'.
    src_users = np.concatenate([cold, others])
    lengths = np.concatenate([
        rng.integers(args.hist_min, args.hist_max + 1, len(cold)),
        rng.integers(args.hist_min, args.hist_max + 1, len(others)),
    ])
    src_user_idx = np.repeat(np.arange(len(src_users)), lengths)
    src_item_idx = rng.integers(0, n_src, int(lengths.sum()))
    src_pop = rng.zipf(1.3, n_src).clip(max=100_000).astype(np.int64)
    src = DomainEmbeddings(
        domain=SRC, user_ids=src_users,
        user_emb=rng.standard_normal((len(src_users), d), dtype=np.float32),
        user_origin=np.array(["warm"] * len(src_users), dtype=object),
        item_ids=np.array([f"s{j}" for j in range(n_src)], dtype=object),
        item_emb=rng.standard_normal((n_src, d), dtype=np.float32),
        seen=SeenItems.from_pairs(len(src_users), src_user_idx, src_item_idx),
        item_popularity=src_pop,
    )

    # Target: warm users with `seen` items each, cold users with none.
    tgt_users = np.concatenate([warm, cold])
    tgt_user_idx = np.repeat(np.arange(len(warm)), args.seen)
    tgt_item_idx = rng.integers(0, n_tgt, len(warm) * args.seen)
    tgt_pop = rng.zipf(1.3, n_tgt).clip(max=100_000).astype(np.int64)
    tgt = DomainEmbeddings(
        domain=TGT, user_ids=tgt_users,
        user_emb=rng.standard_normal((len(tgt_users), d), dtype=np.float32),
        user_origin=np.array(["warm"] * len(warm) + ["transfer"] * len(cold), dtype=object),
        item_ids=np.array([f"t{j}" for j in range(n_tgt)], dtype=object),
        item_emb=rng.standard_normal((n_tgt, d), dtype=np.float32),
        seen=SeenItems.from_pairs(len(tgt_users), tgt_user_idx, tgt_item_idx),
        item_popularity=tgt_pop,
    )
    names = COMPONENTS[: args.components]
    weights = WEIGHTS[: args.components]
    matrices = tuple(random_component(rng, n_src, n_tgt, args.per_row, signed=(name != "itemknn"))
                     for name in names)
    scorer = ItemToItemScorer(src.item_ids, tgt.item_ids, names, matrices, weights,
                              tgt_pop.astype(np.float32), pop_weight=0.1, embedding_weight=0.0,
                              **random_dae(rng, n_src, n_tgt, args.dae_hidden),
                              head=names[0] if args.head_size else "", head_size=args.head_size)
    domains = {SRC: src, TGT: tgt}
    transfers = {TGT: DomainTransfer(SRC, TGT, scorer)}
    if args.hybrid:
        domains[HYBRID] = replace(tgt, domain=HYBRID)
        transfers[HYBRID] = DomainTransfer(
            SRC, HYBRID, replace(scorer, embedding_weight=1.0))

    artifact = write_flat_artifact(root, domains, transfers, SRC, {"bench": vars(args)})
    publish(root, artifact.version)
    # Query-time histories for RecommendFromHistory: distinct source items each.
    histories = [list(src.item_ids[rng.choice(n_src, args.history_len, replace=False)])
                 for _ in range(512)]
    nnz = [int(m.nnz) for m in matrices]
    info = {"cold": list(cold), "warm": list(warm), "histories": histories,
            "component_nnz": nnz, "cold_history_lengths": {
                "min": int(lengths[: len(cold)].min()), "mean": float(lengths[: len(cold)].mean()),
                "max": int(lengths[: len(cold)].max())}}
    return artifact.path, info


# --- measurement helpers ----------------------------------------------------------------


def stats(latencies_s: list[float], elapsed_s: float | None = None) -> dict[str, Any]:
    if not latencies_s:
        return {"calls": 0}
    ms = np.asarray(latencies_s) * 1000
    out = {"calls": int(ms.size), "p50_ms": round(float(np.percentile(ms, 50)), 3),
           "p95_ms": round(float(np.percentile(ms, 95)), 3),
           "p99_ms": round(float(np.percentile(ms, 99)), 3),
           "mean_ms": round(float(ms.mean()), 3), "max_ms": round(float(ms.max()), 3)}
    if elapsed_s:
        out["qps"] = round(ms.size / elapsed_s, 1)
    return out


def round_orders(arms: list[str], rounds: int) -> list[list[str]]:
    """A B C, C B A, A B C, ...: every arm sees early and late slots alike."""
    return [arms if r % 2 == 0 else arms[::-1] for r in range(rounds)]


def merge(per_round: list[dict[str, Any]], latencies: list[float], elapsed: float) -> dict[str, Any]:
    out = stats(latencies, elapsed)
    out["p99_ms_per_round"] = [r.get("p99_ms") for r in per_round]
    out["p50_ms_per_round"] = [r.get("p50_ms") for r in per_round]
    return out


def in_process(model: Any, info: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """``ServingModel`` calls back to back, one thread, arms interleaved per round."""
    rng = np.random.default_rng(1)
    cold, warm, histories = info["cold"], info["warm"], info["histories"]
    arms: dict[str, Callable[[], Any]] = {
        "transfer": lambda: model.recommend(cold[rng.integers(len(cold))], TGT, args.k),
        "warm": lambda: model.recommend(warm[rng.integers(len(warm))], TGT, args.k),
        "history": lambda: model.recommend_from_history(
            SRC, histories[rng.integers(len(histories))], TGT, args.k),
    }
    contexts: dict[str, Callable[[], Any]] = {}
    if args.hybrid:
        arms["transfer_hybrid"] = lambda: model.recommend(cold[rng.integers(len(cold))], HYBRID, args.k)
        if args.blas1:
            arms["transfer_hybrid_blas1"] = arms["transfer_hybrid"]
            contexts["transfer_hybrid_blas1"] = lambda: blas_limit(1)
    # Sanity: each arm answers k items of the expected origin.
    for name, call in arms.items():
        rec = call()
        want = "warm" if name == "warm" else "transfer"
        assert rec.user_origin == want and len(rec.item_ids) == args.k, (name, rec.user_origin)
    lat: dict[str, list[float]] = {a: [] for a in arms}
    busy: dict[str, float] = {a: 0.0 for a in arms}
    rounds: dict[str, list[dict[str, Any]]] = {a: [] for a in arms}
    for order in round_orders(list(arms), args.rounds):
        for name in order:
            call, times = arms[name], []
            with contexts.get(name, contextlib.nullcontext)():
                for _ in range(20):  # warm-up (caches, allocator)
                    call()
                start = time.perf_counter()
                while time.perf_counter() - start < args.window and len(times) < args.max_calls:
                    t0 = time.perf_counter()
                    call()
                    times.append(time.perf_counter() - t0)
                elapsed = time.perf_counter() - start
            rounds[name].append(stats(times, elapsed))
            lat[name] += times
            busy[name] += elapsed
    return {name: merge(rounds[name], lat[name], busy[name]) for name in arms}


def stage_breakdown(model: Any, info: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Each stage of one transfer ``Recommend`` (k=args.k), in process: median and
    minimum of repeated runs (``min`` is robust to the shared host)."""
    from recxfer.serve import RecommendQuery
    from recxfer.serve.model import transfer_search

    transfer = model.transfers[TGT]
    scorer = transfer.scorer
    src_served, tgt_served = model.domains[SRC], model.domains[TGT]
    user = info["cold"][0]
    history = src_served.emb.seen.row(src_served.user_rows.get(user))
    hist = scorer.history_matrix([history])
    hist_f = sp.csr_matrix(hist, dtype=np.float32)
    scores = scorer.score(hist)
    empty = np.zeros(0, np.int64)
    steps: dict[str, Callable[[], Any]] = {
        "recommend_many_total": lambda: model.recommend_many([RecommendQuery(user, TGT, args.k)]),
        "transfer_search": lambda: transfer_search(scorer, [history], [args.k], [empty], [None]),
        "history_matrix": lambda: scorer.history_matrix([history]),
        "scorer_score": lambda: scorer.score(hist),
        "sparse_matmul_1_component": lambda: hist_f @ scorer.matrices[0],
        "sparse_matmul_todense_1_component": lambda: np.asarray((hist_f @ scorer.matrices[0]).todense()),
        "dense_normalise_1_component": lambda: _normalise(scores.copy()),
        "popularity_term": lambda: scores + np.float32(0.1) * scorer.popularity[None, :],
        "topk_dense": lambda: topk_dense(scores, args.k, [empty], [None]),
        "argpartition_only": lambda: np.argpartition(-scores[0], args.k - 1)[: args.k],
        "warm_recommend_many_total": lambda: model.recommend_many(
            [RecommendQuery(info["warm"][0], TGT, args.k)]),
        "warm_faiss_search": lambda: tgt_served.index.search(tgt_served.emb.user_emb[:1], args.k + args.seen),
    }
    if HYBRID in model.transfers:
        hscorer, hserved = model.transfers[HYBRID].scorer, model.domains[HYBRID]
        u = hserved.emb.user_emb[hserved.user_rows.get(user)][None, :]  # (1, d)
        v = hserved.emb.item_emb
        embedding_term = lambda: u @ v.T  # noqa: E731  what score() computes
        hybrid_total = lambda: model.recommend_many([RecommendQuery(user, HYBRID, args.k)])  # noqa: E731
        steps.update({
            "hybrid_recommend_many_total": hybrid_total,
            "hybrid_recommend_many_total_blas1": hybrid_total,
            "hybrid_embedding_term_u_at_V_T": embedding_term,
            "hybrid_embedding_term_u_at_V_T_blas1": embedding_term,
            "proposed_single_query_path_hybrid_blas1": lambda: proposed_single_query(
                hscorer, history, args.k, empty, u, v),
        })
    # The proposed one-query path (bench/serving_transfer.py only), checked against serving.
    served_top = transfer_search(scorer, [history], [args.k], [empty], [None])[0]
    fast_top = proposed_single_query(scorer, history, args.k, empty)
    agree = {"topk_overlap": round(len(np.intersect1d(served_top[0], fast_top[0])) / args.k, 3),
             "same_order": bool(np.array_equal(served_top[0], fast_top[0])),
             "max_abs_score_diff": float(np.max(np.abs(np.sort(served_top[1]) - np.sort(fast_top[1]))))}
    steps["proposed_single_query_path"] = lambda: proposed_single_query(scorer, history, args.k, empty)
    out: dict[str, Any] = {"history_len": int(len(history)), "k": args.k,
                           "proposed_single_query_agreement": agree}
    for name, step in steps.items():
        times = []
        # *_blas1: the whole timing loop under one BLAS limit of 1 thread (entering
        # threadpoolctl's context costs ~1 ms, so never per call).
        with (blas_limit(1) if name.endswith("_blas1") else contextlib.nullcontext()):
            start = time.perf_counter()
            while len(times) < 5 or (time.perf_counter() - start < 0.4 and len(times) < 300):
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
        out[name] = {"median_ms": round(float(np.median(times)) * 1000, 4),
                     "min_ms": round(min(times) * 1000, 4)}
    return out


def proposed_single_query(scorer: ItemToItemScorer, history: np.ndarray, k: int,
                          exclude: np.ndarray, user_emb: np.ndarray | None = None,
                          item_emb: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A prototype of a one-history fast path of ``transfer_search`` (NOT what
    serving runs): per component, gather the history's csr rows and scatter-add
    them with one ``np.bincount`` (no scipy objects), scale in place, then one
    partition over the whole score vector (no boolean mask, gather or NaN scan).
    Same formula; float64 accumulation, so scores agree to ~1e-6, not bitwise."""
    h = np.unique(np.asarray(history, np.int64))
    n_tgt = len(scorer.tgt_item_ids)
    out = np.zeros(n_tgt, np.float32)
    for matrix, weight in zip(scorer.matrices, scorer.weights):
        if weight == 0:
            continue
        starts, ends = matrix.indptr[h], matrix.indptr[h + 1]
        cols = np.concatenate([matrix.indices[a:b] for a, b in zip(starts, ends)])
        vals = np.concatenate([matrix.data[a:b] for a, b in zip(starts, ends)])
        part = np.bincount(cols, weights=vals, minlength=n_tgt)  # (n_tgt,) float64
        scale = np.abs(part).max(initial=0.0)
        if scale > 0:
            out += (part * (weight / scale)).astype(np.float32)
    if scorer.embedding_weight and user_emb is not None and item_emb is not None:
        part = item_emb @ np.asarray(user_emb, np.float32).reshape(-1)  # (n_tgt,)
        scale = float(np.abs(part).max(initial=0.0))
        if scale > 0:
            out += np.float32(scorer.embedding_weight / scale) * part
    if scorer.pop_weight:
        top = float(scorer.popularity.max(initial=0.0))
        if top > 0:
            out += np.float32(scorer.pop_weight / top) * scorer.popularity
    if len(exclude):
        out[exclude] = -np.inf
    kth = -np.partition(-out, k - 1)[k - 1]
    above = np.flatnonzero(out > kth)
    chosen = np.concatenate([above, np.flatnonzero(out == kth)[: k - above.size]])
    chosen = chosen[np.lexsort((chosen, -out[chosen].astype(np.float64)))]
    return chosen, out[chosen]


def blas_limit(n: int) -> Any:
    """A context limiting numpy/scipy's BLAS to ``n`` threads (threadpoolctl)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(n, user_api="blas")


def _normalise(part: np.ndarray) -> np.ndarray:
    scale = np.abs(part).max(axis=1, keepdims=True)
    np.divide(part, scale, out=part, where=scale > 0)
    return part


def profile(model: Any, info: dict[str, Any], args: argparse.Namespace, calls: int = 300) -> dict[str, Any]:
    """cProfile of ``calls`` transfer ``Recommend`` calls: top functions by own time."""
    cold = info["cold"]
    profiler = cProfile.Profile()
    profiler.enable()
    for i in range(calls):
        model.recommend(cold[i % len(cold)], TGT, args.k)
    profiler.disable()
    buffer = io.StringIO()
    st = pstats.Stats(profiler, stream=buffer)
    total = st.total_tt
    rows = []
    for (file, line, func), (cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        rows.append((tt, ct, nc, f"{Path(file).name}:{line}({func})"))
    rows.sort(reverse=True)
    top = [{"function": f, "calls_per_query": round(nc / calls, 2),
            "own_ms_per_query": round(tt / calls * 1000, 4),
            "cumulative_ms_per_query": round(ct / calls * 1000, 4),
            "own_share": round(tt / total, 3)} for tt, ct, nc, f in rows[:20]]
    by_cum = sorted(rows, key=lambda r: -r[1])
    cumulative = [{"function": f, "cumulative_ms_per_query": round(ct / calls * 1000, 4)}
                  for _, ct, _, f in by_cum[:15]]
    return {"calls": calls, "profiled_ms_per_query": round(total / calls * 1000, 4),
            "top_own_time": top, "top_cumulative": cumulative}


def random_dae(rng: np.random.Generator, n_src: int, n_tgt: int, hidden: int) -> dict[str, Any]:
    """``ItemToItemScorer`` keywords of a random ``dae`` term of ``hidden`` units
    (weight 1), or none when ``hidden`` is 0."""
    if hidden < 0:
        hidden = dae_hidden(DAEConfig(), n_tgt)
    if hidden == 0:
        return {}
    scale = np.float32(hidden ** -0.5)
    dae = DAEScorer(rng.standard_normal((n_src, hidden), dtype=np.float32) * scale,
                    np.zeros(hidden, np.float32),
                    rng.standard_normal((n_tgt, hidden), dtype=np.float32) * scale,
                    rng.standard_normal(n_tgt, dtype=np.float32))
    return {"dae": dae, "dae_weight": 1.0}


def cost_scaling(args: argparse.Namespace) -> dict[str, Any]:
    """In-process ``transfer_search`` (one query, k=args.k) vs ``n_tgt`` (history
    ``--history-len``) and vs history length (at ``--items``), on fresh random
    scorers like the artifact's: median and minimum over a bounded number of calls."""
    from recxfer.serve.model import transfer_search

    rng = np.random.default_rng(7)
    empty = np.zeros(0, np.int64)

    def scorer_for(n_tgt: int) -> ItemToItemScorer:
        names = COMPONENTS[: args.components]
        mats = tuple(random_component(rng, args.src_items, n_tgt, args.per_row, name != "itemknn")
                     for name in names)
        return ItemToItemScorer(np.arange(args.src_items).astype(object), np.arange(n_tgt).astype(object),
                                names, mats, WEIGHTS[: args.components],
                                rng.random(n_tgt, dtype=np.float32), 0.1,
                                **random_dae(rng, args.src_items, n_tgt, args.dae_hidden))

    def timing(scorer: ItemToItemScorer, hist_len: int) -> dict[str, float]:
        hists = [rng.choice(args.src_items, hist_len, replace=False) for _ in range(64)]
        for h in hists[:5]:
            transfer_search(scorer, [h], [args.k], [empty], [None])
        times = []
        start = time.perf_counter()
        while len(times) < 10 or (time.perf_counter() - start < 0.6 and len(times) < 400):
            h = hists[len(times) % len(hists)]
            t0 = time.perf_counter()
            transfer_search(scorer, [h], [args.k], [empty], [None])
            times.append(time.perf_counter() - t0)
        return {"median_ms": round(float(np.median(times)) * 1000, 3),
                "min_ms": round(min(times) * 1000, 3), "calls": len(times)}

    by_items = {}
    for n_tgt in args.scaling_items:
        scorer = scorer_for(n_tgt)
        by_items[str(n_tgt)] = timing(scorer, args.history_len)
        if n_tgt != args.items:
            del scorer
    scorer = scorer_for(args.items)
    by_history = {str(h): timing(scorer, h) for h in (5, 20, 50, 200) if h <= args.src_items}
    return {"components": args.components, "per_row": args.per_row,
            "by_target_items_history_%d" % args.history_len: by_items,
            "by_history_len_at_%d_items" % args.items: by_history}


# --- gRPC -------------------------------------------------------------------------------


def start_server(artifact: Path, args: argparse.Namespace,
                 env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    command = [
        sys.executable, "-m", "recxfer.cli", "serve", "--artifact", str(artifact),
        "--address", "127.0.0.1:0", "--workers", str(args.workers), "--index-device", "cpu",
        "--search-threads", "1",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env=None if env is None else {**os.environ, **env})
    line = process.stdout.readline()  # type: ignore[union-attr]
    match = re.search(r" on (127\.0\.0\.1:\d+) ", line)
    if not match:
        process.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return process, match.group(1)


async def grpc_rounds(address: str, info: dict[str, Any], args: argparse.Namespace,
                      blas1_address: str | None = None) -> dict[str, Any]:
    """Per concurrency: rounds of the arms interleaved, each a bounded window of
    ``c`` loops calling back to back (closed loop) on one channel per server.
    ``blas1_address``: a second server (OPENBLAS_NUM_THREADS=1) for the hybrid arm."""
    cold, warm, histories = info["cold"], info["warm"], info["histories"]
    rng = np.random.default_rng(2)
    out: dict[str, Any] = {}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        timeout = args.call_timeout
        arms: dict[str, Callable[[], Any]] = {
            "transfer": lambda: stub.Recommend(pb.RecommendRequest(
                user_id=cold[rng.integers(len(cold))], domain=TGT, k=args.k, packed=args.packed), timeout=timeout),
            "warm": lambda: stub.Recommend(pb.RecommendRequest(
                user_id=warm[rng.integers(len(warm))], domain=TGT, k=args.k, packed=args.packed), timeout=timeout),
            "history": lambda: stub.RecommendFromHistory(pb.RecommendFromHistoryRequest(
                source_domain=SRC, source_item_ids=histories[rng.integers(len(histories))],
                target_domain=TGT, k=args.k, packed=args.packed), timeout=timeout),
        }
        if args.hybrid:
            arms["transfer_hybrid"] = lambda: stub.Recommend(pb.RecommendRequest(
                user_id=cold[rng.integers(len(cold))], domain=HYBRID, k=args.k, packed=args.packed), timeout=timeout)
        if args.hybrid and blas1_address is not None:
            channel1 = grpc.aio.insecure_channel(blas1_address)
            stub1 = recommender_pb2_grpc.RecommenderStub(channel1)
            arms["transfer_hybrid_blas1"] = lambda: stub1.Recommend(pb.RecommendRequest(
                user_id=cold[rng.integers(len(cold))], domain=HYBRID, k=args.k, packed=args.packed), timeout=timeout)
        kinds = {"warm": pb.USER_KIND_WARM}
        for name, call in arms.items():  # warm-up and sanity
            response = await call()
            assert len(response.item_ids if args.packed else response.items) == args.k, name
            assert response.user_kind == kinds.get(name, pb.USER_KIND_TRANSFER), name
        for c in args.concurrency:
            lat: dict[str, list[float]] = {a: [] for a in arms}
            busy: dict[str, float] = {a: 0.0 for a in arms}
            errors: dict[str, int] = {a: 0 for a in arms}
            rounds: dict[str, list[dict[str, Any]]] = {a: [] for a in arms}
            for order in round_orders(list(arms), args.grpc_rounds):
                for name in order:
                    call, times = arms[name], []
                    for _ in range(5 * c):
                        await call()
                    start = time.perf_counter()
                    stop_at = start + args.window
                    budget = [args.max_calls]

                    async def loop() -> None:
                        while time.perf_counter() < stop_at and budget[0] > 0:
                            budget[0] -= 1
                            t0 = time.perf_counter()
                            try:
                                await call()
                            except grpc.aio.AioRpcError:
                                errors[name] += 1
                                continue
                            times.append(time.perf_counter() - t0)

                    await asyncio.gather(*[loop() for _ in range(c)])
                    elapsed = time.perf_counter() - start
                    rounds[name].append(stats(times, elapsed))
                    lat[name] += times
                    busy[name] += elapsed
            out[str(c)] = {name: {**merge(rounds[name], lat[name], busy[name]),
                                  "errors": errors[name]} for name in arms}
            line = "  ".join(f"{n} p50 {v['p50_ms']:.2f} p99 {v['p99_ms']:.2f} ms {v['qps']:.0f} q/s"
                             for n, v in out[str(c)].items())
            print(f"grpc c={c}: {line}", flush=True)
        if args.hybrid and blas1_address is not None:
            await channel1.close()
    return out


# --- main -------------------------------------------------------------------------------


def thread_info() -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        import torch

        out["torch_threads"] = torch.get_num_threads()
        out["torch_interop_threads"] = torch.get_num_interop_threads()
    except ImportError:  # pragma: no cover
        out["torch_threads"] = None
    try:
        import faiss

        out["faiss_omp_max_threads_default"] = faiss.omp_get_max_threads()
    except ImportError:  # pragma: no cover
        pass
    try:
        from threadpoolctl import threadpool_info

        out["threadpools"] = [{k: p.get(k) for k in ("user_api", "internal_api", "num_threads")}
                              for p in threadpool_info()]
    except ImportError:  # pragma: no cover
        pass
    out["env"] = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                            "OPENBLAS_NUM_THREADS") if k in os.environ}
    return out


def ratios(table: dict[str, Any], arms: tuple[str, ...]) -> dict[str, Any]:
    base = table["warm"]
    out = {}
    for arm in arms:
        if arm in table:
            out[f"{arm}/warm"] = {m: round(table[arm][m] / base[m], 3)
                                  for m in ("p50_ms", "p95_ms", "p99_ms") if base.get(m)}
            out[f"{arm}/warm"]["qps"] = round(table[arm]["qps"] / base["qps"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000, help="target catalogue size")
    parser.add_argument("--src-items", type=int, default=20_000, help="source catalogue size")
    parser.add_argument("--out", default="bench/results/serving_transfer_100k.json")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--warm-users", type=int, default=20_000)
    parser.add_argument("--seen", type=int, default=10, help="seen items per warm target user")
    parser.add_argument("--transfer-users", type=int, default=2_000)
    parser.add_argument("--src-users", type=int, default=3_000, help="source-only users")
    parser.add_argument("--hist-min", type=int, default=5)
    parser.add_argument("--hist-max", type=int, default=50)
    parser.add_argument("--components", type=int, default=3, choices=(1, 2, 3))
    parser.add_argument("--per-row", type=int, default=200, help="entries per source row")
    parser.add_argument("--dae-hidden", type=int, default=-1,
                        help="hidden units of the transfer's dae term; -1: what blend's DAEConfig "
                             "gives at --items (dae_hidden: 64 at 100k); 0: no dae term")
    parser.add_argument("--head-size", type=int, default=10,
                        help="the blend's head: the first component's top N items lead (0: none)")
    parser.add_argument("--no-hybrid", dest="hybrid", action="store_false",
                        help="skip the embedding_weight=1.0 variant")
    parser.add_argument("--no-blas1", dest="blas1", action="store_false",
                        help="skip the hybrid arm with BLAS limited to 1 thread")
    parser.add_argument("--history-len", type=int, default=20, help="RecommendFromHistory items")
    parser.add_argument("--legacy-layout", dest="packed", action="store_false",
                        help="ask for the legacy repeated-message answer instead of the packed "
                             "layout (parallel item_ids/scores) that recxfer's client asks for")
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--rounds", type=int, default=4, help="in-process rounds per arm")
    parser.add_argument("--grpc-rounds", type=int, default=2, help="gRPC rounds per arm and c")
    parser.add_argument("--window", type=float, default=2.0, help="seconds per measurement window")
    parser.add_argument("--max-calls", type=int, default=3000, help="calls per window at most")
    parser.add_argument("--scaling-items", default="25000,50000,100000,200000",
                        help="n_tgt values of the in-process cost scaling ('' skips it)")
    parser.add_argument("--workers", type=int, default=8, help="server RPC threads")
    parser.add_argument("--call-timeout", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    args.scaling_items = [int(n) for n in args.scaling_items.split(",") if n]

    command = "python bench/serving_transfer.py " + " ".join(argv if argv is not None else sys.argv[1:])
    load_start = os.getloadavg()
    wall0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="recxfer-bench-transfer-"))
    process = process1 = None
    try:
        t0 = time.perf_counter()
        artifact, info = build_artifact(tmp, args)
        build_s = time.perf_counter() - t0
        print(f"artifact built in {build_s:.1f}s: src {args.src_items} items -> tgt {args.items} "
              f"items, {args.components} components x {args.per_row}/row {info['component_nnz']}",
              flush=True)

        from recxfer.serve import ServingModel

        t0 = time.perf_counter()
        model = ServingModel.from_artifact(artifact, device="cpu")
        model_load_s = time.perf_counter() - t0
        threads = {"before_set_search_threads": thread_info()}
        set_search_threads(1)  # as each server RPC thread runs faiss
        threads["after_set_search_threads_1 (as the server's RPC threads)"] = thread_info()

        local = in_process(model, info, args)
        for name, v in local.items():
            print(f"in-process {name:15s} p50 {v['p50_ms']:6.2f}  p95 {v['p95_ms']:6.2f}  "
                  f"p99 {v['p99_ms']:6.2f} ms  {v['qps']:7.0f} q/s  ({v['calls']} calls)", flush=True)
        breakdown = stage_breakdown(model, info, args)
        prof = profile(model, info, args)
        print(f"profiled transfer Recommend: {prof['profiled_ms_per_query']} ms/query "
              f"(under cProfile)", flush=True)
        del model

        t0 = time.perf_counter()
        process, address = start_server(artifact, args)
        server_start_s = time.perf_counter() - t0
        blas1_address = None
        if args.hybrid and args.blas1:
            process1, blas1_address = start_server(artifact, args, {"OPENBLAS_NUM_THREADS": "1"})
        remote = asyncio.run(grpc_rounds(address, info, args, blas1_address))
        for proc in (process, process1):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
        for proc in (process, process1):
            if proc is not None:
                proc.wait(timeout=30)

        scaling = cost_scaling(args) if args.scaling_items else None
        if scaling:
            print(f"cost scaling: {json.dumps(scaling)}", flush=True)
    finally:
        for proc in (process, process1):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    arms = ("transfer", "transfer_hybrid", "transfer_hybrid_blas1", "history")
    grpc_c1 = remote.get("1", {})
    verdict = {
        arm: {"in_process_p99_ms": local[arm]["p99_ms"],
              "grpc_c1_p99_ms": grpc_c1.get(arm, {}).get("p99_ms"),
              "meets_p99_lt_10ms_in_process": local[arm]["p99_ms"] < P99_TARGET_MS,
              "meets_p99_lt_10ms_grpc_c1": (grpc_c1.get(arm, {}).get("p99_ms") or 1e9) < P99_TARGET_MS}
        for arm in arms if arm in local
    }
    result = {
        "command": command,
        "question": "unary p99 < 10 ms for the item-to-item transfer at the target catalogue size",
        "items": args.items, "src_items": args.src_items, "dim": args.dim, "k": args.k,
        "warm_users": args.warm_users, "warm_seen_per_user": args.seen,
        "transfer_users": args.transfer_users, "cold_source_history": info["cold_history_lengths"],
        "transfer": {"components": list(COMPONENTS[: args.components]),
                     "weights": list(WEIGHTS[: args.components]), "per_row": args.per_row,
                     "nnz": info["component_nnz"], "pop_weight": 0.1,
                     "embedding_weight": {TGT: 0.0, **({HYBRID: 1.0} if args.hybrid else {})},
                     "matrix_layout": "random columns, uniform over the target catalogue",
                     "head": {"component": COMPONENTS[0] if args.head_size else "", "size": args.head_size}},
        "history_len": args.history_len, "index": "Flat (faiss, CPU, 1 thread per search)",
        "notes": [
            "transfer: Recommend of a cold user (origin transfer, source history of "
            f"{args.hist_min}-{args.hist_max} items) -> ItemToItemScorer.score + topk_dense",
            "warm: Recommend of a warm user -> faiss Flat search (k + seen), the baseline",
            f"history: RecommendFromHistory with {args.history_len} source ids; the artifact has no "
            "inductive user encoder (as for blend), so no embedding term",
            "transfer_hybrid: same matrices with embedding_weight 1.0 (stored target user embedding "
            "scored against all items: one (1, d) @ (d, n_tgt) product more)",
            "arms interleaved per round (order reversed every other round); windows bounded by "
            f"{args.window}s and {args.max_calls} calls; server in a subprocess on 127.0.0.1, "
            "client (asyncio) in this process: both share the host's cores",
        ],
        "host": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                 "python": platform.python_version(), "platform": platform.platform(),
                 "load_average_at_start": load_start, "load_average_at_end": os.getloadavg()},
        "threads": threads,
        "server": {"workers": args.workers, "search_threads": 1, "index_device": "cpu",
                   "answer_layout": "packed" if args.packed else "legacy"},
        "in_process": local,
        "in_process_ratios": ratios(local, arms),
        "grpc_unary": remote,
        "grpc_ratios": {c: ratios(t, arms) for c, t in remote.items()},
        "verdict": verdict,
        "in_process_stage_breakdown": breakdown,
        "profile_transfer_recommend": prof,
        "cost_scaling": scaling,
        "cost_note": (
            "Per transfer query: history_matrix O(h log h); per component a sparse (1, n_src) @ "
            "(n_src, n_tgt) product touching ~h x per_row entries, densified to n_tgt floats, then "
            "abs-max, divide and weighted add over n_tgt; the popularity term over n_tgt; the "
            "hybrid term a (1, d) @ (d, n_tgt) product; topk_dense: isnan, an n_tgt boolean mask, "
            "flatnonzero, a gather and a partition over n_tgt. Total O(components x (h x per_row "
            "+ n_tgt) + d x n_tgt [hybrid] + n_tgt): linear in the target catalogue, per query, "
            "with no index to prune it; see cost_scaling for the measured slope."
        ),
        "timings_s": {"artifact_build": round(build_s, 1), "model_load": round(model_load_s, 1),
                      "server_start": round(server_start_s, 1),
                      "total": round(time.perf_counter() - wall0, 1)},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"verdict: {json.dumps(verdict)}\nwrote {args.out} in {result['timings_s']['total']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
