"""The main job as stage calls: load data → split → train → evaluate → index →
write the artifact → publish. ``cli`` and ``jobs/`` call this; nothing in the
stage packages imports it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recxfer.artifacts import (
    Artifact,
    index_file,
    load_domain,
    prune,
    publish,
    read_artifact,
    save_domain,
    write_artifact,
)
from recxfer.config import from_dict, to_dict
from recxfer.data import ColdStartSplit, CrossDomainData, cold_start_split, load_data_dir
from recxfer.eval import DEFAULT_KS, evaluate_cold_start
from recxfer.index import FaissIndex, build_index, index_recall
from recxfer.train import CrossDomainConfig, MFConfig, train_cross_domain

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitConfig:
    """Cold-start split: share of overlapping users held out per target."""

    cold_share: float = 0.2
    valid_share: float = 0.5
    seed: int = 0


@dataclass(frozen=True)
class IndexConfig:
    """Index per domain: faiss factory string, backend ``auto``/``faiss``/``exact``,
    faiss search parameters (``"nprobe=16"``, ``"efSearch=128"``) and the cut-offs
    of the recall against exact search stored in the manifest."""

    factory: str = "Flat"
    backend: str = "auto"
    params: str = ""
    recall_ks: tuple[int, ...] = (10, 100)


@dataclass(frozen=True)
class JobConfig:
    """Everything the main job needs; stored in each artifact's manifest."""

    train: CrossDomainConfig = field(
        default_factory=lambda: CrossDomainConfig(mf=MFConfig(epochs=20, batch_size=512, lr=0.02))
    )
    split: SplitConfig = field(default_factory=SplitConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    ks: tuple[int, ...] = DEFAULT_KS
    keep_versions: int = 5

    @property
    def domains(self) -> list[str]:
        return [self.train.source, *self.train.targets]


def load_config(path: str | Path | None) -> JobConfig:
    """Read a JSON config file (missing keys keep defaults); ``None`` gives defaults."""
    if path is None:
        return JobConfig()
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read config: {exc}") from exc
    return from_dict(JobConfig, data, where=str(path))


@dataclass(frozen=True)
class JobResult:
    """What the main job produced."""

    artifact: Artifact
    results: dict[str, dict[str, dict[str, float]]]
    timings: dict[str, float]


def split_data(data: CrossDomainData, config: JobConfig) -> ColdStartSplit:
    """The seeded cold-start split the config names."""
    return cold_start_split(
        data.interactions,
        config.train.source,
        config.train.targets,
        config.split.cold_share,
        config.split.valid_share,
        config.split.seed,
    )


def train_evaluate_publish(
    data_dir: str | Path, artifacts_root: str | Path, config: JobConfig = JobConfig()
) -> JobResult:
    """Run the main job and publish the artifact as ``ROOT/current``."""
    timings: dict[str, float] = {}
    start = time.perf_counter()
    data = load_data_dir(data_dir, config.domains)
    split = split_data(data, config)
    timings["load_split_s"] = time.perf_counter() - start

    start = time.perf_counter()
    model = train_cross_domain(split.train, config.train)
    timings["train_s"] = time.perf_counter() - start

    start = time.perf_counter()
    results = {
        target: evaluate_cold_start(model.domains[target], split.test[target], config.ks)
        for target in config.train.targets
    }
    timings["evaluate_s"] = time.perf_counter() - start

    start = time.perf_counter()
    with write_artifact(artifacts_root, to_dict(config), data.fingerprint) as builder:
        domains_meta: dict[str, Any] = {}
        for domain, emb in model.domains.items():
            save_domain(builder.path, emb)
            index = build_index(
                emb.item_emb, config.index.factory, config.index.backend, config.index.params
            )
            index_meta: dict[str, Any] = {
                "factory": config.index.factory,
                "params": config.index.params,
                "file": None,
            }
            if isinstance(index, FaissIndex):
                index.save(builder.path / index_file(domain))
                index_meta["file"] = index_file(domain)
                # Approximate-vs-exact recall on the artifact's own users.
                index_meta["recall"] = index_recall(
                    index, emb.item_emb, emb.user_emb, config.index.recall_ks
                )
                log.info("%s index %s: %s", domain, config.index.factory, index_meta["recall"])
            domains_meta[domain] = {
                "role": "source" if domain == config.train.source else "target",
                "users": len(emb.user_ids),
                "items": len(emb.item_ids),
                "dim": int(emb.item_emb.shape[1]),
                "index": index_meta,
            }
        builder.metrics.update({"cold_start": results})
        builder.extra.update(
            {"domains": domains_meta, "device": model.device, "epoch_losses": model.epoch_losses}
        )
    artifact = builder.artifact
    assert artifact is not None
    publish(artifacts_root, artifact.version)
    removed = prune(artifacts_root, config.keep_versions)
    timings["publish_s"] = time.perf_counter() - start
    log.info("published %s (pruned %d old versions)", artifact.version, len(removed))
    return JobResult(artifact, results, timings)


def evaluate_artifact(data_dir: str | Path, artifact_path: str | Path) -> dict[str, Any]:
    """Re-evaluate a stored artifact on the split its own config names."""
    artifact = read_artifact(artifact_path)
    config = from_dict(JobConfig, artifact.manifest["config"], where="manifest.config")
    data = load_data_dir(data_dir, config.domains)
    if data.fingerprint != artifact.manifest["data_fingerprint"]:
        log.warning("data in %s differs from the data the artifact was trained on", data_dir)
    split = split_data(data, config)
    return {
        target: evaluate_cold_start(load_domain(artifact, target), split.test[target], config.ks)
        for target in config.train.targets
    }
