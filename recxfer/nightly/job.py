"""The nightly retraining job: ingest → train → evaluate → gate → refit → report → publish.

The model trained on tonight's split is evaluated and gated; the comparison with
production uses only held-out rows production never trained on (its artifact
lists its training pairs). When the gate passes, the published model is that
model refit on every row (``recxfer.pipeline.refit_model``), and the artifact
records both training sets (manifest ``training``).

Everything runs under the artifacts root's lock (``ROOT/.lock``). On disk::

    ROOT/current -> <version>          production, switched by an atomic rename
    ROOT/<version>/                    complete artifacts (``report/`` inside)
    ROOT/reports/<run id>/             report.html, metrics.json, run.json per run
    ROOT/.work/<key>/checkpoints/      per-epoch checkpoints of an unfinished run
    ROOT/.work/<key>/refit/            the same for the refit on every row
    ROOT/.lock                         flock'ed by the running job (its pid, host, start time)

``key`` hashes the data fingerprint, the training config and the production
version warm-started from, so a run killed mid-training resumes from its last
checkpoint when the next run sees the same inputs, and never from another
run's. The work folder is deleted when a run finishes (published or gated);
work folders of other keys and staging leftovers of killed runs are deleted by
the next run, under the lock.

Exit codes (``EXIT_*``): 0 published, 1 internal error, 2 bad input (data or
config), 3 gated (production kept), 4 another run holds the lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from recxfer.artifacts import (
    CURRENT,
    Artifact,
    ArtifactBuilder,
    ArtifactError,
    LockHeldError,
    RootLock,
    clean_staging,
    current_version,
    list_versions,
    load_domain,
    new_version,
    read_artifact,
    rollback,
)
from recxfer.config import to_dict
from recxfer.data import CrossDomainData, DataValidationError, load_sources
from recxfer.data.tables import find_table
from recxfer.eval import evaluate_heldout, evaluate_on_split, score_samples
from recxfer.eval.html_report import RunReport, default_bar_metric, render_html
from recxfer.nightly.config import NightlyConfig, load_nightly_config
from recxfer.nightly.gate import GateDecision, decide
from recxfer.pipeline import (
    TEXT_CACHE,
    JobConfig,
    artifact_transfer,
    comparable_heldout,
    hold_out_warm,
    load_shared_warm_start,
    publish_and_prune,
    refit_model,
    split_data,
    split_description,
    train_model,
    trained_pairs,
    training_sets,
    write_model_artifact,
)
from recxfer.train import CrossDomainModel
from recxfer.train.shared_domains import SharedCrossDomainModel
from recxfer.types import DomainEmbeddings, DomainTransfer

log = logging.getLogger(__name__)

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_GATED, EXIT_LOCKED = 0, 1, 2, 3, 4
WORK_DIR = ".work"
REPORTS_DIR = "reports"
REPORT_HTML = "report/report.html"
REPORT_METRICS = "report/metrics.json"

Results = dict[str, dict[str, dict[str, dict[str, float]]]]  # group -> target -> method -> metrics


@dataclass(frozen=True)
class NightlyResult:
    """What one nightly run did.

    Attributes:
        status: ``"published"``, ``"forced"`` (published despite a failed gate) or ``"gated"``.
        exit_code: ``EXIT_OK`` or ``EXIT_GATED``.
        run_id: sortable run name; the artifact version when published.
        version: the published version, or ``None`` when gated.
        production: the production version before the run (``None``: there was none).
        decision: the gate's verdict.
        results: ``group -> target -> method -> metric -> value``; groups
            ``cold_start`` and ``warm``, methods ``model`` (new), ``production``,
            ``popularity``.
        timings: step -> seconds.
        report_dir: ``ROOT/reports/<run_id>``.
        resumed_from: domain -> MF epochs read from checkpoints (0: none).
        evaluated: the new model and popularity on every held-out row (same layout
            as ``results``, which holds the comparison with production on the rows
            production never trained on, what the gate decided on).
        comparison_rows: ``group -> target -> counts`` (see ``Evaluation.counts``).
        model_selection: validation per epoch, the chosen epoch (1-based; 0: the
            warm-started weights were kept) and what that means.
        training: the published artifact's ``training`` entry (evaluated and
            published training sets); empty when gated.
    """

    status: str
    exit_code: int
    run_id: str
    version: str | None
    production: str | None
    decision: GateDecision
    results: Results
    timings: dict[str, float]
    report_dir: Path
    resumed_from: dict[str, int] = field(default_factory=dict)
    evaluated: Results = field(default_factory=dict)
    comparison_rows: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    model_selection: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)


class _Steps:
    """Times and logs each step: ``with steps("train"): ...``."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        log.info("step %s: start", name)
        start = time.perf_counter()
        try:
            yield
        except BaseException as exc:
            self.timings[name] = time.perf_counter() - start
            log.error("step %s: failed after %.2f s: %s", name, self.timings[name], exc)
            raise
        self.timings[name] = time.perf_counter() - start
        log.info("step %s: done in %.2f s", name, self.timings[name])


