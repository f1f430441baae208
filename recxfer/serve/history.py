"""Query-time user encoding from a history, as the shared model does in training.

The shared method's user encoder (without an MLP head) is a pooling of the
history's item embeddings: a masked mean, or attention with a learned query
(``softmax(h @ q / sqrt(d))``). Both need only the artifact's item tables (and the
query vector), so serving embeds a never-seen user without importing training
code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from recxfer.artifacts import Artifact, ArtifactError


@dataclass(frozen=True)
class HistoryEncoder:
    """Pools ``(L, d)`` history item embeddings into a ``(d,)`` user embedding.

    Attributes:
        pooling: ``"mean"`` or ``"attention"``.
        max_history: the latest items kept (as in training).
        query: ``(d,)`` attention query, ``None`` for mean pooling.
    """

    pooling: str
    max_history: int
    query: np.ndarray | None = None

    @classmethod
    def from_artifact(cls, artifact: Artifact) -> "HistoryEncoder | None":
        """The artifact's encoder, or ``None`` when its method is not inductive.

        Raises:
            ArtifactError: an inductive entry that is malformed.
        """
        entry: dict[str, Any] = artifact.manifest.get("user_encoder") or {}
        if not entry.get("inductive"):
            return None
        pooling, max_history = entry.get("pooling"), entry.get("max_history")
        if pooling not in ("mean", "attention") or not isinstance(max_history, int) or max_history < 1:
            raise ArtifactError(f"{artifact.path}: bad user_encoder entry {entry}")
        query = None
        if pooling == "attention":
            if not entry.get("query_file"):
                raise ArtifactError(f"{artifact.path}: attention pooling without a query file")
            query = np.load(artifact.file(entry["query_file"]), allow_pickle=False)
            if query.ndim != 1 or query.dtype != np.float32:
                raise ArtifactError(f"{artifact.path}: user encoder query must be 1-d float32")
        return cls(pooling, max_history, query)

    def encode(self, hist_emb: np.ndarray) -> np.ndarray:
        """``(L, d)`` embeddings of the history, oldest first -> ``(d,)`` float32.

        Only the latest ``max_history`` rows are used.
        """
        if hist_emb.ndim != 2 or hist_emb.shape[0] == 0:
            raise ValueError(f"history must be a non-empty (L, d) array, got {hist_emb.shape}")
        hist = hist_emb[-self.max_history :].astype(np.float32)  # (L', d)
        if self.query is None:
            return hist.mean(axis=0)
        if self.query.shape[0] != hist.shape[1]:
            raise ValueError(f"query dim {self.query.shape[0]} != item dim {hist.shape[1]}")
        scores = hist @ self.query / math.sqrt(hist.shape[1])  # (L',)
        weights = np.exp(scores - scores.max())
        weights /= weights.sum()
        return (weights[:, None] * hist).sum(axis=0).astype(np.float32)
