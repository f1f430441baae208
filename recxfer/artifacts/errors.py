"""The artifact layer's error type."""

from __future__ import annotations


class ArtifactError(RuntimeError):
    """An artifact is missing, partial, corrupt or of an unknown format."""