# ----------------------------------------------------------------------------- steps


def ingest(data_dir: str | Path, config: NightlyConfig) -> CrossDomainData:
    """Read and validate the configured sources.

    Raises:
        DataValidationError: naming the bad file and why.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataValidationError(f"{data_dir}: data folder does not exist")
    opts = config.nightly
    sources = [data_dir / s for s in opts.interactions] or [find_table(data_dir, "interactions")]
    items = data_dir / opts.items if opts.items else find_table(data_dir, "items", required=False)
    data = load_sources(sources, items, config.job.domains)
    counts = data.interactions["domain"].value_counts().to_dict()
    log.info(
        "ingested %d interactions from %s (%s); fingerprint %s",
        len(data.interactions), [str(s) for s in sources],
        ", ".join(f"{d}: {counts.get(d, 0)}" for d in config.job.domains), data.fingerprint[:12],
    )
    return data


def load_production(root: Path) -> Artifact | None:
    """The verified production artifact, or ``None`` (none yet, or it fails
    verification: logged as an error, and the run goes on as without one, so a
    good model can replace a broken production)."""
    version = current_version(root)
    if version is None:
        log.info("no production artifact yet (%s/%s absent)", root, CURRENT)
        return None
    try:
        artifact = read_artifact(root / CURRENT)
    except ArtifactError as exc:
        log.error("production %s fails verification, treated as absent: %s", version, exc)
        return None
    log.info("production is %s", artifact.version)
    return artifact


def production_domains(artifact: Artifact | None, domains: list[str]) -> dict[str, DomainEmbeddings]:
    """Production's embeddings of each of ``domains`` it has."""
    if artifact is None:
        return {}
    out = {}
    for domain in domains:
        try:
            out[domain] = load_domain(artifact, domain)
        except (ArtifactError, ValueError) as exc:
            log.warning("production %s has no usable %s: %s", artifact.version, domain, exc)
    return out


def production_transfers(
    artifact: Artifact | None, domains: dict[str, DomainEmbeddings], job: JobConfig
) -> dict[str, DomainTransfer]:
    """Production's item-to-item transfers into the job's targets (those it has and
    can load; one it cannot is logged and left out, as for a domain)."""
    source = domains.get(job.train.source)
    if artifact is None or source is None:
        return {}
    out = {}
    for target in job.train.targets:
        if target not in domains:
            continue
        try:
            transfer = artifact_transfer(artifact, target, source, domains[target])
        except (ArtifactError, ValueError) as exc:
            log.warning("production %s has no usable transfer into %s: %s", artifact.version, target, exc)
            continue
        if transfer is not None:
            out[target] = transfer
    return out


@dataclass(frozen=True)
class Evaluation:
    """Tonight's evaluation.

    Attributes:
        evaluated: ``group -> target -> {"model", "popularity"} -> metrics`` on every
            held-out row: the evaluated model's quality (the manifest's metrics).
        comparison: the same layout with ``"production"`` added, on the held-out
            rows production never trained on (see ``comparable_heldout``): what the
            gate decides on. Without production it equals ``evaluated``; a (group,
            target) with no such rows is absent (its gate checks are skipped).
        counts: ``group -> target -> {"heldout_rows", "comparable_rows",
            "rows_production_trained_on", "users_warm_in_production"}``.
        scores: ``target -> model -> {"heldout": (n,), "random": (m,)}`` score
            samples (production's on its comparable rows only).
    """

    evaluated: Results
    comparison: Results
    counts: dict[str, dict[str, dict[str, int]]]
    scores: dict[str, dict[str, dict[str, Any]]]


