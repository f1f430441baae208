"""Data-parallel training across processes (``torch.distributed``), launched by ``torchrun``.

``torchrun`` starts one process per device and gives each ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. ``init_distributed`` reads them
and joins the process group: **nccl** on CUDA (each process on ``cuda:LOCAL_RANK``),
**gloo** on CPU. Without ``WORLD_SIZE`` it initialises nothing and describes a single
process, so one entry point runs under ``torchrun`` and under plain ``python``.
``cleanup`` leaves the group.

The collective helpers (``barrier``, ``broadcast_floats``, ``all_reduce_sum``,
``broadcast_object``, ``broadcast_module_state``) are no-ops when the group is not
initialised, so a training loop calls them unconditionally; when it is, every
rank must call them in the same order.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from recxfer.train.device import resolve_device

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands.

    Attributes:
        rank: global rank, ``0 .. world_size - 1``.
        world_size: number of processes.
        local_rank: rank on this node (the CUDA device index on GPU hosts).
        device: the device this process trains on.
        backend: ``"gloo"`` or ``"nccl"``; ``None`` when not initialised (one process).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that validates, writes checkpoints and outputs."""
        return self.rank == 0

    @property
    def initialized(self) -> bool:
        return self.backend is not None


def _env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        if default is None:
            raise ValueError(f"environment variable {name} is not set (torchrun sets it)")
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(
    device: str = "auto",
    backend: str | None = None,
    timeout: timedelta = timedelta(minutes=30),
) -> DistInfo:
    """Join the process group described by torchrun's environment variables.

    Args:
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``. On CUDA the
            process uses ``cuda:LOCAL_RANK`` (made the current device).
        backend: override the backend (default: ``nccl`` on CUDA, ``gloo`` on CPU).
        timeout: how long a collective may wait for the other ranks.

    Returns:
        This process's ``DistInfo``. Without ``WORLD_SIZE`` in the environment: rank 0
        of 1 on ``resolve_device(device)``, nothing initialised. Called again after a
        successful call, returns the same description.

    Raises:
        ValueError: a variable is missing or malformed, a rank is out of range, or
            ``LOCAL_RANK`` names a CUDA device that does not exist.
    """
    if "WORLD_SIZE" not in os.environ:
        return DistInfo(0, 1, 0, resolve_device(device))
    world_size = _env_int("WORLD_SIZE")
    rank = _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK", default=rank)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} must be in [0, WORLD_SIZE={world_size})")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ValueError(f"environment variable {name} is not set (torchrun sets it)")
    chosen = resolve_device(device)
    if chosen.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices"
            )
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    backend = backend or ("nccl" if chosen.type == "cuda" else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(
            backend, init_method="env://", rank=rank, world_size=world_size, timeout=timeout
        )
    return DistInfo(rank, world_size, local_rank, chosen, dist.get_backend())


def cleanup() -> None:
    """Leave the process group (no-op when not initialised).

    Every rank first meets at a barrier, so no rank tears down its gloo pairs while a
    peer still talks to it, and unreachable DDP wrappers (their reducers hold pending
    gloo work) are collected while the group is alive rather than at interpreter exit,
    where gloo's threads can abort the process.
    """
    if dist.is_initialized():
        dist.barrier()
        gc.collect()
        dist.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` when not initialised."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank."""
    if dist.is_initialized():
        dist.barrier()


def broadcast_floats(values: Sequence[float], device: torch.device, src: int = 0) -> list[float]:
    """``src``'s ``values`` on every rank (float64, so a Python float comes back exact).
    ``device`` must suit the backend (the CUDA device for nccl)."""
    if not dist.is_initialized():
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src)
    return tensor.cpu().tolist()


def all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64)."""
    if not dist.is_initialized():
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().tolist()


def broadcast_object(value: Any, src: int = 0) -> Any:
    """``src``'s picklable ``value`` on every rank (other ranks' ``value`` is ignored).
    Tensors come back on the device they were pickled from."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src)
    return box[0]


@torch.no_grad()
def broadcast_module_state(module: nn.Module, src: int = 0) -> None:
    """Overwrite every parameter and buffer of ``module`` with ``src``'s, in place."""
    if not dist.is_initialized():
        return
    for tensor in module.state_dict().values():  # detached views of the real storage
        dist.broadcast(tensor, src)


def gather_objects(value: Any) -> list[Any]:
    """Every rank's picklable ``value``, in rank order, on every rank."""
    if not dist.is_initialized():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out
