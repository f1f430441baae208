"""Evaluation: metrics, protocols, baselines, reports."""

from recxfer.eval.cold_start import evaluate_cold_start
from recxfer.eval.heldout import evaluate_heldout, score_samples
from recxfer.eval.metrics import hit_rate_at_k, mrr, mrr_from_scores, ndcg_at_k, recall_at_k
from recxfer.eval.protocol import DEFAULT_KS, full_ranking_metrics
from recxfer.eval.report import markdown_table, write_results

__all__ = [
    "DEFAULT_KS",
    "evaluate_cold_start",
    "evaluate_heldout",
    "full_ranking_metrics",
    "hit_rate_at_k",
    "markdown_table",
    "mrr",
    "mrr_from_scores",
    "ndcg_at_k",
    "recall_at_k",
    "score_samples",
    "write_results",
]
