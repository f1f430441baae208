"""Process set-up for the command-line entry points: a thread budget that holds up
on a shared host, and pre-flight checks of the host (an address that binds, a
folder that can be written).

Imports nothing of the project and nothing heavy at import time (``recxfer
query`` imports this module's caller and must start fast).
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import tempfile
from pathlib import Path

# Read by OpenMP and BLAS libraries when they are loaded: set before torch, numpy,
# scipy or faiss is imported to cover libraries loaded later too.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's
    cpuset or ``taskset``), not the host's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def set_env_defaults() -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` unless set: idle OpenMP threads sleep instead of
    spinning, which on a busy host otherwise steals the cores the work needs.
    Takes effect only for OpenMP runtimes loaded after this call."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def resolve_threads(requested: int | None) -> int:
    """The intra-op thread count: ``requested`` (``--threads N``), else a valid
    ``OMP_NUM_THREADS`` from the environment, else ``available_cores()``.

    Raises:
        ValueError: ``requested`` < 1.
    """
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be >= 1, got {requested}")
        return requested
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return available_cores()


def limit_threads(requested: int | None = None) -> int:
    """Cap the threads of torch, BLAS and OpenMP for a training or evaluation
    command, before its heavy imports.

    Sets the thread environment variables (overwritten when ``requested`` is
    given, defaults otherwise) so that libraries loaded later start capped, then
    caps what is loaded now: ``torch.set_num_threads`` and, through threadpoolctl,
    every BLAS and OpenMP pool (numpy's, scipy's, faiss's OpenMP).

    Returns:
        The thread count applied.
    """
    n = resolve_threads(requested)
    set_env_defaults()
    for var in THREAD_ENV_VARS:
        if requested is not None or var not in os.environ:
            os.environ[var] = str(n)
    import torch  # noqa: PLC0415 - after the environment is set
    from threadpoolctl import threadpool_limits  # noqa: PLC0415

    torch.set_num_threads(n)
    threadpool_limits(limits=n)
    faiss = sys.modules.get("faiss")
    if faiss is not None and hasattr(faiss, "omp_set_num_threads"):
        faiss.omp_set_num_threads(n)
    return n


# ----------------------------------------------------------------------------- pre-flight


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6 literals) as ``(host, port)``.

    Raises:
        ValueError: no port, or a port that is not an integer in [0, 65535].
    """
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"--address {address!r}: expected HOST:PORT with a port in [0, 65535]")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def check_bindable(address: str) -> None:
    """Bind (then release) a TCP socket on every address ``HOST`` resolves to, as
    the gRPC server will.

    Fails when the name does not resolve, when any of its addresses is taken by
    another process or not allowed (``EADDRINUSE``, ``EACCES``), or when none of
    them can be bound. An address the host cannot use at all (e.g. ``::1`` where
    IPv6 is off) is tolerated while another binds, as gRPC tolerates it.

    Raises:
        ValueError: naming the address and the reason.
    """
    if address.startswith("unix:"):
        return  # a socket file: the folder is checked when the server binds
    host, port = split_address(address)
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ValueError(f"--address {address}: cannot resolve {host!r}: {exc.strerror}") from exc
    bound, failures = 0, []
    seen = set()
    for family, kind, proto, _, sockaddr in infos:
        if (family, sockaddr) in seen:
            continue
        seen.add((family, sockaddr))
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
                sock.bind(sockaddr)
            bound += 1
        except OSError as exc:
            failures.append((sockaddr[0], exc))
    fatal = [(a, e) for a, e in failures if e.errno in (errno.EADDRINUSE, errno.EACCES)]
    if fatal or not bound:
        where, exc = (fatal or failures)[0]
        hint = " (is another server running there?)" if exc.errno == errno.EADDRINUSE else ""
        raise ValueError(f"--address {address}: cannot bind {where} port {port}: "
                         f"{exc.strerror or exc}{hint}")


def check_writable_dir(path: str | Path, what: str = "--artifacts") -> None:
    """``path`` is a folder this process can create files in (or can be created):
    a file is created and removed there; folders made for the test are removed.

    Raises:
        ValueError: naming the folder and the reason.
    """
    path = Path(path).absolute()
    created: list[Path] = []
    try:
        missing = [p for p in (path, *path.parents) if not p.exists()]
        for folder in reversed(missing):
            folder.mkdir()
            created.append(folder)
        if not path.is_dir():
            raise ValueError(f"{what} {path}: not a folder")
        fd, tmp = tempfile.mkstemp(prefix=".recxfer-write-test-", dir=path)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise ValueError(f"{what} {path}: not writable: {exc.strerror or exc}") from exc
    finally:
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                pass
