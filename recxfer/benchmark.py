"""``recxfer bench-cdr``: a cold-start method on a public benchmark, measured with
the sampled protocol of the papers and with full ranking, beside popularity on
the same instances. Selection uses ``valid`` only; ``test`` is only reported.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from recxfer.config import to_dict
from recxfer.data.benchmarks import ColdStartTask, load_task
from recxfer.eval.protocol import full_ranking_metrics
from recxfer.eval.sampled import sampled_metrics
from recxfer.train.cold_start import ColdStartConfig, TargetEmbeddings, fit_cold_start

FULL_KEYS = ("recall@10", "recall@20", "recall@50", "ndcg@10", "ndcg@50")
_VALID_SEED_OFFSET = 1000


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


def evaluate_embeddings(
    emb: TargetEmbeddings, rows: pd.DataFrame, seed: int, n_neg: int = 999
) -> dict[str, dict[str, float]]:
    """``{"sampled": ..., "full": ...}`` of ``emb`` on held-out target ``rows``."""
    inst_user, inst_item = _instances(rows, emb.user_ids, emb.item_ids)
    sampled = sampled_metrics(emb.user_emb, emb.item_emb, inst_user, inst_item, n_neg, seed)
    order = np.argsort(inst_user, kind="stable")
    users, starts = np.unique(inst_user[order], return_index=True)
    relevant = np.split(inst_item[order], starts[1:])
    full = full_ranking_metrics(emb.user_emb[users], emb.item_emb, relevant, (10, 20, 50))
    return {"sampled": sampled, "full": {k: full[k] for k in FULL_KEYS} | {"users": full["users"]}}


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
    method: str,
    seed: int = 0,
    config: ColdStartConfig = ColdStartConfig(),
    n_neg: int = 999,
) -> dict[str, Any]:
    """Train ``method`` on the task, select on ``valid``, report on ``test``."""
    task = load_task(fmt, source_dir, target_dir, seed)
    config = with_seed(config, seed)
    valid_users = np.sort(task.valid["user_id"].unique())
    test_users = np.sort(task.test["user_id"].unique())
    cold_users = np.union1d(valid_users, test_users)

    def validator(user_emb: np.ndarray, item_ids: np.ndarray, item_emb: np.ndarray) -> float:
        inst_user, inst_item = _instances(task.valid, valid_users, item_ids)
        return sampled_metrics(user_emb, item_emb, inst_user, inst_item, n_neg,
                               seed + _VALID_SEED_OFFSET)["MRR"]

    start = time.perf_counter()
    emb = fit_cold_start(method, task.train, task.source, task.target, cold_users, config,
                         valid_users, validator)
    train_seconds = time.perf_counter() - start
    valid_mrr = validator(emb.user_emb[np.searchsorted(emb.user_ids, valid_users)], emb.item_ids,
                          emb.item_emb)
    result = evaluate_embeddings(emb, task.test, seed, n_neg)
    popularity = evaluate_embeddings(popularity_embeddings(task, cold_users), task.test, seed, n_neg)
    device = emb.info.get("device", "cuda" if torch.cuda.is_available() else "cpu")
    return {
        "format": fmt,
        "source": task.source,
        "target": task.target,
        "method": method,
        "seed": seed,
        "protocol": {"n_neg": n_neg, "selection": "valid MRR (sampled)", "report": "test"},
        "sampled": result["sampled"],
        "full": result["full"],
        "popularity": popularity,
        "valid_MRR": valid_mrr,
        "epochs_trained": emb.epochs_trained,
        "train_seconds": train_seconds,
        "device": device,
        "host": platform.node(),
        "torch_threads": torch.get_num_threads(),
        "info": {k: v for k, v in emb.info.items() if k != "device"},
        "config": to_dict(config),
    }
