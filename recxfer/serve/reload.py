"""Hot reload: watch ``ROOT/current`` and swap in each newly published artifact.

The publisher (``recxfer.artifacts.publish``) switches the ``current`` symlink
atomically. ``ArtifactWatcher`` notices the switch, loads and verifies the new
artifact in its own thread (checksums, tables, an index self-check: off the
request path), then swaps it into the ``ModelHolder`` in one reference
assignment; requests in flight finish on the model they started with. An
artifact that fails to load is refused and logged, and the old model keeps
serving; it is not retried until ``current`` points somewhere else.

Each check also looks at the link itself (``link_state``): ``ok`` while it points
at the served artifact's folder, else ``missing``, ``dangling`` (e.g. the folder
was deleted) or ``elsewhere`` (e.g. at a refused artifact). A change to a bad
state is logged as a warning (``event=artifact_link``, again every
``LINK_WARN_EVERY_S`` while it lasts) and reported to ``on_link_state`` (the
server's ``recxfer_artifact_link_ok`` gauge).

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
import time
from collections.abc import Callable
from pathlib import Path

from recxfer.artifacts import CURRENT
from recxfer.serve.holder import ModelHolder
from recxfer.serve.metrics import LINK_OK
from recxfer.serve.model import ServingModel

log = logging.getLogger(__name__)

LINK_WARN_EVERY_S = 300.0  # a bad link state is warned about again this often

Loader = Callable[[Path], ServingModel]


class ArtifactWatcher:
    """Polls ``root/current`` and swaps newly published artifacts into ``holder``.

    Args:
        root: the artifacts root (holding the ``current`` link).
        holder: where the loaded model goes.
        on_swap: called with the new model after each swap (health and metrics
            already follow swaps through the holder's listeners).
        on_refuse: called with the artifact path and the error of a refused one.
        on_link_state: called with the link's state (``recxfer.serve.metrics.LINK_STATES``)
            after every check, e.g. ``server.metrics.link_checked``.
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
        on_link_state: Callable[[str], None] | None = None,
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
        self._on_link_state = on_link_state
        self._loader = loader
        self.link_state: str | None = None  # set by every check
        self._link_warned_at = 0.0
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

    def _link_state(self) -> str:
        link = self.root / CURRENT
        if not link.is_symlink() and not link.exists():
            return "missing"
        target = self._target()
        if target is None:
            return "dangling"
        model = self.holder.get()
        if target != self._loaded or model is None or model.version != target.name:
            return "elsewhere"
        return LINK_OK

    def _note_link_state(self) -> None:
        state = self._link_state()
        previous, self.link_state = self.link_state, state
        now = time.monotonic()
        model = self.holder.get()
        serving = model.version if model is not None else None
        if state != LINK_OK and (state != previous or now - self._link_warned_at >= LINK_WARN_EVERY_S):
            self._link_warned_at = now
            link = self.root / CURRENT
            log.warning(
                "%s is %s (serving %s from %s)", link, {
                    "missing": "missing", "dangling": "a dangling link",
                    "elsewhere": f"pointing at {self._target()}, not at the served folder",
                }.get(state, state), serving, self._loaded,
                extra={"event": "artifact_link", "state": state, "serving": serving,
                       "link": str(link)},
            )
        elif state == LINK_OK and previous not in (None, LINK_OK):
            log.info("%s points at the served artifact %s again", self.root / CURRENT, serving,
                     extra={"event": "artifact_link", "state": state, "serving": serving})
        if self._on_link_state is not None:
            self._on_link_state(state)

    def check_now(self) -> bool:
        """Load and swap in the published artifact if it is new, then check the
        link's state (``link_state``, logged and reported when not ``ok``).

        Returns:
            True when a new model was swapped in; False when nothing is published,
            it is already served, or it was refused (logged, old model kept).
        """
        with self._check_lock:
            try:
                return self._load_if_new()
            finally:
                self._note_link_state()

    def _load_if_new(self) -> bool:
        """``check_now``'s load-and-swap, under ``_check_lock``."""
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
