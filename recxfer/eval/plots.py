"""Plots of an evaluation run as PNG bytes, for self-contained HTML reports.

Drawn on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``), so
no display, no pyplot global state and no backend switching are involved; safe
in a scheduler's headless process and in threads.

Inputs use the nested results layout of the evaluation stage::

    results[group][domain][method][metric] -> float
    # group: "cold_start" | "warm"; method: "model" | "production" | "popularity"
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

Results = Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]]

METHOD_LABELS = {"model": "new model", "production": "production", "popularity": "popularity",
                 "refit": "refit on all rows (published)"}
METHOD_STYLES = {
    "model": {"color": "#1f77b4", "linestyle": "-", "marker": "o"},
    "production": {"color": "#ff7f0e", "linestyle": "--", "marker": "s"},
    "popularity": {"color": "#7f7f7f", "linestyle": ":", "marker": "^"},
    "refit": {"color": "#2ca02c", "linestyle": "-.", "marker": "D"},
}
GROUP_LABELS = {"cold_start": "cold-start users", "warm": "warm users"}
DPI = 100
LEGEND = {"fontsize": 9, "framealpha": 0.9}


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", **LEGEND)


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def _grid(n_rows: int, n_cols: int, width: float = 4.2, height: float = 3.2) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width * n_cols, height * n_rows), dpi=DPI, layout="constrained")
    axes = np.asarray(fig.subplots(n_rows, n_cols, squeeze=False))  # (n_rows, n_cols)
    return fig, axes


def _empty(message: str) -> bytes:
    fig = Figure(figsize=(5, 1.2), dpi=DPI)
    fig.text(0.5, 0.5, message, ha="center", va="center")
    return _png(fig)


def recall_curves(results: Results, ks: Sequence[int], metric: str = "recall") -> bytes:
    """``metric@k`` against ``k``: one panel per (group, domain), one line per method."""
    panels = [(g, d) for g in results for d in sorted(results[g])]
    if not panels:
        return _empty("no results")
    ks = sorted(ks)
    groups = list(results)
    domains = sorted({d for _, d in panels})
    fig, axes = _grid(len(groups), len(domains))
    for r, group in enumerate(groups):
        for c, domain in enumerate(domains):
            ax = axes[r, c]
            methods = results[group].get(domain, {})
            for method, metrics in methods.items():
                points = [(k, metrics.get(f"{metric}@{k}")) for k in ks]
                points = [(k, v) for k, v in points if v is not None]
                if not points:
                    continue
                x, y = zip(*points)
                ax.plot(x, y, label=METHOD_LABELS.get(method, method), **METHOD_STYLES.get(method, {}))
            ax.set_xscale("log")
            ax.set_xticks(ks, [str(k) for k in ks])
            ax.set_xlabel("k")
            ax.set_ylabel(f"{metric}@k")
            ax.set_title(f"{domain}: {GROUP_LABELS.get(group, group)}")
            ax.grid(alpha=0.3)
            _legend(ax)
    return _png(fig)


def metric_bars(results: Results, metric: str) -> bytes:
    """Grouped bars of ``metric``: one bar cluster per (domain, group), one bar per method."""
    clusters = [(d, g) for d in sorted({d for g in results for d in results[g]}) for g in results
                if d in results[g]]
    if not clusters:
        return _empty("no results")
    methods = [m for m in METHOD_LABELS if any(m in results[g][d] for d, g in clusters)]
    fig = Figure(figsize=(max(5.0, 1.6 * len(clusters)), 3.6), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(clusters))
    for i, method in enumerate(methods):
        values = [results[g][d].get(method, {}).get(metric, np.nan) for d, g in clusters]
        bars = ax.bar(x + (i - (len(methods) - 1) / 2) * width, values, width,
                      label=METHOD_LABELS[method], color=METHOD_STYLES[method]["color"])
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=1)
    ax.set_xticks(x, [f"{d}\n{GROUP_LABELS.get(g, g)}" for d, g in clusters], fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per domain, cold-start and warm users")
    _legend(ax)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def loss_curves(
    epoch_losses: Mapping[str, Sequence[float]],
    production_losses: Mapping[str, Sequence[float]] | None = None,
    refit_losses: Mapping[str, Sequence[float]] | None = None,
) -> bytes:
    """Mean training loss per epoch (numbered from 1), one panel per domain of the
    new model: the new run solid, its refit on all rows dash-dotted, production's
    run dashed (for the domains its manifest recorded)."""
    domains = sorted(epoch_losses) or sorted(production_losses or {})
    if not domains:
        return _empty("no training losses recorded")
    fig, axes = _grid(1, len(domains), width=3.8)
    for c, domain in enumerate(domains):
        ax = axes[0, c]
        for losses, method in ((epoch_losses.get(domain), "model"),
                               ((refit_losses or {}).get(domain), "refit"),
                               ((production_losses or {}).get(domain), "production")):
            if losses:
                ax.plot(np.arange(1, len(losses) + 1), losses, label=METHOD_LABELS[method],
                        **METHOD_STYLES[method])
        if not epoch_losses.get(domain):
            ax.text(0.5, 0.5, "no epochs trained", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(domain)
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        _legend(ax)
    return _png(fig)


def validation_curve(
    val_scores: Sequence[float], best_epoch: int, warm_score: float | None = None,
    metric: str = "validation recall@10",
) -> bytes:
    """Validation score per epoch (numbered from 1) with the chosen epoch marked;
    the warm-started weights' score before training as a dashed line (chosen when
    ``best_epoch`` is 0)."""
    if not val_scores and warm_score is None:
        return _empty("no validation scores (this method does not validate per epoch)")
    fig = Figure(figsize=(6.4, 3.4), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    epochs = np.arange(1, len(val_scores) + 1)
    if len(val_scores):
        ax.plot(epochs, val_scores, label="after each epoch", **METHOD_STYLES["model"])
    if warm_score is not None:
        ax.axhline(warm_score, label="warm-start weights, before training",
                   **{k: v for k, v in METHOD_STYLES["production"].items() if k != "marker"})
    if 1 <= best_epoch <= len(val_scores):
        ax.scatter([best_epoch], [val_scores[best_epoch - 1]], s=160, facecolors="none",
                   edgecolors="#d62728", linewidths=2, zorder=5, label=f"chosen: epoch {best_epoch}")
    elif warm_score is not None:
        ax.scatter([0], [warm_score], s=160, facecolors="none", edgecolors="#d62728", linewidths=2,
                   zorder=5, label="chosen: warm-start weights kept")
    ax.set_xlabel("epoch (0: before training)")
    ax.set_ylabel(metric)
    ax.margins(y=0.12)
    ax.set_xlim(-0.5 if warm_score is not None else 0.5, max(1, len(val_scores)) + 0.5)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title("model selection on the validation users")
    ax.grid(alpha=0.3)
    _legend(ax)
    return _png(fig)


def score_histograms(scores: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]]) -> bytes:
    """Distributions of ``<user, item>`` scores per domain: held-out (relevant)
    pairs filled, random items as outlines, one colour per model.

    Args:
        scores: ``domain -> model ("model"/"production") -> {"heldout": (n,), "random": (m,)}``.
    """
    domains = sorted(scores)
    if not domains:
        return _empty("no scores")
    fig, axes = _grid(1, len(domains), width=4.6, height=4.4)
    for c, domain in enumerate(domains):
        ax = axes[0, c]
        for method, samples in scores[domain].items():
            style = METHOD_STYLES.get(method, {})
            for kind, histtype, alpha in (("heldout", "stepfilled", 0.4), ("random", "step", 1.0)):
                values = np.asarray(samples.get(kind, []), dtype=np.float64)
                values = values[np.isfinite(values)]
                if values.size == 0:
                    continue
                ax.hist(values, bins=40, density=True, histtype=histtype, alpha=alpha,
                        color=style.get("color"), linestyle=style.get("linestyle", "-"),
                        label=f"{METHOD_LABELS.get(method, method)}: {kind} items ({values.size})")
        ax.set_title(f"{domain}: held-out vs random items")
        ax.set_xlabel("score <user, item>")
        ax.set_ylabel("density")
        if ax.get_legend_handles_labels()[0]:  # below the panel: never over the histograms
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=1, **LEGEND)
    return _png(fig)
