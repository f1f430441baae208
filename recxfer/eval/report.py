"""Render evaluation results: JSON and a short Markdown table."""

from __future__ import annotations

import json
from pathlib import Path

Results = dict[str, dict[str, dict[str, float]]]  # domain -> method -> metric -> value

DEFAULT_COLUMNS = ("recall@10", "ndcg@10", "hr@10", "recall@50", "mrr")


def markdown_table(results: Results, columns: tuple[str, ...] = DEFAULT_COLUMNS) -> str:
    """One row per (domain, method); ``users`` first, then ``columns``."""
    header = "| domain | method | users | " + " | ".join(columns) + " |"
    lines = [header, "|" + " --- |" * (3 + len(columns))]
    for domain in sorted(results):
        for method, metrics in results[domain].items():
            cells = [f"{metrics[c]:.4f}" if c in metrics else "-" for c in columns]
            users = int(metrics.get("users", 0))
            lines.append(f"| {domain} | {method} | {users} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(results: Results, path: str | Path) -> None:
    """Write ``results`` as indented JSON."""
    Path(path).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
