"""Serving: the gRPC servicer, ``create_server``, the model holder, hot reload,
metrics and a client.

The names below are imported on first use (PEP 562), so that
``recxfer.serve.client`` (and ``recxfer query``) can be imported without the
server's dependencies: the model and index pull numpy, torch and faiss.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recxfer.serve.config import BatchingConfig, ServeConfig, TlsConfig
    from recxfer.serve.holder import ModelHolder
    from recxfer.serve.model import (
        ItemFilter,
        RecommendQuery,
        ServingModel,
        UnknownDomainError,
        UnknownItemError,
        UnknownUserError,
    )
    from recxfer.serve.reload import ArtifactWatcher
    from recxfer.serve.server import RecommenderServer, create_server

_EXPORTS = {
    "BatchingConfig": "recxfer.serve.config",
    "ArtifactWatcher": "recxfer.serve.reload",
    "ItemFilter": "recxfer.serve.model",
    "ModelHolder": "recxfer.serve.holder",
    "RecommendQuery": "recxfer.serve.model",
    "RecommenderServer": "recxfer.serve.server",
    "ServeConfig": "recxfer.serve.config",
    "ServingModel": "recxfer.serve.model",
    "TlsConfig": "recxfer.serve.config",
    "UnknownDomainError": "recxfer.serve.model",
    "UnknownItemError": "recxfer.serve.model",
    "UnknownUserError": "recxfer.serve.model",
    "create_server": "recxfer.serve.server",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
