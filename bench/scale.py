"""The main job at three data sizes from the seeded sparse generator: seconds of
every stage and peak RSS, against rows.

    python bench/scale.py --sizes small,medium --threads 2

Each size runs in its own process (so its peak RSS is its own): the data is drawn
by ``recxfer.data.synthetic`` (``sparse=True``, unique titles so the text encoder
sees every item), written as Parquet partitions (``interactions/part-*.parquet``
and ``items.parquet``), then the default ``JobConfig`` runs stage by stage, as
``recxfer train`` does: ingest, split, text encoding (MiniLM, cached), training
(every epoch timed; validation exports and metrics, the final export and the
transfer fit apart), cold-start evaluation, refit on every row, artifact write +
publish, and opening the artifact for serving. Writes ``SIZE.json`` per size and
``scale.json`` (all sizes, the load average, the growth of epoch time against
rows) under ``--out`` (default ``bench/results/scale``), and ``scale.png``.

``--probe-steps N`` measures the epoch cost alone, at any size in minutes: ``N``
training steps of the default config per size (``probe-SIZE.json``, ``probe.json``
with the growth of the estimated epoch against rows).

Sizes (users; items video/books/music; ~interactions): ``small`` 6,250; 10,792;
0.2M. ``medium`` 50,000; 86,335; 1.6M (the issue's data). ``large`` 200,000;
345,340; 6.5M.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import json
import os
import platform
import pstats
import resource
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

SIZES = {  # users, (video, books, music) items; per-user means as data_samples
    "small": (6_250, (6_250, 3_000, 1_542)),
    "medium": (50_000, (50_000, 24_000, 12_335)),
    "large": (200_000, (200_000, 96_000, 49_340)),
}
GOAL_SECONDS, GOAL_RSS_GB, GOAL_GROWTH = 600.0, 4.0, 1.15


def _rss_gb() -> tuple[float, float]:
    """(current, peak) resident set size of this process in GB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KB on Linux
    current = peak
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return current, peak


