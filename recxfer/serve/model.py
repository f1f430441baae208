"""The serving model: an artifact's domains loaded for search. Read-only once built."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recxfer.artifacts import Artifact, ArtifactError, load_domain, read_artifact
from recxfer.index import ExactIndex, FaissIndex, ItemIndex, faiss_available
from recxfer.types import DomainEmbeddings

log = logging.getLogger(__name__)


class UnknownDomainError(KeyError):
    """The requested domain is not in the model."""


class UnknownUserError(KeyError):
    """The user has no embedding in the requested domain."""


@dataclass(frozen=True)
class Recommendation:
    """Top-k for one user: ``(k',)`` item ids and scores, best first (``k' <= k``)."""

    item_ids: np.ndarray
    scores: np.ndarray
    user_origin: str


@dataclass(frozen=True)
class DomainServing:
    """One domain ready to search."""

    emb: DomainEmbeddings
    index: ItemIndex
    user_rows: pd.Index  # external user id -> row of emb.user_emb


@dataclass(frozen=True)
class ServingModel:
    """All domains of one artifact."""

    version: str
    domains: dict[str, DomainServing]

    @classmethod
    def from_artifact(cls, path: str | Path) -> "ServingModel":
        """Verify and load an artifact; a domain's stored faiss index is used when
        faiss is installed, else exact torch search (CUDA when present).

        Raises:
            ArtifactError: the artifact is missing, partial or corrupt.
        """
        artifact = read_artifact(path)
        listed = artifact.manifest.get("domains")
        if not isinstance(listed, dict) or not listed:
            raise ArtifactError(f"{artifact.path}: manifest lists no servable 'domains'")
        domains = {name: _load_domain(artifact, name) for name in listed}
        log.info("loaded artifact %s (%s)", artifact.version, ", ".join(domains))
        return cls(artifact.version, domains)

    def domain(self, name: str) -> DomainServing:
        """Raises ``UnknownDomainError``."""
        try:
            return self.domains[name]
        except KeyError:
            raise UnknownDomainError(
                f"unknown domain {name!r}; known: {sorted(self.domains)}"
            ) from None

    def recommend(self, user_id: str, domain: str, k: int, exclude_seen: bool = True) -> Recommendation:
        """Top-``k`` items of ``domain`` for a known user.

        Raises:
            UnknownDomainError, UnknownUserError.
        """
        served = self.domain(domain)
        row = served.user_rows.get_indexer([user_id])[0]
        if row < 0:
            raise UnknownUserError(f"user {user_id!r} is unknown in domain {domain!r}")
        exclude = [served.emb.seen.row(row)] if exclude_seen else None
        k_eff = min(k, served.index.ntotal)
        result = served.index.search(served.emb.user_emb[row : row + 1], k_eff, exclude)
        keep = result.idx[0] >= 0
        return Recommendation(
            item_ids=served.emb.item_ids[result.idx[0][keep]],
            scores=result.scores[0][keep],
            user_origin=str(served.emb.user_origin[row]),
        )


def _load_domain(artifact: Artifact, name: str) -> DomainServing:
    emb = load_domain(artifact, name)
    meta = artifact.manifest["domains"][name]["index"]
    index: ItemIndex
    if meta.get("file") and faiss_available():
        index = FaissIndex.load(artifact.file(meta["file"]), meta["factory"])
    else:
        index = ExactIndex(emb.item_emb)
    return DomainServing(emb, index, pd.Index(emb.user_ids))
