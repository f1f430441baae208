"""Evaluation: metrics, protocols, baselines, reports."""

from recxfer.eval.bootstrap import RatioInterval, paired_ratio_interval
from recxfer.eval.cold_start import evaluate_cold_start
from recxfer.eval.heldout import evaluate_heldout, evaluate_on_split, score_samples, split_popularity
from recxfer.eval.metrics import (
    hit_rate_at_k,
    mrr,
    mrr_from_scores,
    ndcg_at_k,
    rank_metrics,
    recall_at_k,
    relevant_ranks,
    tie_break_keys,
)
from recxfer.eval.protocol import (
    DEFAULT_KS,
    full_ranking_metrics,
    full_ranking_metrics_scores,
    full_ranking_per_user,
)
from recxfer.eval.report import markdown_table, write_results
from recxfer.eval.sampled import (
    instance_metrics,
    sampled_metrics,
    sampled_metrics_scores,
    sampled_ranks_scores,
)

__all__ = [
    "DEFAULT_KS",
    "RatioInterval",
    "evaluate_cold_start",
    "evaluate_heldout",
    "evaluate_on_split",
    "full_ranking_metrics",
    "full_ranking_metrics_scores",
    "full_ranking_per_user",
    "hit_rate_at_k",
    "instance_metrics",
    "markdown_table",
    "mrr",
    "mrr_from_scores",
    "ndcg_at_k",
    "paired_ratio_interval",
    "rank_metrics",
    "recall_at_k",
    "relevant_ranks",
    "sampled_metrics",
    "sampled_metrics_scores",
    "sampled_ranks_scores",
    "score_samples",
    "split_popularity",
    "tie_break_keys",
    "write_results",
]
