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
    )
    fields.update(changes)
    return RunReport(**fields)


def test_page_is_self_contained_with_every_section() -> None:
    page = render_html(_report())
    assert page.startswith("<!DOCTYPE html>")
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', page)
    assert len(images) == 4  # recall curves, bars, losses, scores
    assert not re.search(r"(src|href)=\"(http|//)", page)  # nothing fetched from elsewhere
    for section in ("Gate", "Metrics", "cold-start users", "warm users", "Recall@k", "Training loss",
                    "Score distributions", "Timings", "Configuration"):
        assert section in page
    assert "12 (10 known)" in page and "3.25 s" in page and "0.4500" in page
    assert "&lt;v1&gt;" in page and "<v1>" not in page  # escaped


def test_write_report_is_atomic(tmp_path: Path) -> None:
    path = write_report(_report(status="published", gate_checks=[]), tmp_path / "r" / "report.html")
    assert path.read_text().count("<img") == 4
    assert "No gate checks" in path.read_text()
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]
