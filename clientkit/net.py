"""What the clients need to know about this machine's sockets."""

from __future__ import annotations

import socket


def ipv6_loopback() -> bool:
    """True when this machine can bind UDP on ``::1`` (containers often cannot)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


def dual_stack_udp_socket(ipv4: str | None = None) -> socket.socket:
    """A UDP socket bound to a fresh port on every address, IPv4 (mapped) and IPv6, or on
    the one IPv4 address ``ipv4`` (mapped; e.g. ``127.0.0.7``, to send from it).

    aioquic's ``connect`` makes this kind of socket, so the peer address it keeps is
    IPv4-mapped; a socket that replaces it (connection migration) must be the same kind.
    """
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::ffff:" + ipv4 if ipv4 else "::", 0, 0, 0))
    except OSError:
        sock.close()
        raise
    return sock
