"""The ``recxfer`` command: parses arguments, then calls stage functions.

Heavy modules (torch, faiss, pandas, the pipeline) are imported inside the
subcommand that needs them, so ``recxfer query`` and ``--help`` start fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

# recxfer.train.cold_start.METHODS, spelled here so that parsing imports no torch
# (tests/test_cli.py checks they are equal).
COLD_START_METHODS = ("blend", "popularity", "target_only", "itemknn", "ease", "ridge", "userknn", "twohop", "dae",
                      "emcdr", "ptupcdr", "shared")

if TYPE_CHECKING:
    from collections.abc import Callable

    from recxfer.serve import ServeConfig

EXIT_OK, EXIT_BAD_INPUT, EXIT_ERROR = 0, 2, 1
# another job holds the artifacts root's lock (train, run, nightly, rollback); the
# same code as recxfer.nightly.EXIT_LOCKED (tests/test_cli.py checks they are equal).
EXIT_LOCKED = 4
# `query`: the server is unreachable, has no model yet, is overloaded or did not
# answer in time (retrying later may help). 3 and 4 are the nightly job's.
EXIT_UNAVAILABLE = 5
# stdout was closed by the reader (`recxfer query ... | head`): 128 + SIGPIPE, as a
# process killed by SIGPIPE reports, without a traceback.
EXIT_BROKEN_PIPE = 141

_UNAVAILABLE_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})
_INTERNAL_CODES = frozenset({"INTERNAL", "UNKNOWN", "DATA_LOSS", "UNIMPLEMENTED"})


def _version() -> str:
    """The installed distribution's version, else the package's own."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("recxfer")
    except PackageNotFoundError:
        from recxfer import __version__

        return __version__


def _cmd_generate_samples(args: argparse.Namespace) -> int:
    from recxfer.data.synthetic import SyntheticConfig, write_samples

    for path in write_samples(args.out, SyntheticConfig(seed=args.seed)):
        print(f"wrote {path}")
    return EXIT_OK


def _torchrun_follower() -> bool:
    """Started by torchrun as a rank other than 0 (``RANK`` > 0): such a process
    joins rank 0's training runs only (``recxfer.train.distributed.run_job``), so
    it skips the pre-flight checks and writes nothing."""
    return "WORLD_SIZE" in os.environ and os.environ.get("RANK", "0").strip() not in ("", "0")


def _cmd_train(args: argparse.Namespace) -> int:
    from recxfer.runtime import limit_threads

    limit_threads(args.threads)
    from recxfer.eval import markdown_table
    from recxfer.pipeline import load_config, train_evaluate_publish
    from recxfer.train.distributed import Followed, run_job

    config = load_config(args.config)
    # under torchrun: rank 0 runs the job, the other ranks join its training runs
    result = run_job(lambda: train_evaluate_publish(args.data, args.artifacts, config),
                     config.shared.train.device)
    if isinstance(result, Followed):
        return result.exit_code
    print(markdown_table(result.results))
    print(f"\npublished {result.artifact.path} as {Path(args.artifacts) / 'current'}")
    print("timings: " + ", ".join(f"{k}={v:.1f}" for k, v in result.timings.items()))
    return EXIT_OK


