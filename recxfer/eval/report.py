"""Render evaluation results: JSON, CSV and short Markdown tables.

Files are written whole to a temporary name beside the target, then renamed into
place (``os.replace``): a reader never sees half a file, an error leaves none.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

Results = dict[str, dict[str, dict[str, float]]]  # domain -> method -> metric -> value
GroupResults = Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]]  # group -> domain -> ...

DEFAULT_COLUMNS = ("recall@10", "ndcg@10", "hr@10", "recall@50", "mrr")
CSV_COLUMNS = ("artifact_version", "domain", "group", "method", "metric", "k", "value", "users",
               "basis")
RANK_METRICS = ("recall", "ndcg", "hr")
_METRIC = re.compile(r"^(?P<name>[a-z_]+)@(?P<k>\d+)$")


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


def metric_columns(ks: Sequence[int], metrics: Sequence[str] = ("recall", "ndcg")) -> tuple[str, ...]:
    """``metric@k`` for every metric and ``k`` in ``ks`` (sorted), then ``mrr``."""
    return tuple(f"{m}@{k}" for m in metrics for k in sorted(ks)) + ("mrr",)


def restrict_to_ks(metrics: Mapping[str, float], ks: Sequence[int]) -> dict[str, float]:
    """``metrics`` without the ``metric@k`` entries of cut-offs not in ``ks`` (``mrr``,
    ``users``, ``known_users`` and other plain keys are kept)."""
    wanted = set(ks)
    out = {}
    for name, value in metrics.items():
        match = _METRIC.match(name)
        if match is None or int(match["k"]) in wanted:
            out[name] = value
    return out


def csv_rows(
    results: GroupResults, version: str = "", basis: Mapping[str, Mapping[str, str]] | None = None
) -> Iterator[dict[str, Any]]:
    """One row per (domain, group, method, metric, k): ``CSV_COLUMNS``; ``mrr`` has an
    empty ``k``. Methods include the baselines (``popularity``). Sorted by domain,
    group, method, metric, k."""
    rows = []
    for group, by_domain in results.items():
        for domain, methods in by_domain.items():
            for method, metrics in methods.items():
                users = metrics.get("users")
                for name, value in metrics.items():
                    match = _METRIC.match(name)
                    if match is not None and match["name"] in RANK_METRICS:
                        metric, k = match["name"], int(match["k"])
                    elif name == "mrr":
                        metric, k = name, None
                    else:  # users, known_users: columns, not metrics
                        continue
                    rows.append({
                        "artifact_version": version, "domain": domain, "group": group,
                        "method": method, "metric": metric, "k": "" if k is None else k,
                        "value": float(value), "users": "" if users is None else int(users),
                        "basis": ((basis or {}).get(group) or {}).get(domain, ""),
                    })
    rows.sort(key=lambda r: (r["domain"], r["group"], r["method"], r["metric"],
                             -1 if r["k"] == "" else r["k"]))
    yield from rows


def results_csv(
    results: GroupResults, version: str = "", basis: Mapping[str, Mapping[str, str]] | None = None
) -> str:
    """``csv_rows`` as CSV text with a header line."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in csv_rows(results, version, basis):
        writer.writerow({**row, "value": repr(row["value"])})
    return buf.getvalue()


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to a temporary file beside ``path``, fsync it, then
    rename it into place; the parent folder is created. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name of its own per writer (pid, thread), created with the umask's mode
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def write_json(data: Any, path: str | Path) -> Path:
    """``data`` as indented, key-sorted JSON, written atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_results(results: Results, path: str | Path) -> None:
    """Write ``results`` as indented JSON (atomically)."""
    write_json(results, path)
