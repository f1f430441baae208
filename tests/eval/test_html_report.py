"""The HTML report is one self-contained page: embedded images, escaped text, every section."""

from __future__ import annotations

import re
from pathlib import Path

from recxfer.eval.html_report import RunReport, render_html, write_report

RESULTS = {
    "cold_start": {"books": {
        "model": {"recall@10": 0.25, "recall@50": 0.5, "users": 12.0, "known_users": 12.0},
        "production": {"recall@10": 0.2, "recall@50": 0.45, "users": 12.0, "known_users": 10.0},
    }},
    "warm": {"books": {"model": {"recall@10": 0.3, "recall@50": 0.6, "users": 40.0}}},
}


def _report(**changes) -> RunReport:
    fields = dict(
        title="recxfer nightly <v1>",
        status="gated",
        headline="cold_start/recall@50 of books fell by 0.1 > tolerance 0.02",
        facts={"run": "v1", "production": "v0"},
        results=RESULTS,
        ks=(10, 50),
        gate_checks=[{"target": "books", "metric": "cold_start/recall@50", "new": 0.5,
                      "production": 0.45, "tolerance": 0.02, "passed": True, "note": ""}],
        epoch_losses={"books": [1.0, 0.5]},
        timings={"ingest": 0.5, "train": 3.25},
        config={"train": {"mf": {"epochs": 2}}},
        evaluated={"warm": {"books": {"model": {"recall@10": 0.31, "users": 50.0}}}},
        comparison_rows={"cold_start": {"books": {"heldout_rows": 30, "comparable_rows": 12,
                                                  "rows_production_trained_on": 15,
                                                  "users_warm_in_production": 3}}},
        selection={"val_scores": [0.2, 0.25, 0.22], "best_epoch": 2, "warm_score": 0.21,
                   "kept_production_weights": False, "statement": "Epoch 2 of 3 chosen on validation."},
    )
    fields.update(changes)
    return RunReport(**fields)


def test_page_is_self_contained_with_every_section() -> None:
    page = render_html(_report())
    assert page.startswith("<!DOCTYPE html>")
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', page)
    assert len(images) == 5  # validation, recall curves, bars, losses, scores
    assert not re.search(r"(src|href)=\"(http|//)", page)  # nothing fetched from elsewhere
    for section in ("Model selection", "Gate", "Metrics", "cold-start users", "warm users", "Recall@k",
                    "Training loss per epoch, per domain", "Score distributions", "Timings",
                    "Configuration", "New model on every held-out row"):
        assert section in page
    assert "12 (10 known)" in page and "3.25 s" in page and "0.4500" in page
    assert "&lt;v1&gt;" in page and "<v1>" not in page  # escaped


def test_write_report_is_atomic(tmp_path: Path) -> None:
    path = write_report(_report(status="published", gate_checks=[]), tmp_path / "r" / "report.html")
    assert path.read_text().count("<img") == 5
    assert "No gate checks" in path.read_text()
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]


def test_model_selection_table_marks_the_chosen_epoch_numbered_from_one() -> None:
    page = render_html(_report())
    assert "Epoch 2 of 3 chosen on validation." in page
    assert "<tr class=ok><td>2</td><td>0.2500</td><td>chosen</td></tr>" in page
    assert "<tr><td>0</td><td>0.2100</td><td></td></tr>" in page  # the warm weights, before training
    assert "12 of 30 held-out rows compared; left out: 15 rows production trained on" in page
    assert "Production's weights were kept" not in page


def test_kept_production_weights_are_said_plainly() -> None:
    selection = {"val_scores": [0.2, 0.19], "best_epoch": 0, "warm_score": 0.24,
                 "kept_production_weights": True,
                 "statement": "No epoch beat production's weights on validation."}
    page = render_html(_report(selection=selection))
    assert "<b>Production's weights were kept.</b>" in page
    assert "<tr class=ok><td>0</td><td>0.2400</td><td>chosen</td></tr>" in page


def test_no_selection_section_without_selection() -> None:
    page = render_html(_report(selection={}, evaluated={}))
    assert "Model selection" not in page and page.count("<img") == 4
