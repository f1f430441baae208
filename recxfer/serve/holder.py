"""Holds the model being served; swaps are atomic (no module-level state)."""

from __future__ import annotations

import threading

from recxfer.serve.model import ServingModel


class ModelHolder:
    """A thread-safe reference to the current ``ServingModel`` (``None`` until loaded).

    Readers take the reference once per request, so a swap never changes a model
    under a request in flight.
    """

    def __init__(self, model: ServingModel | None = None) -> None:
        self._model = model
        self._lock = threading.Lock()

    def get(self) -> ServingModel | None:
        return self._model

    def swap(self, model: ServingModel) -> ServingModel | None:
        """Install ``model``; return the previous one."""
        with self._lock:
            old, self._model = self._model, model
        return old
