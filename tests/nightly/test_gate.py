"""The publishing gate on hand-made results."""

from __future__ import annotations

import math

from recxfer.nightly import GateConfig, decide


def _results(new: float, prod: float | None, warm_new: float = 0.5, warm_prod: float = 0.5) -> dict:
    books = {"model": {"recall@50": new}, "popularity": {"recall@50": 0.1}}
    if prod is not None:
        books["production"] = {"recall@50": prod}
    return {
        "cold_start": {"books": books,
                       "music": {"model": {"recall@50": 0.4}, "production": {"recall@50": 0.4}}},
        "warm": {"books": {"model": {"recall@50": warm_new}, "production": {"recall@50": warm_prod}}},
    }


TARGETS = ("books", "music")


def test_no_production_passes_as_first_publish() -> None:
    decision = decide(_results(0.0, None), GateConfig(), TARGETS, has_production=False)
    assert decision.passed and decision.publish and not decision.checks
    assert "first publish" in decision.reason


def test_within_tolerance_passes_and_beyond_fails() -> None:
    config = GateConfig(metrics=("cold_start/recall@50",), tolerance=0.02)
    ok = decide(_results(0.39, 0.40), config, TARGETS, has_production=True)
    assert ok.passed and [c.passed for c in ok.checks] == [True, True]
    bad = decide(_results(0.37, 0.40), config, TARGETS, has_production=True)
    assert not bad.passed and not bad.publish and not bad.forced
    assert "cold_start/recall@50 of books" in bad.reason and "0.3700 < production 0.4000" in bad.reason
    assert bad.checks[0].note.startswith("worse than production by 0.03")


def test_force_publishes_a_failed_gate_and_says_so() -> None:
    decision = decide(_results(0.1, 0.4), GateConfig(), TARGETS, has_production=True, force=True)
    assert not decision.passed and decision.forced and decision.publish
    assert decision.reason.startswith("forced despite the gate")
    assert decision.as_dict()["publish"] is True


def test_warm_metrics_and_target_selection() -> None:
    config = GateConfig(metrics=("warm/recall@50",), targets=("books",))
    assert not decide(_results(0.5, 0.5, warm_new=0.1), config, TARGETS, True).passed
    # music has no warm evaluation, books has no production: both skipped, not failed
    skipped = decide(_results(0.5, None), GateConfig(metrics=("warm/recall@50", "cold_start/recall@50")),
                     TARGETS, True)
    assert skipped.passed
    notes = {(c.metric, c.target): (c.passed, c.note) for c in skipped.checks}
    assert notes[("warm/recall@50", "music")] == (None, "no warm evaluation for music")
    assert notes[("cold_start/recall@50", "books")] == (None, "production has no books to compare with")


def test_nan_never_passes() -> None:
    decision = decide(_results(math.nan, 0.4), GateConfig(metrics=("cold_start/recall@50",)), TARGETS, True)
    assert not decision.passed
