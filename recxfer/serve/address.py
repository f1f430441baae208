"""The server's TCP address before any grpc object exists: is it free
(``busy_addresses``), and holding it for the worker processes of ``recxfer serve
--processes N`` (``reserve_port``). Standard library only: the multi-process
parent imports this and neither grpc nor the model.
"""

from __future__ import annotations

import errno
import re
import socket

_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:\[\]/]*)):(?P<port>\d+)$")

_SockAddr = tuple[int, int, int, tuple[str, int]]  # family, type, proto, (host, port)


def _split(address: str) -> tuple[str, int] | None:
    match = _HOST_PORT.match(address)
    if match is None:
        return None
    host = match["v6"] if match["v6"] is not None else match["host"]
    return host, int(match["port"])


def _candidates(host: str, port: int) -> list[_SockAddr]:
    """Every address grpc binds for ``host`` (``[]`` when it does not resolve)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError):
        return []
    candidates = [(f, t, p, a[:2]) for f, t, p, _, a in infos]
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        # grpc's resolver answers both loopbacks for localhost (RFC 6761) even
        # where the system's (/etc/hosts) lists only 127.0.0.1.
        candidates += [(socket.AF_INET, socket.SOCK_STREAM, 0, ("127.0.0.1", port)),
                       (socket.AF_INET6, socket.SOCK_STREAM, 0, ("::1", port))]
    return list(dict.fromkeys((f, t, p or socket.IPPROTO_TCP, a) for f, t, p, a in candidates))


def _socket(family: int, kind: int, proto: int, host: str, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc binds
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        # grpc's wildcard [::] is dual-stack: bind it the same way.
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
    return sock


def _shown(family: int, sockaddr: tuple[str, int]) -> str:
    return f"[{sockaddr[0]}]:{sockaddr[1]}" if family == socket.AF_INET6 else f"{sockaddr[0]}:{sockaddr[1]}"


def busy_addresses(address: str) -> list[str]:
    """The addresses that ``address`` (``host:port``) resolves to and that another
    socket already holds. grpc binds every address a name resolves to but starts
    as long as ONE could be bound (``localhost:P`` on ``[::1]:P`` while another
    server holds ``127.0.0.1:P``); checking each first makes any busy one fatal.

    Port 0, unparsable addresses (``unix:...``) and unresolvable names are left
    to grpc (``[]``); addresses this host cannot bind for another reason (no
    IPv6) are skipped, as grpc skips them.
    """
    split = _split(address)
    if split is None or split[1] == 0:
        return []
    busy: list[str] = []
    for family, kind, proto, sockaddr in _candidates(*split):
        with _socket(family, kind, proto, sockaddr[0], reuse_port=False) as probe:
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    busy.append(_shown(family, sockaddr))
    return busy


def reserve_port(address: str) -> tuple[list[socket.socket], str]:
    """Bind (without listening) ``SO_REUSEPORT`` sockets on every address ``address``
    resolves to, as grpc's multiprocessing example does: worker servers bound with
    ``grpc.so_reuseport`` share the port, the kernel spreads connections over the
    ones listening (never these), and no process without ``SO_REUSEPORT`` (of
    another user) can take the port while the sockets are open, even between a
    worker's death and its restart. Port 0 picks one free port for all addresses.

    Returns:
        ``(sockets, address with the port)``; close the sockets when done.

    Raises:
        ValueError: not a TCP ``host:port`` (e.g. ``unix:...``: a socket file cannot
            be shared), or a name that does not resolve.
        RuntimeError: a port already in use, or no address could be bound.
    """
    split = _split(address)
    if split is None:
        raise ValueError(f"--address {address}: several processes need a TCP HOST:PORT address")
    host, port = split
    candidates = _candidates(host, port)
    if not candidates:
        raise ValueError(f"--address {address}: cannot resolve {host!r}")
    held: list[socket.socket] = []
    try:
        for family, kind, proto, (ip, _) in candidates:
            sock = _socket(family, kind, proto, ip, reuse_port=True)
            try:
                sock.bind((ip, port))
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    raise RuntimeError(f"cannot bind {address}: {_shown(family, (ip, port))} "
                                       "already in use") from exc
                continue  # e.g. no IPv6 here: grpc skips it too
            held.append(sock)
            port = port or sock.getsockname()[1]
        if not held:
            raise RuntimeError(f"cannot bind {address}: no address of {host!r} can be bound")
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return held, f"{address.rsplit(':', 1)[0]}:{port}"
