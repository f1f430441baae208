"""Per-epoch training checkpoints that survive a killed process.

A ``Checkpointer`` owns one folder and one training loop. After each epoch the
loop calls ``save(epoch, model, optim, extra, generators)``; a later process
calls ``load_latest()`` and, when it gets a checkpoint, ``restore(...)`` and
continues from ``checkpoint.epoch``. Any loop with an ``nn.Module`` and a
``torch.optim.Optimizer`` can use it (MF towers, a shared user encoder, ...)::

    ckpt = Checkpointer(work_dir / "mf-books", meta={"dim": 32, "n_users": 1200})
    start = 0
    if (found := ckpt.load_latest()) is not None:
        start = found.restore(model, optim, {"perm": generator})
    for epoch in range(start, epochs):
        ...
        ckpt.save(epoch + 1, model, optim, {"losses": losses}, {"perm": generator})

Files are ``epoch-NNNN.pt`` written with ``torch.save`` to a hidden temporary
name, fsynced, then renamed (so a kill never leaves a partial file under a final
name), and read back with ``torch.load(weights_only=True)`` (no pickle of
arbitrary objects). Each holds the model and optimizer state dicts, the number
of completed epochs, the caller's ``extra`` (tensors and plain JSON-like values
only), the CPU (and CUDA) global RNG states and the states of named
``torch.Generator``\\ s, so a resumed run continues bit-identically on CPU.
``meta`` describes what the checkpoint belongs to (shapes, config); a checkpoint
whose ``meta`` differs is ignored, never loaded into the wrong model.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

_FILE_RE = re.compile(r"epoch-(\d{4,})\.pt")
FORMAT = 1


@dataclass(frozen=True)
class Checkpoint:
    """One loaded checkpoint.

    Attributes:
        epoch: number of completed epochs (training resumes at this epoch index).
        model_state: the model's ``state_dict``.
        optim_state: the optimizer's ``state_dict`` or ``None``.
        extra: what the loop saved alongside (e.g. ``{"losses": [...]}``).
        rng_state: ``"torch"`` (CPU global), ``"cuda"`` (list, when saved on a
            CUDA host) and ``"gen:<name>"`` per named generator; uint8 tensors.
        path: the file it was read from.
    """

    epoch: int
    model_state: dict[str, torch.Tensor]
    optim_state: dict[str, Any] | None
    extra: dict[str, Any]
    rng_state: dict[str, Any]
    path: Path

    def restore(
        self,
        model: nn.Module,
        optim: torch.optim.Optimizer | None = None,
        generators: Mapping[str, torch.Generator] | None = None,
    ) -> int:
        """Load the states into ``model``/``optim``/``generators`` and the global RNG.

        Returns:
            ``self.epoch``, the epoch index to continue from.

        Raises:
            KeyError: a named generator has no saved state.
            RuntimeError: the state dict does not fit ``model`` (from ``load_state_dict``).
        """
        model.load_state_dict(self.model_state)
        if optim is not None and self.optim_state is not None:
            optim.load_state_dict(self.optim_state)
        torch.set_rng_state(self.rng_state["torch"])
        if "cuda" in self.rng_state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self.rng_state["cuda"])
        for name, generator in (generators or {}).items():
            generator.set_state(self.rng_state[f"gen:{name}"])
        return self.epoch


class Checkpointer:
    """Atomic per-epoch checkpoints of one training loop in ``directory``.

    Args:
        directory: created when missing; holds only this loop's files.
        meta: JSON-like description of the run (shapes, config); ``load_latest``
            ignores checkpoints saved with a different ``meta``.
        keep: newest checkpoints kept on disk (older ones are deleted after a save).
    """

    def __init__(
        self, directory: str | Path, meta: Mapping[str, Any] | None = None, keep: int = 2
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.meta = dict(meta or {})
        self.keep = keep

    def path_of(self, epoch: int) -> Path:
        """File name of the checkpoint after ``epoch`` completed epochs."""
        return self.directory / f"epoch-{epoch:04d}.pt"

    def epochs(self) -> list[int]:
        """Epochs with a checkpoint file on disk, ascending."""
        if not self.directory.is_dir():
            return []
        found = (_FILE_RE.fullmatch(p.name) for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def save(
        self,
        epoch: int,
        model: nn.Module,
        optim: torch.optim.Optimizer | None = None,
        extra: Mapping[str, Any] | None = None,
        generators: Mapping[str, torch.Generator] | None = None,
    ) -> Path:
        """Write the checkpoint after ``epoch`` completed epochs, atomically.

        Returns:
            The final file path.
        """
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.directory.mkdir(parents=True, exist_ok=True)
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        for name, generator in (generators or {}).items():
            rng[f"gen:{name}"] = generator.get_state()
        payload = {
            "format": FORMAT,
            "epoch": int(epoch),
            "meta": self.meta,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optim": _to_cpu(optim.state_dict()) if optim is not None else None,
            "extra": dict(extra or {}),
            "rng": rng,
        }
        final = self.path_of(epoch)
        tmp = self.directory / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
        try:
            with tmp.open("wb") as handle:
                torch.save(payload, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.directory)
        for old in self.epochs()[: -self.keep]:
            self.path_of(old).unlink(missing_ok=True)
        log.debug("checkpoint %s", final)
        return final

    def load_latest(self) -> Checkpoint | None:
        """The newest readable checkpoint with this ``meta``, or ``None``.

        Unreadable files and files of another ``meta`` are skipped with a warning
        (the next older one is tried).
        """
        for epoch in reversed(self.epochs()):
            path = self.path_of(epoch)
            try:
                payload = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped
                log.warning("checkpoint %s is unreadable (%s); trying an older one", path, exc)
                continue
            if not isinstance(payload, dict) or payload.get("format") != FORMAT:
                log.warning("checkpoint %s has an unknown format; skipped", path)
                continue
            if payload.get("meta") != self.meta:
                log.warning("checkpoint %s belongs to another run (meta differs); skipped", path)
                continue
            return Checkpoint(
                epoch=int(payload["epoch"]),
                model_state=payload["model"],
                optim_state=payload["optim"],
                extra=payload["extra"],
                rng_state=payload["rng"],
                path=path,
            )
        return None

    def clear(self) -> None:
        """Delete this loop's checkpoint files (and temporary leftovers)."""
        if not self.directory.is_dir():
            return
        for path in self.directory.iterdir():
            if _FILE_RE.fullmatch(path.name) or path.name.startswith(".tmp-"):
                path.unlink(missing_ok=True)


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_to_cpu(v) for v in value)
    return value


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