def evaluate_models(
    model: CrossDomainModel,
    cold_test: dict[str, pd.DataFrame],
    warm_test: dict[str, pd.DataFrame],
    train: pd.DataFrame,
    production: dict[str, DomainEmbeddings],
    config: NightlyConfig,
    production_transfers: dict[str, DomainTransfer] | None = None,
    production_pairs: np.ndarray | None = None,
    production_metrics: Mapping[str, Any] | None = None,
) -> Evaluation:
    """The new (evaluated) model, production and popularity on held-out rows.

    Each user's training rows in this split are excluded from every model's
    ranking. The new model and popularity are scored on every held-out row
    (``evaluated``); the comparison with production (``comparison``) scores all
    three on the rows production never trained on (``production_pairs``: its
    training pairs, see ``comparable_heldout``), so neither side is judged on rows
    it has seen. Held-out users production does not know are scored by the
    ``unknown_users`` policy.

    Where production trained on every held-out row of a (group, target) (e.g. a
    night without new data), the comparison falls back to production's recorded
    evaluation (``production_metrics``: its manifest's metrics, its evaluated
    model on its own night's held-out rows, the same users under the stable
    ``hash`` split) against the new model on every held-out row; ``counts`` says
    ``"basis": "recorded"`` (else ``"rows production never trained on"``).

    Cold users are scored as served: by the target's item-to-item transfer where
    the model (``model.transfers``) or production (``production_transfers``) has one.
    """
    ks = config.eval_ks
    evaluated: Results = {"cold_start": {}, "warm": {}}
    comparison: Results = {"cold_start": {}, "warm": {}}
    counts: dict[str, dict[str, dict[str, int]]] = {"cold_start": {}, "warm": {}}
    scores: dict[str, dict[str, dict[str, Any]]] = {}
    source = config.job.train.source
    prod_transfers = production_transfers or {}
    for target in config.job.train.targets:
        exclude = train.loc[train["domain"] == target, ["user_id", "item_id"]]
        new = model.domains[target]

        def new_model(rows: pd.DataFrame) -> dict[str, dict[str, float]]:
            # the same evaluation as `recxfer evaluate` (popularity: the split's training counts)
            return evaluate_on_split(new, rows, ks, train, transfer=model.transfers.get(target),
                                     source=model.domains[source])

        comparable_parts = []
        for group, heldout in (("cold_start", cold_test.get(target)), ("warm", warm_test.get(target))):
            if heldout is None or heldout.empty:
                continue
            row = new_model(heldout)
            evaluated[group][target] = {"model": row["model"], "popularity": row["popularity"]}
            if target not in production:
                comparison[group][target] = evaluated[group][target]
                continue
            rows, counts[group][target] = comparable_heldout(heldout, group, production[target],
                                                             production_pairs)
            if rows.empty:
                recorded = ((production_metrics or {}).get(group) or {}).get(target) or {}
                if isinstance(recorded.get("model"), Mapping):
                    counts[group][target]["basis"] = "recorded"
                    comparison[group][target] = {"model": row["model"], "production": dict(recorded["model"]),
                                                 "popularity": row["popularity"]}
                continue
            counts[group][target]["basis"] = "rows production never trained on"
            comparable_parts.append(rows)
            same = len(rows) == len(heldout)
            mine = row if same else new_model(rows)
            comparison[group][target] = {
                "model": mine["model"],
                "production": evaluate_heldout(
                    production[target], rows, ks, exclude=exclude,
                    unknown_users=config.nightly.unknown_users,
                    transfer=prod_transfers.get(target), source=production.get(source),
                )["model"],
                "popularity": mine["popularity"],
            }
        parts = [f for f in (cold_test.get(target), warm_test.get(target)) if f is not None]
        scores[target] = {"model": score_samples(new, pd.concat(parts, ignore_index=True))}
        if target in production and comparable_parts:
            scores[target]["production"] = score_samples(production[target],
                                                         pd.concat(comparable_parts, ignore_index=True))
    for results in (evaluated, comparison, counts):
        if not results["warm"]:
            del results["warm"]
    for group, by_target in evaluated.items():
        for target, methods in by_target.items():
            compared = comparison.get(group, {}).get(target, {})
            n = counts.get(group, {}).get(target)
            log.info(
                "%s %s: recall@50 new %.4f, popularity %.4f (%d users, every held-out row)%s",
                group, target, methods["model"].get("recall@50", float("nan")),
                methods["popularity"].get("recall@50", float("nan")), int(methods["model"]["users"]),
                "" if n is None else (
                    f"; production trained on all {n['heldout_rows']} rows: its recorded evaluation "
                    f"{compared['production'].get('recall@50', float('nan')):.4f}"
                    if compared and n.get("basis") == "recorded" else
                    f"; on the {n['comparable_rows']} of {n['heldout_rows']} rows production never "
                    f"trained on ({int(compared['model']['users'])} users): new "
                    f"{compared['model'].get('recall@50', float('nan')):.4f}, production "
                    f"{compared['production'].get('recall@50', float('nan')):.4f}"
                    if compared else
                    f"; production trained on all {n['heldout_rows']} rows and records no "
                    "evaluation: nothing to compare"
                ),
            )
    return Evaluation(evaluated, comparison, counts, scores)


