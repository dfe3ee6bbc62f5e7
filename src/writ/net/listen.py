"""Listen addresses and sockets shared by the listeners (``writ gate``, ``writ mcp --transport http``)."""

from __future__ import annotations

import socket

from writ.core.errors import Invalid

DEFAULT_LISTEN = "127.0.0.1:7412"  # writ gate's default listen address


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:7412`` for IPv6; a bare ``PORT`` means 127.0.0.1)."""
    text = listen.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise Invalid(
            f"--listen must be HOST:PORT, like {DEFAULT_LISTEN}, not {listen!r}", field="listen"
        )
    return host, int(port)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0 picks a free one: read it from ``getsockname()``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def listening_url(sock: socket.socket) -> str:
    """``http://HOST:PORT`` of a bound socket (an IPv6 host in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
