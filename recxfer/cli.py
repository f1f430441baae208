"""The ``recxfer`` command: parses arguments, then calls stage functions."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

EXIT_OK, EXIT_BAD_INPUT, EXIT_ERROR = 0, 2, 1


def _cmd_generate_samples(args: argparse.Namespace) -> int:
    from recxfer.data.synthetic import SyntheticConfig, write_samples

    for path in write_samples(args.out, SyntheticConfig(seed=args.seed)):
        print(f"wrote {path}")
    return EXIT_OK


def _cmd_train(args: argparse.Namespace) -> int:
    from recxfer.eval import markdown_table
    from recxfer.pipeline import load_config, train_evaluate_publish

    result = train_evaluate_publish(args.data, args.artifacts, load_config(args.config))
    print(markdown_table(result.results))
    print(f"\npublished {result.artifact.path} as {Path(args.artifacts) / 'current'}")
    print("timings: " + ", ".join(f"{k}={v:.1f}" for k, v in result.timings.items()))
    return EXIT_OK


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from recxfer.eval import markdown_table, write_results
    from recxfer.pipeline import evaluate_artifact

    results = evaluate_artifact(args.data, args.artifact)
    print(markdown_table(results))
    if args.out:
        write_results(results, args.out)
        print(f"\nwrote {args.out}")
    return EXIT_OK


def _serve_until_signal(artifact: Path, address: str, max_k: int, hint: str | None) -> int:
    from recxfer.serve import ModelHolder, ServingModel, create_server

    holder = ModelHolder(ServingModel.from_artifact(artifact))
    try:
        server, port = create_server(address, holder, max_k=max_k)
    except RuntimeError as exc:
        print(f"error: {exc} (is another server running there?)", file=sys.stderr)
        return EXIT_ERROR
    server.start()
    host = address.rsplit(":", 1)[0]
    print(f"serving {holder.get().version} on {host}:{port} (Ctrl-C stops)", flush=True)
    if hint:
        print(hint.format(address=f"{host}:{port}"), flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    print("shutting down", flush=True)
    server.stop()
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    artifact = Path(args.artifact) if args.artifact else Path(args.artifacts) / "current"
    return _serve_until_signal(artifact, args.address, args.max_k, None)


def _cmd_query(args: argparse.Namespace) -> int:
    import grpc

    from recxfer.serve.client import RecommenderClient

    with RecommenderClient(args.address, timeout=args.timeout) as client:
        try:
            rec = client.recommend(args.user, args.domain, args.k, not args.include_seen)
        except grpc.RpcError as exc:
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return EXIT_BAD_INPUT
    print(json.dumps(
        {
            "model_version": rec.model_version,
            "user_kind": rec.user_kind,
            "items": [{"item_id": i, "score": round(s, 5)} for i, s in zip(rec.item_ids, rec.scores)],
        },
        indent=2,
    ))
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from recxfer.artifacts import load_domain
    from recxfer.eval import markdown_table
    from recxfer.pipeline import load_config, train_evaluate_publish
    from recxfer.types import UserOrigin

    config = load_config(args.config)
    result = train_evaluate_publish(args.data, args.artifacts, config)
    print("\ncold-start users, full ranking over each target catalogue:")
    print(markdown_table(result.results))
    target = config.train.targets[0]
    emb = load_domain(result.artifact, target)
    cold = emb.user_ids[emb.user_origin == UserOrigin.TRANSFER.value]
    user = str(cold[0]) if len(cold) else str(emb.user_ids[0])
    exe = Path(sys.argv[0]).resolve() if Path(sys.argv[0]).exists() else "recxfer"
    hint = (
        f"\nquery a cold-start user (known only in {config.train.source}):\n"
        f"  {exe} query --address {{address}} --user {user} --domain {target} --k 10"
    )
    return _serve_until_signal(result.artifact.path, args.address, args.max_k, hint)


def _cmd_bench_cdr(args: argparse.Namespace) -> int:
    from recxfer.benchmark import run_bench_cdr
    from recxfer.config import from_dict
    from recxfer.train.cold_start import ColdStartConfig

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    config = ColdStartConfig()
    if args.config:
        config = from_dict(ColdStartConfig, json.loads(Path(args.config).read_text()), args.config)
    result = run_bench_cdr(args.format, args.source, args.target, args.method, args.seed, config)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    s, f, p = result["sampled"], result["full"], result["popularity"]
    print(f"{result['source']} -> {result['target']} {args.method} seed {args.seed}: "
          f"NDCG@10 {s['NDCG@10']:.4f} HR@10 {s['HR@10']:.4f} MRR {s['MRR']:.4f} "
          f"recall@50 {f['recall@50']:.4f} | popularity NDCG@10 {p['sampled']['NDCG@10']:.4f} "
          f"recall@50 {p['full']['recall@50']:.4f} | {result['train_seconds']:.1f}s -> {out}")
    return EXIT_OK


def _cmd_nightly(args: argparse.Namespace) -> int:
    from recxfer.nightly import nightly_main

    return nightly_main(args.data, args.artifacts, args.config, args.force)


def _cmd_rollback(args: argparse.Namespace) -> int:
    from recxfer.artifacts import LockHeldError
    from recxfer.nightly import EXIT_LOCKED, rollback_production

    try:
        previous, target = rollback_production(args.artifacts, args.to)
    except LockHeldError as exc:
        print(f"error: another job holds the lock: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    print(f"{Path(args.artifacts) / 'current'}: {previous} -> {target}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recxfer", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate-samples", help="write the seeded synthetic sample data")
    p.add_argument("--out", default="data_samples", help="output folder")
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=_cmd_generate_samples)

    def data_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", required=True, help="folder with interactions.* and items.*")
        p.add_argument("--artifacts", default="artifacts", help="artifacts root")
        p.add_argument("--config", help="JSON job config (defaults otherwise)")

    p = sub.add_parser("train", help="train, evaluate and publish an artifact")
    data_args(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="evaluate an artifact on its cold-start split")
    p.add_argument("--data", required=True)
    p.add_argument("--artifact", default="artifacts/current")
    p.add_argument("--out", help="also write the results as JSON here")
    p.set_defaults(func=_cmd_evaluate)

    def serve_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--address", default="127.0.0.1:50051", help="host:port to bind")
        p.add_argument("--max-k", type=int, default=1000, help="largest k accepted")

    p = sub.add_parser("serve", help="serve an artifact over gRPC")
    p.add_argument("--artifacts", default="artifacts", help="serve ROOT/current")
    p.add_argument("--artifact", help="serve this artifact folder instead")
    serve_args(p)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("query", help="ask a running server for recommendations")
    p.add_argument("--address", default="127.0.0.1:50051")
    p.add_argument("--user", required=True)
    p.add_argument("--domain", required=True)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--include-seen", action="store_true", help="do not exclude seen items")
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(func=_cmd_query)

    p = sub.add_parser("bench-cdr", help="a cold-start method on a public CDR benchmark")
    p.add_argument("--format", choices=["cdrib", "douban"], required=True)
    p.add_argument("--source", required=True, help="source domain folder")
    p.add_argument("--target", required=True, help="target domain folder")
    p.add_argument("--method", choices=["target_only", "emcdr", "ptupcdr", "shared"], required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", help="JSON mirroring recxfer.train.cold_start.ColdStartConfig")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=_cmd_bench_cdr)

    p = sub.add_parser("run", help="train, evaluate, publish, then serve (the main job)")
    data_args(p)
    serve_args(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "nightly",
        help="scheduled retrain: ingest, train (warm start, checkpoints), evaluate, gate, publish",
        description="Exit codes: 0 published, 1 internal error, 2 bad input (data or config), "
        "3 gated (not published, production kept), 4 another run holds ROOT/.lock.",
    )
    p.add_argument("--data", required=True, help="folder with interactions.* (or sources) and items.*")
    p.add_argument("--artifacts", required=True, help="artifacts root (ROOT/current is production)")
    p.add_argument("--config", help="JSON: the main job's config plus a 'nightly' object")
    p.add_argument("--force", action="store_true", help="publish even if the gate fails (logged)")
    p.set_defaults(func=_cmd_nightly)

    p = sub.add_parser("rollback", help="point ROOT/current back at the previous version (verified)")
    p.add_argument("--artifacts", required=True, help="artifacts root")
    p.add_argument("--to", help="this version instead of the previous one")
    p.set_defaults(func=_cmd_rollback)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # noisy optional-SIMD probing
    from recxfer.artifacts import ArtifactError
    from recxfer.data import DataValidationError

    try:
        return args.func(args)
    except (DataValidationError, ArtifactError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
