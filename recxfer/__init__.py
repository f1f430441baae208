"""recxfer: cross-domain recommendation with transfer from a rich source domain."""

__version__ = "0.1.0"
