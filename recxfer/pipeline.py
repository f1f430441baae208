"""The main job as stage calls: load data → split → train → evaluate → index →
write the artifact → publish. ``cli``, ``jobs/`` and the nightly job
(``recxfer.nightly``) call these steps; nothing in the stage packages imports it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from recxfer.artifacts import (
    MANIFEST,
    Artifact,
    ArtifactBuilder,
    ArtifactError,
    RootLock,
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
from recxfer.data import (
    ColdStartSplit,
    CrossDomainData,
    cold_start_split,
    leave_one_out,
    load_data_dir,
)
from recxfer.eval import DEFAULT_KS, evaluate_cold_start, evaluate_on_split, score_samples
from recxfer.eval.cold_start import relevant_positions
from recxfer.eval.protocol import full_ranking_metrics_scores
from recxfer.eval.report import metric_columns, restrict_to_ks
from recxfer.index import FaissIndex, build_index, index_recall
from recxfer.train import CrossDomainConfig, CrossDomainModel, MFConfig, train_cross_domain
from recxfer.train.distributed import process_group_info
from recxfer.train.shared import SharedTrainConfig
from recxfer.train.shared_domains import (
    SharedCrossDomainModel,
    SharedJobConfig,
    train_shared_cross_domain,
)
from recxfer.train.transfer_fit import fit_domain_transfer, refit_domain_transfer
from recxfer.train.warm_start import SharedWarmStart, load_weights, save_weights
from recxfer.transfer.blend import BlendConfig
from recxfer.transfer.shared import SharedModelConfig
from recxfer.types import DomainEmbeddings, DomainTransfer, UserOrigin

if TYPE_CHECKING:
    from recxfer.eval.html_report import RunReport

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model/shared.pt"
WEIGHTS_ITEMS_FILE = "model/shared_items.json"  # domain -> item ids of the weights' id table
TRAINED_PAIRS_FILE = "training/pairs.npy"  # sorted uint64 keys of the published model's training pairs
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

    def __post_init__(self) -> None:
        if not 0.0 < self.cold_share < 1.0:
            raise ValueError(f"cold_share must be in (0, 1), got {self.cold_share}")
        if not 0.0 <= self.valid_share < 1.0:
            raise ValueError(f"valid_share must be in [0, 1), got {self.valid_share}")
        if self.method not in ("random", "hash"):
            raise ValueError(f"method must be 'random' or 'hash', got {self.method!r}")


@dataclass(frozen=True)
class IndexConfig:
    """Index per domain: faiss factory string, backend ``auto``/``faiss``/``exact``,
    faiss search parameters (``"nprobe=16"``, ``"efSearch=128"``) and the cut-offs
    of the recall against exact search stored in the manifest."""

    factory: str = "Flat"
    backend: str = "auto"
    params: str = ""
    recall_ks: tuple[int, ...] = (10, 100)

    def __post_init__(self) -> None:
        if not self.factory:
            raise ValueError("factory must be a faiss factory string such as 'Flat'")
        if self.backend not in ("auto", "faiss", "exact"):
            raise ValueError(f"backend must be 'auto', 'faiss' or 'exact', got {self.backend!r}")
        if any(k < 1 for k in self.recall_ks):
            raise ValueError(f"recall_ks must be >= 1, got {list(self.recall_ks)}")


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

    ``refit`` (default on): the model is chosen and evaluated on the split, then
    the published one is refit on every row (held-out ones included), warm-started
    from the evaluated model for as many epochs as the evaluated run's chosen
    epoch (``shared``/``blend``; ``emcdr``, which has no validation, for its
    ``train.mf.epochs``), the transfers rebuilt on every row with the choices
    validation made. Off: the evaluated model itself is published (its held-out
    users stay cold, its held-out rows untrained).
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
    refit: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not self.ks or any(k < 1 for k in self.ks):
            raise ValueError(f"ks must be a non-empty list of cut-offs >= 1, got {list(self.ks)}")
        if self.keep_versions < 1:
            raise ValueError(f"keep_versions must be >= 1, got {self.keep_versions}")

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
    training: dict[str, Any] = field(default_factory=dict)  # the manifest's ``training``


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
        scores = []
        for t in config.train.targets:
            # the exported users are a seeded sample of the validation users
            rows = valid[t][valid[t]["user_id"].isin(pd.Index(domains[t].user_ids))]
            if len(rows):
                scores.append(evaluate_cold_start(domains[t], rows, (10,))["model"]["recall@10"])
        return float(sum(scores) / len(scores)) if scores else 0.0

    has_valid = valid is not None and any(len(valid[t]) for t in config.train.targets)
    validation_users = {t: valid[t]["user_id"].unique() for t in config.train.targets
                        if len(valid[t])} if has_valid else None
    model = train_shared_cross_domain(
        train, config.train.source, config.train.targets, config.shared, items, text_cache,
        validator if has_valid else None, checkpoint_dir=checkpoint_dir, warm=warm,
        validation_users=validation_users,
    )
    if config.method == "blend":
        fitted = fit_transfers(train, config, model, valid)
        model = dataclasses.replace(model, transfers={t: tr for t, (tr, _) in fitted.items()},
                                    transfer_info={t: info for t, (_, info) in fitted.items()})
    return model


def refit_model(
    rows: pd.DataFrame,
    config: JobConfig,
    evaluated: CrossDomainModel,
    checkpoint_dir: str | Path | None = None,
    *,
    items: pd.DataFrame | None = None,
    text_cache: Path | None = None,
) -> CrossDomainModel:
    """The model to publish: ``evaluated`` (trained on the split's training rows and
    chosen on its validation users) trained further on ``rows`` (every row, the
    held-out ones included), warm-started from it.

    ``shared``/``blend``: ``evaluated.best_epoch`` epochs (the number the evaluated
    run needed to reach the weights validation chose; 0 when it kept its warm
    start: the weights are then re-exported over ``rows`` untrained, and items
    only the held-out rows have are left out, see ``train_shared_cross_domain``),
    no validation. ``blend``'s transfers are rebuilt on ``rows`` with the
    hyper-parameters and weights validation chose (``refit_domain_transfer``).
    ``emcdr``: every domain's MF warm-started from the evaluated embeddings for
    ``train.mf.epochs`` (it has no validation to pick an epoch), mappings refitted.
    """
    if config.method == "emcdr":
        return train_cross_domain(rows, config.train, init=evaluated.domains, checkpoint_dir=checkpoint_dir)
    if not isinstance(evaluated, SharedCrossDomainModel):
        raise TypeError(f"refit of {config.method} needs the shared model, got {type(evaluated).__name__}")
    epochs = evaluated.best_epoch
    shared = dataclasses.replace(config.shared, train=dataclasses.replace(config.shared.train, epochs=epochs))
    log.info("refit on all %d rows: %d epoch(s) warm-started from the evaluated model", len(rows), epochs)
    model = train_shared_cross_domain(
        rows, config.train.source, config.train.targets, shared, items, text_cache, None,
        checkpoint_dir=checkpoint_dir, warm=evaluated.warm_start(),
    )
    if config.method == "blend":
        source = config.train.source
        transfers = {
            t: refit_domain_transfer(rows, tr, evaluated.transfer_info.get(t, {}), config.blend,
                                     model.domains[source].item_ids, model.domains[t].item_ids)
            for t, tr in evaluated.transfers.items()
        }
        model = dataclasses.replace(model, transfers=transfers, transfer_info=evaluated.transfer_info)
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
    return {t: transfer for t, (transfer, _) in fit_transfers(train, config, model, valid).items()}


def fit_transfers(
    train: pd.DataFrame, config: JobConfig, model: CrossDomainModel,
    valid: Mapping[str, pd.DataFrame] | None,
) -> dict[str, tuple[DomainTransfer, dict]]:
    """``train_transfers`` with what validation chose: ``target -> (transfer, info)``.

    Validation scores a seeded sample of at most ``config.shared.val_users`` of each
    target's validation users (with a source history) at every grid point."""
    source = config.train.source
    out = {}
    # validation users need a source history to be scored by the transfer
    has_source = pd.Index(pd.unique(train["user_id"][(train["domain"] == source).to_numpy()]))
    for target in config.train.targets:
        rows = valid[target] if valid is not None and target in valid else None
        users = np.sort(rows["user_id"].unique()) if rows is not None and len(rows) else np.zeros(0, object)
        users = np.asarray(users, dtype=object)
        users = users[has_source.get_indexer(pd.Index(users, dtype=object)) >= 0]
        n_sample = config.shared.val_users  # the same seeded cap as the embeddings' validation
        if n_sample and len(users) > n_sample:
            rng = np.random.default_rng([config.shared.train.seed, 13])
            users = np.sort(rng.choice(users, size=n_sample, replace=False))
        held: dict[str, Any] = {}  # the held-out positions, built once per catalogue

        def validator(scores: np.ndarray, item_ids: np.ndarray, rows=rows, users=users,
                      held=held) -> float:
            if held.get("items") is not item_ids and not np.array_equal(held.get("items", ()), item_ids):
                held["items"] = item_ids
                held["relevant"], held["n_rel"] = relevant_positions(rows, users, item_ids)
            metrics = full_ranking_metrics_scores(lambda r: scores[r], len(users), held["relevant"],
                                                  (10, 50), n_relevant=held["n_rel"], mrr=False)
            return selection_objective(metrics)

        tgt = model.domains[target]
        emb_rows = pd.Index(tgt.user_ids).get_indexer(pd.Index(users))
        valid_emb = tgt.user_emb[emb_rows] if len(users) and (emb_rows >= 0).all() else None
        transfer, info = fit_domain_transfer(
            train, source, target, config.blend, model.domains[source].item_ids,
            tgt.item_ids, users, validator if len(users) else None, valid_emb, tgt.item_emb,
        )
        log.info("%s -> %s transfer: weights %s, popularity %.2f, embeddings %.2f, dae %.2f, head %s", source,
                 target, info.get("weights"), info.get("pop_weight", 0.0), info.get("embedding_weight", 0.0),
                 info.get("dae_weight", 0.0),
                 f"{transfer.scorer.head} top {transfer.scorer.head_size}" if transfer.scorer.head_size else "none")
        out[target] = (transfer, info)
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


