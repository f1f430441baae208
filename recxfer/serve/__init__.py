"""Serving: the gRPC servicer, ``create_server``, the model holder, hot reload,
metrics and a client."""

from recxfer.serve.config import ServeConfig, TlsConfig
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

__all__ = [
    "ArtifactWatcher",
    "ItemFilter",
    "ModelHolder",
    "RecommendQuery",
    "RecommenderServer",
    "ServeConfig",
    "ServingModel",
    "TlsConfig",
    "UnknownDomainError",
    "UnknownItemError",
    "UnknownUserError",
    "create_server",
]
