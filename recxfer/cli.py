"""The ``recxfer`` command: parses arguments, then calls stage functions."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

# recxfer.train.cold_start.METHODS, spelled here so that parsing imports no torch
# (tests/test_cli.py checks they are equal).
COLD_START_METHODS = ("blend", "popularity", "target_only", "itemknn", "ease", "ridge", "userknn",
                      "emcdr", "ptupcdr", "shared")

if TYPE_CHECKING:
    from recxfer.serve import ServeConfig

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


def _serve_config(args: argparse.Namespace) -> "ServeConfig":
    """``--serve-config`` file (JSON mirroring ``ServeConfig``), then the flags given."""
    from dataclasses import replace

    from recxfer.config import from_dict
    from recxfer.serve import ServeConfig, TlsConfig

    config = ServeConfig()
    if args.serve_config:
        try:
            data = json.loads(Path(args.serve_config).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{args.serve_config}: cannot read serve config: {exc}") from exc
        config = from_dict(ServeConfig, data, where=str(args.serve_config))
    flags = {
        "max_k": args.max_k, "max_batch": args.max_batch, "max_history": args.max_history,
        "max_filter_ids": args.max_filter_ids, "max_message_bytes": args.max_message_bytes,
        "max_workers": args.workers, "max_concurrent_rpcs": args.max_concurrent_rpcs,
        "popularity_fallback": args.popularity_fallback, "metrics_address": args.metrics_address,
        "shutdown_delay_s": args.shutdown_delay, "grace_s": args.grace,
        "index_device": args.index_device, "search_threads": args.search_threads,
    }
    config = replace(config, **{k: v for k, v in flags.items() if v is not None})
    if args.tls_cert or args.tls_key or args.tls_client_ca:
        if not (args.tls_cert and args.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        config = replace(config, tls=TlsConfig(args.tls_cert, args.tls_key, args.tls_client_ca))
    if args.token_file:
        try:
            lines = Path(args.token_file).read_text().splitlines()
        except OSError as exc:
            raise ValueError(f"--token-file: cannot read {args.token_file}: {exc}") from exc
        tokens = tuple(line.strip() for line in lines if line.strip())
        if not tokens:
            raise ValueError(f"--token-file: {args.token_file} holds no token")
        config = replace(config, auth_tokens=tokens)
    return config


def _serve_until_signal(args: argparse.Namespace, artifact: Path | None, root: Path | None,
                        hint: str | None) -> int:
    """Serve ``artifact``, or ``root/current`` with hot reload, until SIGINT/SIGTERM."""
    from functools import partial

    from recxfer.artifacts import ArtifactError
    from recxfer.serve import ArtifactWatcher, ModelHolder, ServingModel, create_server

    config = _serve_config(args)
    holder = ModelHolder()
    try:
        server, port = create_server(args.address, holder, config)
    except RuntimeError as exc:
        print(f"error: {exc} (is another server running there?)", file=sys.stderr)
        return EXIT_ERROR
    loader = partial(ServingModel.from_artifact, device=config.index_device)
    watcher = None
    try:
        if artifact is not None:
            holder.swap(loader(artifact))
        else:
            assert root is not None
            watcher = ArtifactWatcher(
                root, holder, loader=loader, interval_s=args.reload_interval or 1.0,
                on_swap=lambda _model: server.metrics.reload_outcome(True),
                on_refuse=lambda _path, _exc: server.metrics.reload_outcome(False),
            )
            if not watcher.check_now():
                raise ArtifactError(watcher.last_error or f"{root / 'current'}: no artifact published")
    except BaseException:
        server.stop(grace=None)  # release the port
        raise
    server.start()
    if watcher is not None and args.reload_interval > 0:
        watcher.start()
    host = args.address.rsplit(":", 1)[0]
    scheme = "TLS" if config.tls else "plaintext"
    print(f"serving {holder.get().version} on {host}:{port} ({scheme}) (Ctrl-C stops)", flush=True)
    if server.metrics_port is not None:
        print(f"metrics on http://{config.metrics_address.rsplit(':', 1)[0]}:{server.metrics_port}/metrics",
              flush=True)
    if hint:
        print(hint.format(address=f"{host}:{port}"), flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    print("shutting down (draining requests in flight)", flush=True)
    if watcher is not None:
        watcher.stop()
    server.stop()
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    if args.artifact:
        return _serve_until_signal(args, Path(args.artifact), None, None)
    return _serve_until_signal(args, None, Path(args.artifacts), None)


def _cmd_query(args: argparse.Namespace) -> int:
    import grpc

    from recxfer.serve.client import ClientTls, RecommenderClient

    tls = None
    if args.tls_ca or args.tls_cert:
        tls = ClientTls(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    token = os.environ.get("RECXFER_TOKEN") or None
    allow = args.allow.split(",") if args.allow else None
    deny = args.deny.split(",") if args.deny else None
    if (args.user is None) == (args.item is None):
        print("error: give --user (Recommend) or --item (SimilarItems)", file=sys.stderr)
        return EXIT_BAD_INPUT
    with RecommenderClient(args.address, timeout=args.timeout, tls=tls, token=token) as client:
        try:
            if args.user is not None:
                rec = client.recommend(args.user, args.domain, args.k, not args.include_seen,
                                       allow=allow, deny=deny)
                answer = {"model_version": rec.model_version, "user_kind": rec.user_kind}
            else:
                rec = client.similar_items(args.domain, args.item, args.k, allow=allow, deny=deny)
                answer = {"model_version": rec.model_version,
                          "popularity_fallback": rec.popularity_fallback}
        except grpc.RpcError as exc:
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return EXIT_BAD_INPUT
    answer["items"] = [{"item_id": i, "score": round(s, 5)} for i, s in zip(rec.item_ids, rec.scores)]
    print(json.dumps(answer, indent=2))
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
    return _serve_until_signal(args, None, Path(args.artifacts), hint)


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
    result = run_bench_cdr(args.format, args.source, args.target, args.method, args.seed, config,
                           overlap=args.overlap)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    s, f, p = result["sampled"], result["full"], result["popularity"]
    print(f"{result['source']} -> {result['target']} {result['method']} seed {args.seed}: "
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
    parser.add_argument("--log-format", choices=["text", "json"], default="text",
                        help="json: one JSON object per line (structured logs)")
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
        # Defaults are spelled out (importing ServeConfig here would import torch for
        # every command); tests/serve/test_serve_cli.py checks they match ServeConfig.
        d = argparse.Namespace(max_k=1000, max_batch=256, max_history=1000, max_filter_ids=10_000,
                               max_message_bytes=4 * 1024 * 1024, max_workers=8, grace_s=5.0,
                               shutdown_delay_s=0.0)
        g = p.add_argument_group(
            "serving", "flags override --serve-config, which overrides the defaults"
        )
        g.add_argument("--address", default="127.0.0.1:50051", help="host:port to bind (port 0: any)")
        g.add_argument("--serve-config", metavar="FILE",
                       help="JSON mirroring recxfer.serve.ServeConfig, e.g. "
                            '{"max_k": 500, "popularity_fallback": true}')
        g.add_argument("--reload-interval", type=float, default=2.0, metavar="S",
                       help="poll ROOT/current every S seconds and hot-reload a newly "
                            "published artifact (0: no reload; default 2)")
        g.add_argument("--max-k", type=int, help=f"largest k accepted (default {d.max_k})")
        g.add_argument("--max-batch", type=int, help=f"most requests per BatchRecommend (default {d.max_batch})")
        g.add_argument("--max-history", type=int,
                       help=f"most source items per RecommendFromHistory (default {d.max_history})")
        g.add_argument("--max-filter-ids", type=int,
                       help=f"most ids in an allow- or deny-list (default {d.max_filter_ids})")
        g.add_argument("--max-message-bytes", type=int,
                       help=f"largest request/response message (default {d.max_message_bytes})")
        g.add_argument("--workers", type=int, help=f"threads answering RPCs (default {d.max_workers})")
        g.add_argument("--max-concurrent-rpcs", type=int,
                       help="RPCs admitted at once, beyond which RESOURCE_EXHAUSTED (default: queue)")
        g.add_argument("--popularity-fallback", action=argparse.BooleanOptionalAction, default=None,
                       help="answer unknown users/items with popular items instead of NOT_FOUND")
        g.add_argument("--metrics-address", metavar="HOST:PORT",
                       help="serve Prometheus /metrics there (default: off)")
        g.add_argument("--tls-cert", metavar="PEM", help="server certificate chain (enables TLS)")
        g.add_argument("--tls-key", metavar="PEM", help="server private key")
        g.add_argument("--tls-client-ca", metavar="PEM",
                       help="require client certificates signed by this CA (mutual TLS)")
        g.add_argument("--token-file", metavar="FILE",
                       help="accepted bearer tokens, one per line (health checks exempt)")
        g.add_argument("--grace", type=float, metavar="S",
                       help=f"on SIGTERM, time for RPCs in flight to finish (default {d.grace_s})")
        g.add_argument("--shutdown-delay", type=float, metavar="S",
                       help="on SIGTERM, report NOT_SERVING this long before refusing calls "
                            f"(default {d.shutdown_delay_s})")
        g.add_argument("--index-device", choices=["auto", "cpu"],
                       help="auto: GPU when present (default); cpu: never")
        g.add_argument("--search-threads", type=int, metavar="N",
                       help="threads per index search (default 1: concurrent requests "
                            "already use the cores; 0: all cores)")

    p = sub.add_parser(
        "serve", help="serve artifacts over gRPC (hot reload of ROOT/current)",
        description="Serve ROOT/current over gRPC, reloading it when a new artifact is "
                    "published (or one fixed --artifact). SIGTERM/SIGINT: health goes "
                    "NOT_SERVING, requests in flight drain, then the server stops.",
    )
    p.add_argument("--artifacts", default="artifacts", metavar="ROOT",
                   help="serve ROOT/current and watch it (default: artifacts)")
    p.add_argument("--artifact", metavar="PATH", help="serve this artifact folder, no reload")
    serve_args(p)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("query", help="ask a running server (Recommend or SimilarItems)",
                       description="Bearer token: set RECXFER_TOKEN.")
    p.add_argument("--address", default="127.0.0.1:50051")
    p.add_argument("--user", help="Recommend for this user")
    p.add_argument("--item", help="SimilarItems for this item")
    p.add_argument("--domain", required=True)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--include-seen", action="store_true", help="do not exclude seen items")
    p.add_argument("--allow", metavar="IDS", help="comma-separated allow-list of item ids")
    p.add_argument("--deny", metavar="IDS", help="comma-separated deny-list of item ids")
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--tls-ca", metavar="PEM", help="use TLS, verifying the server with this CA")
    p.add_argument("--tls-cert", metavar="PEM", help="client certificate (mutual TLS)")
    p.add_argument("--tls-key", metavar="PEM", help="client key (mutual TLS)")
    p.add_argument("--tls-server-name", help="name expected in the server certificate")
    p.set_defaults(func=_cmd_query)

    p = sub.add_parser("bench-cdr", help="a cold-start method on a public CDR benchmark")
    p.add_argument("--format", choices=["cdrib", "douban"], required=True)
    p.add_argument("--source", required=True, help="source domain folder")
    p.add_argument("--target", required=True, help="target domain folder")
    p.add_argument("--method", choices=list(COLD_START_METHODS), default=None,
                   help="a registered method (default: the shipped default, blend)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", help="JSON mirroring recxfer.train.cold_start.ColdStartConfig")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--overlap", type=int, default=None,
                   help="cdrib only: users < N are shared across the folders; checked against the "
                        "overlap derived from valid/test and pair.json (default: derived)")
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
    handler = logging.StreamHandler()
    if args.log_format == "json":
        from recxfer.serve.logs import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
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