def pair_keys(rows: pd.DataFrame) -> np.ndarray:
    """``(n,)`` uint64: a fixed 64-bit key per row's ``(domain, user_id, item_id)``
    (blake2b; the same on every machine and run). Identifies what a model trained
    on at the level that matters for a comparison: a pair it trained on is known
    to it, whatever the timestamp."""
    keys = (rows["domain"].astype(str) + "\x1f" + rows["user_id"].astype(str) + "\x1f"
            + rows["item_id"].astype(str)).tolist()
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "big") for k in keys),
        dtype=np.uint64, count=len(keys),
    )


def training_record(rows: pd.DataFrame, description: str, **extra: Any) -> dict[str, Any]:
    """What a model was trained on, for the manifest: row and user counts per
    domain, the latest timestamp, a sha256 of the sorted pair keys, a description."""
    pairs = np.unique(pair_keys(rows))
    record: dict[str, Any] = {
        "rows": int(len(rows)),
        "pairs": int(len(pairs)),
        "users": int(rows["user_id"].nunique()),
        "rows_per_domain": {str(k): int(v) for k, v in rows["domain"].value_counts().sort_index().items()},
        "users_per_domain": {str(k): int(v) for k, v in rows.groupby("domain")["user_id"].nunique().items()},
        "pairs_sha256": hashlib.sha256(pairs.tobytes()).hexdigest(),
        "max_timestamp": int(rows["timestamp"].max()) if "timestamp" in rows and len(rows) else None,
        "description": description,
    }
    record.update(extra)
    return record


