"""The main job as stage calls: load data → split → train → evaluate → index →
write the artifact → publish. ``cli``, ``jobs/`` and the nightly job
(``recxfer.nightly``) call these steps; nothing in the stage packages imports it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recxfer.artifacts import (
    Artifact,
    ArtifactBuilder,
    ArtifactError,
    index_file,
    load_domain,
    load_transfer,
    prune,
    publish,
    read_artifact,
    save_domain,
    save_transfer,
    write_artifact,
)
from recxfer.config import from_dict, to_dict
from recxfer.data import ColdStartSplit, CrossDomainData, cold_start_split, load_data_dir
from recxfer.eval import DEFAULT_KS, evaluate_cold_start
from recxfer.eval.protocol import full_ranking_metrics_scores
from recxfer.index import FaissIndex, build_index, index_recall
from recxfer.train import CrossDomainConfig, CrossDomainModel, MFConfig, train_cross_domain
from recxfer.train.shared import SharedTrainConfig
from recxfer.train.shared_domains import (
    SharedCrossDomainModel,
    SharedJobConfig,
    train_shared_cross_domain,
)
from recxfer.train.transfer_fit import fit_domain_transfer
from recxfer.train.warm_start import SharedWarmStart, load_weights, save_weights
from recxfer.transfer.blend import BlendConfig
from recxfer.transfer.shared import SharedModelConfig
from recxfer.types import DomainEmbeddings, DomainTransfer

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model/shared.pt"
TEXT_CACHE = ".cache/text"  # under the artifacts root: item text embeddings, encoded once


@dataclass(frozen=True)
class SplitConfig:
    """Cold-start split: share of overlapping users held out per target.

    ``method``: ``"random"`` (a seeded permutation) or ``"hash"`` (a user's role
    fixed by a hash of its id, stable as data grows; see ``cold_start_split``).
    """

    cold_share: float = 0.2
    valid_share: float = 0.5
    seed: int = 0
    method: str = "random"


@dataclass(frozen=True)
class IndexConfig:
    """Index per domain: faiss factory string, backend ``auto``/``faiss``/``exact``,
    faiss search parameters (``"nprobe=16"``, ``"efSearch=128"``) and the cut-offs
    of the recall against exact search stored in the manifest."""

    factory: str = "Flat"
    backend: str = "auto"
    params: str = ""
    recall_ks: tuple[int, ...] = (10, 100)


METHODS = ("blend", "shared", "emcdr")


@dataclass(frozen=True)
class JobConfig:
    """Everything the main job needs; stored in each artifact's manifest.

    ``method`` is ``"blend"`` (the default: the ``shared`` embeddings for every
    user and item, plus per target the item-to-item transfer ``blend`` configures,
    which scores the cold users from their source history), ``"shared"`` (shared
    user encoder; ``shared`` configures it) or ``"emcdr"`` (MF per domain + mapping;
    ``train.mf``/``train.emcdr``). ``train`` also names the source and target
    domains for all.
    """

    method: str = "blend"
    train: CrossDomainConfig = field(
        default_factory=lambda: CrossDomainConfig(mf=MFConfig(epochs=20, batch_size=512, lr=0.02))
    )
    shared: SharedJobConfig = field(
        default_factory=lambda: SharedJobConfig(
            SharedTrainConfig(model=SharedModelConfig(dim=32), epochs=40, batch_size=512,
                              lr=5e-3, max_history=50, patience=4)
        )
    )
    # the product trains the shared embeddings anyway (warm users, similar items), so
    # the hybrid term costs nothing here; validation sets its weight (0 allowed)
    blend: BlendConfig = field(default_factory=lambda: BlendConfig(embedding=True))
    split: SplitConfig = field(default_factory=SplitConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    ks: tuple[int, ...] = DEFAULT_KS
    keep_versions: int = 5

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")

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
        config.split.method,
    )


def load_job_data(data_dir: str | Path, config: JobConfig) -> CrossDomainData:
    """Read and validate ``DATA_DIR`` for the config's domains."""
    return load_data_dir(data_dir, config.domains)


def train_model(
    train: pd.DataFrame,
    config: JobConfig,
    init: Mapping[str, DomainEmbeddings] | None = None,
    checkpoint_dir: str | Path | None = None,
    *,
    items: pd.DataFrame | None = None,
    text_cache: Path | None = None,
    valid: Mapping[str, pd.DataFrame] | None = None,
    warm: SharedWarmStart | None = None,
) -> CrossDomainModel:
    """Train the configured method on ``train``.

    ``emcdr``: every domain's MF and the mappings (see ``train_cross_domain`` for
    ``init``, a warm start, and ``checkpoint_dir``, per-epoch checkpoints).
    ``shared``: the shared-encoder model (item titles from ``items`` feed the text
    tower, cached in ``text_cache``); with ``valid`` (target -> held-out rows of
    validation cold users) it keeps the epoch with the best mean recall@10, and
    with ``warm`` (``load_shared_warm_start``) it starts from an earlier model's
    weights (``init`` is for ``emcdr`` only).
    """
    if config.method == "emcdr":
        return train_cross_domain(train, config.train, init=init, checkpoint_dir=checkpoint_dir)

    def validator(domains: dict[str, DomainEmbeddings]) -> float:
        scores = [
            evaluate_cold_start(domains[t], valid[t], (10,))["model"]["recall@10"]
            for t in config.train.targets if len(valid[t])
        ]
        return float(sum(scores) / len(scores)) if scores else 0.0

    has_valid = valid is not None and any(len(valid[t]) for t in config.train.targets)
    model = train_shared_cross_domain(
        train, config.train.source, config.train.targets, config.shared, items, text_cache,
        validator if has_valid else None, checkpoint_dir=checkpoint_dir, warm=warm,
    )
    if config.method == "blend":
        model = dataclasses.replace(model, transfers=train_transfers(train, config, model, valid))
    return model