def work_key(data: CrossDomainData, config: NightlyConfig, warm_from: str | None) -> str:
    """Identifies the training inputs: same key, same model (so resuming is safe)."""
    inputs = {
        "data": data.fingerprint,
        "job": to_dict(config.job),
        "warm_start_from": warm_from,
        "warm_holdout": config.nightly.warm_holdout,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _clean_leftovers(root: Path, keep_key: str | None = None) -> None:
    removed = clean_staging(root)
    if removed:
        log.warning("removed leftovers of killed runs: %s", removed)
    work = root / WORK_DIR
    if work.is_dir():
        for other in sorted(work.iterdir()):
            if other.name != keep_key:
                shutil.rmtree(other, ignore_errors=True)
                log.info("removed the work folder of another run's inputs: %s", other.name)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


def _prune_reports(root: Path, keep: int) -> None:
    reports = root / REPORTS_DIR
    if not reports.is_dir():
        return
    runs = sorted(p for p in reports.iterdir() if p.is_dir() and not p.name.startswith("."))
    for old in runs[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _next_run_id(root: Path) -> str:
    reports = root / REPORTS_DIR
    names = list_versions(root) + (
        [p.name for p in reports.iterdir() if not p.name.startswith(".")] if reports.is_dir() else []
    )
    return new_version(after=max(names) if names else None)


# ----------------------------------------------------------------------------- the job


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_nightly(
    data_dir: str | Path,
    artifacts_root: str | Path,
    config: NightlyConfig = NightlyConfig(),
    force: bool = False,
) -> NightlyResult:
    """Run the nightly job once (see the module docstring).

    Returns:
        The result; ``exit_code`` is ``EXIT_OK`` (published) or ``EXIT_GATED``.

    Raises:
        LockHeldError: another run holds ``ROOT/.lock``.
        DataValidationError: bad input (before anything is trained or written).
        Exception: anything else is an internal error; production is untouched,
            checkpoints are kept for the next run to resume from.
    """
    with _torch_threads(config.nightly.torch_threads):
        return _run(Path(artifacts_root), data_dir, config, force)


def _run(root: Path, data_dir: str | Path, config: NightlyConfig, force: bool) -> NightlyResult:
    job, opts = config.job, config.nightly
    steps = _Steps()
    started = time.perf_counter()
    with RootLock(root) as lock:
        log.info("lock %s taken (pid %d)", lock.path, lock.info.pid if lock.info else -1)
        if job.split.method != "hash":
            log.warning(
                "split.method is %r: held-out users change from night to night, so production "
                "may have trained on tonight's held-out rows and look better than it is",
                job.split.method,
            )
        with steps("ingest"):
            data = ingest(data_dir, config)
        with steps("production"):
            prod = load_production(root)
            prod_domains = production_domains(prod, job.domains)
        with steps("split"):
            split = split_data(data, job)
            train, warm_test = split.train, {}
            if opts.warm_holdout:
                train, warm_test = hold_out_warm(split.train, job.train.targets, job.split.seed)
            log.info(
                "split: %d training rows; cold-start test users %s; warm test users %s",
                len(train), {t: split.test[t]["user_id"].nunique() for t in job.train.targets},
                {t: f["user_id"].nunique() for t, f in warm_test.items()},
            )
        # emcdr warm-starts from production's embeddings, shared from its weights.
        init = prod_domains if (opts.warm_start and prod_domains and job.method == "emcdr") else None
        warm = (load_shared_warm_start(prod)
                if (opts.warm_start and job.method in ("shared", "blend")) else None)
        warm_from = prod.version if prod is not None and (init or warm is not None) else None
        key = work_key(data, config, warm_from)
        work = root / WORK_DIR / key
        _clean_leftovers(root, keep_key=key)
        with steps("train"):
            log.info(
                "training %s %s; checkpoints in %s", job.method,
                f"warm-started from production {warm_from}" if warm_from else "from scratch", work,
            )
            model = train_model(train, job, init=init, checkpoint_dir=work / "checkpoints",
                                items=data.items, text_cache=root / TEXT_CACHE,
                                valid=split.valid, warm=warm)
            resumed = {d: e for d, e in model.resumed_from.items() if e}
            if resumed:
                log.info("resumed from checkpoints: %s", resumed)
        with steps("evaluate"):
            prod_pairs = trained_pairs(prod) if prod is not None else None
            if prod is not None and prod_pairs is None:
                log.info("production %s records no training pairs (made before the refit): assuming it "
                         "never trained on tonight's held-out rows", prod.version)
            evaluation = evaluate_models(model, split.test, warm_test, train, prod_domains, config,
                                         production_transfers(prod, prod_domains, job), prod_pairs,
                                         prod.manifest.get("metrics") if prod is not None else None)
            results = evaluation.comparison
        with steps("gate"):
            decision = decide(
                results, opts.gate, job.train.targets, has_production=bool(prod_domains), force=force
            )
            if decision.forced:
                log.warning("gate FAILED but --force was given: publishing anyway (%s)", decision.reason)
            elif decision.passed:
                log.info("gate passed: %s", decision.reason)
            else:
                log.warning("gate failed, production %s kept: %s", prod.version if prod else None,
                            decision.reason)
        status = "forced" if decision.forced else "published" if decision.passed else "gated"
        run_id = _next_run_id(root)
        production_version = prod.version if prod else None
        published = model
        if decision.publish and job.refit:
            with steps("refit"):
                # The published model learns from every row, the held-out ones included
                # (warm-started from the evaluated model; see pipeline.refit_model).
                published = refit_model(data.interactions, job, model, work / "refit",
                                        items=data.items, text_cache=root / TEXT_CACHE)
        training = training_sets(split, data.interactions, job, model,
                                 published if job.refit else None, evaluated_rows=train,
                                 description=_split_description(config))
        selection = model_selection(model, warm_from)
        summary = {
            "run_id": run_id, "status": status, "production": production_version,
            "data_fingerprint": data.fingerprint, "warm_start_from": warm_from,
            "resumed_from": model.resumed_from, "warm_rows": model.warm_rows,
            "gate": decision.as_dict(), "results": results, "evaluated": evaluation.evaluated,
            "comparison_rows": evaluation.counts, "model_selection": selection,
            "training": {k: {kk: vv for kk, vv in v.items() if kk != "epoch_losses"}
                         for k, v in training.items()} if decision.publish else None,
        }
        with steps("report"):
            report = _build_report(run_id, status, decision, summary, evaluation, model, prod,
                                   config, dict(steps.timings),
                                   published if decision.publish and job.refit else None)
            page = render_html(report)
        version = None
        if decision.publish:
            with steps("publish"):
                def add_report(builder: ArtifactBuilder) -> None:
                    (builder.path / REPORT_HTML).parent.mkdir(parents=True, exist_ok=True)
                    (builder.path / REPORT_HTML).write_text(page, encoding="utf-8")
                    _write_json(builder.path / REPORT_METRICS, {**summary, "timings": steps.timings})

                artifact = write_model_artifact(
                    root, job, data.fingerprint, published,
                    metrics=evaluation.evaluated,
                    extra={
                        "report": {"html": REPORT_HTML, "metrics": REPORT_METRICS},
                        "nightly": {
                            "run_id": run_id, "status": status, "production_before": production_version,
                            "warm_start_from": summary["warm_start_from"], "gate": decision.as_dict(),
                            "resumed_from": model.resumed_from, "options": to_dict(opts),
                            "comparison": results, "comparison_rows": evaluation.counts,
                            "model_selection": selection,
                        },
                    },
                    add_files=add_report,
                    version=run_id,
                    evaluated=model,
                    training=training,
                    training_rows=data.interactions if job.refit else train,
                )
                if not lock.held():
                    raise RuntimeError(f"{lock.path} is no longer ours; not publishing {artifact.version}")
                removed = publish_and_prune(root, artifact.version, job.keep_versions)
                version = artifact.version
                log.info("published %s as %s/%s (pruned %s)", version, root, CURRENT, removed or "nothing")
        report_dir = root / REPORTS_DIR / run_id
        with steps("finish"):
            report_dir.mkdir(parents=True, exist_ok=True)
            (report_dir / "report.html").write_text(page, encoding="utf-8")
            _write_json(report_dir / "metrics.json", {**summary, "timings": steps.timings})
            _prune_reports(root, opts.keep_reports)
            shutil.rmtree(work, ignore_errors=True)
        timings = {**steps.timings, "total": time.perf_counter() - started}
        exit_code = EXIT_OK if decision.publish else EXIT_GATED
        _write_json(report_dir / "run.json", {
            "run_id": run_id, "status": status, "exit_code": exit_code, "version": version,
            "production_before": production_version, "gate": decision.as_dict(), "timings": timings,
        })
        log.info(
            "nightly %s: %s in %.1f s (%s); report %s",
            run_id, status, timings["total"],
            ", ".join(f"{k} {v:.1f} s" for k, v in steps.timings.items()), report_dir / "report.html",
        )
        return NightlyResult(
            status, exit_code, run_id, version, production_version, decision, results, timings,
            report_dir, dict(model.resumed_from), evaluation.evaluated, evaluation.counts, selection,
            training if decision.publish else {},
        )


def _split_description(config: NightlyConfig) -> str:
    text = split_description(config.job)
    if config.nightly.warm_holdout:
        text += "; and each warm target user's latest row (leave-one-out)"
    return text


def model_selection(model: CrossDomainModel, warm_from: str | None) -> dict[str, Any]:
    """How tonight's weights were chosen: validation per epoch (epoch ``i + 1`` at
    index ``i``), the chosen epoch (1-based; 0: the warm-started weights were
    kept), and one plain sentence saying so."""
    epochs = len(next(iter(model.epoch_losses.values()), []))
    if not isinstance(model, SharedCrossDomainModel):
        return {"val_scores": [], "best_epoch": epochs, "warm_score": None, "epochs_run": epochs,
                "kept_production_weights": False,
                "statement": f"no validation for this method: all {epochs} epoch(s) trained, the last kept"}
    val, best, warm_score = list(model.val_scores), model.best_epoch, model.warm_score
    kept = best == 0 and warm_score is not None
    if kept:
        statement = (
            f"No epoch beat production's weights on validation ({warm_score:.4f} before training"
            + (f", best epoch {max(val):.4f}" if val else "") + f"): production {warm_from}'s weights "
            "were kept; items new tonight keep the rows training gave them."
        )
    elif not val:
        statement = f"no validation users: all {epochs} epoch(s) trained, the last kept"
    else:
        statement = (f"Epoch {best} of {epochs} chosen on validation (recall@10 {val[best - 1]:.4f}"
                     + (f"; production's weights scored {warm_score:.4f} before training"
                        if warm_score is not None else "") + ").")
    return {"val_scores": val, "best_epoch": best, "warm_score": warm_score, "epochs_run": epochs,
            "kept_production_weights": kept, "statement": statement}


def _build_report(
    run_id: str,
    status: str,
    decision: GateDecision,
    summary: dict[str, Any],
    evaluation: Evaluation,
    model: CrossDomainModel,
    prod: Artifact | None,
    config: NightlyConfig,
    timings: dict[str, float],
    refit: CrossDomainModel | None = None,
) -> RunReport:
    prod_losses = prod.manifest.get("epoch_losses") if prod is not None else None
    resumed = {d: e for d, e in model.resumed_from.items() if e}
    selection = summary["model_selection"]
    training = summary.get("training") or {}
    published = training.get("published") or {}
    facts = {
        "run": run_id,
        "outcome": {"published": f"published as {run_id}", "forced": f"published as {run_id} (--force)",
                    "gated": "not published; production kept"}[status],
        "production before the run": summary["production"] or "none",
        "training": (f"warm-started from {summary['warm_start_from']}" if summary["warm_start_from"]
                     else "from scratch")
        + (f"; resumed from checkpoints {resumed}" if resumed else ""),
        "model selection": selection["statement"],
        "evaluated model trained on": _describe(training.get("evaluated") or {},
                                                "the split's training rows (held-out rows left out)"),
        "published model trained on": (
            "not published" if not training else
            _describe(published, "") + (
                f"; refit for {published.get('refit_epochs')} epoch(s) ({published.get('refit_budget')})"
                if published.get("refit") else "")
            + (f"; left out (untrained): {dropped}" if (dropped := {
                d: n for d, n in (published.get("dropped_items") or {}).items() if n}) else "")
        ),
        "data fingerprint": summary["data_fingerprint"],
        "device": model.device,
        "unknown users (production)": config.nightly.unknown_users,
    }
    return RunReport(
        title=f"recxfer nightly {run_id}",
        status=status,
        headline=decision.reason,
        facts=facts,
        results=evaluation.comparison,
        ks=config.eval_ks,
        gate_checks=[c for c in decision.as_dict()["checks"]],
        epoch_losses=model.epoch_losses,
        production_losses=prod_losses if isinstance(prod_losses, dict) else None,
        scores=evaluation.scores,
        timings=timings,
        config={**to_dict(config.job), "nightly": to_dict(config.nightly)},
        bar_metric=default_bar_metric(config.eval_ks),
        evaluated=evaluation.evaluated,
        comparison_rows=evaluation.counts,
        selection=selection,
        refit_losses=refit.epoch_losses if refit is not None else None,
    )


def _describe(record: dict[str, Any], fallback: str) -> str:
    if not record:
        return fallback or "-"
    return (f"{record.get('rows')} rows, {record.get('users')} users "
            f"({record.get('rows_per_domain')}); {record.get('description')}")


# ----------------------------------------------------------------------------- entry points


class Terminated(BaseException):
    """SIGTERM arrived (e.g. a Kubernetes pod is being stopped)."""


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into an exception so the lock and staging folders are cleaned up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def nightly_main(
    data_dir: str | Path,
    artifacts_root: str | Path,
    config_path: str | Path | None = None,
    force: bool = False,
) -> int:
    """Run the job and map the outcome to an exit code (see ``EXIT_*``); logs,
    never raises (except on a second SIGTERM-like interruption)."""
    try:
        config = load_nightly_config(config_path)
    except ValueError as exc:
        log.error("bad config: %s", exc)
        return EXIT_BAD_INPUT
    if force:
        log.warning("--force: the gate's verdict will be ignored")
    try:
        with _sigterm_raises():
            result = run_nightly(data_dir, artifacts_root, config, force)
    except LockHeldError as exc:
        log.error("another run holds the lock, nothing done: %s", exc)
        return EXIT_LOCKED
    except DataValidationError as exc:
        log.error("bad input, nothing trained or published: %s", exc)
        return EXIT_BAD_INPUT
    except (Terminated, KeyboardInterrupt) as exc:
        log.error("interrupted (%s): production untouched; checkpoints kept for the next run", exc)
        return EXIT_ERROR
    except Exception:  # noqa: BLE001 - the job's contract is an exit code
        log.exception("internal error: production untouched; checkpoints kept for the next run")
        return EXIT_ERROR
    return result.exit_code


def rollback_production(
    artifacts_root: str | Path, to: str | None = None
) -> tuple[str, str]:
    """Under the root's lock, point ``current`` back at the previous version (or
    ``to``) after verifying it; see ``recxfer.artifacts.rollback``.

    Returns:
        ``(from_version, to_version)``.
    """
    with RootLock(artifacts_root):
        previous, target = rollback(artifacts_root, to)
    log.info("rolled back %s/%s from %s to %s", artifacts_root, CURRENT, previous, target)
    return previous, target
