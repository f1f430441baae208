"""The publishing gate: the new model may replace production only if the
configured metrics are no worse than production's by more than a tolerance."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from recxfer.nightly.config import GateConfig

Results = Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]]


@dataclass(frozen=True)
class GateCheck:
    """One (target, metric) comparison.

    Attributes:
        passed: ``True``/``False``, or ``None`` when skipped (nothing to compare).
    """

    target: str
    metric: str
    new: float | None
    production: float | None
    tolerance: float
    passed: bool | None
    note: str = ""


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict.

    Attributes:
        passed: every check passed or was skipped.
        forced: publishing was forced (``--force``) although ``passed`` is false.
        reason: one sentence for logs and the report.
        checks: every comparison made.
    """

    passed: bool
    forced: bool
    reason: str
    checks: tuple[GateCheck, ...]

    @property
    def publish(self) -> bool:
        return self.passed or self.forced

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed, "forced": self.forced, "publish": self.publish,
            "reason": self.reason, "checks": [asdict(c) for c in self.checks],
        }


def decide(
    results: Results,
    config: GateConfig,
    targets: Sequence[str],
    has_production: bool,
    force: bool = False,
) -> GateDecision:
    """Compare the new model (method ``"model"``) with ``"production"`` in ``results``.

    Args:
        results: ``group -> target -> method -> metric -> value``.
        targets: the trained targets (``config.targets`` narrows them when set).
        has_production: whether a production artifact was evaluated at all; with
            none, the gate passes (first publish).
        force: publish even when a check fails (recorded as ``forced``).
    """
    if not has_production:
        return GateDecision(True, False, "no production artifact to compare with: first publish", ())
    checks = []
    for spec in config.metrics:
        group, _, metric = spec.partition("/")
        for target in config.targets or targets:
            methods = results.get(group, {}).get(target)
            if methods is None:
                checks.append(GateCheck(target, spec, None, None, config.tolerance, None,
                                        f"no {group} evaluation for {target}"))
                continue
            new = methods["model"].get(metric)
            prod = methods.get("production", {}).get(metric)
            if prod is None or (isinstance(prod, float) and math.isnan(prod)):
                checks.append(GateCheck(target, spec, new, None, config.tolerance, None,
                                        f"production has no {target} to compare with"))
                continue
            ok = new is not None and not math.isnan(new) and new >= prod - config.tolerance
            note = "" if ok else f"worse than production by {prod - (new or 0.0):.4f}"
            checks.append(GateCheck(target, spec, new, prod, config.tolerance, ok, note))
    failed = [c for c in checks if c.passed is False]
    if not failed:
        compared = sum(c.passed is True for c in checks)
        return GateDecision(
            True, False, f"all {compared} compared metric(s) within {config.tolerance} of production",
            tuple(checks),
        )
    worst = failed[0]
    new_value = float("nan") if worst.new is None else worst.new
    reason = (
        f"{len(failed)} check(s) failed, e.g. {worst.metric} of {worst.target}: new "
        f"{new_value:.4f} < production {worst.production:.4f} - tolerance {config.tolerance}"
    )
    if force:
        reason = f"forced despite the gate: {reason}"
    return GateDecision(False, force, reason, tuple(checks))