def trained_pairs(artifact: Artifact) -> np.ndarray | None:
    """The sorted pair keys (``pair_keys``) the artifact's model was trained on, or
    ``None`` when it does not record them (artifacts from before the refit)."""
    entry = ((artifact.manifest.get("training") or {}).get("published") or {}).get("pairs_file")
    if not entry:
        return None
    try:
        keys = np.load(artifact.file(entry), allow_pickle=False)
    except (ArtifactError, OSError, ValueError) as exc:
        log.warning("artifact %s: training pairs unreadable (%s)", artifact.version, exc)
        return None
    return np.asarray(keys, dtype=np.uint64)


def untrained_rows(rows: pd.DataFrame, pairs: np.ndarray | None) -> np.ndarray:
    """``(len(rows),)`` bool: rows whose pair is not in ``pairs`` (all when ``None``)."""
    if pairs is None:
        return np.ones(len(rows), dtype=bool)
    return ~np.isin(pair_keys(rows), pairs, assume_unique=False)


def hold_out_warm(
    train: pd.DataFrame, targets: tuple[str, ...], seed: int
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Leave-one-out of the targets' training rows: one row per (user, target) with
    at least two (the latest by timestamp when there is one) is held out. Stable:
    the choice depends on the user's own rows only, so a row held out last night
    stays held out tonight unless the user has a newer one (never seen by the
    production model either way). The nightly's warm hold-out; ``recxfer evaluate``
    rebuilds it for an artifact trained with one.

    Returns:
        ``(train, heldout)``: the remaining training rows of every domain and
        ``target -> held-out rows``.
    """
    in_targets = train["domain"].isin(targets).to_numpy()
    rest, held = leave_one_out(train[in_targets], seed, stable=True)
    remaining = pd.concat([train[~in_targets], rest], ignore_index=True)
    return remaining, {t: held[held["domain"] == t].reset_index(drop=True) for t in targets}


def comparable_heldout(
    heldout: pd.DataFrame, group: str, production: DomainEmbeddings | None, pairs: np.ndarray | None
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The held-out rows a stored model (``production``) never trained on, and what
    was dropped.

    A row whose ``(domain, user, item)`` pair is in the model's training pairs
    (``pairs``, from its manifest; ``None``: it records none, as artifacts from
    before the refit, which trained on the split's training rows only) is dropped.
    In the ``cold_start`` group a user the model knows as warm in the target
    (it trained on some of their target rows) is dropped too: it would not be
    scored as cold-start there. Used by the nightly (production) and by
    ``recxfer evaluate`` (the artifact evaluated).
    """
    keep = untrained_rows(heldout, pairs)
    seen = int((~keep).sum())
    warm_users_dropped = 0
    if group == "cold_start" and production is not None:
        is_warm = heldout["user_id"].isin(warm_users(production)).to_numpy()
        warm_users_dropped = int(heldout.loc[is_warm & keep, "user_id"].nunique())
        keep &= ~is_warm
    counts = {"heldout_rows": int(len(heldout)), "comparable_rows": int(keep.sum()),
              "rows_production_trained_on": seen, "users_warm_in_production": warm_users_dropped}
    return heldout[keep].reset_index(drop=True), counts


def write_model_artifact(
    artifacts_root: str | Path,
    config: JobConfig,
    data_fingerprint: str,
    model: CrossDomainModel,
    metrics: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    add_files: Callable[[ArtifactBuilder], None] | None = None,
    version: str | None = None,
    *,
    evaluated: CrossDomainModel | None = None,
    training: Mapping[str, Any] | None = None,
    training_rows: pd.DataFrame | None = None,
) -> Artifact:
    """Write the model as a complete artifact under its final name, atomically
    (staged under a hidden name; nothing under a final name on failure).

    Args:
        metrics: stored as the manifest's ``metrics``.
        extra: more top-level manifest keys (besides ``domains``, ``device``,
            ``distributed``, ``epoch_losses``).
        add_files: called with the builder after the domains are written, to add
            files (e.g. a report) that the manifest then checksums like the others.
        version: the version name (a new sortable one by default).
        evaluated: the model that was evaluated when ``model`` is its refit
            (default: ``model`` itself). Its shared weights are the ones stored for
            a later warm start (trained on the split's training rows only, so a
            warm start never carries information from rows a later split holds
            out) and its losses are the manifest's ``epoch_losses``.
        training: the manifest's ``training`` entry (``{"evaluated": ...,
            "published": ...}``, see ``training_record``).
        training_rows: the published model's training rows: their pair keys are
            written to ``training/pairs.npy`` (``training.published.pairs_file``),
            so a later run can compare with this model on rows it never saw.

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
            {"domains": domains_meta, "device": model.device,
             "distributed": process_group_info(),  # the processes that trained it (torchrun)
             "epoch_losses": (evaluated or model).epoch_losses,
             "user_encoder": _save_user_encoder(builder.path, model, config, evaluated),
             "transfer": {t: {"source": tr.source, "names": list(tr.scorer.names),
                              "weights": list(tr.scorer.weights), "pop_weight": tr.scorer.pop_weight,
                          "embedding_weight": tr.scorer.embedding_weight,
                          "dae_weight": tr.scorer.dae_weight, "head": tr.scorer.head,
                          "head_size": tr.scorer.head_size}
                          for t, tr in model.transfers.items()}}
        )
        if training is not None or training_rows is not None:
            entry = {k: dict(v) if isinstance(v, Mapping) else v for k, v in (training or {}).items()}
            if training_rows is not None:
                (builder.path / TRAINED_PAIRS_FILE).parent.mkdir(parents=True, exist_ok=True)
                np.save(builder.path / TRAINED_PAIRS_FILE, np.unique(pair_keys(training_rows)),
                        allow_pickle=False)
                entry.setdefault("published", {})["pairs_file"] = TRAINED_PAIRS_FILE
            builder.extra["training"] = entry
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
    """Run the main job and publish the artifact as ``ROOT/current``, all under the
    root's lock (taken first, so a second writer fails before any work).

    Under torchrun only rank 0 calls this (``recxfer.train.distributed.run_job``):
    the other ranks join its training runs of the shared model and nothing else.

    Raises:
        LockHeldError: another job (``train``, ``run``, ``nightly``, ``rollback``)
            holds ``ROOT/.lock``.
    """
    with RootLock(artifacts_root) as lock:
        log.info("lock %s taken (pid %d)", lock.path, lock.info.pid if lock.info else -1)
        return _train_evaluate_publish(data_dir, artifacts_root, config)


def _train_evaluate_publish(data_dir: str | Path, artifacts_root: str | Path, config: JobConfig) -> JobResult:
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

    evaluated = model
    if config.refit:
        start = time.perf_counter()
        model = refit_model(data.interactions, config, evaluated, items=data.items,
                            text_cache=Path(artifacts_root) / TEXT_CACHE)
        timings["refit_s"] = time.perf_counter() - start
    training = training_sets(split, data.interactions if config.refit else split.train, config,
                             evaluated, model if config.refit else None)

    start = time.perf_counter()
    artifact = write_model_artifact(
        artifacts_root, config, data.fingerprint, model, {"cold_start": results},
        evaluated=evaluated, training=training,
        training_rows=data.interactions if config.refit else split.train,
    )
    removed = publish_and_prune(artifacts_root, artifact.version, config.keep_versions)
    timings["publish_s"] = time.perf_counter() - start
    log.info("published %s (pruned %d old versions)", artifact.version, len(removed))
    return JobResult(artifact, results, timings, training)


def split_description(config: JobConfig) -> str:
    """One line naming the cold-start split (what the evaluated model lacks)."""
    sp = config.split
    return (f"cold-start split {sp.method} (seed {sp.seed}, cold share {sp.cold_share}, valid share "
            f"{sp.valid_share}): the held-out users' rows in {list(config.train.targets)} left out")


def training_sets(
    split: ColdStartSplit,
    published_rows: pd.DataFrame,
    config: JobConfig,
    evaluated: CrossDomainModel,
    refit: CrossDomainModel | None,
    evaluated_rows: pd.DataFrame | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """The manifest's ``training``: what the evaluated and the published model
    were trained on (``refit`` ``None``: the evaluated model is the published one)."""
    rows = split.train if evaluated_rows is None else evaluated_rows
    entry: dict[str, Any] = {"evaluated": training_record(
        rows, description or split_description(config),
        best_epoch=getattr(evaluated, "best_epoch", None),
        epochs_run=len(next(iter(evaluated.epoch_losses.values()), [])),
        warm_score=getattr(evaluated, "warm_score", None),
    )}
    if refit is None:
        entry["published"] = {**entry["evaluated"], "refit": False,
                              "description": "the evaluated model (no refit)"}
        return entry
    entry["published"] = training_record(
        published_rows, "every row (held-out rows included), warm-started from the evaluated model",
        refit=True,
        refit_epochs=(len(next(iter(refit.epoch_losses.values()), []))),
        refit_budget=("train.mf.epochs (emcdr has no validation)" if config.method == "emcdr"
                      else "the evaluated run's chosen epoch (best_epoch)"),
        dropped_items=dict(getattr(refit, "dropped_items", {}) or {}),
        epoch_losses=refit.epoch_losses,
    )
    return entry


def _save_user_encoder(
    folder: Path, model: CrossDomainModel, config: JobConfig, warm_source: CrossDomainModel | None = None
) -> dict[str, Any]:
    """How serving can embed a new user from a history (manifest entry).

    ``inductive`` is true for the shared method without an MLP head: a user's
    embedding is then the (mean or attention) pooling of their history's item
    embeddings, computable from the artifact's item tables alone.

    The weights stored for a later warm start are ``warm_source``'s (default
    ``model``'s), with the item ids of their id table (``weights_items_file``).
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
    source = warm_source if isinstance(warm_source, SharedCrossDomainModel) else model
    if source.weights:
        save_weights(folder / WEIGHTS_FILE, source.weights)
        entry["weights_file"] = WEIGHTS_FILE
        entry["domain_order"] = list(source.domain_order)
        (folder / WEIGHTS_ITEMS_FILE).write_text(json.dumps(
            {d: [str(i) for i in source.domains[d].item_ids] for d in source.domain_order}))
        entry["weights_items_file"] = WEIGHTS_ITEMS_FILE
        entry["weights_model"] = "evaluated" if source is not model else "published"
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
        if entry.get("weights_items_file"):  # the weights' own items (the evaluated model's)
            listed = json.loads(artifact.file(entry["weights_items_file"]).read_text())
            ids = tuple((d, np.asarray([str(i) for i in listed[d]], dtype=object)) for d in order)
        else:  # older artifacts: the weights are the published tables'
            ids = tuple((d, load_domain(artifact, d).item_ids) for d in order)
        return SharedWarmStart(state, ids)
    except (ArtifactError, KeyError, TypeError, ValueError) as exc:
        log.warning("artifact %s: shared weights unusable, no warm start: %s", artifact.version, exc)
        return None


EVAL_GROUPS = ("cold_start", "warm")
_GROUP_WORDS = {"cold_start": "cold-start users", "warm": "warm users"}


@dataclass(frozen=True)
class ArtifactEvaluation:
    """``recxfer evaluate``'s offline report of one artifact on a data folder.

    Attributes:
        artifact: what was evaluated: ``version``, ``path``, ``created_at``,
            ``format``, ``manifest_sha256`` (of its ``manifest.json``), ``method``,
            ``refit``, ``data_fingerprint``.
        data: ``dir``, ``fingerprint`` and ``same_as_artifact``.
        split: one line naming the split (the artifact's config; the warm
            hold-out when the artifact was trained with one).
        ks: the cut-offs reported.
        results: ``group -> target -> {"model", "popularity"} -> metric -> value``;
            groups ``cold_start`` and ``warm`` (each only where there is something
            to report).
        basis: ``group -> target -> "evaluated"`` (scored on this data) or
            ``"stored"`` (the manifest's metrics: the artifact trained on every
            held-out row, see ``offline_evaluation``).
        rows: ``group -> target -> counts`` (``heldout_rows``, ``comparable_rows``:
            rows scored, ``rows_production_trained_on``: rows the artifact trained
            on, ``users_warm_in_production``: cold-start users it knows as warm;
            the keys of ``comparable_heldout``) and ``basis``.
        notes: plain sentences for the reader (stored metrics, groups not
            evaluated, cut-offs missing from stored metrics, data differences).
        scores: ``target -> {"model": score_samples}`` of the rows scored.
        epoch_losses, refit_losses, selection, training, config: from the manifest,
            for the report (the evaluated run's losses, the refit's, the nightly's
            model selection, the ``training`` entry, the job config).
        timings: step -> seconds.
    """

    artifact: dict[str, Any]
    data: dict[str, Any]
    split: str
    ks: tuple[int, ...]
    results: dict[str, dict[str, dict[str, dict[str, float]]]]
    basis: dict[str, dict[str, str]]
    rows: dict[str, dict[str, dict[str, Any]]]
    notes: list[str]
    scores: dict[str, dict[str, dict[str, np.ndarray]]] = field(default_factory=dict)
    epoch_losses: dict[str, list[float]] = field(default_factory=dict)
    refit_losses: dict[str, list[float]] | None = None
    selection: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def stored_only(self) -> bool:
        """Every figure comes from the manifest's stored metrics."""
        return bool(self.basis) and all(b == "stored" for g in self.basis.values() for b in g.values())

    def to_json(self) -> dict[str, Any]:
        """The JSON ``recxfer evaluate --out`` writes."""
        return {"artifact": self.artifact, "data": self.data, "split": self.split, "ks": list(self.ks),
                "results": self.results, "basis": self.basis, "rows": self.rows, "notes": self.notes,
                "stored_metrics_only": self.stored_only, "timings": self.timings}


def artifact_eval_ks(manifest: Mapping[str, Any]) -> tuple[int, ...]:
    """The cut-offs the artifact's own run evaluated: its config's ``ks`` and, for a
    nightly artifact, the report's ``report_ks`` (the nightly's ``eval_ks``)."""
    ks = set((manifest.get("config") or {}).get("ks") or DEFAULT_KS)
    options = (manifest.get("nightly") or {}).get("options") or {}
    ks |= set(options.get("report_ks") or ())
    return tuple(sorted(int(k) for k in ks))


def artifact_identity(artifact: Artifact) -> dict[str, Any]:
    """Which artifact a report is about: version, resolved path, creation time,
    format, the sha256 of its ``manifest.json`` (which checksums every file),
    method, whether it was refit on every row, and its data fingerprint."""
    manifest = artifact.manifest
    published = (manifest.get("training") or {}).get("published") or {}
    return {
        "version": artifact.version,
        "path": str(Path(artifact.path).resolve()),
        "created_at": manifest.get("created_at"),
        "format": manifest.get("format"),
        "manifest_sha256": hashlib.sha256((Path(artifact.path) / MANIFEST).read_bytes()).hexdigest(),
        "method": (manifest.get("config") or {}).get("method"),
        "refit": bool(published.get("refit")),
        "data_fingerprint": manifest.get("data_fingerprint"),
    }


def offline_evaluation(
    data_dir: str | Path, artifact_path: str | Path, ks: tuple[int, ...] | None = None
) -> ArtifactEvaluation:
    """Evaluate a stored artifact on ``data_dir``, split as its own config says:
    cold-start users and, for an artifact trained with the nightly's warm
    hold-out, warm users (each warm target user's latest row held out).

    The same evaluation as the nightly report (``evaluate_on_split``): every
    user's training rows of the split are excluded, popularity counts the split's
    training rows, cold users are scored as served (the artifact's transfer),
    users the artifact does not know by its popularity (as a service falling back
    to it). Only held-out rows the artifact never trained on are scored
    (``comparable_heldout`` with its recorded training pairs; in the cold-start
    group, users it knows as warm are left out too). Where none are left, e.g. an
    artifact refit on every row of this same data, the manifest's metrics are
    reported (the evaluated model's, before the refit), with a warning, and
    ``basis`` says ``"stored"``.

    Args:
        ks: cut-offs (``None``: the artifact's own, ``artifact_eval_ks``).
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    artifact = read_artifact(artifact_path)
    manifest = artifact.manifest
    config = from_dict(JobConfig, manifest["config"], where="manifest.config")
    ks = tuple(sorted(set(ks))) if ks else artifact_eval_ks(manifest)
    if not ks or min(ks) < 1:
        raise ValueError(f"--ks: cut-offs must be >= 1, got {list(ks)}")
    identity = artifact_identity(artifact)
    data = load_job_data(data_dir, config)
    same_data = data.fingerprint == manifest.get("data_fingerprint")
    notes: list[str] = []
    if not same_data:
        log.warning("data in %s differs from the data the artifact was trained on", data_dir)
        notes.append(f"The data in {data_dir} differs from the data artifact {artifact.version} was "
                     "trained on (fingerprints differ): only held-out rows it never trained on are scored.")
    timings["load"] = time.perf_counter() - start

    start = time.perf_counter()
    split = split_data(data, config)
    options = (manifest.get("nightly") or {}).get("options") or {}
    warm_holdout = bool(options.get("warm_holdout"))
    train, warm_test = split.train, {}
    description = split_description(config)
    if warm_holdout:
        train, warm_test = hold_out_warm(split.train, config.train.targets, config.split.seed)
        description += "; and each warm target user's latest row (leave-one-out)"
    timings["split"] = time.perf_counter() - start

    start = time.perf_counter()
    refit = identity["refit"]
    pairs = trained_pairs(artifact)
    stored = manifest.get("metrics") or {}
    source = load_domain(artifact, config.train.source)
    results: dict[str, dict[str, dict[str, dict[str, float]]]] = {g: {} for g in EVAL_GROUPS}
    basis: dict[str, dict[str, str]] = {g: {} for g in EVAL_GROUPS}
    rows_of: dict[str, dict[str, dict[str, Any]]] = {g: {} for g in EVAL_GROUPS}
    scores: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    missing_ks: set[int] = set()
    for target in config.train.targets:
        emb = load_domain(artifact, target)
        transfer = artifact_transfer(artifact, target, source, emb)
        scored = []
        for group, heldout in (("cold_start", split.test[target]), ("warm", warm_test.get(target))):
            if heldout is None or heldout.empty:
                continue
            rows, counts = comparable_heldout(heldout, group, emb, pairs)
            if refit and pairs is None:  # a refit that records no pairs trained on them all
                rows, counts["comparable_rows"] = rows.iloc[:0], 0
                counts["rows_production_trained_on"] = counts["heldout_rows"]
            if rows.empty:
                log.warning(
                    "%s: artifact %s %s, its %s %s test rows included; reporting the manifest's "
                    "metrics (the evaluated model's%s)", target, artifact.version,
                    "was refit on every row of this data" if refit else "trained on every held-out row",
                    target, group, ", before the refit" if refit else "",
                )
                recorded = (stored.get(group) or {}).get(target) or {}
                if not isinstance(recorded.get("model"), Mapping):
                    notes.append(f"{target}, {_GROUP_WORDS[group]}: the artifact trained on "
                                 "every held-out row and its manifest records no metrics: not reported.")
                    continue
                results[group][target] = {m: restrict_to_ks(v, ks) for m, v in recorded.items()
                                          if m in ("model", "popularity") and isinstance(v, Mapping)}
                have = {int(k.split("@")[1]) for k in recorded["model"] if "@" in k}
                missing_ks |= set(ks) - have
                basis[group][target] = counts["basis"] = "stored"
                rows_of[group][target] = counts
                continue
            row = evaluate_on_split(emb, rows, ks, train, transfer=transfer, source=source,
                                    unknown_users="popularity")
            results[group][target] = {"model": row["model"], "popularity": row["popularity"]}
            basis[group][target] = counts["basis"] = "evaluated"
            rows_of[group][target] = counts
            scored.append(rows)
        if scored:
            scores[target] = {"model": score_samples(emb, pd.concat(scored, ignore_index=True))}
    timings["evaluate"] = time.perf_counter() - start
    stored_groups = sorted({g for g, by in basis.items() for b in by.values() if b == "stored"})
    if stored_groups:
        notes.append(
            f"Artifact {artifact.version} "
            + ("was refit on every row of this data" if refit else "trained on every held-out row")
            + ", the held-out rows included, so they cannot score it: the figures of "
            + ", ".join(f"{_GROUP_WORDS[g]} ({', '.join(t for t, b in basis[g].items() if b == 'stored')})"
                        for g in stored_groups)
            + " are its stored metrics (the manifest's: the evaluated model, trained on the split's "
            "training rows, before the refit), not recomputed here."
            + (" Score distributions are drawn only for rows scored here (the stored embeddings "
               "are the refit's)." if scores else " No score distributions: the stored embeddings "
               "are the refit's, trained on these rows.")
        )
    if missing_ks:
        notes.append(f"The stored metrics have no cut-off {sorted(missing_ks)} (the artifact's run "
                     f"evaluated {list(artifact_eval_ks(manifest))}): those points are missing.")
    if not warm_holdout and "warm" not in {g for g, by in results.items() if by}:
        notes.append("Warm users: not evaluated. This artifact was trained without a warm hold-out "
                     "(recxfer train holds out cold-start users only), so it trained on every warm "
                     "user's rows; nightly artifacts hold out each warm target user's latest row.")
    for table in (results, basis, rows_of):
        for group in [g for g, by in table.items() if not by]:
            del table[group]
    training = manifest.get("training") or {}
    published = training.get("published") or {}
    return ArtifactEvaluation(
        artifact=identity,
        data={"dir": str(data_dir), "fingerprint": data.fingerprint, "same_as_artifact": same_data},
        split=description, ks=ks, results=results, basis=basis, rows=rows_of, notes=notes,
        scores=scores, epoch_losses=dict(manifest.get("epoch_losses") or {}),
        refit_losses=published.get("epoch_losses") if published.get("refit") else None,
        selection=dict((manifest.get("nightly") or {}).get("model_selection") or {}),
        training={k: {kk: vv for kk, vv in v.items() if kk != "epoch_losses"}
                  for k, v in training.items() if isinstance(v, Mapping)},
        config={**manifest.get("config", {}), **({"nightly": options} if options else {})},
        timings=timings,
    )


def evaluate_artifact(data_dir: str | Path, artifact_path: str | Path) -> dict[str, Any]:
    """The cold-start figures of ``offline_evaluation``: ``target -> {"model",
    "popularity"} -> metrics`` (stored ones for a refit artifact on its own data)."""
    return offline_evaluation(data_dir, artifact_path).results.get("cold_start", {})


def _describe_training(record: Mapping[str, Any]) -> str:
    if not record:
        return "-"
    return (f"{record.get('rows')} rows, {record.get('users')} users "
            f"({record.get('rows_per_domain')}); {record.get('description')}")


def evaluation_report(ev: ArtifactEvaluation) -> "RunReport":
    """``ev`` as the nightly's HTML report (``render_html``): the same tables and the
    same figures from the same inputs (recall@k curves, per-domain bars, losses,
    score distributions, model selection), without a gate."""
    from recxfer.eval.html_report import RunReport, default_bar_metric  # matplotlib: only here

    art = ev.artifact
    stored = ev.stored_only
    published = ev.training.get("published") or {}
    facts = {
        "artifact": f"{art['version']} ({art['path']})",
        "manifest sha256": art["manifest_sha256"],
        "created": art.get("created_at") or "-",
        "method": art.get("method") or "-",
        "data": f"{ev.data['dir']} (fingerprint {ev.data['fingerprint'][:16]}; "
                + ("the artifact's data)" if ev.data["same_as_artifact"] else "differs from the artifact's)"),
        "split": ev.split,
        "figures": ("the artifact's stored metrics (not recomputed)" if stored else
                    "recomputed from the artifact on this data"
                    + (" (some stored, see the note)" if any(b == "stored" for g in ev.basis.values()
                                                             for b in g.values()) else "")),
        "evaluated model trained on": _describe_training(ev.training.get("evaluated") or {}),
        "published model trained on": _describe_training(published)
        + (f"; refit for {published.get('refit_epochs')} epoch(s)" if published.get("refit") else ""),
        "cut-offs": ", ".join(str(k) for k in ev.ks),
    }
    return RunReport(
        title=f"recxfer evaluate {art['version']}",
        status="stored metrics" if stored else "evaluated",
        headline=(f"Artifact {art['version']}'s stored metrics: it was refit on every row of this data."
                  if stored else f"Artifact {art['version']} scored on {ev.data['dir']}."),
        facts=facts,
        results=ev.results,
        ks=ev.ks,
        epoch_losses=ev.epoch_losses,
        scores=ev.scores,
        timings=ev.timings,
        config=ev.config,
        bar_metric=default_bar_metric(ev.ks),
        comparison_rows=ev.rows,
        selection=ev.selection,
        refit_losses=ev.refit_losses,
        notes=tuple(ev.notes),
        show_gate=False,
        table_metrics=metric_columns(ev.ks),
        subject="the artifact",
    )


def warm_users(emb: DomainEmbeddings) -> np.ndarray:
    """Ids of the users ``emb`` was trained on with rows in its domain."""
    return emb.user_ids[emb.user_origin == UserOrigin.WARM.value]


def artifact_transfer(
    artifact: Artifact, target: str, source: DomainEmbeddings, emb: DomainEmbeddings
) -> DomainTransfer | None:
    """The artifact's transfer into ``target`` (``None`` when it has none)."""
    entry = (artifact.manifest.get("transfer") or {}).get(target)
    if not entry or entry.get("source") != source.domain:
        return None
    return load_transfer(artifact, target, source.item_ids, emb.item_ids)