def selection_objective(metrics: Mapping[str, float]) -> float:
    """What validation maximises for the transfer: mean of full-ranking NDCG@10,
    HR@10 and recall@50 (the figures the product is judged by)."""
    return (metrics["ndcg@10"] + metrics["hr@10"] + metrics["recall@50"]) / 3


def train_transfers(
    train: pd.DataFrame, config: JobConfig, model: CrossDomainModel,
    valid: Mapping[str, pd.DataFrame] | None,
) -> dict[str, DomainTransfer]:
    """Per target, the ``blend`` item-to-item transfer from the source, chosen on the
    target's validation cold users (when any) and aligned to ``model``'s tables."""
    source = config.train.source
    out = {}
    for target in config.train.targets:
        rows = valid[target] if valid is not None and target in valid else None
        users = np.sort(rows["user_id"].unique()) if rows is not None and len(rows) else np.zeros(0, object)
        # validation users need a source history to be scored by the transfer
        has_source = set(train.loc[train["domain"] == source, "user_id"])
        users = np.array([u for u in users if u in has_source], dtype=object)

        def validator(scores: np.ndarray, item_ids: np.ndarray, rows=rows, users=users) -> float:
            groups = rows.groupby("user_id")["item_id"].unique().reindex(users)
            index = pd.Index(item_ids)
            relevant = [index.get_indexer(items)[index.get_indexer(items) >= 0] for items in groups]
            n_rel = np.array([len(items) for items in groups])
            metrics = full_ranking_metrics_scores(lambda r: scores[r], len(users), relevant,
                                                  (10, 50), n_relevant=n_rel)
            return selection_objective(metrics)

        tgt = model.domains[target]
        emb_rows = pd.Index(tgt.user_ids).get_indexer(pd.Index(users))
        valid_emb = tgt.user_emb[emb_rows] if len(users) and (emb_rows >= 0).all() else None
        transfer, info = fit_domain_transfer(
            train, source, target, config.blend, model.domains[source].item_ids,
            tgt.item_ids, users, validator if len(users) else None, valid_emb, tgt.item_emb,
        )
        log.info("%s -> %s transfer: weights %s, popularity %.2f, embeddings %.2f", source, target,
                 info.get("weights"), info.get("pop_weight", 0.0), info.get("embedding_weight", 0.0))
        out[target] = transfer
    return out


def evaluate_cold_start_targets(
    model: CrossDomainModel, split: ColdStartSplit, config: JobConfig
) -> dict[str, dict[str, dict[str, float]]]:
    """Cold-start test metrics of every target: ``target -> method -> metric -> value``."""
    return {
        target: evaluate_cold_start(model.domains[target], split.test[target], config.ks,
                                    model.transfers.get(target), model.domains[config.train.source])
        for target in config.train.targets
    }


def write_model_artifact(
    artifacts_root: str | Path,
    config: JobConfig,
    data_fingerprint: str,
    model: CrossDomainModel,
    metrics: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    add_files: Callable[[ArtifactBuilder], None] | None = None,
    version: str | None = None,
) -> Artifact:
    """Write the model as a complete artifact under its final name, atomically
    (staged under a hidden name; nothing under a final name on failure).

    Args:
        metrics: stored as the manifest's ``metrics``.
        extra: more top-level manifest keys (besides ``domains``, ``device``,
            ``epoch_losses``).
        add_files: called with the builder after the domains are written, to add
            files (e.g. a report) that the manifest then checksums like the others.
        version: the version name (a new sortable one by default).

    Returns:
        The verified artifact (not yet published).
    """
    with write_artifact(artifacts_root, to_dict(config), data_fingerprint, version) as builder:
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
        for target, transfer in model.transfers.items():
            save_transfer(builder.path, transfer)
            domains_meta[target]["transfer"] = {"source": transfer.source}
        builder.metrics.update(metrics)
        builder.extra.update(
            {"domains": domains_meta, "device": model.device, "epoch_losses": model.epoch_losses,
             "user_encoder": _save_user_encoder(builder.path, model, config),
             "transfer": {t: {"source": tr.source, "names": list(tr.scorer.names),
                              "weights": list(tr.scorer.weights), "pop_weight": tr.scorer.pop_weight,
                          "embedding_weight": tr.scorer.embedding_weight}
                          for t, tr in model.transfers.items()}}
        )
        builder.extra.update(extra or {})
        if add_files is not None:
            add_files(builder)
    artifact = builder.artifact
    assert artifact is not None
    return artifact


