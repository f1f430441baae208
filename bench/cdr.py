"""Run ``recxfer bench-cdr`` over methods x directions x seeds and summarise.

    python bench/cdr.py --data ../shared/data --out bench/results/cdr
    python bench/cdr.py --summarize --out bench/results/cdr   # table only

Directions: the 6 Amazon CDRIB-format directions and Douban books <-> music (seeded
split per seed). Methods: every registered one; ``blend`` is the shipped default.

Each run writes ``OUT/<direction>-<method>-seed<S>.json``; existing files are kept
(delete them to re-run). The summary (mean ± std over seeds) goes to
``OUT/summary.md`` and ``OUT/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

# name -> (format, source folder, target folder) under --data
DIRECTIONS = {
    "sports->clothing": ("cdrib", "cdrib/sport_cloth", "cdrib/cloth_sport"),
    "clothing->sports": ("cdrib", "cdrib/cloth_sport", "cdrib/sport_cloth"),
    "electronics->phones": ("cdrib", "cdrib/electronic_phone", "cdrib/phone_electronic"),
    "phones->electronics": ("cdrib", "cdrib/phone_electronic", "cdrib/electronic_phone"),
    "phones->sports": ("cdrib", "cdrib/phone_sport", "cdrib/sport_phone"),
    "sports->phones": ("cdrib", "cdrib/sport_phone", "cdrib/phone_sport"),
    "books->music": ("douban", "douban/douban_book", "douban/douban_music"),
    "music->books": ("douban", "douban/douban_music", "douban/douban_book"),
}
METHODS = ("popularity", "itemknn", "ease", "ridge", "userknn", "twohop", "dae", "emcdr", "ptupcdr", "shared", "blend")
BASELINES = ("popularity", "itemknn", "ease", "emcdr", "ptupcdr")
SAMPLED = ("NDCG@10", "HR@10", "MRR")
FULL = ("recall@50", "ndcg@10")


def _key(src: str) -> str:
    return Path(src).name


def run_all(data: Path, out: Path, methods: list[str], seeds: list[int], threads: int | None,
            directions: list[str]) -> None:
    for method in methods:
        for name in directions:
            fmt, src, tgt = DIRECTIONS[name]
            for seed in seeds:
                path = out / f"{_key(src)}-{method}-seed{seed}.json"
                if path.exists():
                    continue
                cmd = [sys.executable, "-m", "recxfer.cli", "bench-cdr", "--format", fmt,
                       "--source", str(data / src), "--target", str(data / tgt),
                       "--method", method, "--seed", str(seed), "--out", str(path)]
                if threads:
                    cmd += ["--threads", str(threads)]
                print(" ".join(cmd), flush=True)
                subprocess.run(cmd, check=False)


def summarize(out: Path) -> str:
    rows, table = [], {}
    for name, (_, src, _) in DIRECTIONS.items():
        for method in METHODS:
            runs = [json.loads(p.read_text()) for p in sorted(out.glob(f"{_key(src)}-{method}-seed*.json"))]
            if not runs:
                continue
            def pick(run: dict) -> dict:
                block = run["popularity"] if method == "popularity" else run
                return {**{k: block["sampled"][k] for k in SAMPLED},
                        **{f"full {k}": block["full"][k] for k in FULL},
                        "train s": 0.0 if method == "popularity" else run["train_seconds"]}
            values = [pick(r) for r in runs]
            stats = {k: (float(np.mean([v[k] for v in values])), float(np.std([v[k] for v in values])))
                     for k in values[0]}
            table.setdefault(name, {})[method] = {"seeds": len(runs), **stats}
            cells = " | ".join(f"{m:.4f} ± {s:.4f}" if k != "train s" else f"{m:.0f}"
                               for k, (m, s) in stats.items())
            rows.append(f"| {name} | {method} | {len(runs)} | {cells} |")
    header = ("| direction | method | seeds | " + " | ".join(SAMPLED) + " | "
              + " | ".join(f"full {k}" for k in FULL) + " | train s |")
    md = "\n".join([header, "|" + " --- |" * (4 + len(SAMPLED) + len(FULL))] + rows)
    md += "\n\n" + goal_table(table)
    (out / "summary.md").write_text(md + "\n")
    (out / "summary.json").write_text(json.dumps(table, indent=2) + "\n")
    return md


GOAL = (("NDCG@10", "NDCG@10"), ("HR@10", "HR@10"), ("full recall@50", "full recall@50"))


def goal_table(table: dict, method: str = "blend") -> str:
    """``method`` over the best baseline per direction and metric (means over seeds)."""
    rows = [f"| direction | {method} / best baseline: " + " | ".join(k for k, _ in GOAL) + " |",
            "| --- |" + " --- |" * len(GOAL)]
    for name, methods in table.items():
        if method not in methods:
            continue
        cells = []
        for label, key in GOAL:
            base = {b: methods[b][key][0] for b in BASELINES if b in methods}
            best = max(base, key=base.get)
            cells.append(f"{methods[method][key][0] / base[best]:.2f}x ({best})")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/cdr"))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--directions", nargs="+", default=list(DIRECTIONS), choices=list(DIRECTIONS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", type=int, help="torch threads per run (1 avoids oversubscription)")
    parser.add_argument("--summarize", action="store_true", help="only summarise existing runs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.summarize:
        run_all(args.data, args.out, args.methods, args.seeds, args.threads, args.directions)
    print(summarize(args.out))


if __name__ == "__main__":
    main()
