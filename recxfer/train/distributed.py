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

**One job over the ranks** (``run_job``; what ``recxfer train``, ``run`` and
``nightly`` do under torchrun): rank 0 runs the whole job, exactly the code of a
single process (reading the data, the lock, evaluation, the gate, the artifact,
publishing), and the other ranks *follow*: they never read the data or touch the
artifacts root, they wait for rank 0 to reach a training run and then make it
with rank 0. Each data-parallel call rank 0 makes goes through
``collective_call(fn, ...)``, which first sends ``(fn, args, kwargs)`` to the
followers (a command key in the process group's store, then the arguments by
``broadcast_object``) so that each calls ``fn`` with the same arguments: the same
training index, text embeddings, warm start and config, hence the same sequence
of collectives, by construction. Arguments only rank 0 may use (a validator over
its held-out users, a checkpointer writing under the root) are passed as
``rank0_only`` and stay there. When rank 0 is done it says so and every rank
meets at a barrier; when it fails between runs (an exception, a lock held by
another job) it says so without a barrier and the followers exit 1 at once. When
it fails inside a run, the followers' collectives fail once its process exits
(the connections close; leaving the group does not close gloo's), and torchrun's
agent stops the other workers of a failed one anyway. A rank 0 that dies closes
the store's connection; a rank 0 that hangs is waited for at most
``RECXFER_DIST_WAIT_S`` seconds (default 6 hours) between two training runs;
inside a run, the process group's timeout applies.
"""

from __future__ import annotations

import contextlib
import contextvars
import gc
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from recxfer.train.device import resolve_device

log = logging.getLogger(__name__)

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
WAIT_ENV = "RECXFER_DIST_WAIT_S"  # how long a follower waits for rank 0's next command
DEFAULT_WAIT_S = 6 * 3600
_COMMAND_KEY = "recxfer/job/command/"  # + sequence number, in the process group's store

T = TypeVar("T")

# The store of the group ``init_distributed`` joined (commands of ``run_job``).
_group_store: dict[str, Any] = {}


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
        # What init_method="env://" does, keeping the store (torchrun's agent store
        # when it hosts one) for run_job's commands.
        store, _, _ = next(dist.rendezvous("env://", rank, world_size, timeout=timeout))
        store.set_timeout(timeout)
        dist.init_process_group(backend, store=dist.PrefixStore("default_pg", store), rank=rank,
                                world_size=world_size, timeout=timeout)
        _group_store["store"] = store
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
        _group_store.clear()


def abandon() -> None:
    """Leave the process group without meeting the other ranks (no-op when not
    initialised): after a failure, when a peer may be inside another collective
    or gone, so a barrier could wait for the group's whole timeout."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
        _group_store.clear()


def process_group_info() -> dict[str, Any]:
    """``{"world_size": N, "backend": "gloo" | "nccl" | None}`` of this process
    (``1``/``None`` without a process group): recorded in an artifact's manifest."""
    if dist.is_initialized():
        return {"world_size": dist.get_world_size(), "backend": str(dist.get_backend())}
    return {"world_size": 1, "backend": None}


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


# --------------------------------------------------------------------------- one job, many ranks


@dataclass(frozen=True)
class Followed:
    """What a non-zero rank of ``run_job`` did.

    Attributes:
        calls: collective calls made with rank 0 (training runs).
        ok: rank 0 finished its job (whatever its outcome); ``False``: it failed
            or stopped answering, and ``reason`` says how.
    """

    calls: int
    ok: bool
    reason: str = ""

    @property
    def exit_code(self) -> int:
        """0 when rank 0 finished, else 1 (rank 0 reports the job's own outcome)."""
        return 0 if self.ok else 1


class _Leader:
    """Rank 0's side of ``run_job``: numbered commands in the store."""

    def __init__(self, store: Any, world_size: int) -> None:
        self.store, self.world_size = store, world_size
        self.sent = 0
        self.broken = False  # a collective call failed: the followers are not listening

    def send(self, kind: str, detail: str = "") -> None:
        if self.world_size > 1:  # a one-process group has nobody to tell
            self.store.set(f"{_COMMAND_KEY}{self.sent}", f"{kind}\n{detail}")
        self.sent += 1


_LEADER: contextvars.ContextVar[_Leader | None] = contextvars.ContextVar("recxfer_leader", default=None)


def collective_call(
    fn: Callable[..., T], /, *args: Any, rank0_only: Mapping[str, Any] | None = None, **kwargs: Any
) -> T:
    """``fn(*args, **kwargs, **rank0_only)``, a function every rank must call
    together (e.g. ``train_shared``).

    Inside ``run_job`` on rank 0, the followers are first sent ``fn`` (by
    reference), ``args`` and ``kwargs`` (pickled, broadcast), and each calls
    ``fn(*args, **kwargs)``: ``rank0_only`` arguments (a validator, a
    checkpointer) are rank 0's alone; the function must accept their absence on
    the other ranks. Elsewhere (one process, or ranks that all run the same code,
    as in a plain DDP script) it is the plain call.
    """
    leader = _LEADER.get()
    extra = dict(rank0_only or {})
    if leader is None:
        return fn(*args, **kwargs, **extra)
    try:
        leader.send("call", getattr(fn, "__qualname__", repr(fn)))
        if leader.world_size > 1:
            broadcast_object((fn, args, kwargs))
        return fn(*args, **kwargs, **extra)
    except BaseException:
        leader.broken = True
        raise


def _store() -> Any:
    store = _group_store.get("store")
    if store is None:  # a group initialised elsewhere
        from torch.distributed import distributed_c10d

        store = distributed_c10d._get_default_store()
    return store


@contextlib.contextmanager
def _lead(world_size: int) -> Iterator[_Leader]:
    leader = _Leader(_store(), world_size)
    token = _LEADER.set(leader)
    try:
        yield leader
    except BaseException as exc:
        leader.broken = True
        with contextlib.suppress(Exception):  # the followers may be gone already
            leader.send("abort", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        _LEADER.reset(token)
    if leader.broken:  # a collective call failed and the job went on without it
        with contextlib.suppress(Exception):
            leader.send("abort", "a collective call failed on rank 0")
    else:
        leader.send("done")


def wait_seconds() -> float:
    """``RECXFER_DIST_WAIT_S`` (default 6 hours): how long a follower waits for
    rank 0 between two training runs."""
    value = os.environ.get(WAIT_ENV, "")
    try:
        seconds = float(value) if value else DEFAULT_WAIT_S
    except ValueError:
        raise ValueError(f"{WAIT_ENV}={value!r} is not a number of seconds") from None
    if not seconds > 0:
        raise ValueError(f"{WAIT_ENV} must be > 0, got {value!r}")
    return seconds


@contextlib.contextmanager
def _quiet_info() -> Iterator[None]:
    """The package's INFO lines off (warnings and errors kept), this module's kept."""
    package = logging.getLogger("recxfer")
    before, own = package.level, log.level
    log.setLevel(log.getEffectiveLevel())
    package.setLevel(max(logging.WARNING, package.getEffectiveLevel()))
    try:
        yield
    finally:
        package.setLevel(before)
        log.setLevel(own)


def follow(wait_s: float | None = None) -> Followed:
    """A non-zero rank's part of ``run_job``: make rank 0's collective calls with
    it, in its order, until it is done or fails.

    Args:
        wait_s: the longest wait for rank 0's next command (``wait_seconds()``).
    """
    store = _store()
    rank, world_size = rank_and_world()
    limit = timedelta(seconds=wait_s if wait_s is not None else wait_seconds())
    calls = 0
    log.info("rank %d/%d: following rank 0 (it runs the job; this rank joins its training runs)",
             rank, world_size)
    while True:
        key = f"{_COMMAND_KEY}{calls}"
        try:
            store.wait([key], limit)
            kind, _, detail = store.get(key).decode().partition("\n")
        except Exception as exc:  # noqa: BLE001 - a timeout, or the store's host is gone
            log.error("rank %d: no word from rank 0 (%s): stopping", rank, exc)
            return Followed(calls, False, f"rank 0 silent: {exc}")
        calls += 1
        if kind == "done":
            log.info("rank %d: rank 0 is done after %d training run(s)", rank, calls - 1)
            return Followed(calls - 1, True)
        if kind == "abort":
            log.error("rank %d: rank 0 failed (%s): stopping", rank, detail)
            return Followed(calls - 1, False, detail)
        start = time.perf_counter()
        try:
            fn, args, kwargs = broadcast_object(None)
            with _quiet_info():  # rank 0 logs the run (epochs, warm start) for all
                fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - rank 0 stopped inside the call
            log.error("rank %d: %s with rank 0 failed: %s", rank, detail, exc)
            return Followed(calls - 1, False, f"{detail}: {exc}")
        log.info("rank %d: %s with rank 0 done in %.1f s", rank, detail, time.perf_counter() - start)


def run_job(main: Callable[[], T], device: str = "auto", wait_s: float | None = None) -> T | Followed:
    """Run an entry point's job once over the ranks torchrun started.

    Without torchrun (no ``WORLD_SIZE``): ``main()``. Under it: every rank joins
    the process group (``init_distributed(device)``); rank 0 runs ``main()``, whose
    data-parallel calls (``collective_call``) the other ranks make with it (see
    the module docstring), and the other ranks return a ``Followed`` when rank 0
    is done. The group is left at the end (a barrier when all went well, none
    after a failure).

    Returns:
        ``main()``'s result on rank 0 (and in one process), a ``Followed`` elsewhere.

    Raises:
        Whatever ``main()`` raises, on rank 0 (the followers are told first).
    """
    info = init_distributed(device)
    if not info.initialized:
        return main()
    ok = False
    try:
        if info.is_main:
            log.info("rank 0/%d (%s on %s) runs the job%s", info.world_size, info.backend, info.device,
                     "; the other ranks join its training runs" if info.world_size > 1 else "")
            with _lead(info.world_size) as leader:
                result = main()
            ok = not leader.broken
            return result
        followed = follow(wait_s)
        ok = followed.ok
        return followed
    finally:
        if ok:
            cleanup()
        else:
            abandon()
