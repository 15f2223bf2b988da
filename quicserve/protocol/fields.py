"""Request field rules shared by HTTP/2 and HTTP/3 (sans-IO).

RFC 9113 §8.2-§8.3 and RFC 9114 §4.2-§4.3 state the same rules for a request's header
block: pseudo-header fields first, once each, from a fixed set; field names and values
within the allowed characters; no connection-specific fields; ``TE`` only "trailers";
split cookies joined; the CONNECT and extended-CONNECT shapes. Both protocol modules
call :func:`parse_request_fields`, and a request that breaks a rule raises
:class:`Malformed`, which each protocol turns into a reset of that stream only.

:func:`field_section_size` is the one size rule of ``Config.max_header_bytes`` on every
protocol, HTTP/1.1 included: name + value + 32 octets per field line (RFC 9113 §6.5.2,
RFC 9114 §4.2.2; the HPACK/QPACK entry size).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from ..events import FIELD_LINE_OVERHEAD, Headers

#: RFC 9113 §8.2.2: connection-specific fields, never sent or accepted in HTTP/2 or HTTP/3
#: (RFC 9114 §4.2 says the same).
CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
#: Response fields an app may set (it is written for any server) that HTTP/2 and HTTP/3
#: must not send: the connection-specific ones and TE.
DROPPED_RESPONSE_FIELDS = CONNECTION_SPECIFIC | {b"te"}
#: Regular request fields that need a closer look in :func:`parse_request_fields`.
_SPECIAL_REQUEST_FIELDS = CONNECTION_SPECIFIC | {b"te", b"host", b"cookie", b"content-length"}
#: RFC 9113 §8.2.1: bytes allowed in a field name (no controls, SP, upper case, DEL,
#: non-ASCII; no colon outside pseudo-header names). ``translate`` deletes them, so any
#: byte left over is a violation, found at C speed.
_NAME_BYTES = bytes(c for c in range(0x21, 0x7F) if not 0x41 <= c <= 0x5A and c != 0x3A)
#: RFC 9110 §5.6.2: token characters (a method is a token).
_TOKEN_BYTES = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
#: RFC 9113 §8.2.1: no NUL, CR or LF in a value, no leading or trailing SP / HTAB.
_BAD_VALUE = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z")

_SCHEMES = {b"http": "http", b"https": "https"}


def field_section_size(fields: Iterable[tuple[bytes, bytes]]) -> int:
    """The size of a field section: name + value + 32 per field line, pseudo-header
    fields included (RFC 9113 §6.5.2, RFC 9114 §4.2.2)."""
    return sum(len(name) + len(value) + FIELD_LINE_OVERHEAD for name, value in fields)


class Malformed(Exception):
    """A header block breaks RFC 9113 §8.2/§8.3 (RFC 9114 §4.2/§4.3): reset the stream."""


def check_field(name: bytes, value: bytes) -> None:
    """Raise :class:`Malformed` unless ``name: value`` is a valid regular field."""
    # RFC 9113 §8.2.1: field name and value character rules.
    if not name or name.translate(None, _NAME_BYTES):
        raise Malformed(f"invalid field name {name!r}")
    if value and _BAD_VALUE.search(value) is not None:
        raise Malformed(f"invalid value for field {name!r}")


def parse_request_fields(
    raw: Sequence[tuple[bytes, bytes]],
) -> tuple[bytes, bytes | None, bytes | None, bytes | None, bytes | None, Headers, int | None]:
    """Split and validate a request header block in a single pass.

    Returns ``(method, path, scheme, authority, protocol, headers, content_length)``;
    ``authority`` falls back to the Host header. Raises :class:`Malformed`.
    """
    method = path = scheme = authority = protocol = host = None
    content_length: int | None = None
    headers: Headers = []
    cookies: list[bytes] | None = None
    regular_seen = False
    for field in raw:
        name, value = field[0], field[1]
        if name[:1] == b":":
            # RFC 9113 §8.3: pseudo-header fields come first, once each, from a fixed set.
            if regular_seen:
                raise Malformed(f"pseudo-header {name!r} after a regular field")
            if _BAD_VALUE.search(value) is not None:
                raise Malformed(f"invalid value for {name!r}")
            if name == b":method":
                if method is not None:
                    raise Malformed("duplicate :method")
                method = value
            elif name == b":path":
                if path is not None:
                    raise Malformed("duplicate :path")
                path = value
            elif name == b":scheme":
                if scheme is not None:
                    raise Malformed("duplicate :scheme")
                scheme = value
            elif name == b":authority":
                if authority is not None:
                    raise Malformed("duplicate :authority")
                authority = value
            elif name == b":protocol":
                if protocol is not None:
                    raise Malformed("duplicate :protocol")
                protocol = value
            else:
                # §8.3: unknown pseudo-headers, and :status in a request, are malformed.
                raise Malformed(f"pseudo-header {name!r} not allowed in a request")
            continue
        regular_seen = True
        check_field(name, value)
        if name in _SPECIAL_REQUEST_FIELDS:
            if name in CONNECTION_SPECIFIC:
                raise Malformed(f"connection-specific field {name!r}")  # §8.2.2
            if name == b"te":
                if value.lower() != b"trailers":  # §8.2.2: TE may only say "trailers"
                    raise Malformed("TE other than 'trailers'")
            elif name == b"host":
                if host is not None:
                    raise Malformed("several Host fields")
                host = value
            elif name == b"cookie":
                # §8.2.3: split cookies are joined back into one field.
                if cookies is None:
                    cookies = [value]
                else:
                    cookies.append(value)
                continue
            else:  # content-length
                if not value.isdigit():
                    raise Malformed("invalid content-length")
                content_length = int(value)
        headers.append(field)
    if cookies is not None:
        headers.append((b"cookie", b"; ".join(cookies)))

    # RFC 9113 §8.3.1 and §8.5 (CONNECT), RFC 8441 §4 (extended CONNECT).
    if method is None:
        raise Malformed("missing :method")
    if not method or method.translate(None, _TOKEN_BYTES):
        raise Malformed("invalid :method")  # RFC 9110 §9.1: method = token
    if method == b"CONNECT":
        if protocol is None:
            if scheme is not None or path is not None or authority is None:
                raise Malformed("CONNECT needs :authority and no :scheme or :path")
        elif scheme is None or not path:
            raise Malformed("extended CONNECT needs :scheme and :path")
    else:
        if protocol is not None:
            raise Malformed(":protocol outside CONNECT")
        if scheme is None or path is None:
            raise Malformed("missing :scheme or :path")
        # §8.3.1: origin-form, or asterisk-form for OPTIONS, for http(s) URIs.
        if path[:1] != b"/" and not (path == b"*" and method == b"OPTIONS"):
            if scheme in _SCHEMES or not path:
                raise Malformed("invalid :path")
    if authority is None:
        authority = host
    elif host is not None and host != authority:
        # §8.3.1: a Host that differs from :authority SHOULD make the request malformed.
        raise Malformed("Host and :authority differ")
    return method, path, scheme, authority, protocol, headers, content_length


def parse_trailers(raw: Sequence[tuple[bytes, bytes]]) -> Headers:
    """Validate request trailers (RFC 9113 §8.1: no pseudo-headers, §8.2.1 characters)."""
    trailers: Headers = []
    for field in raw:
        name, value = field[0], field[1]
        if name[:1] == b":":
            raise Malformed("pseudo-header in trailers")
        check_field(name, value)
        trailers.append(field)
    return trailers


def decode_token(value: bytes) -> str:
    """``:scheme`` / ``:protocol`` as ``str``; non-ASCII makes the request malformed."""
    known = _SCHEMES.get(value)
    if known is not None:
        return known
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        raise Malformed("non-ASCII token") from None
