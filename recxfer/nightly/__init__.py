"""The nightly retraining job (train → evaluate → gate → publish → report).

At the orchestration layer, like ``recxfer.pipeline``: it may import every stage
and the pipeline's steps, never ``cli``; only ``cli`` and ``jobs/`` import it.
"""

from recxfer.nightly.config import (
    GateConfig,
    NightlyConfig,
    NightlyOptions,
    load_nightly_config,
    nightly_config_from_dict,
)
from recxfer.nightly.gate import GateCheck, GateDecision, decide
from recxfer.nightly.job import (
    EXIT_BAD_INPUT,
    EXIT_ERROR,
    EXIT_GATED,
    EXIT_LOCKED,
    EXIT_OK,
    NightlyResult,
    nightly_main,
    rollback_production,
    run_nightly,
)

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_ERROR",
    "EXIT_GATED",
    "EXIT_LOCKED",
    "EXIT_OK",
    "GateCheck",
    "GateConfig",
    "GateDecision",
    "NightlyConfig",
    "NightlyOptions",
    "NightlyResult",
    "decide",
    "load_nightly_config",
    "nightly_config_from_dict",
    "nightly_main",
    "rollback_production",
    "run_nightly",
]