def publish_and_prune(artifacts_root: str | Path, version: str, keep: int) -> list[str]:
    """Switch ``ROOT/current`` to ``version`` atomically, then delete all but the
    newest ``keep`` versions (never the current one).

    Returns:
        The versions deleted.
    """
    publish(artifacts_root, version)
    return prune(artifacts_root, keep)


def train_evaluate_publish(
    data_dir: str | Path, artifacts_root: str | Path, config: JobConfig = JobConfig()
) -> JobResult:
    """Run the main job and publish the artifact as ``ROOT/current``."""
    timings: dict[str, float] = {}
    start = time.perf_counter()
    data = load_job_data(data_dir, config)
    split = split_data(data, config)
    timings["load_split_s"] = time.perf_counter() - start

    start = time.perf_counter()
    model = train_model(split.train, config, items=data.items,
                        text_cache=Path(artifacts_root) / TEXT_CACHE, valid=split.valid)
    timings["train_s"] = time.perf_counter() - start

    start = time.perf_counter()
    results = evaluate_cold_start_targets(model, split, config)
    timings["evaluate_s"] = time.perf_counter() - start

    start = time.perf_counter()
    artifact = write_model_artifact(
        artifacts_root, config, data.fingerprint, model, {"cold_start": results}
    )
    removed = publish_and_prune(artifacts_root, artifact.version, config.keep_versions)
    timings["publish_s"] = time.perf_counter() - start
    log.info("published %s (pruned %d old versions)", artifact.version, len(removed))
    return JobResult(artifact, results, timings)


def _save_user_encoder(folder: Path, model: CrossDomainModel, config: JobConfig) -> dict[str, Any]:
    """How serving can embed a new user from a history (manifest entry).

    ``inductive`` is true for the shared method without an MLP head: a user's
    embedding is then the (mean or attention) pooling of their history's item
    embeddings, computable from the artifact's item tables alone.
    """
    if not isinstance(model, SharedCrossDomainModel):
        return {"inductive": False, "method": config.method}
    entry: dict[str, Any] = {
        "inductive": config.shared.train.model.hidden is None,
        "method": "shared",
        "pooling": model.pooling,
        "max_history": model.max_history,
        "query_file": None,
    }
    if model.attention_query is not None:
        (folder / "user_encoder").mkdir(exist_ok=True)
        np.save(folder / "user_encoder" / "query.npy", model.attention_query.astype(np.float32))
        entry["query_file"] = "user_encoder/query.npy"
    if model.weights:
        save_weights(folder / WEIGHTS_FILE, model.weights)
        entry["weights_file"] = WEIGHTS_FILE
        entry["domain_order"] = list(model.domain_order)
    return entry


def load_shared_warm_start(artifact: Artifact | None) -> SharedWarmStart | None:
    """An artifact's shared-model weights and item order, for a warm start.

    Returns ``None`` (logged) when there is no artifact, or it was not trained by
    the shared method or predates stored weights; a verified artifact whose weights
    file cannot be read as tensors is also logged and gives ``None`` (the run then
    trains from scratch rather than failing).
    """
    if artifact is None:
        return None
    entry = artifact.manifest.get("user_encoder") or {}
    if entry.get("method") != "shared" or not entry.get("weights_file"):
        log.info("artifact %s has no shared-model weights: no warm start", artifact.version)
        return None
    try:
        order = [str(d) for d in entry["domain_order"]]
        state = load_weights(artifact.file(entry["weights_file"]))
        ids = tuple((d, load_domain(artifact, d).item_ids) for d in order)
        return SharedWarmStart(state, ids)
    except (ArtifactError, KeyError, ValueError) as exc:
        log.warning("artifact %s: shared weights unusable, no warm start: %s", artifact.version, exc)
        return None


def evaluate_artifact(data_dir: str | Path, artifact_path: str | Path) -> dict[str, Any]:
    """Re-evaluate a stored artifact on the split its own config names."""
    artifact = read_artifact(artifact_path)
    config = from_dict(JobConfig, artifact.manifest["config"], where="manifest.config")
    data = load_job_data(data_dir, config)
    if data.fingerprint != artifact.manifest["data_fingerprint"]:
        log.warning("data in %s differs from the data the artifact was trained on", data_dir)
    split = split_data(data, config)
    source = load_domain(artifact, config.train.source)
    out = {}
    for target in config.train.targets:
        emb = load_domain(artifact, target)
        out[target] = evaluate_cold_start(emb, split.test[target], config.ks,
                                          artifact_transfer(artifact, target, source, emb), source)
    return out


def artifact_transfer(
    artifact: Artifact, target: str, source: DomainEmbeddings, emb: DomainEmbeddings
) -> DomainTransfer | None:
    """The artifact's transfer into ``target`` (``None`` when it has none)."""
    entry = (artifact.manifest.get("transfer") or {}).get(target)
    if not entry or entry.get("source") != source.domain:
        return None
    return load_transfer(artifact, target, source.item_ids, emb.item_ids)
