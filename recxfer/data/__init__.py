"""Data layer: reading, validating, id mapping, splitting, synthetic generator."""

from recxfer.data.dataset import (
    CrossDomainData,
    DomainMatrix,
    domain_matrix,
    load_data_dir,
    load_sources,
)
from recxfer.data.errors import DataValidationError
from recxfer.data.idmap import IdMap
from recxfer.data.split import ColdStartSplit, cold_start_split, leave_one_out
from recxfer.data.tables import read_interactions, read_items

__all__ = [
    "ColdStartSplit",
    "CrossDomainData",
    "DataValidationError",
    "DomainMatrix",
    "IdMap",
    "cold_start_split",
    "domain_matrix",
    "leave_one_out",
    "load_data_dir",
    "load_sources",
    "read_interactions",
    "read_items",
]
