"""How sure is each "≥ 1.10x the best baseline" cell? Paired bootstrap intervals
over the test users, from ``bench/cdr.py`` results.

    python bench/cdr_ci.py --results bench/results/cdr11 --out bench/results/cdr11/ci.json

For every direction and seed with a ``--method`` file (default: ``blend``, the
shipped default), the baselines' files of the same direction and seed
(``itemknn``, ``ease``, ``emcdr``, ``ptupcdr`` where present) and the popularity
run inside the method's own file are paired user by user (``per_user`` in each
``bench-cdr`` output: the same test users in the same order, checked). Per metric
(sampled NDCG@10, sampled HR@10, full recall@50) ``recxfer.eval.bootstrap.
paired_ratio_interval`` resamples the users and gives the ratio to the best
baseline (re-picked in each resample), its percentile interval and the share of
resamples ``>= --threshold``. Where a direction has several seeds, the users'
values averaged over the seeds (those with every baseline too) are bootstrapped
as well: the interval of the mean-of-seeds ratio the goal is stated on. Where each
seed has its own test users (Douban's seeded split) the seeds' users are pooled
instead, each (seed, user) one unit.

Only the test users' sampling is resampled: each seed's model is held fixed.
Published figures without per-user values (RecBole-CDR) cannot be paired and
are not in the intervals.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from recxfer.eval.bootstrap import paired_ratio_interval

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cdr import BASELINES, DIRECTIONS, _key  # noqa: E402  (bench/cdr.py beside this file)

METRICS = (("sampled", "NDCG@10"), ("sampled", "HR@10"), ("full", "recall@50"))


def _load(path: Path) -> dict[str, Any] | None:
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return result if "per_user" in result else None


def _values(per_user: dict[str, Any], group: str, metric: str) -> np.ndarray:
    return np.asarray(per_user[group][metric], np.float64)


def _paired(method: dict[str, Any], others: dict[str, dict[str, Any]]) -> None:
    users = method["users"]
    for name, per_user in others.items():
        if per_user["users"] != users or per_user["instances"] != method["instances"]:
            raise SystemExit(f"{name}: its test users or instances differ from the method's; "
                             "were they run on the same data?")


def intervals(method: dict[str, Any], baselines: dict[str, dict[str, Any]], threshold: float,
              resamples: int, seed: int) -> dict[str, Any]:
    """Per metric: ``paired_ratio_interval`` of ``method``'s per-user values over the
    best of ``baselines`` (name -> per-user values), with the baseline's name."""
    _paired(method, baselines)
    names = list(baselines)
    out = {}
    for group, metric in METRICS:
        ci = paired_ratio_interval(_values(method, group, metric),
                                   np.stack([_values(baselines[n], group, metric) for n in names]),
                                   threshold=threshold, resamples=resamples, seed=seed)
        out[metric] = ci.as_dict() | {"best_baseline": names[ci.best_baseline]}
    return out


def _mean_of(per_users: list[dict[str, Any]]) -> dict[str, Any]:
    """The users' values averaged over runs (seeds) of one method."""
    first = per_users[0]
    _paired(first, {f"run {i}": p for i, p in enumerate(per_users[1:], 1)})
    out: dict[str, Any] = {"users": first["users"], "instances": first["instances"], "sampled": {}, "full": {}}
    for group, metric in METRICS:
        out[group][metric] = np.mean([_values(p, group, metric) for p in per_users], axis=0).tolist()
    return out


def _pooled(per_users: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs with different test users (one split per seed) side by side: each
    (seed, user) one unit of the resampling."""
    out: dict[str, Any] = {"users": [f"{i}:{u}" for i, p in enumerate(per_users) for u in p["users"]],
                           "instances": [n for p in per_users for n in p["instances"]], "sampled": {}, "full": {}}
    for group, metric in METRICS:
        out[group][metric] = np.concatenate([_values(p, group, metric) for p in per_users]).tolist()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", required=True, help="a bench/cdr.py output folder")
    parser.add_argument("--method", default="blend")
    parser.add_argument("--baselines", default=",".join(b for b in BASELINES if b != "popularity"),
                        help="baseline methods whose files are paired (popularity always, from the method's file)")
    parser.add_argument("--threshold", type=float, default=1.10)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON output (default: RESULTS/ci.json)")
    args = parser.parse_args(argv)
    results = Path(args.results)
    baselines = [b for b in args.baselines.split(",") if b]
    report: dict[str, Any] = {
        "command": "python bench/cdr_ci.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "method": args.method, "threshold": args.threshold, "resamples": args.resamples,
        "resampled": "test users (paired across methods); each seed's models fixed",
        "directions": {},
    }
    lines = [f"| direction | seeds | metric | ratio | 95% interval | P(ratio >= {args.threshold:.2f}) | best baseline |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for direction, (_, src, _) in DIRECTIONS.items():
        runs = {}
        for path in sorted(results.glob(f"{_key(src)}-{args.method}-seed*.json")):
            method = _load(path)
            if method is None:
                continue
            seed = method["seed"]
            others = {"popularity": method["per_user"]["popularity"]}
            for name in baselines:
                base = _load(results / f"{_key(src)}-{name}-seed{seed}.json")
                if base is not None:
                    others[name] = base["per_user"]["method"]
            runs[seed] = (method["per_user"]["method"], others)
        if not runs:
            continue
        entry: dict[str, Any] = {"per_seed": {}}
        for seed, (method, others) in sorted(runs.items()):
            entry["per_seed"][str(seed)] = {"baselines": sorted(others),
                                            "metrics": intervals(method, others, args.threshold,
                                                                 args.resamples, args.seed)}
        common = set.intersection(*(set(o) for _, o in runs.values()))
        every = set.union(*(set(o) for _, o in runs.values()))
        same_users = len({tuple(m["users"]) for m, _ in runs.values()}) == 1
        if len(runs) > 1 and common != every:  # a baseline missing in some seed would flatter the mean
            entry["mean_of_seeds_skipped"] = f"baselines {sorted(every - common)} are not in every seed"
        elif len(runs) > 1:
            seeds = sorted(runs)
            # the same test users in every seed: their values averaged over the seeds; a
            # seeded split per seed (Douban): every seed's users side by side (pooled)
            combine = _mean_of if same_users else _pooled
            method = combine([runs[s][0] for s in seeds])
            others = {n: combine([runs[s][1][n] for s in seeds]) for n in sorted(common)}
            entry["mean_of_seeds"] = {"seeds": seeds, "combined": "mean" if same_users else "pooled",
                                      "baselines": sorted(others),
                                      "metrics": intervals(method, others, args.threshold, args.resamples,
                                                           args.seed)}
        report["directions"][direction] = entry
        if "mean_of_seeds" in entry:
            block = entry["mean_of_seeds"]
            shown = {f"{block['combined']} of " + ",".join(map(str, block["seeds"])): block}
        else:
            shown = entry["per_seed"]
        for label, block in shown.items():
            for metric, ci in block["metrics"].items():
                lines.append(f"| {direction} | {label} | {metric} | {ci['ratio']:.3f} | {ci['low']:.3f}-{ci['high']:.3f} "
                             f"| {ci['p_at_least']:.2f} | {ci['best_baseline']} |")
    if not report["directions"]:
        print(f"no {args.method} results with per-user values in {results} (bench-cdr writes them "
              "since the release that added bench/cdr_ci.py)", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else results / "ci.json"
    report["table"] = lines
    out.write_text(json.dumps(report, indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
