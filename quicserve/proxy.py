"""Proxy headers: the client's address, scheme and host as a trusted proxy reports them.

:class:`ProxyHeadersMiddleware` wraps the app (``--proxy-headers``); the stream code does
not know it exists. The parsing is pure functions, tested without a server.

Rules:

* The headers are believed only when the peer that sent the request (the TCP or QUIC
  client) is in ``--forwarded-allow-ips``; otherwise the scope is left as it is and the
  headers reach the app untouched. A peer without an address (a Unix socket) is local and
  trusted, as in Uvicorn.
* ``Forwarded`` (RFC 7239) wins over ``X-Forwarded-For/-Proto/-Host`` when a request has
  both: it is the standard, and a proxy that writes it means it.
* Several hops: the headers list them from the original client (left) to the nearest
  proxy (right). Walking from the right, trusted addresses are proxies; the first
  untrusted hop is the client. If every hop is trusted (``*``), the left-most is the client.
  Obfuscated identifiers (``_hidden``) and ``unknown`` are never trusted, so they can be
  the client: ``scope["client"]`` is then ``("_hidden", 0)`` (RFC 7239 §6.3).
* ``proto`` and ``host`` come from the same ``Forwarded`` element as the chosen ``for``
  (the element the nearest trusted proxy wrote). ``X-Forwarded-Proto/-Host`` are often
  set once rather than appended, so they are taken from the same position when their list
  is as long as ``X-Forwarded-For``, else from the right (the nearest proxy).
* What changes: ``client`` (port 0 when none was given), ``scheme`` (``http``/``https``;
  ``ws``/``wss`` for WebSocket scopes) and the ``host`` request header, which frameworks
  build URLs from. ``server`` stays the address we accepted the connection on: it is a
  fact about our listener, and ASGI defines it that way.
* A malformed value is ignored (the scope keeps what the socket said), never an error.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator

from .addresses import TrustedPeers
from .types import ASGIApp, Receive, Scope, Send

_HOST_VALUE = re.compile(rb"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]+)(?::\d{1,5})?$")
_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
_WS_SCHEMES = {"http": "ws", "https": "wss"}


# -- parsing ---------------------------------------------------------------------------------


def _split_outside_quotes(value: str, separator: str) -> Iterator[str]:
    """Split on ``separator`` except inside quoted-strings (RFC 9110 §5.6.4)."""
    start = 0
    quoted = escaped = False
    for index, char in enumerate(value):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            yield value[start:index]
            start = index + 1
    yield value[start:]


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_forwarded(value: str) -> list[dict[str, str]]:
    """The elements of a ``Forwarded`` field value, left to right, each a dict of its
    lower-cased parameters (RFC 7239 §4). Malformed pairs are skipped."""
    elements: list[dict[str, str]] = []
    for raw_element in _split_outside_quotes(value, ","):
        element: dict[str, str] = {}
        for pair in _split_outside_quotes(raw_element, ";"):
            name, sep, raw = pair.partition("=")
            if sep and name.strip():
                element.setdefault(name.strip().lower(), _unquote(raw))
        elements.append(element)
    return elements


def parse_node(node: str) -> tuple[str, int] | None:
    """An RFC 7239 §6 node (``192.0.2.1``, ``"[2001:db8::1]:4711"``, ``_hidden``,
    ``unknown``; ports only where numeric) as ``(host, port)``; ``None`` if malformed."""
    node = node.strip()
    if not node:
        return None
    if node.startswith("["):
        host, sep, rest = node[1:].partition("]")
        if not sep:
            return None
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            return None
    else:
        if node.count(":") > 1:
            # A bare IPv6 address (X-Forwarded-For writes them so, RFC 7239 does not).
            try:
                ipaddress.IPv6Address(node)
            except ValueError:
                return None
            return node, 0
        host, _, port_text = node.partition(":")
        if not re.fullmatch(r"[A-Za-z0-9._-]+", host):
            return None
    port = int(port_text) if port_text.isdigit() and int(port_text) <= 65535 else 0
    return host, port


def _combined(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    # RFC 9110 §5.3: several field lines with one name are one comma-separated list.
    values = [value for key, value in headers if key == name]
    if not values:
        return None
    return ",".join(value.decode("latin-1") for value in values)


def _choose(hops: list[tuple[str, int] | None], trusted: TrustedPeers) -> int | None:
    """Index of the client among ``hops`` (left = original client): the right-most
    untrusted hop, or the left-most when all are trusted; ``None`` if one is malformed."""
    for index in range(len(hops) - 1, -1, -1):
        hop = hops[index]
        if hop is None:
            return None  # cannot tell who is behind a hop we cannot read
        if hop[0] not in trusted:
            return index
    return 0 if hops else None


def forwarded_facts(
    headers: list[tuple[bytes, bytes]], trusted: TrustedPeers
) -> tuple[tuple[str, int] | None, str | None, bytes | None]:
    """``(client, scheme, host)`` the proxy headers report; ``None`` for what they do not."""
    forwarded = _combined(headers, b"forwarded")
    if forwarded is not None:
        elements = [e for e in parse_forwarded(forwarded) if e]
        with_for = [e for e in elements if "for" in e]
        client = None
        element = elements[-1] if elements else {}
        if with_for:
            nodes = [parse_node(e["for"]) for e in with_for]
            chosen = _choose(nodes, trusted)
            if chosen is not None:
                client = nodes[chosen]
                element = with_for[chosen]
        proto = element.get("proto")
        host = element.get("host")
        return client, proto, host.encode("latin-1") if host else None

    client = None
    index: int | None = None
    count = 0
    xff = _combined(headers, b"x-forwarded-for")
    if xff is not None:
        hops = [parse_node(part) for part in xff.split(",")]
        count = len(hops)
        index = _choose(hops, trusted)
        if index is not None:
            client = hops[index]

    def pick(name: bytes) -> str | None:
        value = _combined(headers, name)
        if value is None:
            return None
        parts = [part.strip() for part in value.split(",")]
        if index is not None and len(parts) == count:
            return parts[index]
        return parts[-1]

    host = pick(b"x-forwarded-host")
    return client, pick(b"x-forwarded-proto"), host.encode("latin-1") if host else None


def apply_proxy_headers(scope: Scope, trusted: TrustedPeers) -> None:
    """Rewrite ``client``, ``scheme`` and the ``host`` header of ``scope`` in place from
    its proxy headers (the caller has checked that the peer is trusted)."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    client, proto, host = forwarded_facts(headers, trusted)
    if client is not None:
        scope["client"] = client
    if proto is not None:
        scheme = _SCHEMES.get(proto.strip().lower())
        if scheme is not None:
            scope["scheme"] = _WS_SCHEMES[scheme] if scope["type"] == "websocket" else scheme
    if host is not None and _HOST_VALUE.match(host):
        scope["headers"] = [(k, v) for k, v in headers if k != b"host"] + [(b"host", host)]


class ProxyHeadersMiddleware:
    """ASGI middleware: applies :func:`apply_proxy_headers` to requests from trusted peers."""

    def __init__(self, app: ASGIApp, trusted: str | TrustedPeers) -> None:
        self.app = app
        self.trusted = trusted if isinstance(trusted, TrustedPeers) else TrustedPeers(trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            peer = scope.get("client")
            if peer is None or peer[0] in self.trusted:
                apply_proxy_headers(scope, self.trusted)
        await self.app(scope, receive, send)
