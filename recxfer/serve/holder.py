"""Holds the model being served; swaps are atomic (no module-level state)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from recxfer.serve.model import ServingModel

log = logging.getLogger(__name__)

SwapListener = Callable[[ServingModel], None]


class ModelHolder:
    """A thread-safe reference to the current ``ServingModel`` (``None`` until loaded).

    Readers take the reference once per request, so a swap never changes a model
    under a request in flight; the old model lives until its last request ends.
    Listeners (the server's health and metrics) are told of every swap.
    """

    def __init__(self, model: ServingModel | None = None) -> None:
        self._model = model
        self._lock = threading.RLock()  # serialises swaps and their notifications
        self._listeners: list[SwapListener] = []

    def get(self) -> ServingModel | None:
        return self._model

    def swap(self, model: ServingModel) -> ServingModel | None:
        """Install ``model``, tell the listeners; return the previous one."""
        with self._lock:
            old, self._model = self._model, model
            for listener in list(self._listeners):
                try:
                    listener(model)
                except Exception:  # a listener must not undo a swap
                    log.exception("swap listener %r failed", listener)
        return old

    def add_listener(self, listener: SwapListener) -> None:
        """Call ``listener(model)`` after every future swap."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: SwapListener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)