def _ks_arg(text: str) -> tuple[int, ...]:
    """``--ks 5,10,20``: distinct cut-offs >= 1, sorted."""
    try:
        ks = tuple(sorted({int(k) for k in text.split(",") if k.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError(f"expected cut-offs >= 1, got {text!r}")
    return ks


def _cmd_evaluate(args: argparse.Namespace) -> int:
    """The offline report of an artifact: tables on stdout, and JSON, CSV and the
    nightly's HTML report (``recxfer.pipeline.offline_evaluation``)."""
    from recxfer.runtime import limit_threads

    limit_threads(args.threads)
    from recxfer.eval.report import (markdown_table, metric_columns, results_csv, write_json,
                                     write_text_atomic)
    from recxfer.pipeline import evaluation_report, offline_evaluation

    ev = offline_evaluation(args.data, args.artifact, args.ks)
    art = ev.artifact
    print(f"artifact {art['version']} (manifest sha256 {art['manifest_sha256'][:16]}), "
          f"ks {', '.join(map(str, ev.ks))}")
    for group, by_target in ev.results.items():
        stored = sorted(t for t, b in ev.basis.get(group, {}).items() if b == "stored")
        print(f"\n{group}" + (f" (stored metrics: {', '.join(stored)})" if stored else ""))
        print(markdown_table(by_target, metric_columns(ev.ks)))
    for note in ev.notes:
        print(f"\nnote: {note}")
    written = []
    if args.out:
        written.append(write_json(ev.to_json(), args.out))
    if args.csv:
        written.append(write_text_atomic(args.csv, results_csv(ev.results, art["version"], ev.basis)))
    if args.html:
        from recxfer.eval.html_report import render_html

        written.append(write_text_atomic(args.html, render_html(evaluation_report(ev))))
    for path in written:
        print(f"wrote {path}")
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
                        hint: str | None, config: "ServeConfig | None" = None, *,
                        reuse_port: bool = False,
                        on_ready: "Callable[[str, int], None] | None" = None) -> int:
    """Serve ``artifact``, or ``root/current`` with hot reload, until SIGINT/SIGTERM
    (``config``: the serve config already read from ``args``, else read here).

    A worker of ``serve --processes N`` shares the port (``reuse_port``) and reports
    ``on_ready(version, port)`` instead of printing what it serves."""
    from functools import partial

    from recxfer.artifacts import ArtifactError
    from recxfer.serve import ArtifactWatcher, ModelHolder, ServingModel, create_server

    config = config if config is not None else _serve_config(args)
    holder = ModelHolder()
    try:
        server, port = create_server(args.address, holder, config, reuse_port=reuse_port)
    except RuntimeError as exc:
        print(f"error: {exc} (is another server running there?)", file=sys.stderr)
        return EXIT_ERROR
    loader = partial(ServingModel.from_artifact, device=config.index_device,
                     max_k=config.max_k, max_filter_ids=config.max_filter_ids)
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
                on_link_state=server.metrics.link_checked,
            )
            if not watcher.check_now():
                raise ArtifactError(watcher.last_error or f"{root / 'current'}: no artifact published")
    except BaseException:
        server.stop(grace=None)  # release the port
        raise
    server.start()
    if watcher is not None and args.reload_interval > 0:
        watcher.start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if on_ready is not None:
        on_ready(holder.get().version, port)
        stop.wait()
        if watcher is not None:
            watcher.stop()
        server.stop()
        return EXIT_OK
    host = args.address.rsplit(":", 1)[0]
    scheme = "TLS" if config.tls else "plaintext"
    print(f"serving {holder.get().version} on {host}:{port} ({scheme}) (Ctrl-C stops)", flush=True)
    if server.metrics_port is not None:
        print(f"metrics on http://{config.metrics_address.rsplit(':', 1)[0]}:{server.metrics_port}/metrics",
              flush=True)
    if hint:
        print(hint.format(address=f"{host}:{port}"), flush=True)
    stop.wait()
    print("shutting down (draining requests in flight)", flush=True)
    if watcher is not None:
        watcher.stop()
    server.stop()
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    from recxfer.runtime import available_cores

    processes = args.processes if args.processes is not None else available_cores()
    if processes < 1:
        raise ValueError(f"--processes must be >= 1, got {processes}")
    artifact = Path(args.artifact) if args.artifact else None
    root = None if artifact is not None else Path(args.artifacts)
    if processes == 1:
        return _serve_until_signal(args, artifact, root, None)
    return _serve_processes(args, artifact, root, processes)


def _serve_processes(args: argparse.Namespace, artifact: Path | None, root: Path | None,
                     processes: int) -> int:
    """``serve --processes N``: N workers on one port (``recxfer.serve.processes``).
    The parent imports neither grpc nor the model; it checks the config, the
    artifact's presence and the address, holds the port, serves the workers'
    aggregated ``/metrics`` and supervises them."""
    import shutil
    import tempfile
    from dataclasses import replace

    from recxfer.serve.address import busy_addresses, reserve_port
    from recxfer.serve.processes import Supervisor

    config = _serve_config(args)
    if artifact is not None and not (artifact / "manifest.json").is_file():
        raise ValueError(f"{artifact}: no artifact (manifest.json) here")
    if root is not None and not (root / "current" / "manifest.json").is_file():
        raise ValueError(f"{root / 'current'}: no artifact published")
    try:
        busy = busy_addresses(args.address)
        if busy:
            raise RuntimeError(f"cannot bind {args.address}: {', '.join(busy)} already in use")
        held, address = reserve_port(args.address)
    except RuntimeError as exc:
        print(f"error: {exc} (is another server running there?)", file=sys.stderr)
        return EXIT_ERROR
    metrics_http, metrics_dir, env_before = None, None, os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    try:
        if config.metrics_address is not None:
            from recxfer.serve.metrics import MultiprocessMetricsHttp

            # Workers write their metrics there (set before they import prometheus_client).
            metrics_dir = tempfile.mkdtemp(prefix="recxfer-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
            try:
                metrics_http = MultiprocessMetricsHttp(config.metrics_address, metrics_dir)
            except RuntimeError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return EXIT_ERROR
        host = args.address.rsplit(":", 1)[0]
        scheme = "TLS" if config.tls else "plaintext"

        def ready(infos: list[dict[str, Any]]) -> None:
            versions = ",".join(sorted({str(i.get("version")) for i in infos}))
            print(f"serving {versions} on {host}:{address.rsplit(':', 1)[1]} ({scheme}) in "
                  f"{processes} processes (pids {' '.join(str(i['pid']) for i in infos)}) "
                  "(Ctrl-C stops)", flush=True)
            if metrics_http is not None:
                print(f"metrics on http://{config.metrics_address.rsplit(':', 1)[0]}:"
                      f"{metrics_http.port}/metrics", flush=True)

        worker_args = argparse.Namespace(**{**vars(args), "address": address})
        supervisor = Supervisor(
            _serve_worker, (worker_args, artifact, root, replace(config, metrics_address=None)),
            processes,
            # drain + a reload in progress (the watcher waits up to 10 s) + start-up
            stop_timeout_s=config.shutdown_delay_s + config.grace_s + 15.0,
            on_ready=ready,
            on_stopping=lambda: print("shutting down (draining requests in flight)", flush=True),
            on_exit=metrics_http.worker_exited if metrics_http is not None else None,
        )
        return supervisor.run()
    finally:
        if metrics_http is not None:
            metrics_http.stop()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
            if env_before is None:
                os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            else:
                os.environ["PROMETHEUS_MULTIPROC_DIR"] = env_before
        for sock in held:
            sock.close()


class _WorkerTag(logging.Filter):
    """Adds ``worker`` (slot) and ``pid`` to every record of a serve worker."""

    def __init__(self, slot: int) -> None:
        super().__init__()
        self.slot, self.pid = slot, os.getpid()

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker, record.pid = self.slot, self.pid
        return True


# seconds a drained worker waits before its process (and every socket) closes
_WORKER_EXIT_LINGER_S = 0.5


def _serve_worker(link: Any, args: argparse.Namespace, artifact: Path | None, root: Path | None,
                  config: "ServeConfig") -> None:
    """One worker process of ``serve --processes N`` (spawned: a fresh interpreter)."""
    link.die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent forwards SIGTERM
    handler = logging.StreamHandler()
    if args.log_format == "json":
        from recxfer.serve.logs import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s [worker %(worker)s pid %(pid)s]: %(message)s"))
    handler.addFilter(_WorkerTag(link.slot))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        code = _serve_until_signal(
            args, artifact, root, None, config, reuse_port=True,
            on_ready=lambda version, port: link.ready(version=version, port=port),
        )
    except Exception as exc:  # noqa: BLE001 - as _main: bad input is exit 2, the rest 1
        if not isinstance(exc, _bad_input_types()):
            raise
        print(f"error: {exc}", file=sys.stderr, flush=True)
        code = EXIT_BAD_INPUT
    # Drained: exit now. A second SIGTERM (systemd, `timeout` and a terminal signal
    # the whole process group) during the interpreter's teardown, once it has reset
    # the handlers, would otherwise turn a clean exit into death by SIGTERM.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Linger before the sockets close: a drained call's last response frames may
    # still be on their way (the handler has returned, gRPC's core is writing), and a
    # socket closed with the client's unread frames in it is reset, which discards
    # what that client had not read yet: its call ends UNAVAILABLE, not OK.
    time.sleep(_WORKER_EXIT_LINGER_S)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _query_items(item_ids: list[str], scores: list[float]) -> list[dict[str, Any]]:
    return [{"item_id": i, "score": round(s, 5)} for i, s in zip(item_ids, scores)]


def _cmd_query(args: argparse.Namespace) -> int:
    """One RPC per call: ``--user`` Recommend, ``--users`` BatchRecommend, ``--item``
    SimilarItems, ``--history`` (with ``--source-domain``) RecommendFromHistory."""
    import grpc

    from recxfer.serve.client import ClientTls, RecommendArgs, RecommenderClient, RequestFailed

    tls = None
    if args.tls_ca or args.tls_cert:
        tls = ClientTls(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    token = os.environ.get("RECXFER_TOKEN") or None
    allow = args.allow.split(",") if args.allow else None
    deny = args.deny.split(",") if args.deny else None
    modes = [name for name, value in (("--user", args.user), ("--users", args.users),
                                      ("--item", args.item), ("--history", args.history))
             if value is not None]
    if len(modes) != 1:
        print("error: give one of --user (Recommend), --users U1,U2,... (BatchRecommend), "
              "--item (SimilarItems), --history I1,I2,... --source-domain S (RecommendFromHistory)"
              + (f"; got {' and '.join(modes)}" if modes else ""), file=sys.stderr)
        return EXIT_BAD_INPUT
    if (args.history is None) != (args.source_domain is None):
        print("error: --history and --source-domain go together", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        client = RecommenderClient(args.address, timeout=args.timeout, tls=tls, token=token)
    except OSError as exc:  # a TLS file that cannot be read
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    failed = 0
    with client:
        try:
            if args.user is not None:
                rec = client.recommend(args.user, args.domain, args.k, not args.include_seen,
                                       allow=allow, deny=deny)
                answer = {"model_version": rec.model_version, "user_kind": rec.user_kind,
                          "items": _query_items(rec.item_ids, rec.scores)}
            elif args.users is not None:
                users = [u for u in args.users.split(",") if u]
                results = client.batch_recommend([
                    RecommendArgs(u, args.domain, args.k, not args.include_seen, allow, deny)
                    for u in users
                ])
                entries: list[dict[str, Any]] = []
                for user, result in zip(users, results):
                    if isinstance(result, RequestFailed):
                        failed += 1
                        entries.append({"user_id": user, "error": {"code": result.code.name,
                                                                   "message": result.message}})
                    else:
                        entries.append({"user_id": user, "user_kind": result.user_kind,
                                        "items": _query_items(result.item_ids, result.scores)})
                versions = [r.model_version for r in results if not isinstance(r, RequestFailed)]
                answer = {"model_version": versions[0] if versions else "", "results": entries}
            elif args.item is not None:
                sim = client.similar_items(args.domain, args.item, args.k, allow=allow, deny=deny)
                answer = {"model_version": sim.model_version,
                          "popularity_fallback": sim.popularity_fallback,
                          "items": _query_items(sim.item_ids, sim.scores)}
            else:
                history = [i for i in args.history.split(",") if i]
                rec = client.recommend_from_history(args.source_domain, history, args.domain,
                                                    args.k, allow=allow, deny=deny)
                answer = {"model_version": rec.model_version, "user_kind": rec.user_kind,
                          "items": _query_items(rec.item_ids, rec.scores)}
        except grpc.RpcError as exc:
            code = exc.code().name
            print(f"error: {code}: {exc.details()}", file=sys.stderr)
            if code in _UNAVAILABLE_CODES:
                return EXIT_UNAVAILABLE
            return EXIT_ERROR if code in _INTERNAL_CODES else EXIT_BAD_INPUT
    print(json.dumps(answer, indent=2))
    if failed:  # BatchRecommend: entries that failed on their own (e.g. unknown users)
        print(f"error: {failed} of {len(answer['results'])} requests failed", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def _cmd_recommend(args: argparse.Namespace) -> int:
    """Batch recommendations from an artifact into a file (``recxfer.serve.bulk``)."""
    from recxfer.runtime import limit_threads

    limit_threads(args.threads)
    from recxfer.serve.bulk import (
        DEFAULT_MAX_K,
        check_k,
        check_output_path,
        read_histories,
        read_user_ids,
        recommend_histories_to_file,
        recommend_users_to_file,
    )
    from recxfer.serve.model import ItemFilter, ServingModel

    # Cheap checks first: loading an artifact can take a while.
    out = check_output_path(args.out)
    max_k = args.max_k if args.max_k is not None else DEFAULT_MAX_K
    check_k(args.k, max_k)
    if (args.histories is None) != (args.source_domain is None):
        raise ValueError("--histories and --source-domain go together")
    if args.histories is not None and args.exclude_seen:
        raise ValueError("--exclude-seen: does not apply to --histories (RecommendFromHistory "
                         "excludes nothing: the users are new)")
    item_filter = (ItemFilter(allow=tuple(args.allow.split(",")) if args.allow else None,
                              deny=tuple(args.deny.split(",")) if args.deny else ())
                   if args.allow or args.deny else None)  # both: allowed and not denied
    users = read_user_ids(args.users) if args.users else None
    histories = read_histories(args.histories, args.source_domain) if args.histories else None
    path = Path(args.artifact) if args.artifact else Path(args.artifacts) / "current"
    model = ServingModel.from_artifact(path, device=args.index_device, max_k=args.k,
                                       max_filter_ids=len(item_filter.deny) if item_filter else 0)
    common = dict(item_filter=item_filter, batch_size=args.batch_size,
                  skip_unknown=args.skip_unknown, max_k=max_k,
                  progress=not args.no_progress and sys.stderr.isatty())
    if histories is not None:
        summary = recommend_histories_to_file(model, histories, args.source_domain, args.domain,
                                              args.k, out, **common)
    else:
        summary = recommend_users_to_file(
            model, args.domain, users, args.k, out,
            exclude_seen=args.exclude_seen is not False, **common,
        )
    if summary.skipped:
        shown = ", ".join(repr(u) for u in summary.skipped[:5])
        print(f"skipped {len(summary.skipped)} unknown users ({shown}"
              f"{', ...' if len(summary.skipped) > 5 else ''})", file=sys.stderr)
    print(f"wrote {summary.rows} rows ({summary.users} users, k={args.k}) from "
          f"{summary.model_version} to {summary.out}")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from recxfer.runtime import check_bindable, check_writable_dir, limit_threads

    # Before minutes of training: the address must bind and the root be writable
    # (rank 0's: under torchrun the other ranks only train, see _torchrun_follower).
    if not _torchrun_follower():
        check_bindable(args.address)
        check_writable_dir(args.artifacts)
    limit_threads(args.threads)
    from recxfer.artifacts import load_domain
    from recxfer.eval import markdown_table
    from recxfer.pipeline import load_config, train_evaluate_publish
    from recxfer.train.distributed import Followed, run_job
    from recxfer.types import UserOrigin

    config = load_config(args.config)
    serve_config = _serve_config(args)  # a bad --serve-config fails before training too
    result = run_job(lambda: train_evaluate_publish(args.data, args.artifacts, config),
                     config.shared.train.device)
    if isinstance(result, Followed):  # torchrun's other ranks: rank 0 serves alone
        return result.exit_code
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
    return _serve_until_signal(args, None, Path(args.artifacts), hint, serve_config)


def _cmd_bench_cdr(args: argparse.Namespace) -> int:
    from recxfer.runtime import limit_threads

    limit_threads(args.threads)
    from recxfer.benchmark import run_bench_cdr
    from recxfer.config import from_dict
    from recxfer.train.cold_start import ColdStartConfig

    config = ColdStartConfig()
    if args.config:
        config = from_dict(ColdStartConfig, json.loads(Path(args.config).read_text()), args.config)
    result = run_bench_cdr(args.format, args.source, args.target, args.method, args.seed, config,
                           overlap=args.overlap)
    out = Path(args.out) if args.out else _bench_cdr_default_out(args)
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


def _bench_cdr_default_out(args: argparse.Namespace) -> Path:
    name = f"{Path(args.source).name}-{Path(args.target).name}-{args.method or 'blend'}-seed{args.seed}"
    return Path("results") / "bench-cdr" / f"{name}.json"


def _cmd_nightly(args: argparse.Namespace) -> int:
    from recxfer.runtime import limit_threads

    limit_threads(args.threads)
    from recxfer.nightly import nightly_main
    from recxfer.nightly.config import load_nightly_config
    from recxfer.train.distributed import Followed, run_job

    try:  # the device the process group is made for; nightly_main reports a bad config
        device = load_nightly_config(args.config).job.shared.train.device
    except ValueError:
        device = "auto"
    code = run_job(lambda: nightly_main(args.data, args.artifacts, args.config, args.force), device)
    return code.exit_code if isinstance(code, Followed) else code


def _cmd_rollback(args: argparse.Namespace) -> int:
    from recxfer.artifacts import ArtifactError, LockHeldError, current_version, list_versions
    from recxfer.nightly import EXIT_LOCKED, rollback_production

    try:
        previous, target = rollback_production(args.artifacts, args.to)
    except LockHeldError as exc:
        print(f"error: another job holds the lock: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except ArtifactError as exc:
        current = current_version(args.artifacts)
        newer = [v for v in list_versions(args.artifacts) if current is not None and v > current]
        if args.to is None and newer:
            raise ArtifactError(f"{exc} (rollback steps back in version order; to move "
                                f"forward name the version: --to {newer[-1]})") from exc
        raise
    print(f"{Path(args.artifacts) / 'current'}: {previous} -> {target}")
    return EXIT_OK


def _cmd_info(args: argparse.Namespace) -> int:
    from recxfer.artifacts.info import (
        artifact_info,
        format_artifact_info,
        format_root_info,
        is_artifact,
        root_info,
    )

    if is_artifact(args.path):
        info = artifact_info(args.path, verify=args.verify)
        text = format_artifact_info(info)
        failed = str(info.get("verified", "ok")) != "ok"
    else:
        info = root_info(args.path, verify=args.verify)
        text = format_root_info(info)
        failed = any(str(v.get("verified", "ok")) != "ok" for v in info["versions"])
    print(json.dumps(info, indent=2) if args.json else text)
    return EXIT_BAD_INPUT if failed else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recxfer", description=__doc__,
        epilog="Exit codes: 0 success, 1 internal error, 2 bad input, 3 gated (nightly), "
               "4 the root's lock is held (train, run, nightly, rollback), 5 server unavailable (query), "
               "141 stdout closed by the reader.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")

    def log_args(p: argparse.ArgumentParser, suppress: bool) -> None:
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging",
                       default=argparse.SUPPRESS if suppress else False)
        p.add_argument("--log-format", choices=["text", "json"],
                       default=argparse.SUPPRESS if suppress else "text",
                       help="json: one JSON object per line (structured logs)")

    log_args(parser, suppress=False)
    # The same flags after the subcommand (`recxfer serve --log-format json`); SUPPRESS
    # keeps a value given before the subcommand when they are not repeated after it.
    common = argparse.ArgumentParser(add_help=False)
    log_args(common, suppress=True)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    def threads_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--threads", type=int, metavar="N",
                       help="CPU threads of torch, BLAS and OpenMP (default: OMP_NUM_THREADS if "
                            "set, else the cores this process may run on)")

    p = command("generate-samples", help="write the seeded synthetic sample data")
    p.add_argument("--out", default="data_samples", help="output folder")
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=_cmd_generate_samples)

    def data_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", required=True, help="folder with interactions.* and items.*")
        p.add_argument("--artifacts", default="artifacts", help="artifacts root")
        p.add_argument("--config", help="JSON job config (defaults otherwise)")

    p = command("train", help="train, evaluate and publish an artifact")
    data_args(p)
    threads_arg(p)
    p.set_defaults(func=_cmd_train)

    p = command(
        "evaluate", help="the offline report of an artifact: cold-start and warm users, JSON/CSV/HTML",
        description="Scores an artifact on DATA, split as its config says (cold-start users; warm "
                    "users for artifacts trained with the nightly's warm hold-out), with the "
                    "nightly report's evaluation: the model and popularity, only on held-out rows "
                    "the artifact never trained on. An artifact refit on every row of this data "
                    "reports its stored metrics instead (said in every output). Files are written "
                    "atomically.",
    )
    p.add_argument("--data", required=True)
    p.add_argument("--artifact", default="artifacts/current")
    p.add_argument("--ks", type=_ks_arg, metavar="K1,K2,...",
                   help="cut-offs (default: the artifact's own, its config's ks and the "
                        "nightly's report_ks)")
    p.add_argument("--out", metavar="F.json",
                   help="write the results as JSON (artifact version and manifest sha256 included)")
    p.add_argument("--csv", metavar="F.csv",
                   help="write one row per domain, group, method, metric and k")
    p.add_argument("--html", metavar="F.html",
                   help="write the nightly's self-contained HTML report (plots embedded)")
    threads_arg(p)
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
                       help="RPCs admitted at once (working + queued), beyond which "
                            "RESOURCE_EXHAUSTED (default 64; health checks not counted)")
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
        g.add_argument("--index-device", choices=["auto", "cpu", "cuda"],
                       help="auto: GPU when present (default); cpu: never; cuda: a GPU "
                            "required (faiss GPU, else torch exact top-k on CUDA)")
        g.add_argument("--search-threads", type=int, metavar="N",
                       help="threads per index search (default 1: concurrent requests "
                            "already use the cores; 0: all cores)")

    p = command(
        "serve", help="serve artifacts over gRPC (hot reload of ROOT/current)",
        description="Serve ROOT/current over gRPC, reloading it when a new artifact is "
                    "published (or one fixed --artifact). SIGTERM/SIGINT: health goes "
                    "NOT_SERVING, requests in flight drain, then the server stops.",
    )
    p.add_argument("--artifacts", default="artifacts", metavar="ROOT",
                   help="serve ROOT/current and watch it (default: artifacts)")
    p.add_argument("--artifact", metavar="PATH", help="serve this artifact folder, no reload")
    p.add_argument("--processes", type=int, metavar="N",
                   help="server processes sharing --address (SO_REUSEPORT), each with its own "
                        "--workers threads and hot reload, supervised by this one (default: the "
                        "cores this process may run on; 1: a single process)")
    serve_args(p)
    p.set_defaults(func=_cmd_serve)

    p = command("query", help="ask a running server (any of the four RPCs)",
                description="One of --user (Recommend), --users (BatchRecommend), --item "
                            "(SimilarItems), --history with --source-domain "
                            "(RecommendFromHistory); --domain is the (target) domain. "
                            "Bearer token: set RECXFER_TOKEN.")
    p.add_argument("--address", default="127.0.0.1:50051")
    p.add_argument("--user", help="Recommend for this user")
    p.add_argument("--users", metavar="IDS",
                   help="BatchRecommend for these comma-separated users (exit 2 if an entry fails)")
    p.add_argument("--item", help="SimilarItems for this item")
    p.add_argument("--history", metavar="IDS",
                   help="RecommendFromHistory of these comma-separated source item ids, oldest first")
    p.add_argument("--source-domain", help="the domain of --history's items")
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

    p = command(
        "recommend", help="batch recommendations from an artifact into a Parquet/CSV file",
        description="One row per (user, rank): user_id, rank (1-based), item_id, score, scored "
                    "by the server's code (ServingModel) with its exclusion and filter rules. "
                    "--users/--all-users: known users of --domain, as BatchRecommend; "
                    "--histories: users known only by a source history (user_id,item_id rows; "
                    "a 'domain' column is filtered to --source-domain; 'timestamp' orders "
                    "them), as RecommendFromHistory. Written to a temporary file beside --out "
                    "and renamed into place: an error leaves no output.",
    )
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--artifact", metavar="PATH", help="this artifact folder")
    g.add_argument("--artifacts", metavar="ROOT", help="ROOT/current")
    p.add_argument("--domain", required=True, help="the (target) domain to recommend from")
    p.add_argument("--k", type=int, required=True, help="items per user (1 <= k <= --max-k)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--users", metavar="FILE",
                   help=".txt (one id per line) or .csv/.tsv/.parquet with a user_id column")
    g.add_argument("--all-users", action="store_true", help="every user of --domain")
    g.add_argument("--histories", metavar="FILE",
                   help=".csv/.tsv/.parquet of user_id,item_id rows in --source-domain")
    p.add_argument("--source-domain", help="the domain of --histories' items")
    p.add_argument("--out", required=True, metavar="FILE", help="FILE.parquet or FILE.csv")
    p.add_argument("--exclude-seen", action=argparse.BooleanOptionalAction, default=None,
                   help="leave out each user's training items (default: on; --histories: none)")
    p.add_argument("--allow", metavar="IDS", help="comma-separated allow-list of item ids")
    p.add_argument("--deny", metavar="IDS", help="comma-separated deny-list of item ids")
    p.add_argument("--skip-unknown", action="store_true",
                   help="leave out unknown users (or histories with no known item) instead of "
                        "refusing the run")
    p.add_argument("--batch-size", type=int, default=1024, metavar="N",
                   help="users per model call (default 1024)")
    p.add_argument("--max-k", type=int, metavar="N", help="largest k accepted (default 1000, "
                                                          "as the server)")
    p.add_argument("--index-device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: GPU when present (default); cpu: never; cuda: a GPU "
                        "required (faiss GPU, else torch exact top-k on CUDA)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (shown on stderr when it is a terminal)")
    threads_arg(p)
    p.set_defaults(func=_cmd_recommend)

    p = command("bench-cdr", help="a cold-start method on a public CDR benchmark")
    p.add_argument("--format", choices=["cdrib", "douban"], required=True)
    p.add_argument("--source", required=True, help="source domain folder")
    p.add_argument("--target", required=True, help="target domain folder")
    p.add_argument("--method", choices=list(COLD_START_METHODS), default=None,
                   help="a registered method (default: the shipped default, blend)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", help="JSON mirroring recxfer.train.cold_start.ColdStartConfig")
    p.add_argument("--out", help="JSON file to write (default: "
                                 "results/bench-cdr/SOURCE-TARGET-METHOD-seedS.json)")
    threads_arg(p)
    p.add_argument("--overlap", type=int, default=None,
                   help="cdrib only: users < N are shared across the folders; checked against the "
                        "overlap derived from valid/test and pair.json (default: derived)")
    p.set_defaults(func=_cmd_bench_cdr)

    p = command("run", help="train, evaluate, publish, then serve (the main job)",
                       description="Checks first that --address binds and --artifacts is "
                                   "writable (exit 2 otherwise), then trains.")
    data_args(p)
    threads_arg(p)
    serve_args(p)
    p.set_defaults(func=_cmd_run)

    p = command(
        "nightly",
        help="scheduled retrain: ingest, train (warm start, checkpoints), evaluate, gate, publish",
        description="Exit codes: 0 published, 1 internal error, 2 bad input (data or config), "
        "3 gated (not published, production kept), 4 another run holds ROOT/.lock.",
    )
    p.add_argument("--data", required=True, help="folder with interactions.* (or sources) and items.*")
    p.add_argument("--artifacts", required=True, help="artifacts root (ROOT/current is production)")
    p.add_argument("--config", help="JSON: the main job's config plus a 'nightly' object")
    p.add_argument("--force", action="store_true", help="publish even if the gate fails (logged)")
    threads_arg(p)
    p.set_defaults(func=_cmd_nightly)

    p = command(
        "rollback", help="point ROOT/current back at the previous version (verified)",
        description="Moves ROOT/current to the newest version older than the current one "
                    "(versions sort by creation time), so each rollback steps one version "
                    "further back; --to VERSION names any version, newer ones included.",
    )
    p.add_argument("--artifacts", required=True, help="artifacts root")
    p.add_argument("--to", help="this version instead of the previous one")
    p.set_defaults(func=_cmd_rollback)

    p = command(
        "info", help="what an artifacts root or an artifact holds",
        description="ROOT: its versions (oldest first, * current) with summary metrics and "
                    "sizes on disk. ARTIFACT (a version folder or ROOT/current): domains, "
                    "users/items, dims, indexes, transfers, metrics. Reads manifests only "
                    "unless --verify.",
    )
    p.add_argument("path", nargs="?", default="artifacts", metavar="ARTIFACT|ROOT",
                   help="an artifacts root or one artifact folder (default: artifacts)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--verify", action="store_true",
                   help="also verify every checksum (exit 2 if one fails)")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns its exit code (see the parser's epilog)."""
    from recxfer.runtime import set_env_defaults

    set_env_defaults()  # before any OpenMP runtime is loaded (torch, faiss)
    try:
        code = _main(argv)
        sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not at exit
    except SystemExit:  # --help, --version, usage errors
        if not _flush_or_silence():
            raise SystemExit(EXIT_BROKEN_PIPE) from None
        raise
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    return code


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (tests capture it)
        pass


def _flush_or_silence() -> bool:
    try:
        sys.stdout.flush()
        return True
    except BrokenPipeError:
        _silence_stdout()
        return False


def _bad_input_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input. ``DataValidationError`` is a ``ValueError``;
    ``ArtifactError`` is looked up only if its module was imported (it cannot have
    been raised otherwise), so that a light command imports no artifact code."""
    types: list[type[BaseException]] = [ValueError]
    errors = sys.modules.get("recxfer.artifacts.errors")
    if errors is not None:
        types.append(errors.ArtifactError)
    return tuple(types)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler()
    if args.log_format == "json":
        from recxfer.serve.logs import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # noisy optional-SIMD probing
    try:
        return args.func(args)
    except Exception as exc:  # noqa: BLE001 - only bad input is mapped; the rest re-raised
        lock = sys.modules.get("recxfer.artifacts.lock")  # imported if it can have been raised
        if lock is not None and isinstance(exc, lock.LockHeldError):
            print(f"error: another job holds the lock: {exc}", file=sys.stderr)
            return EXIT_LOCKED
        if isinstance(exc, _bad_input_types()):
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        raise


if __name__ == "__main__":
    sys.exit(main())
