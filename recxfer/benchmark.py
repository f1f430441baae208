"""``recxfer bench-cdr``: a cold-start method on a public benchmark, measured with
the sampled protocol of the papers and with full ranking, beside popularity on
the same instances. Selection uses ``valid`` only; ``test`` is only reported.

Every method is chosen by one validation objective, the mean of the sampled
NDCG@10 and HR@10 and the full-ranking recall@50 on ``valid``: the three figures
the product is judged by (ties broken at random everywhere, seeded).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from recxfer.config import to_dict
from recxfer.data.benchmarks import ColdStartTask, load_task
from recxfer.eval.protocol import full_ranking_per_user, per_user_means
from recxfer.eval.sampled import (
    expected_sampled_metrics_scores,
    instance_metrics,
    metrics_from_ranks,
    sampled_ranks_scores,
)
from recxfer.train.cold_start import (
    DEFAULT_METHOD,
    ColdStartConfig,
    TargetEmbeddings,
    TargetScorer,
    fit_cold_start,
)

FULL_KEYS = ("recall@10", "recall@20", "recall@50", "ndcg@10", "ndcg@50")
# the per-user values bench-cdr writes for the test users (what the goal is judged on)
PER_USER_SAMPLED = ("NDCG@10", "HR@10")
PER_USER_FULL = ("recall@50",)
_VALID_SEED_OFFSET = 1000
ScoreFn = Callable[[np.ndarray], np.ndarray]


def with_seed(config: ColdStartConfig, seed: int) -> ColdStartConfig:
    """``config`` with every model seed set to ``seed``."""
    return config.with_seed(seed)


def _instances(rows: pd.DataFrame, user_ids: np.ndarray, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    users = pd.Index(user_ids).get_indexer(rows["user_id"])
    items = pd.Index(item_ids).get_indexer(rows["item_id"])
    keep = (users >= 0) & (items >= 0)
    if not keep.all():
        raise ValueError(f"{int((~keep).sum())} held-out rows have an unknown user or item")
    return users, items


def evaluate_scores(
    score_fn: ScoreFn, user_ids: np.ndarray, item_ids: np.ndarray, rows: pd.DataFrame,
    seed: int, n_neg: int = 999, ks: tuple[int, ...] = (10, 20, 50), mrr: bool = True,
    per_user: bool = False, sampled: str = "drawn",
) -> dict[str, Any]:
    """``{"sampled": ..., "full": ...}`` of a scorer on held-out target ``rows``.

    Args:
        score_fn: ``score_fn(rows)`` -> ``(len(rows), n_items)`` scores of the users at
            those positions of ``user_ids``.
        item_ids: ``(n_items,)`` the catalogue (columns of the scores).
        mrr: ``False`` leaves the full ranking's MRR out (faster: see
            ``full_ranking_metrics_scores``); the sampled metrics are unchanged.
        per_user: also return ``"per_user"``: each evaluated user's values, the
            figures a paired bootstrap resamples (``eval/bootstrap.py``):
            ``{"users": [ids], "instances": [...], "sampled": {metric: [sums over
            the user's instances]}, "full": {metric: [values]}}`` for the sampled
            ``PER_USER_SAMPLED`` and full ``PER_USER_FULL`` metrics (those in ``ks``).
            The means of the sums over ``sum(instances)`` are the sampled figures.
        sampled: ``"drawn"``: the protocol's seeded negatives (what is reported);
            ``"expected"``: the metrics' expectation over the negatives' draw
            (``expected_sampled_metrics_scores``, no ``seed``), what validation
            selects on. ``per_user`` needs ``"drawn"``.
    """
    if sampled not in ("drawn", "expected") or (per_user and sampled != "drawn"):
        raise ValueError(f"sampled must be 'drawn' or 'expected' (per_user needs 'drawn'), got {sampled!r}")
    inst_user, inst_item = _instances(rows, user_ids, item_ids)
    if sampled == "expected":
        ranks = None
        sampled_metrics = expected_sampled_metrics_scores(score_fn, inst_user, inst_item, len(item_ids), n_neg)
    else:
        ranks = sampled_ranks_scores(score_fn, inst_user, inst_item, len(item_ids), n_neg, seed)  # (n,)
        sampled_metrics = metrics_from_ranks(ranks)
    order = np.argsort(inst_user, kind="stable")
    users, starts = np.unique(inst_user[order], return_index=True)
    relevant = np.split(inst_item[order], starts[1:])
    full_users = full_ranking_per_user(lambda r: score_fn(users[r]), len(users), relevant, ks, seed=seed, mrr=mrr)
    result: dict[str, Any] = {"sampled": sampled_metrics, "full": per_user_means(full_users)}
    if per_user:
        owner = np.searchsorted(users, inst_user)  # (n,) position of each instance's user
        per_instance = instance_metrics(ranks)
        result["per_user"] = {
            "users": [str(u) for u in np.asarray(user_ids, dtype=object)[users]],
            "instances": np.bincount(owner, minlength=len(users)).tolist(),
            "sampled": {name: np.bincount(owner, weights=per_instance[name], minlength=len(users)).tolist()
                        for name in PER_USER_SAMPLED},
            "full": {name: full_users[name].tolist() for name in PER_USER_FULL if name in full_users},
        }
    return result


def evaluate_scorer(emb: TargetScorer, rows: pd.DataFrame, seed: int, n_neg: int = 999,
                    per_user: bool = False) -> dict[str, Any]:
    """``evaluate_scores`` of a fitted method, with the report's full-ranking keys
    (and ``"per_user"`` when asked)."""
    result = evaluate_scores(emb.score, emb.user_ids, emb.item_ids, rows, seed, n_neg, per_user=per_user)
    full = result["full"]
    return result | {"full": {k: full[k] for k in FULL_KEYS} | {"users": full["users"]}}


evaluate_embeddings = evaluate_scorer  # the name of earlier releases


def validation_objective(result: dict[str, dict[str, float]]) -> float:
    """Mean of sampled NDCG@10, sampled HR@10 and full recall@50: what selects."""
    return (result["sampled"]["NDCG@10"] + result["sampled"]["HR@10"] + result["full"]["recall@50"]) / 3


def popularity_embeddings(task: ColdStartTask, user_ids: np.ndarray) -> TargetEmbeddings:
    """Popularity as embeddings: ``(n_items, 1)`` training counts, users all ones."""
    target_rows = task.train[task.train["domain"] == task.target]
    counts = target_rows["item_id"].value_counts()
    item_ids = task.target_items()
    item_emb = counts.reindex(item_ids).to_numpy(np.float32)[:, None]
    return TargetEmbeddings(item_ids, item_emb, user_ids, np.ones((len(user_ids), 1), np.float32), 0, {})


def run_bench_cdr(
    fmt: str,
    source_dir: str | Path,
    target_dir: str | Path,
    method: str | None = None,
    seed: int = 0,
    config: ColdStartConfig = ColdStartConfig(),
    n_neg: int = 999,
    overlap: int | None = None,
) -> dict[str, Any]:
    """Train ``method`` (the shipped default when ``None``) on the task, select on
    ``valid``, report on ``test``."""
    method = method or DEFAULT_METHOD
    start_all = time.perf_counter()
    task = load_task(fmt, source_dir, target_dir, seed, overlap=overlap)
    config = with_seed(config, seed)
    valid_users = np.sort(task.valid["user_id"].unique())
    test_users = np.sort(task.test["user_id"].unique())
    cold_users = np.union1d(valid_users, test_users)

    def validator(score_fn: ScoreFn, item_ids: np.ndarray) -> float:
        return validation_objective(
            evaluate_scores(score_fn, valid_users, item_ids, task.valid, seed + _VALID_SEED_OFFSET,
                            n_neg, ks=(50,), mrr=False, sampled=config.selection_sampled))

    start = time.perf_counter()
    emb = fit_cold_start(method, task.train, task.source, task.target, cold_users, config,
                         valid_users, validator)
    train_seconds = time.perf_counter() - start
    valid_rows = np.searchsorted(emb.user_ids, valid_users)
    valid_objective = validator(lambda r: emb.score(valid_rows[r]), emb.item_ids)
    result = evaluate_scorer(emb, task.test, seed, n_neg, per_user=True)
    popularity = evaluate_scorer(popularity_embeddings(task, cold_users), task.test, seed, n_neg, per_user=True)
    per_user = {"method": result.pop("per_user"), "popularity": popularity.pop("per_user")}
    device = emb.info.get("device", "cuda" if torch.cuda.is_available() else "cpu")
    return {
        "format": fmt,
        "source": task.source,
        "target": task.target,
        "method": method,
        "seed": seed,
        "overlap": task.overlap,
        "protocol": {"n_neg": n_neg, "selection": "valid mean(NDCG@10, HR@10, full recall@50)",
                     "ties": "seeded random", "report": "test"},
        "sampled": result["sampled"],
        "full": result["full"],
        "popularity": popularity,
        "valid_objective": valid_objective,
        "epochs_trained": emb.epochs_trained,
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - start_all,
        "device": device,
        "host": platform.node(),
        "torch_threads": torch.get_num_threads(),
        "info": _jsonable({k: v for k, v in emb.info.items() if k != "device"}),
        "config": to_dict(config),
        # the test users' own values (method and popularity): ``bench/cdr_ci.py``
        # bootstraps the ratios to the baselines from them
        "per_user": per_user,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value
