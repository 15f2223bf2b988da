"""Addresses as people write them: binds, Unix socket modes, trusted peers, QUIC-LB ids.

Ground floor: pure parsing, no sockets, imports nothing from quicserve. Every parser raises
``ValueError`` with a message fit to show a person; ``config.check`` turns it into a
one-line :class:`~quicserve.config.ConfigError`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Worker slots a machine's connection IDs can name (one byte of the CID; quic/lb.py).
MAX_WORKER_SLOTS = 64


def parse_bind(value: str, default_host: str = "0.0.0.0") -> tuple[str, int]:
    """Split ``HOST:PORT`` into its parts.

    ``":8443"`` means all interfaces, ``"[::1]:8443"`` is IPv6. Raises ``ValueError``
    with a message fit to show a person.
    """
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep:
            raise ValueError(f"bad address {value!r}: expected [IPV6]:PORT")
    else:
        host, sep, port = value.rpartition(":")
        if not sep:
            raise ValueError(f"bad address {value!r}: expected HOST:PORT")
        if ":" in host:
            raise ValueError(f"bad address {value!r}: write IPv6 hosts in brackets, [::1]:PORT")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"bad port in {value!r}")
    return (host or default_host, int(port))


def parse_unix_mode(value: str | None) -> int | None:
    """``--unix-socket-mode`` (octal, e.g. ``660``) as an int; ValueError if not octal."""
    if value is None or value == "":
        return None
    try:
        mode = int(value, 8)
    except ValueError:
        raise ValueError(f"--unix-socket-mode {value!r} is not an octal mode like 660") from None
    if not 0 <= mode <= 0o777:
        raise ValueError(f"--unix-socket-mode {value!r} is not an octal mode like 660")
    return mode


def parse_server_id(value: str) -> bytes:
    """``--quic-lb-server-id`` (hex, possibly empty) as bytes."""
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"--quic-lb-server-id {value!r} is not hex") from None


#: The variable the AWS Load Balancer Controller sets in a pod behind a QUIC listener.
AWS_SERVER_ID_VARIABLE = "AWS_LBC_QUIC_SERVER_ID"
#: Bytes in an AWS NLB QUIC server ID (its API: "0x" and 16 hex digits).
AWS_SERVER_ID_BYTES = 8


def parse_aws_server_id(value: str) -> bytes:
    """``AWS_LBC_QUIC_SERVER_ID`` (standard base64 of exactly 8 bytes) as bytes."""
    where = f"{AWS_SERVER_ID_VARIABLE}={value!r}"
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where} is not base64") from None
    if len(raw) != AWS_SERVER_ID_BYTES:
        raise ValueError(
            f"{where} decodes to {len(raw)} bytes; an AWS QUIC server ID is "
            f"{AWS_SERVER_ID_BYTES} bytes"
        )
    return raw


def parse_trusted(spec: str) -> TrustedPeers:
    """``"127.0.0.1, 10.0.0.0/8, ::1"`` or ``"*"``; raises ``ValueError`` for a bad entry."""
    return TrustedPeers(spec)


class TrustedPeers:
    """A set of IP networks (or everything) whose proxy headers are believed."""

    __slots__ = ("_cache", "everything", "networks")

    def __init__(self, spec: str) -> None:
        entries = [part.strip() for part in spec.split(",") if part.strip()]
        self.everything = "*" in entries
        self.networks: list[IPNetwork] = []
        for entry in entries:
            if entry == "*":
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network") from None
        # Peers repeat (it is usually one proxy): remember answers, a bounded number.
        self._cache: dict[str, bool] = {}

    def __contains__(self, host: object) -> bool:
        if self.everything:
            return True
        if not isinstance(host, str):
            return False
        known = self._cache.get(host)
        if known is not None:
            return known
        try:
            address = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            trusted = False  # a name, an obfuscated identifier or "unknown"
        else:
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                address = address.ipv4_mapped
            trusted = any(address in network for network in self.networks)
        if len(self._cache) >= 1024:
            self._cache.clear()
        self._cache[host] = trusted
        return trusted


def peer_address(value: object) -> tuple[str, int] | None:
    """A socket address as ``(host, port)``, or ``None`` (a Unix socket has none)."""
    if isinstance(value, tuple) and len(value) >= 2:
        return (str(value[0]), int(value[1]))
    return None
