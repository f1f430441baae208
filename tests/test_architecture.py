"""Enforce the import rules of ARCHITECTURE.md by parsing every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "recxfer"

# stage -> stages it may import (besides itself). `v1` holds the generated stubs.
ALLOWED: dict[str, set[str]] = {
    "types": set(),
    "config": set(),
    # Process set-up of the entry points (thread budget, pre-flight checks).
    "runtime": set(),
    "data": {"types"},
    "encoders": {"types"},
    "losses": {"types"},
    "transfer": {"encoders", "losses", "types"},
    "train": {"transfer", "encoders", "losses", "data", "artifacts", "types"},
    "artifacts": {"types"},
    "index": {"types"},
    "eval": {"index", "types", "data"},
    "serve": {"index", "artifacts", "types", "v1"},
    "v1": set(),
    # Orchestration of the stages for cli/jobs: anything but the cli.
    "pipeline": {"types", "config", "data", "encoders", "losses", "transfer", "train",
                 "artifacts", "index", "eval"},
    # `recxfer bench-cdr` orchestration, same layer as pipeline.
    "benchmark": {"types", "config", "data", "encoders", "losses", "transfer", "train",
                  "artifacts", "index", "eval"},
    # The nightly job: the same layer as the pipeline, whose steps it reuses.
    "nightly": {"types", "config", "data", "encoders", "losses", "transfer", "train",
                "artifacts", "index", "eval", "pipeline"},
    "cli": None,  # may import anything
    "__main__": {"cli"},  # `python -m recxfer`: the cli, nothing else
}


def _stage(module: Path) -> str:
    rel = module.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py") if rel.parts[0] != "__init__.py" else "__init__"


def _imported_stages(module: Path) -> set[str]:
    tree = ast.parse(module.read_text(), filename=str(module))
    stages = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "recxfer" and len(parts) > 1:
                stages.add(parts[1])
    return stages


MODULES = sorted(
    p for p in PACKAGE.rglob("*.py") if "_pb2" not in p.name and _stage(p) != "__init__"
)


def test_every_stage_has_a_rule() -> None:
    assert {_stage(m) for m in MODULES} <= set(ALLOWED)


@pytest.mark.parametrize("module", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_rules(module: Path) -> None:
    stage = _stage(module)
    allowed = ALLOWED[stage]
    if allowed is None:
        return
    bad = _imported_stages(module) - allowed - {stage}
    assert not bad, f"{module.relative_to(PACKAGE)} ({stage}) imports {sorted(bad)}"


def test_serving_never_imports_training() -> None:
    for module in MODULES:
        if _stage(module) == "serve":
            assert not _imported_stages(module) & {"train", "encoders", "losses", "transfer"}


def test_the_checker_catches_a_violation(tmp_path: Path) -> None:
    fake = tmp_path / "bad.py"
    fake.write_text("from recxfer.train import train_mf\nimport recxfer.eval.metrics\n")
    assert _imported_stages(fake) == {"train", "eval"}
