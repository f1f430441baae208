"""Run ``recxfer bench-cdr`` over methods x directions x seeds and summarise.

    python bench/cdr.py --data ../shared/data/cdrib --out bench/results/cdr
    python bench/cdr.py --summarize --out bench/results/cdr   # table only

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

DIRECTIONS = {"sports->clothing": ("sport_cloth", "cloth_sport"),
              "clothing->sports": ("cloth_sport", "sport_cloth")}
METHODS = ("popularity", "target_only", "emcdr", "ptupcdr", "shared")
SAMPLED = ("NDCG@10", "HR@10", "MRR")
FULL = ("recall@50", "ndcg@10")


def run_all(data: Path, out: Path, methods: list[str], seeds: list[int], threads: int | None) -> None:
    for method in methods:
        for src, tgt in DIRECTIONS.values():
            for seed in seeds:
                path = out / f"{src}-{method}-seed{seed}.json"
                if path.exists():
                    continue
                cmd = [sys.executable, "-m", "recxfer.cli", "bench-cdr", "--format", "cdrib",
                       "--source", str(data / src), "--target", str(data / tgt),
                       "--method", method, "--seed", str(seed), "--out", str(path)]
                if threads:
                    cmd += ["--threads", str(threads)]
                print(" ".join(cmd), flush=True)
                subprocess.run(cmd, check=False)


def summarize(out: Path) -> str:
    rows, table = [], {}
    for name, (src, _) in DIRECTIONS.items():
        for method in METHODS:
            source = "shared" if method == "popularity" else method
            runs = [json.loads(p.read_text()) for p in sorted(out.glob(f"{src}-{source}-seed*.json"))]
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
    (out / "summary.md").write_text(md + "\n")
    (out / "summary.json").write_text(json.dumps(table, indent=2) + "\n")
    return md


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/cdrib"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/cdr"))
    parser.add_argument("--methods", nargs="+", default=["shared", "emcdr", "ptupcdr", "target_only"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", type=int, help="torch threads per run (1 avoids oversubscription)")
    parser.add_argument("--summarize", action="store_true", help="only summarise existing runs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.summarize:
        run_all(args.data, args.out, args.methods, args.seeds, args.threads)
    print(summarize(args.out))


if __name__ == "__main__":
    main()
