"""Serving: the gRPC servicer, ``create_server``, the model holder and a client."""

from recxfer.serve.holder import ModelHolder
from recxfer.serve.model import ServingModel, UnknownDomainError, UnknownUserError
from recxfer.serve.server import RecommenderServer, create_server

__all__ = [
    "ModelHolder",
    "RecommenderServer",
    "ServingModel",
    "UnknownDomainError",
    "UnknownUserError",
    "create_server",
]
