"""Training loops, devices, checkpoints and distributed launch."""

from recxfer.train.checkpoint import Checkpoint, Checkpointer
from recxfer.train.cross_domain import CrossDomainConfig, CrossDomainModel, train_cross_domain
from recxfer.train.device import resolve_device
from recxfer.train.distributed import DistInfo, cleanup, init_distributed
from recxfer.train.mf import MFConfig, MFInit, MFResult, train_mf

__all__ = [
    "Checkpoint",
    "Checkpointer",
    "CrossDomainConfig",
    "CrossDomainModel",
    "DistInfo",
    "MFConfig",
    "MFInit",
    "MFResult",
    "cleanup",
    "init_distributed",
    "resolve_device",
    "train_cross_domain",
    "train_mf",
]
