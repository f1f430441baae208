"""Writes a benchmark's synthetic model as an artifact the server loads: one Flat
faiss index per domain and item-to-item transfers, the manifest entries as
``pipeline.write_model_artifact`` writes them. Shared by ``bench/serving_transfer.py``
and ``bench/artifact_open.py`` (imported from the ``bench/`` folder)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recxfer.artifacts import index_file, save_domain, save_transfer, write_artifact
from recxfer.index import FaissIndex
from recxfer.types import DomainEmbeddings, DomainTransfer


def write_flat_artifact(root: Path, domains: Mapping[str, DomainEmbeddings],
                        transfers: Mapping[str, DomainTransfer], source: str,
                        config: dict[str, Any]) -> Any:
    """Stage, write and verify the artifact under ``root`` (not published); returns
    ``write_artifact``'s artifact record (``.version``, ``.path``)."""
    with write_artifact(root, config=config, data_fingerprint="bench") as builder:
        domains_meta: dict[str, Any] = {}
        for name, emb in domains.items():
            save_domain(builder.path, emb)
            FaissIndex.build(emb.item_emb, "Flat", use_gpu=False, params="").save(
                builder.path / index_file(name))
            domains_meta[name] = {
                "role": "source" if name == source else "target",
                "users": len(emb.user_ids), "items": len(emb.item_ids),
                "dim": int(emb.item_emb.shape[1]),
                "index": {"factory": "Flat", "params": "", "file": index_file(name)},
            }
        for target, transfer in transfers.items():
            save_transfer(builder.path, transfer)
            domains_meta[target]["transfer"] = {"source": transfer.source}
        builder.extra.update({
            "domains": domains_meta, "device": "cpu", "epoch_losses": [],
            "user_encoder": {"inductive": False, "method": "blend"},
            "transfer": {t: {"source": tr.source, "names": list(tr.scorer.names),
                             "weights": list(tr.scorer.weights), "pop_weight": tr.scorer.pop_weight,
                             "embedding_weight": tr.scorer.embedding_weight}
                         for t, tr in transfers.items()},
        })
    assert builder.artifact is not None
    return builder.artifact
