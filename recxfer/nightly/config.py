"""Configuration of the nightly job.

The config file is the main job's JSON (``recxfer.pipeline.JobConfig``: ``train``,
``split``, ``index``, ``ks``, ``keep_versions``) plus an optional ``nightly``
object for ``NightlyOptions``, read strictly by ``recxfer.config.from_dict`` (unknown
keys, wrong types and out-of-range values are refused, naming the key), each part
merged onto the nightly defaults (the split's ``method`` is ``"hash"`` unless
given). The artifact's manifest
stores the ``JobConfig`` part as its ``config`` (so ``recxfer evaluate`` and
serving read nightly artifacts like any other) and the options under ``nightly``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from recxfer.config import ConfigError, from_dict
from recxfer.eval.heldout import UNKNOWN_USER_POLICIES
from recxfer.pipeline import JobConfig, SplitConfig

GATE_GROUPS = ("cold_start", "warm")


@dataclass(frozen=True)
class GateConfig:
    """When the new model may replace production.

    Attributes:
        metrics: ``"<group>/<metric>"`` checked per target, group ``cold_start``
            or ``warm``, metric any computed one (``recall@50``, ``ndcg@10``,
            ``hr@20``, ``mrr``, ...).
        tolerance: absolute slack: a check passes when
            ``new >= production - tolerance``.
        targets: targets checked; empty means every target.
    """

    metrics: tuple[str, ...] = ("cold_start/recall@50", "warm/recall@50")
    tolerance: float = 0.02
    targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")
        for spec in self.metrics:
            group, _, metric = spec.partition("/")
            if group not in GATE_GROUPS or not metric:
                raise ValueError(
                    f"metrics: {spec!r} must be '<group>/<metric>' with group in "
                    f"{list(GATE_GROUPS)}, e.g. 'cold_start/recall@50'"
                )


@dataclass(frozen=True)
class NightlyOptions:
    """The nightly job's own settings.

    Attributes:
        interactions: interaction sources, relative to ``DATA_DIR`` (or absolute):
            files or folders of files such as Parquet partitions, concatenated.
            Empty: ``DATA_DIR/interactions.*`` (or the folder ``interactions/``).
        items: the items table relative to ``DATA_DIR``; ``None``:
            ``DATA_DIR/items.*`` when present.
        warm_start: start from the production artifact's embeddings (users and
            items it knows; new ones start fresh) instead of from scratch.
        warm_holdout: also hold out one interaction of every warm target user
            with at least two (leave-one-out) to report warm-user metrics.
        unknown_users: how production is scored on held-out users it does not
            know: ``"popularity"`` (its popularity ranking) or ``"miss"``.
        report_ks: extra cut-offs evaluated for the report's recall@k curves.
        keep_reports: run report folders kept under ``ROOT/reports/``.
        stale_lock_after_s: ignored, accepted so that older config files still
            load: the root's lock is an ``flock`` the kernel releases when its
            holder dies (``recxfer.artifacts.lock``), so no lock is ever stale.
        torch_threads: CPU threads torch may use during the run (``None``: torch's
            default, one per core). The id models are small: on a shared or busy
            host a single thread is often several times faster than contended ones.
        gate: the publishing gate.
    """

    interactions: tuple[str, ...] = ()
    items: str | None = None
    warm_start: bool = True
    warm_holdout: bool = True
    unknown_users: str = "popularity"
    report_ks: tuple[int, ...] = (1, 5, 10, 20, 50, 100)
    keep_reports: int = 30
    stale_lock_after_s: float | None = None
    torch_threads: int | None = None
    gate: GateConfig = field(default_factory=GateConfig)

    def __post_init__(self) -> None:
        if self.unknown_users not in UNKNOWN_USER_POLICIES[1:]:
            raise ValueError(
                f"unknown_users must be one of {list(UNKNOWN_USER_POLICIES[1:])}, "
                f"got {self.unknown_users!r}"
            )
        if self.keep_reports < 1:
            raise ValueError(f"keep_reports must be >= 1, got {self.keep_reports}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be >= 1, got {self.torch_threads}")
        if any(k < 1 for k in self.report_ks):
            raise ValueError(f"report_ks must be >= 1, got {list(self.report_ks)}")
        if self.stale_lock_after_s is not None and self.stale_lock_after_s < 0:
            raise ValueError(f"stale_lock_after_s must be >= 0, got {self.stale_lock_after_s}")
        if any(not s for s in self.interactions) or self.items == "":
            raise ValueError("interactions and items must be non-empty paths")


def _default_job() -> JobConfig:
    return JobConfig(split=SplitConfig(method="hash"))


@dataclass(frozen=True)
class NightlyConfig:
    """``job``: the main job's config (training, split, index, ks, keep_versions);
    ``nightly``: the nightly options.

    The split defaults to ``method="hash"`` here (the main job's default is
    ``"random"``): each user keeps its cold-start role from night to night, so
    production, trained on yesterday's split, never saw today's held-out rows and
    the comparison with it is fair.
    """

    job: JobConfig = field(default_factory=_default_job)
    nightly: NightlyOptions = field(default_factory=NightlyOptions)

    @property
    def eval_ks(self) -> tuple[int, ...]:
        """Every cut-off evaluated: the job's ``ks`` and the report's."""
        return tuple(sorted(set(self.job.ks) | set(self.nightly.report_ks)))

    def metric_names(self) -> set[str]:
        """Names of the metrics the evaluation computes."""
        names = {f"{m}@{k}" for m in ("recall", "ndcg", "hr") for k in self.eval_ks}
        return names | {"mrr"}

    def check(self) -> None:
        """Cross-field checks (gate metrics computed, gate targets configured,
        split method known).

        Raises:
            ValueError: naming the offending key.
        """
        if self.job.split.method not in ("random", "hash"):
            raise ValueError(f"split.method must be 'random' or 'hash', got {self.job.split.method!r}")
        known = self.metric_names()
        for spec in self.nightly.gate.metrics:
            group, _, metric = spec.partition("/")
            if metric not in known:
                raise ValueError(
                    f"nightly.gate.metrics: {metric!r} is not computed; use one of "
                    f"{sorted(known)} (cut-offs come from 'ks' and 'nightly.report_ks')"
                )
            if group == "warm" and not self.nightly.warm_holdout:
                raise ValueError(
                    f"nightly.gate.metrics: {spec!r} needs nightly.warm_holdout = true"
                )
        unknown = sorted(set(self.nightly.gate.targets) - set(self.job.train.targets))
        if unknown:
            raise ValueError(
                f"nightly.gate.targets: {unknown} are not trained targets {list(self.job.train.targets)}"
            )


def nightly_config_from_dict(data: dict, where: str = "config") -> NightlyConfig:
    """Build a ``NightlyConfig`` from the flat JSON layout (job keys + ``nightly``).

    Every part merges onto ``NightlyConfig()``'s defaults (so the split's method is
    ``"hash"`` unless the file names one).

    Raises:
        ConfigError: (a ``ValueError``) unknown keys, wrong types or bad values,
            naming the dotted key path.
    """
    if not isinstance(data, dict):
        raise ConfigError(where, "", f"expected an object, got {type(data).__name__}")
    defaults = NightlyConfig()
    job_part = {k: v for k, v in data.items() if k != "nightly"}
    job = from_dict(JobConfig, job_part, where=where, base=defaults.job)
    options = from_dict(NightlyOptions, data.get("nightly", {}), where=where, base=defaults.nightly,
                        key="nightly")
    config = NightlyConfig(job, options)
    try:
        config.check()
    except ValueError as exc:
        raise ConfigError(where, "", str(exc)) from exc
    return config


def load_nightly_config(path: str | Path | None) -> NightlyConfig:
    """Read the nightly config file; ``None`` gives the defaults.

    Raises:
        ValueError: unreadable file, unknown keys or bad values.
    """
    if path is None:
        config = NightlyConfig()
        config.check()
        return config
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read config: {exc}") from exc
    return nightly_config_from_dict(data, where=str(path))
