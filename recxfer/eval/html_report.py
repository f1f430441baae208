"""A self-contained HTML report of one evaluation run (e.g. a nightly retrain).

One file, no external resources: plots are PNGs embedded as base64 ``data:``
URIs, styles are inline. Sections, in order: the outcome (status and gate
decision), key facts, model selection (validation per epoch, the chosen epoch
marked, and a plain sentence when production's weights were kept), the gate
checks, the comparison with production (on the rows production never trained
on), the new model on every held-out row, recall@k curves, per-domain
cold/warm bars, training loss per domain, score distributions, step timings and
the configuration.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recxfer.eval import plots

TABLE_METRICS = ("recall@10", "ndcg@10", "hr@10", "recall@50", "mrr")
_STATUS_COLOURS = {"published": "#2e7d32", "forced": "#ef6c00", "gated": "#c62828",
                   "evaluated": "#1565c0", "stored metrics": "#6a1b9a"}
_COMPARED = ("Compared with production on the held-out rows production never trained on (it was refit "
             "on every row up to its night): the gate decides on these.")


@dataclass(frozen=True)
class RunReport:
    """Everything the report shows.

    Attributes:
        title: page title, e.g. ``"recxfer nightly 20240501T020000Z-0000-abc123"``.
        status: ``"published"``, ``"forced"`` (published despite the gate) or ``"gated"``.
        headline: one sentence under the status, e.g. the gate's reason.
        facts: ordered label -> value pairs (run id, data fingerprint, production version, ...).
        results: ``group -> domain -> method -> metric -> value`` (see ``plots``):
            the comparison the gate decided on (the nightly: rows production never
            trained on).
        ks: the cut-offs evaluated (x axis of the recall curves).
        gate_checks: one dict per check (``target``, ``metric``, ``new``,
            ``production``, ``tolerance``, ``passed``, ``note``).
        epoch_losses: domain -> training loss per epoch of the new model.
        production_losses: the same for the production model, when known.
        scores: ``domain -> model -> {"heldout": (n,), "random": (m,)}`` score samples.
        timings: step -> seconds.
        config: the run's configuration (shown as JSON).
        bar_metric: metric of the per-domain bar chart.
        evaluated: the new model on every held-out row (same layout as
            ``results``); shown as its own tables when given.
        comparison_rows: ``group -> domain -> {"heldout_rows", "comparable_rows",
            "rows_production_trained_on", "users_warm_in_production"}``.
        selection: ``val_scores`` (epoch ``i + 1`` at index ``i``), ``best_epoch``
            (1-based, 0: the warm-started weights were kept), ``warm_score``,
            ``kept_production_weights`` and ``statement`` (one sentence).
        refit_losses: domain -> loss per epoch of the refit on every row.
        notes: sentences shown highlighted under the facts (e.g. that figures come
            from an artifact's stored metrics).
        show_gate: whether the page has a Gate section (``recxfer evaluate``: no).
        table_metrics: the columns of the metric tables.
        subject: what ``comparison_rows`` compares with, in the notes under the
            tables ("production"; "the artifact" for ``recxfer evaluate``).
    """

    title: str
    status: str
    headline: str
    facts: Mapping[str, str]
    results: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]]
    ks: Sequence[int]
    gate_checks: Sequence[Mapping[str, Any]] = ()
    epoch_losses: Mapping[str, Sequence[float]] = field(default_factory=dict)
    production_losses: Mapping[str, Sequence[float]] | None = None
    scores: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    bar_metric: str = "recall@50"
    evaluated: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]] = field(default_factory=dict)
    comparison_rows: Mapping[str, Mapping[str, Mapping[str, int]]] = field(default_factory=dict)
    selection: Mapping[str, Any] = field(default_factory=dict)
    refit_losses: Mapping[str, Sequence[float]] | None = None
    notes: Sequence[str] = ()
    show_gate: bool = True
    table_metrics: Sequence[str] = TABLE_METRICS
    subject: str = "production"


def default_bar_metric(ks: Sequence[int]) -> str:
    """The bar chart's metric: ``recall@50`` when evaluated, else recall at the
    largest cut-off (the nightly report and ``recxfer evaluate`` both use this)."""
    return "recall@50" if 50 in ks else f"recall@{max(ks)}"


def _e(value: object) -> str:
    return html.escape(str(value))


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _fmt(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return _e(value)


def _metrics_table(group: str, by_domain: Mapping[str, Mapping[str, Mapping[str, float]]],
                   rows_of: Mapping[str, Mapping[str, int]] | None = None,
                   columns: Sequence[str] = TABLE_METRICS, subject: str = "production") -> str:
    head = "".join(f"<th>{_e(m)}</th>" for m in columns)
    rows = []
    for domain in sorted(by_domain):
        for method, metrics in by_domain[domain].items():
            users = int(metrics.get("users", 0))
            known = metrics.get("known_users")
            users_cell = f"{users}" if known is None or int(known) == users else f"{users} ({int(known)} known)"
            cells = "".join(f"<td>{_fmt(metrics.get(m))}</td>" for m in columns)
            label = plots.METHOD_LABELS.get(method, method)
            rows.append(f"<tr><td>{_e(domain)}</td><td>{_e(label)}</td><td>{users_cell}</td>{cells}</tr>")
    title = plots.GROUP_LABELS.get(group, group)
    notes = ""
    if rows_of:
        notes = "<ul class='muted'>" + "".join(_rows_note(domain, n, subject)
                                               for domain, n in sorted(rows_of.items()))
        notes += "</ul>"
    return (
        f"<h3>{_e(title)}</h3><table><tr><th>domain</th><th>method</th><th>users</th>{head}</tr>"
        + "".join(rows) + "</table>" + notes
    )


def _rows_note(domain: str, n: Mapping[str, Any], subject: str = "production") -> str:
    if n.get("basis") == "stored":
        return (f"<li>{_e(domain)}: {_e(subject)} trained on all {n.get('heldout_rows')} held-out rows; "
                "these are its stored metrics (its manifest: the evaluated model's, before the "
                "refit on every row), not recomputed</li>")
    if n.get("basis") == "recorded":
        return (f"<li>{_e(domain)}: production trained on all {n.get('heldout_rows')} held-out rows; "
                "compared with its recorded evaluation (its manifest: its evaluated model on its own "
                "night's held-out rows), the new model on every held-out row</li>")
    verb = "compared" if subject == "production" else "scored"
    return (f"<li>{_e(domain)}: {n.get('comparable_rows')} of {n.get('heldout_rows')} held-out rows "
            f"{verb}; left out: {n.get('rows_production_trained_on')} rows {_e(subject)} trained on"
            + (f", {n.get('users_warm_in_production')} users {_e(subject)} knows as warm"
               if n.get("users_warm_in_production") else "")
            + ("" if n.get("comparable_rows") else " (nothing left: not compared)") + "</li>")


def _selection_html(selection: Mapping[str, Any]) -> str:
    if not selection:
        return ""
    val = list(selection.get("val_scores") or [])
    best = int(selection.get("best_epoch") or 0)
    kept = bool(selection.get("kept_production_weights"))
    png = plots.validation_curve(val, best, selection.get("warm_score"))
    rows = "".join(
        f"<tr{' class=ok' if i == best else ''}><td>{i}</td><td>{_fmt(score)}</td>"
        f"<td>{'chosen' if i == best else ''}</td></tr>"
        for i, score in ([(0, selection["warm_score"])] if selection.get("warm_score") is not None else [])
        + list(enumerate(val, start=1))
    )
    table = ("<table><tr><th>epoch</th><th>validation</th><th></th></tr>" + rows + "</table>") if rows else ""
    return (
        "<h2>Model selection</h2>"
        + (f"<p class='kept'><b>Production's weights were kept.</b> {_e(selection.get('statement', ''))}</p>"
           if kept else f"<p>{_e(selection.get('statement', ''))}</p>")
        + "<p class='muted'>Validation score (recall@10 of the validation cold-start users) after each "
          "epoch, numbered from 1; epoch 0 is the warm-started weights before training. The chosen "
          "epoch is circled.</p>"
        + _img(png, "validation score per epoch") + table
    )


def _gate_table(checks: Sequence[Mapping[str, Any]]) -> str:
    if not checks:
        return "<p>No gate checks were run.</p>"
    rows = []
    for check in checks:
        verdict = {True: "pass", False: "FAIL", None: "skipped"}[check.get("passed")]
        css = {"pass": "ok", "FAIL": "bad", "skipped": "muted"}[verdict]
        rows.append(
            f"<tr class='{css}'><td>{_e(check.get('target'))}</td><td>{_e(check.get('metric'))}</td>"
            f"<td>{_fmt(check.get('new'))}</td><td>{_fmt(check.get('production'))}</td>"
            f"<td>{_fmt(check.get('tolerance'))}</td><td>{verdict}</td><td>{_e(check.get('note', ''))}</td></tr>"
        )
    return (
        "<table><tr><th>target</th><th>metric</th><th>new</th><th>production</th>"
        "<th>tolerance</th><th>verdict</th><th>note</th></tr>" + "".join(rows) + "</table>"
    )


def render_html(report: RunReport) -> str:
    """The report as one self-contained HTML page."""
    colour = _STATUS_COLOURS.get(report.status, "#455a64")
    facts = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in report.facts.items())
    tables = "".join(_metrics_table(g, report.results[g], report.comparison_rows.get(g),
                                    report.table_metrics, report.subject) for g in report.results)
    evaluated = "".join(_metrics_table(g, report.evaluated[g], columns=report.table_metrics)
                        for g in report.evaluated)
    notes = "".join(f"<p class='kept'>{_e(note)}</p>" for note in report.notes)
    gate = f"<h2>Gate</h2>{_gate_table(report.gate_checks)}" if report.show_gate else ""
    timings = "".join(
        f"<tr><th>{_e(step)}</th><td>{seconds:.2f} s</td></tr>" for step, seconds in report.timings.items()
    )
    figures = [
        ("Recall@k: new model vs production vs popularity", plots.recall_curves(report.results, report.ks),
         "Recall of the held-out items within the top k of a full ranking of each target's "
         "catalogue (training items excluded), per target and user group."),
        (f"{report.bar_metric} per domain, cold-start and warm users",
         plots.metric_bars(report.results, report.bar_metric),
         "The gate's usual metric side by side for every target and user group."),
        ("Training loss per epoch, per domain",
         plots.loss_curves(report.epoch_losses, report.production_losses, report.refit_losses),
         "Mean training loss over each domain's rows, epochs numbered from 1: tonight's evaluated run "
         "solid, its refit on every row dash-dotted, production's run dashed when its manifest "
         "recorded it. A flat or rising curve points at a bad learning rate or data."),
        ("Score distributions", plots.score_histograms(report.scores),
         "Scores of held-out (relevant) user-item pairs against random items for the same users; "
         "the further apart the two distributions, the better the model separates them."),
    ]
    figure_html = "".join(
        f"<h2>{_e(title)}</h2><p class='muted'>{_e(caption)}</p>{_img(png, title)}"
        for title, png, caption in figures
    )
    config = html.escape(json.dumps(report.config, indent=2, sort_keys=True, default=str))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(report.title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
th {{ background: #f3f3f3; }}
tr.ok td {{ background: #e8f5e9; }} tr.bad td {{ background: #ffebee; }}
.muted {{ color: #666; }}
.kept {{ background: #fff8e1; border-left: 4px solid #ef6c00; padding: 0.4em 0.8em; }}
.status {{ display: inline-block; padding: 0.3em 0.8em; color: white; background: {colour};
          border-radius: 4px; font-weight: bold; text-transform: uppercase; }}
img {{ max-width: 100%; border: 1px solid #eee; }}
pre {{ background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.85em; }}
</style></head><body>
<h1>{_e(report.title)}</h1>
<p><span class="status">{_e(report.status)}</span> {_e(report.headline)}</p>
<table>{facts}</table>
{notes}
{_selection_html(report.selection)}
{gate}
<h2>Metrics</h2>
<p class="muted">{_e(_COMPARED if report.evaluated else "")}</p>{tables}
{("<h2>New model on every held-out row</h2>" + evaluated) if report.evaluated else ""}
{figure_html}
<h2>Timings</h2><table>{timings}</table>
<h2>Configuration</h2><pre>{config}</pre>
</body></html>
"""


def write_report(report: RunReport, path: str | Path) -> Path:
    """Render ``report`` to ``path`` (written whole, then renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render_html(report), encoding="utf-8")
    tmp.replace(path)
    return path
