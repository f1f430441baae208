"""Markdown table and JSON results."""

from __future__ import annotations

import json
import math

from recxfer.eval.report import DEFAULT_COLUMNS, markdown_table, write_results

RESULTS = {
    "movies": {
        "model": {"recall@10": 0.25, "ndcg@10": 1 / 3, "hr@10": 0.5, "recall@50": 0.75, "mrr": 0.125, "users": 12.0},
        "popularity": {"recall@10": 0.1, "ndcg@10": 0.05, "hr@10": 0.2, "mrr": 0.0625, "users": 12.0},
    },
    "books": {
        "model": {"recall@10": 1.0, "ndcg@10": 2 / 3, "hr@10": 1.0, "recall@50": 1.0, "mrr": float("nan"), "users": 3.0},
    },
}


def rows(table: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()]


def test_markdown_table_rows_and_values() -> None:
    table = rows(markdown_table(RESULTS))
    assert table[0] == ["domain", "method", "users", *DEFAULT_COLUMNS]
    assert table[1] == ["---"] * (3 + len(DEFAULT_COLUMNS))
    body = table[2:]
    assert len(body) == 3  # one row per (domain, method)
    assert [r[:3] for r in body] == [["books", "model", "3"], ["movies", "model", "12"], ["movies", "popularity", "12"]]
    assert body[0][3:] == ["1.0000", "0.6667", "1.0000", "1.0000", "nan"]
    assert body[1][3:] == ["0.2500", "0.3333", "0.5000", "0.7500", "0.1250"]
    assert body[2][3:] == ["0.1000", "0.0500", "0.2000", "-", "0.0625"]  # missing column -> "-"
    assert all(len(r) == 3 + len(DEFAULT_COLUMNS) for r in body)


def test_markdown_table_custom_columns() -> None:
    table = rows(markdown_table({"d": {"m": {"mrr": 0.5}}}, columns=("mrr",)))
    assert table == [["domain", "method", "users", "mrr"], ["---"] * 4, ["d", "m", "0", "0.5000"]]


def test_write_results_round_trips(tmp_path) -> None:
    path = tmp_path / "results.json"
    write_results(RESULTS, path)
    text = path.read_text()
    assert text.endswith("\n")
    loaded = json.loads(text)
    assert set(loaded) == set(RESULTS)
    for domain, methods in RESULTS.items():
        assert set(loaded[domain]) == set(methods)
        for method, metrics in methods.items():
            assert set(loaded[domain][method]) == set(metrics)
            for name, value in metrics.items():
                got = loaded[domain][method][name]
                assert (math.isnan(got) and math.isnan(value)) or got == value
