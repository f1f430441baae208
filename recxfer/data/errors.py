"""The data layer's error type."""

from __future__ import annotations


class DataValidationError(ValueError):
    """Input data is malformed. The message names the file and the column."""
