"""Training loops and devices."""

from recxfer.train.cross_domain import CrossDomainConfig, CrossDomainModel, train_cross_domain
from recxfer.train.device import resolve_device
from recxfer.train.mf import MFConfig, MFResult, train_mf

__all__ = [
    "CrossDomainConfig",
    "CrossDomainModel",
    "MFConfig",
    "MFResult",
    "resolve_device",
    "train_cross_domain",
    "train_mf",
]
