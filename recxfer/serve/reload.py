"""Hot reload: watch ``ROOT/current`` and swap in each newly published artifact.

The publisher (``recxfer.artifacts.publish``) switches the ``current`` symlink
atomically. ``ArtifactWatcher`` notices the switch, loads and verifies the new
artifact in its own thread (checksums, tables, an index self-check: off the
request path), then swaps it into the ``ModelHolder`` in one reference
assignment; requests in flight finish on the model they started with. An
artifact that fails to load is refused and logged, and the old model keeps
serving; it is not retried until ``current`` points somewhere else.

Usage::

    watcher = ArtifactWatcher(root, holder, interval_s=2.0)
    watcher.check_now()  # load what is published now (False: nothing new)
    watcher.start()      # then poll in the background
    ...
    watcher.stop()
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from recxfer.artifacts import CURRENT
from recxfer.serve.holder import ModelHolder
from recxfer.serve.model import ServingModel

log = logging.getLogger(__name__)

Loader = Callable[[Path], ServingModel]


class ArtifactWatcher:
    """Polls ``root/current`` and swaps newly published artifacts into ``holder``.

    Args:
        root: the artifacts root (holding the ``current`` link).
        holder: where the loaded model goes.
        on_swap: called with the new model after each swap (health and metrics
            already follow swaps through the holder's listeners).
        on_refuse: called with the artifact path and the error of a refused one.
        interval_s: polling period of ``start()``.
        loader: path -> verified ``ServingModel`` (``ServingModel.from_artifact``).
    """

    def __init__(
        self,
        root: str | Path,
        holder: ModelHolder,
        *,
        on_swap: Callable[[ServingModel], None] | None = None,
        on_refuse: Callable[[Path, Exception], None] | None = None,
        interval_s: float = 2.0,
        loader: Loader = ServingModel.from_artifact,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.root = Path(root)
        self.holder = holder
        self.interval_s = interval_s
        self._on_swap = on_swap
        self._on_refuse = on_refuse
        self._loader = loader
        self._loaded: Path | None = None
        self._refused: dict[Path, str] = {}
        self._check_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def last_error(self) -> str | None:
        """Why the artifact ``current`` points at was refused (``None`` if it was not)."""
        target = self._target()
        return self._refused.get(target) if target is not None else None

    def _target(self) -> Path | None:
        link = self.root / CURRENT
        try:
            return link.resolve(strict=True)
        except (OSError, RuntimeError):  # no link yet, dangling, or a loop
            return None

    def check_now(self) -> bool:
        """Load and swap in the published artifact if it is new.

        Returns:
            True when a new model was swapped in; False when nothing is published,
            it is already served, or it was refused (logged, old model kept).
        """
        with self._check_lock:
            target = self._target()
            if target is None or target == self._loaded or target in self._refused:
                return False
            current = self.holder.get()
            if current is not None and current.version == target.name and self._loaded is None:
                self._loaded = target  # served already (loaded before the watcher)
                return False
            try:
                model = self._loader(target)
            except Exception as exc:  # any failure refuses the artifact, never the server
                self._refused[target] = f"{target}: {exc}"
                log.error(
                    "refused artifact %s, still serving %s: %s", target.name,
                    current.version if current else None, exc,
                    extra={"event": "artifact_refused", "artifact": str(target),
                           "serving": current.version if current else None},
                )
                if self._on_refuse is not None:
                    self._on_refuse(target, exc)
                return False
            old = self.holder.swap(model)
            self._loaded = target
            log.info(
                "swapped in artifact %s (was %s)", model.version, old.version if old else None,
                extra={"event": "artifact_reloaded", "version": model.version,
                       "previous": old.version if old else None},
            )
            if self._on_swap is not None:
                self._on_swap(model)
            return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check_now()
            except Exception:  # keep watching whatever a callback did
                log.exception("artifact watcher check failed")

    def start(self) -> None:
        """Poll every ``interval_s`` in a daemon thread until ``stop()``."""
        if self._thread is not None:
            raise RuntimeError("watcher already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="artifact-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop polling; waits for a load in progress up to ``timeout`` seconds."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
