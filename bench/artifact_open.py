"""How fast a server opens a large artifact, and how much memory it then holds.

    python bench/artifact_open.py --out bench/results/artifact_open.json

Question (the scale issue): does a 1M-user, 1M-item artifact open in the server in
< 10 s on 2 cores, with RSS close to the embedding bytes?

Builds, under a temporary folder, a synthetic artifact the way the default
(``blend``) job writes one (``pipeline.write_model_artifact``: ``write_artifact``,
``save_domain`` per domain, a ``Flat`` faiss index per domain, ``save_transfer``,
the same ``domains``/``transfer`` manifest entries), then ``publish``:

* ``--domains`` domains (default 2: ``src``, ``tgt``) sharing one user table, as
  the shared encoder exports it: ``--users`` users, the same ids and the same
  ``(users, --dim)`` float32 embeddings in every domain; ``--items`` items split
  evenly across the domains; ``--seen`` seen items per user per domain; in a
  target ~20% of the users are ``transfer`` users (no target history);
* per target, an item-to-item transfer from ``src`` (one csr component with
  ``--per-row`` entries per source item, popularity, as ``blend`` stores it).

Then opens it in fresh subprocesses, each exactly as ``recxfer serve --artifacts
ROOT`` does (``ArtifactWatcher.check_now`` with ``ServingModel.from_artifact`` at
the ``ServeConfig`` defaults, CPU index), timed to the point the server could
answer; each then answers one ``Recommend`` over gRPC (``create_server`` on
127.0.0.1:0, the project's client) to prove it works, and reports its RSS:

1. ``first_open``: after the writers' verification record is removed (as after a
   copy to a serving host): every file is hashed, and the result is recorded;
2. ``second_open``: a new process; the recorded result is reused (no hashing).

The page cache is warm (the files were just written; this host cannot drop it):
a cold open also reads the files from disk (first open: all of them, to hash).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SRC = "src"


def _proc_status() -> dict[str, float]:
    """This process's memory from ``/proc/self/status`` in GB (VmRSS, RssAnon,
    RssFile, VmHWM = peak RSS)."""
    out = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = round(int(value.split()[0]) * 1024 / 1e9, 3)
    return out


def random_component(rng: np.random.Generator, n_src: int, n_tgt: int, per_row: int):
    """``(n_src, n_tgt)`` float32 csr, ``per_row`` random columns per row (summed
    duplicates: a row holds ``per_row`` or slightly fewer), canonical."""
    import scipy.sparse as sp

    per_row = min(per_row, n_tgt)
    cols = rng.integers(0, n_tgt, (n_src, per_row), dtype=np.int64)
    data = rng.random((n_src, per_row), dtype=np.float32)
    indptr = np.arange(0, n_src * per_row + 1, per_row, dtype=np.int64)
    matrix = sp.csr_matrix((data.ravel(), cols.ravel().astype(np.int32), indptr), shape=(n_src, n_tgt))
    matrix.sum_duplicates()
    return matrix


def build_artifact(root: Path, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """Write and publish the artifact (see the module doc); returns its path and
    the build's timings and sizes."""
    from flat_artifact import write_flat_artifact

    from recxfer.artifacts import publish
    from recxfer.types import DomainEmbeddings, DomainTransfer, ItemToItemScorer, SeenItems

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    n_users, d = args.users, args.dim
    names = [SRC] + [f"tgt{i}" if args.domains > 2 else "tgt" for i in range(1, args.domains)]
    per_domain = [args.items // args.domains + (1 if i < args.items % args.domains else 0)
                  for i in range(args.domains)]
    # External ids as a data set has them: not in row order, of varying length.
    user_ids = np.array([f"user-{i}" for i in rng.permutation(n_users)], dtype=object)
    user_emb = rng.standard_normal((n_users, d), dtype=np.float32)
    domains: dict[str, DomainEmbeddings] = {}
    for name, n_items in zip(names, per_domain):
        item_ids = np.array([f"{name}-item-{j}" for j in rng.permutation(n_items)], dtype=object)
        warm = np.ones(n_users, bool) if name == SRC else rng.random(n_users) < 0.8
        user_idx = np.repeat(np.flatnonzero(warm), args.seen)
        item_idx = rng.integers(0, n_items, len(user_idx))
        domains[name] = DomainEmbeddings(
            domain=name, user_ids=user_ids, user_emb=user_emb,
            user_origin=np.where(warm, "warm", "transfer").astype(object),
            item_ids=item_ids, item_emb=rng.standard_normal((n_items, d), dtype=np.float32),
            seen=SeenItems.from_pairs(n_users, user_idx, item_idx),
            item_popularity=np.bincount(item_idx, minlength=n_items).astype(np.int64),
        )
    transfers = {}
    for name in names[1:]:
        src, tgt = domains[SRC], domains[name]
        matrix = random_component(rng, len(src.item_ids), len(tgt.item_ids), args.per_row)
        scorer = ItemToItemScorer(src.item_ids, tgt.item_ids, ("itemknn",), (matrix,), (1.0,),
                                  tgt.item_popularity.astype(np.float32), pop_weight=0.1,
                                  embedding_weight=0.0)
        transfers[name] = DomainTransfer(SRC, name, scorer)
    timings["generate_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    config = {"bench": {k: v for k, v in vars(args).items() if isinstance(v, int)}}
    artifact = write_flat_artifact(root, domains, transfers, SRC, config)  # as pipeline writes
    timings["write_s"] = time.perf_counter() - t0  # includes its hashing and record
    t0 = time.perf_counter()
    publish(root, artifact.version)
    timings["publish_s"] = time.perf_counter() - t0  # verifies (hashes) again
    query_user = str(user_ids[int(np.flatnonzero(domains[names[-1]].user_origin == "warm")[0])])
    info = {
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "domains": {n: {"users": n_users, "items": len(e.item_ids)} for n, e in domains.items()},
        # What serving needs in memory: the user table once (shared), every item table.
        "embedding_bytes": int(user_emb.nbytes + sum(e.item_emb.nbytes for e in domains.values())),
        "query": {"user_id": query_user, "domain": names[-1]},
        "transfer_nnz": {t: int(tr.scorer.matrices[0].nnz) for t, tr in transfers.items()},
    }
    return artifact.path, info


def child(root: str, user_id: str, domain: str) -> None:
    """One server start: load as ``recxfer serve --artifacts ROOT`` does, answer
    one ``Recommend`` over gRPC; print a JSON line."""
    t_start = time.perf_counter()
    from functools import partial

    from recxfer.serve import ArtifactWatcher, ModelHolder, ServingModel, create_server
    from recxfer.serve.client import RecommenderClient
    from recxfer.serve.config import ServeConfig

    t_imported = time.perf_counter()
    config = ServeConfig()
    holder = ModelHolder()
    loader = partial(ServingModel.from_artifact, device="cpu", max_k=config.max_k,
                     max_filter_ids=config.max_filter_ids)
    watcher = ArtifactWatcher(root, holder, loader=loader)
    t0 = time.perf_counter()
    loaded = watcher.check_now()
    open_s = time.perf_counter() - t0
    if not loaded:
        raise SystemExit(f"not loaded: {watcher.last_error}")
    rss = _proc_status()
    server, port = create_server("127.0.0.1:0", holder, config)
    server.start()
    t0 = time.perf_counter()
    with RecommenderClient(f"127.0.0.1:{port}") as client:
        answer = client.recommend(user_id, domain, k=10)
    rpc_s = time.perf_counter() - t0
    rss_after_rpc = _proc_status()
    server.stop(grace=None)
    print(json.dumps({
        "import_s": round(t_imported - t_start, 3), "open_s": round(open_s, 3),
        "ready_s": round(t_imported - t_start + open_s, 3), "first_rpc_s": round(rpc_s, 4),
        "rss_gb_after_open": rss, "rss_gb_after_first_rpc": rss_after_rpc,
        "answer": {"items": answer.item_ids[:3], "n": len(answer.item_ids),
                   "user_kind": answer.user_kind, "version": answer.model_version},
    }), flush=True)


def run_child(root: Path, query: dict[str, str], profile: Path | None = None) -> dict[str, Any]:
    cmd = [sys.executable]
    if profile is not None:
        cmd += ["-m", "cProfile", "-o", str(profile)]
    cmd += [str(Path(__file__).resolve()), "--child", str(root), query["user_id"], query["domain"]]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_wall_s"] = round(wall, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=3, metavar=("ROOT", "USER", "DOMAIN"), help=argparse.SUPPRESS)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=1_000_000, help="in all, split across domains")
    parser.add_argument("--domains", type=int, default=2)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seen", type=int, default=5, help="seen items per warm user per domain")
    parser.add_argument("--per-row", type=int, default=10, help="transfer entries per source item")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None, help="build here (default: a temp dir)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="also write a cProfile of each open here (PREFIX-first.prof, ...)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here")
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    if args.domains < 2:
        parser.error("--domains must be >= 2 (a source and a target)")
    load_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="artifact-open-", dir=args.dir))
    try:
        root = tmp / "artifacts"
        path, info = build_artifact(root, args)
        from recxfer.artifacts.info import disk_bytes
        from recxfer.artifacts.store import VERIFIED

        record = path / VERIFIED
        record.unlink()  # as after a copy to a serving host
        prof = (lambda tag: None) if args.profile is None else (
            lambda tag: Path(f"{args.profile}-{tag}.prof"))
        first = run_child(root, info["query"], prof("first"))
        first["recorded"] = record.is_file()
        record_mtime = record.stat().st_mtime_ns if record.is_file() else None
        second = run_child(root, info["query"], prof("second"))
        second["record_reused"] = record.is_file() and record.stat().st_mtime_ns == record_mtime
        emb_gb = info["embedding_bytes"] / 1e9
        result = {
            "command": "python bench/artifact_open.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "users": args.users, "items": args.items, "dim": args.dim, "seen_per_user": args.seen,
            "transfer_per_row": args.per_row, "domains": info["domains"],
            "transfer_nnz": info["transfer_nnz"],
            "device": f"CPU; {os.cpu_count()} cores ({platform.machine()}), warm page cache",
            "python": platform.python_version(),
            "artifact_disk_gb": round(disk_bytes(path) / 1e9, 3),
            "embedding_bytes": info["embedding_bytes"], "embedding_gb": round(emb_gb, 3),
            "build": info["timings"],
            "first_open": first, "second_open": second,
            "rss_over_embedding_bytes": {
                "first_open": round(first["rss_gb_after_open"]["VmRSS"] / emb_gb, 2),
                "second_open": round(second["rss_gb_after_open"]["VmRSS"] / emb_gb, 2),
            },
            "goal_open_under_10s": bool(first["ready_s"] < 10 and second["ready_s"] < 10),
            "load_average_at_start": [round(x, 2) for x in load_start],
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