class Stages:
    """Seconds and RSS of each stage, in order."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.extra: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        yield
        current, peak = _rss_gb()
        self.rows.append({"stage": name, "seconds": time.perf_counter() - start,
                          "rss_gb": round(current, 3), "peak_rss_gb": round(peak, 3),
                          "load_avg_1m": round(os.getloadavg()[0], 2)})
        print(f"  {name}: {self.rows[-1]['seconds']:.1f} s, RSS {current:.2f} GB (peak {peak:.2f})",
              flush=True)

    def add(self, name: str, seconds: float) -> None:
        self.extra[name] = self.extra.get(name, 0.0) + seconds


def _timed(stages: Stages, module, name: str, key) -> None:
    """Wrap ``module.name`` so its calls add their seconds to ``key(args, kwargs)``."""
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            stages.add(key(args, kwargs), time.perf_counter() - start)

    setattr(module, name, wrapper)


def write_data(size: str, folder: Path, seed: int) -> dict:
    """Draw the size's data and write it as Parquet partitions; returns its shape."""
    from recxfer.data.synthetic import DomainSpec, SyntheticConfig, generate

    n_users, (video, books, music) = SIZES[size]
    config = SyntheticConfig(
        n_users=n_users, seed=seed, sparse=True, unique_titles=True,
        domains=(DomainSpec("video", video, 1.0, 25.0), DomainSpec("books", books, 0.6, 7.0),
                 DomainSpec("music", music, 0.5, 7.0)),
    )
    interactions, items = generate(config)
    # the catalogue is the items with rows (as a real export would be)
    used = interactions[["item_id", "domain"]].drop_duplicates()
    items = items.merge(used, on=["item_id", "domain"])
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "interactions").mkdir(parents=True)
    parts = 8
    bounds = [len(interactions) * i // parts for i in range(parts + 1)]
    for i in range(parts):
        interactions.iloc[bounds[i]:bounds[i + 1]].to_parquet(
            folder / "interactions" / f"part-{i:04d}.parquet", index=False)
    items.to_parquet(folder / "items.parquet", index=False)
    return {"users": n_users, "items": len(items), "interactions": len(interactions),
            "per_domain": interactions.groupby("domain").size().to_dict()}


def run_one(size: str, args: argparse.Namespace) -> dict:
    """Every stage of the main job on one size; returns the JSON record."""
    from recxfer.runtime import limit_threads, set_env_defaults

    set_env_defaults()
    threads = limit_threads(args.threads)
    import numpy as np  # noqa: F401  (after the thread caps)

    import recxfer.pipeline as pipeline
    import recxfer.train.shared_domains as shared_domains
    from recxfer.encoders.text import TextEmbeddingCache, TextEncoderConfig
    from recxfer.pipeline import JobConfig

    work = Path(args.work) / size
    data_dir, root = work / "data", work / "artifacts"
    stages = Stages()
    load_start = os.getloadavg()
    with stages.stage("generate (not part of the job)"):
        shape = write_data(size, data_dir, args.seed)
    print(f"{size}: {shape}", flush=True)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    config = JobConfig()
    if args.epochs is not None:
        shared = dataclasses.replace(config.shared.train, epochs=args.epochs)
        config = dataclasses.replace(config, shared=dataclasses.replace(config.shared, train=shared))
    phase = {"name": "train"}
    _timed(stages, shared_domains, "build_multi_domain_index", lambda a, k: f"{phase['name']}.index")
    _timed(stages, shared_domains, "export_domains",
           lambda a, k: f"{phase['name']}.{'validation_export' if k.get('user_pos') is not None else 'export'}")
    _timed(stages, pipeline, "evaluate_cold_start", lambda a, k: f"{phase['name']}.cold_start_metrics")
    _timed(stages, pipeline, "fit_transfers", lambda a, k: f"{phase['name']}.transfer_fit")
    _timed(stages, pipeline, "refit_domain_transfer", lambda a, k: f"{phase['name']}.transfer_fit")

    job_start = time.perf_counter()
    with stages.stage("ingest"):
        data = pipeline.load_job_data(data_dir, config)
    with stages.stage("split"):
        split = pipeline.split_data(data, config)
    text_cache = root / pipeline.TEXT_CACHE
    with stages.stage("text encoding"):
        items = data.items
        texts = (items["title"] + (" " + items["text"] if "text" in items else "")).tolist()
        TextEmbeddingCache(text_cache, TextEncoderConfig()).encode(texts)
    profile = cProfile.Profile() if args.profile else None
    with stages.stage("train"):
        if profile is not None:
            profile.enable()
        model = pipeline.train_model(split.train, config, items=data.items, text_cache=text_cache,
                                     valid=split.valid)
        if profile is not None:
            profile.disable()
    epochs = list(model.seconds_per_epoch)
    with stages.stage("evaluation"):
        phase["name"] = "evaluation"
        results = pipeline.evaluate_cold_start_targets(model, split, config)
    refit_epochs: list[float] = []
    evaluated = model
    if config.refit:
        phase["name"] = "refit"
        with stages.stage("refit"):
            model = pipeline.refit_model(data.interactions, config, evaluated, items=data.items,
                                         text_cache=text_cache)
        refit_epochs = list(model.seconds_per_epoch)
    phase["name"] = "artifact"
    with stages.stage("artifact write + publish"):
        training = pipeline.training_sets(split, data.interactions if config.refit else split.train,
                                          config, evaluated, model if config.refit else None)
        artifact = pipeline.write_model_artifact(
            root, config, data.fingerprint, model, {"cold_start": results}, evaluated=evaluated,
            training=training, training_rows=data.interactions if config.refit else split.train)
        pipeline.publish_and_prune(root, artifact.version, config.keep_versions)
    job_seconds = time.perf_counter() - job_start
    server_error = None
    with stages.stage("server open"):
        try:  # serving is not this bench's subject: a failure is recorded, not fatal
            from recxfer.serve import ModelHolder, ServingModel, create_server

            serving = ServingModel.from_artifact(root / "current")
            server, _port = create_server("127.0.0.1:0", ModelHolder(serving))
            server.start()
            server.stop(0)
        except Exception as exc:  # noqa: BLE001
            server_error = f"{type(exc).__name__}: {exc}"
            print(f"  server open failed: {server_error}", flush=True)
    record = {
        "size": size, **shape,
        "threads": threads, "cores": os.cpu_count(),
        "load_avg_at_start": [round(x, 2) for x in load_start],
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
        "stages": stages.rows,
        "breakdown_s": {k: round(v, 2) for k, v in sorted(stages.extra.items())},
        "epoch_seconds": epochs,
        "refit_epoch_seconds": refit_epochs,
        "epochs_run": len(epochs), "best_epoch": model.best_epoch if not config.refit else evaluated.best_epoch,
        "job_seconds": job_seconds,
        "peak_rss_gb": max(r["peak_rss_gb"] for r in stages.rows),
        "metrics": {t: {m: {k: round(v, 4) for k, v in vals.items()} for m, vals in by.items()}
                    for t, by in results.items()},
        "config": {"shared": dataclasses.asdict(config.shared), "refit": config.refit},
        "python": platform.python_version(), "machine": platform.machine(),
    }
    if server_error is not None:
        record["server_open_error"] = server_error
    if profile is not None:
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(25)
        record["train_profile_top"] = out.getvalue().splitlines()[-40:]
    return record


def probe_one(size: str, args: argparse.Namespace) -> dict:
    """The epoch cost alone: ``--probe-steps`` training steps of the default config
    on the size's rows (random text embeddings of MiniLM's width instead of the
    encoder, which ``run_one`` times), with the distinct items each step projects."""
    from recxfer.runtime import limit_threads, set_env_defaults

    set_env_defaults()
    threads = limit_threads(args.threads)
    import numpy as np
    import torch

    from recxfer.data.dataset import load_data_dir
    from recxfer.encoders.text import TEXT_DIM, TextTower
    from recxfer.pipeline import JobConfig
    from recxfer.train.histories import build_multi_domain_index
    from recxfer.train.shared import train_shared

    data_dir = Path(args.work) / size / "data"
    shape = write_data(size, data_dir, args.seed)
    config = JobConfig()
    domains = tuple(config.domains)
    data = load_data_dir(data_dir, domains)
    start = time.perf_counter()
    index = build_multi_domain_index(data.interactions, domains, config.shared.train.max_history,
                                     config.shared.train.seed)
    index_s = time.perf_counter() - start
    train = dataclasses.replace(config.shared.train, epochs=1)
    rng = np.random.default_rng(0)
    steps_per_epoch = sum(-(-len(index.rows[d][0]) // train.batch_size) for d in domains)
    share = min(1.0, args.probe_steps / steps_per_epoch)
    rows = {}
    for d in domains:  # the same share of every domain's rows: steps like an epoch's
        u, i = index.rows[d]
        pick = np.sort(rng.choice(len(u), max(1, int(round(share * len(u)))), replace=False))
        rows[d] = (u[pick], i[pick])
    sample = dataclasses.replace(index, rows=rows)
    n_steps = sum(-(-len(rows[d][0]) // train.batch_size) for d in domains)
    text = rng.standard_normal((index.n_items_total, TEXT_DIM)).astype(np.float32)
    touched: list[int] = []
    original = TextTower.forward

    def counting(self, item_idx):
        if torch.is_grad_enabled():
            touched.append(int(item_idx.numel()))
        return original(self, item_idx)

    TextTower.forward = counting
    try:
        result = train_shared(sample, domains[0], domains[1:], train, None, text)
    finally:
        TextTower.forward = original
    per_step = result.seconds_per_epoch[0] / n_steps
    lengths = index.lengths.sum(1)
    return {"size": size, **shape, "threads": threads, "index_s": index_s,
            "steps_timed": n_steps, "sec_per_step": per_step, "steps_per_epoch": steps_per_epoch,
            "epoch_estimate_s": per_step * steps_per_epoch,
            "distinct_items_per_step": float(np.mean(touched)),
            "history_entries_per_user": float(lengths.mean()),
            "peak_rss_gb": round(_rss_gb()[1], 3),
            "load_avg": [round(x, 2) for x in os.getloadavg()]}


def summarise(records: list[dict]) -> dict:
    """Goals and the growth of epoch time against rows between consecutive sizes."""
    records = sorted(records, key=lambda r: r["interactions"])
    growth = []
    for a, b in zip(records, records[1:]):
        ea, eb = _median(a["epoch_seconds"]), _median(b["epoch_seconds"])
        rows = b["interactions"] / a["interactions"]
        growth.append({"from": a["size"], "to": b["size"], "rows_ratio": round(rows, 3),
                       "epoch_ratio": round(eb / ea, 3), "excess": round(eb / ea / rows, 3)})
    goals = {}
    for r in records:
        if r["size"] == "medium":
            goals = {"job_under_10_min": r["job_seconds"] < GOAL_SECONDS,
                     "peak_rss_under_4_gb": r["peak_rss_gb"] < GOAL_RSS_GB}
    goals["epoch_growth_at_most_1.15x_rows"] = all(g["excess"] <= GOAL_GROWTH for g in growth) \
        if growth else None
    return {"growth": growth, "goals": goals}


def _median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2] if values else float("nan")


def plot(records: list[dict], path: Path, probes: list[dict] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = sorted(records, key=lambda r: r["interactions"])
    rows = [r["interactions"] for r in records]
    names = [s["stage"] for s in records[0]["stages"] if not s["stage"].startswith("generate")]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in names:
        left.plot(rows, [next(s["seconds"] for s in r["stages"] if s["stage"] == name)
                         for r in records], marker="o", label=name)
    left.plot(rows, [_median(r["epoch_seconds"]) for r in records], marker="s", linestyle="--",
              color="black", label="one epoch (median)")
    left.plot(rows, [r["job_seconds"] for r in records], marker="^", color="grey", label="job total")
    if probes:  # the epoch cost alone, every size (--probe-steps)
        probes = sorted(probes, key=lambda r: r["interactions"])
        left.plot([r["interactions"] for r in probes], [r["epoch_estimate_s"] for r in probes],
                  marker="x", linestyle=":", color="black", label="one epoch (probe, est.)")
    left.set(xscale="log", yscale="log", xlabel="interactions", ylabel="seconds",
             title="seconds per stage")
    left.legend(fontsize=7)
    right.plot(rows, [r["peak_rss_gb"] for r in records], marker="o", label="job")
    if probes:
        right.plot([r["interactions"] for r in probes], [r["peak_rss_gb"] for r in probes],
                   marker="x", linestyle=":", color="black", label="training only (probe)")
    right.axhline(GOAL_RSS_GB, color="red", linestyle=":", label=f"goal {GOAL_RSS_GB:g} GB")
    right.set(xscale="log", xlabel="interactions", ylabel="GB", title="peak RSS")
    right.legend(fontsize=7)
    fig.suptitle(f"recxfer train, default config, {records[0]['threads']} threads "
                 f"(load avg {records[0]['load_avg_at_start'][0]}..{records[-1]['load_avg_at_end'][0]})",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="small,medium,large")
    parser.add_argument("--threads", type=int, default=None, help="as recxfer train --threads")
    parser.add_argument("--out", type=Path, default=Path("bench/results/scale"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/recxfer-scale"),
                        help="data and artifacts (deleted and rewritten per size)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=None, help="override the job's epochs")
    parser.add_argument("--profile", action="store_true", help="cProfile the training stage")
    parser.add_argument("--probe-steps", type=int, default=0,
                        help="instead of the job: time this many training steps per size "
                             "(the epoch cost alone; writes probe-SIZE.json and probe.json)")
    parser.add_argument("--replot", action="store_true",
                        help="run nothing: rebuild scale.json and scale.png from --out's JSON")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child: one size
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.one:
        if args.probe_steps:
            record = probe_one(args.one, args)
            (args.out / f"probe-{args.one}.json").write_text(json.dumps(record, indent=2) + "\n")
            return 0
        record = run_one(args.one, args)
        (args.out / f"{args.one}.json").write_text(json.dumps(record, indent=2) + "\n")
        return 0
    for size in [s for s in args.sizes.split(",") if s] if not args.replot else []:
        if size not in SIZES:
            parser.error(f"unknown size {size!r}; use {sorted(SIZES)}")
        cmd = [sys.executable, __file__, "--one", size, "--out", str(args.out), "--work",
               str(args.work), "--seed", str(args.seed)]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        cmd += ["--epochs", str(args.epochs)] if args.epochs is not None else []
        cmd += ["--profile"] if args.profile else []
        cmd += ["--probe-steps", str(args.probe_steps)] if args.probe_steps else []
        print(f"== {size}", flush=True)
        subprocess.run(cmd, check=True)
    if args.probe_steps and not args.replot:
        probes = sorted((json.loads(p.read_text()) for p in args.out.glob("probe-*.json")),
                        key=lambda r: r["interactions"])
        growth = [{"from": a["size"], "to": b["size"],
                   "rows_ratio": round(b["interactions"] / a["interactions"], 3),
                   "epoch_ratio": round(b["epoch_estimate_s"] / a["epoch_estimate_s"], 3),
                   "excess": round(b["epoch_estimate_s"] / a["epoch_estimate_s"]
                                   / (b["interactions"] / a["interactions"]), 3)}
                  for a, b in zip(probes, probes[1:])]
        (args.out / "probe.json").write_text(json.dumps({"sizes": probes, "growth": growth},
                                                        indent=2) + "\n")
        print(json.dumps(growth, indent=2))
        return 0
    records = [json.loads(p.read_text()) for p in sorted(args.out.glob("*.json"))
               if p.stem in SIZES]
    probe_file = args.out / "probe.json"
    probes = json.loads(probe_file.read_text())["sizes"] if probe_file.exists() else None
    summary = {"sizes": records, **summarise(records),
               "note": "shared host: see load_avg_* per size and per stage"}
    (args.out / "scale.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(records, args.out / "scale.png", probes)
    print(json.dumps({"growth": summary["growth"], "goals": summary["goals"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
