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
        lambda: plots.loss_curves({"books": [1.0, 0.8, 0.7], "music": []}, {"books": [1.1, 0.9]},
                                  {"books": [0.75, 0.7]}),
        lambda: plots.validation_curve([0.2, 0.25, 0.22], best_epoch=2, warm_score=0.21),
        lambda: plots.score_histograms(
            {"books": {"model": {"heldout": np.random.default_rng(0).normal(1, 1, 200),
                                 "random": np.random.default_rng(1).normal(0, 1, 500)},
                       "production": {"heldout": np.array([np.nan, 0.5]), "random": np.array([])}}}
        ),
    ],
    ids=["recall_curves", "metric_bars", "loss_curves", "validation_curve", "score_histograms"],
)
def test_each_plot_is_a_png(draw) -> None:
    png = draw()
    assert png.startswith(PNG) and len(png) > 2000


@pytest.mark.parametrize(
    "draw",
    [lambda: plots.recall_curves({}, KS), lambda: plots.metric_bars({}, "recall@50"),
     lambda: plots.loss_curves({}), lambda: plots.score_histograms({}),
     lambda: plots.validation_curve([], 0)],
)
def test_empty_inputs_still_give_a_png(draw) -> None:
    assert draw().startswith(PNG)


def test_no_pyplot_global_state() -> None:
    source = Path(plots.__file__).read_text()
    assert "pyplot" not in source.replace("no pyplot", "")


def _pixels(png: bytes) -> np.ndarray:
    import io

    from matplotlib.image import imread

    return imread(io.BytesIO(png))


def test_validation_curve_marks_the_chosen_epoch() -> None:
    """Choosing another epoch (or the warm weights) changes the picture: the mark
    is drawn where the choice is."""
    scores = [0.2, 0.25, 0.22]
    second = _pixels(plots.validation_curve(scores, best_epoch=2, warm_score=0.21))
    third = _pixels(plots.validation_curve(scores, best_epoch=3, warm_score=0.21))
    kept = _pixels(plots.validation_curve(scores, best_epoch=0, warm_score=0.3))
    assert second.shape == third.shape and not np.array_equal(second, third)
    assert not np.array_equal(second, kept)


def test_loss_curves_have_one_panel_per_domain() -> None:
    one = _pixels(plots.loss_curves({"books": [1.0, 0.9]}))
    three = _pixels(plots.loss_curves({"books": [1.0, 0.9], "music": [1.0, 0.8], "video": [2.0, 1.5]}))
    assert three.shape[1] > 2.5 * one.shape[1]  # panels side by side
    # production's losses of a domain the new run lacks (an older "shared" entry) add no panel
    legacy = _pixels(plots.loss_curves({"books": [1.0, 0.9]}, {"shared": [3.0, 2.0]}))
    assert legacy.shape == one.shape
