"""Plots render to PNG bytes on the Agg canvas, for full and for sparse inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recxfer.eval import plots

PNG = b"\x89PNG\r\n\x1a\n"
KS = (1, 5, 10, 50)


def _metrics(scale: float) -> dict[str, float]:
    return {f"recall@{k}": scale * k / 50 for k in KS} | {"users": 10.0}


RESULTS = {
    "cold_start": {
        "books": {"model": _metrics(0.5), "production": _metrics(0.4), "popularity": _metrics(0.2)},
        "music": {"model": _metrics(0.6), "popularity": _metrics(0.3)},  # no production here
    },
    "warm": {"books": {"model": _metrics(0.7), "production": _metrics(0.7)}},
}


@pytest.mark.parametrize(
    "draw",
    [
        lambda: plots.recall_curves(RESULTS, KS),
        lambda: plots.metric_bars(RESULTS, "recall@50"),
        lambda: plots.loss_curves({"books": [1.0, 0.8, 0.7], "music": []}, {"books": [1.1, 0.9]}),
        lambda: plots.score_histograms(
            {"books": {"model": {"heldout": np.random.default_rng(0).normal(1, 1, 200),
                                 "random": np.random.default_rng(1).normal(0, 1, 500)},
                       "production": {"heldout": np.array([np.nan, 0.5]), "random": np.array([])}}}
        ),
    ],
    ids=["recall_curves", "metric_bars", "loss_curves", "score_histograms"],
)
def test_each_plot_is_a_png(draw) -> None:
    png = draw()
    assert png.startswith(PNG) and len(png) > 2000


@pytest.mark.parametrize(
    "draw",
    [lambda: plots.recall_curves({}, KS), lambda: plots.metric_bars({}, "recall@50"),
     lambda: plots.loss_curves({}), lambda: plots.score_histograms({})],
)
def test_empty_inputs_still_give_a_png(draw) -> None:
    assert draw().startswith(PNG)


def test_no_pyplot_global_state() -> None:
    source = Path(plots.__file__).read_text()
    assert "pyplot" not in source.replace("no pyplot", "")
