"""Artifacts: the versioned hand-off from training to serving."""

from recxfer.artifacts.errors import ArtifactError
from recxfer.artifacts.layout import (
    domain_dir,
    index_file,
    load_domain,
    load_transfer,
    save_domain,
    save_transfer,
    transfer_dir,
)
from recxfer.artifacts.lock import LockHeldError, LockInfo, RootLock, read_lock
from recxfer.artifacts.store import (
    CURRENT,
    MANIFEST,
    Artifact,
    ArtifactBuilder,
    clean_staging,
    current_version,
    list_versions,
    new_version,
    prune,
    publish,
    read_artifact,
    rollback,
    write_artifact,
)

__all__ = [
    "CURRENT",
    "MANIFEST",
    "Artifact",
    "ArtifactBuilder",
    "ArtifactError",
    "LockHeldError",
    "LockInfo",
    "RootLock",
    "clean_staging",
    "current_version",
    "domain_dir",
    "index_file",
    "list_versions",
    "load_domain",
    "load_transfer",
    "new_version",
    "prune",
    "publish",
    "read_artifact",
    "read_lock",
    "rollback",
    "save_domain",
    "save_transfer",
    "transfer_dir",
    "write_artifact",
]
