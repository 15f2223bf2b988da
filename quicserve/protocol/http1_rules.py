"""The HTTP/1.1 request rules every HTTP/1.1 engine keeps, written once (sans-IO).

quicserve has two HTTP/1.1 engines behind :class:`~quicserve.protocol.base.ByteStreamProtocol`:
``http1.py`` (h11, pure Python, the default that always works) and ``http1_httptools.py``
(llhttp through httptools). Each parser frames bytes its own way; what a request head may
say, and what we answer when it says something else, is decided here, so both engines
refuse the same requests with the same status:

Rules:

* :func:`inspect_request` checks a parsed head in one pass, in h11's order (so a head
  with several faults gets the same status from both engines): ``Transfer-Encoding``
  whose final coding is not chunked (400, RFC 9112 §6.1) or that is not exactly
  ``chunked`` (501: a coding we do not know), a ``Content-Length`` that is not one run of
  digits (400), zero Host fields in HTTP/1.1 or several (400, §3.2); then the size rule
  (431, ``fields.field_section_size``: the request line counts as ``:method`` and
  ``:path``), ``Content-Length`` with ``Transfer-Encoding`` (400, §6.1), an HTTP major
  version other than 1 (505), ``Transfer-Encoding`` outside HTTP/1.1 (400), an invalid
  Host (400), an absolute-form target whose authority is not the Host (400, §3.2.2), a
  target in no form we serve (400), ``CONNECT`` (501: its 2xx answer would be a tunnel,
  RFC 9110 §9.3.6). It returns an ``int`` status, or a :class:`RequestHead`.
* A chunk line must match the RFC 9112 §7.1.1 grammar with at most 15 hex digits of size
  (:data:`CHUNK_LINE`), so the size fits a signed 64-bit integer whatever the proxy.
* Trailers with framing, routing or connection fields are refused (RFC 9110 §6.5.1,
  :data:`FORBIDDEN_TRAILERS`).
* Error answers are :func:`error_response`: plain text, ``connection: close``, no content
  in an answer to HEAD (RFC 9110 §9.3.2).
* A FIN from the peer (RFC 9112 §9.6) is a half-close: what it sent in full is answered,
  then the connection closes; a request it cut short ends with no answer (not 400).
* Both engines derive from :class:`HTTP1Connection`, which holds the calls that read only
  connection state they keep alike (errors and close, timers, the end of a request,
  ``tunnel``), so those behave the same on both by construction.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from typing import NamedTuple

from ..events import (
    FIELD_LINE_OVERHEAD,
    ConnectionClosed,
    Headers,
    PeerHalfClosed,
    RequestReceived,
    StreamEvent,
    StreamReset,
)

#: ``:method`` and ``:path`` field lines: their names and 32 octets each (RFC 9113 §6.5.2).
REQUEST_LINE_SIZE = len(b":method") + len(b":path") + 2 * FIELD_LINE_OVERHEAD

#: Unacknowledged request body (or pipelined bytes) an engine reads ahead of the app.
READ_AHEAD = 64 * 1024

#: A response body piece at least this large is handed out by ``data_to_send`` apart
#: from the bytes queued before it (the head) instead of joined to them: the join would
#: copy it (a 1 MiB body sent in one message: ~85 us, 7.5 % of that response's time),
#: while writing the head apart costs one more small send (5-17 us on loopback). Below
#: this size the copy is the cheaper one, so smaller pieces are joined: one write.
WRITE_APART = 512 * 1024

REASONS = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}

ERROR_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    505: b"HTTP Version Not Supported",
}


@dataclass(frozen=True, slots=True)
class H2CUpgrade:
    """A cleartext request asked to upgrade to HTTP/2 (``Upgrade: h2c``).

    The driver must write ``101 Switching Protocols`` (``switching_response()``), then
    continue with an HTTP/2 protocol that serves ``request`` as stream 1, fed first with
    ``trailing_data``.
    """

    request: RequestReceived
    settings: bytes
    trailing_data: bytes


class HTTP1Connection:
    """What both HTTP/1.1 engines share: the connection state both keep under the same
    names, and every call that reads only that state (errors and close, timers, the end
    of a request, the tunnel flag the byte-stream driver asks about). An engine sets these
    attributes in its ``__init__`` and supplies the parsing and the response framing,
    including ``_end_response`` and ``_maybe_next_cycle``."""

    _events: deque[StreamEvent | H2CUpgrade]
    _out: list[bytes]
    _active: int | None
    _head_request: bool
    _response_started: bool
    _response_done: bool
    _stream_finished: bool
    _body_unacked: int
    _closed: bool
    _tunnel: bool
    _tunnel_out: int
    #: ``_out`` may hold a piece of ``WRITE_APART`` bytes or more: ``data_to_send`` hands
    #: the output out in pieces while this is true (see ``ByteStreamProtocol``).
    split_output: bool
    _shutting_down: bool
    _deadline: float | None
    #: The peer closed its sending side (FIN): what it sent in full is still answered.
    _peer_eof: bool

    def _end_response(self, trailers: Headers | None = None) -> None:
        raise NotImplementedError

    def _maybe_next_cycle(self, now: float) -> None:
        raise NotImplementedError

    def _framing_error(self, status: int) -> None:
        """The peer's bytes cannot be framed: 400 (or ``status``) unless a response has
        begun, and close, so nothing after them is read as a request."""
        if self._active is not None:
            self._abort_active()
            if self._response_started:
                self._close()
                return
        self._send_error(status)

    def next_event(self) -> StreamEvent | H2CUpgrade | None:
        """The next event, or ``None``."""
        return self._events.popleft() if self._events else None

    def ack_body(self, stream_id: int, amount: int) -> None:
        """The app consumed ``amount`` body bytes: reading may resume."""
        if stream_id == self._active:
            self._body_unacked = max(0, self._body_unacked - amount)

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        """Trailers go in the last chunk; they end the response."""
        if stream_id != self._active or not self._response_started or self._response_done:
            return
        self._end_response(headers)

    def reset_stream(self, stream_id: int) -> None:
        """HTTP/1.1 cannot reset one request: the connection is closed."""
        if stream_id == self._active:
            self._close()

    def buffered_amount(self, stream_id: int) -> int:
        """Nothing is ever buffered here: TCP's own buffer is the flow control."""
        return 0

    def stream_done(self, stream_id: int, now: float) -> None:
        """The stream type finished: parse the next (pipelined) request, or close."""
        if stream_id != self._active or self._closed:
            return
        if not self._response_done or self._tunnel:
            # The app ended without completing its response: the peer cannot know where
            # it ends, so the connection must go.
            self._close()
            return
        self._stream_finished = True
        self._maybe_next_cycle(now)

    @property
    def tunnel(self) -> bool:
        """The connection carries a WebSocket (after ``101``)."""
        return self._tunnel

    def pending(self) -> int:
        """Tunnel bytes queued for the socket: the driver may let them gather (one write
        for a burst of WebSocket frames) while this stays under its write buffer."""
        return self._tunnel_out

    def get_timer(self) -> float | None:
        """Header-read or keep-alive deadline; ``None`` while a request is in flight."""
        if self._closed or self._active is not None:
            return None
        return self._deadline

    def shutdown(self) -> None:
        """Close now if idle; otherwise after the current response (``connection: close``)."""
        self._shutting_down = True
        if self._active is None:
            self._close()

    def _on_peer_eof(self, request_complete: bool) -> None:
        """The peer closed its sending side (``receive_data(b"")``). RFC 9112 §9.6: it may
        still read, so the request it sent in full (and every complete pipelined one
        after it, in order, §9.3.2) is answered; its app sees ``http.disconnect`` once the
        body is read (:class:`PeerHalfClosed`). The engine then parses on and calls
        :meth:`_input_exhausted` where it would wait for more bytes."""
        self._peer_eof = True
        if self._active is not None and request_complete:
            self._events.append(PeerHalfClosed(self._active))

    def _input_exhausted(self) -> None:
        """Parsing needs bytes that will never come (the peer sent FIN): close with no
        answer (nothing was malformed, the peer left). A request cut short is reset."""
        self._abort_active()
        self._close()

    def _take_out_apart(self) -> bytes:
        """``data_to_send`` when a large piece is queued: the pieces before it joined, or
        the large piece alone (no copy); the driver calls again for the rest."""
        out = self._out
        for index, piece in enumerate(out):
            if len(piece) >= WRITE_APART:
                if index == 0:
                    del out[0]
                    data = piece
                else:
                    data = b"".join(out[:index])
                    del out[:index]
                break
        else:
            data = b"".join(out)
            out.clear()
        if not out:
            self.split_output = False
        return data

    def _send_error(self, status: int) -> None:
        self._out.append(error_response(status, self._head_request))
        self._close()

    def _abort_active(self) -> None:
        if self._active is not None and not self._response_done:
            self._events.append(StreamReset(self._active))

    #: True once the connection must be closed after flushing. A plain attribute, set
    #: with ``_closed`` by ``_close``, not a property: the driver reads it several times
    #: per request.
    closed: bool = False

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self.closed = True
            self._events.append(ConnectionClosed())

    @property
    def open_streams(self) -> int:
        """1 while a request is in flight, else 0."""
        return 0 if self._active is None else 1

    @property
    def idle(self) -> bool:
        """No request in flight."""
        return self._active is None


def switching_response() -> bytes:
    """The ``101`` answer to an h2c upgrade."""
    return b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n"


def error_response(status: int, head_request: bool) -> bytes:
    """A complete plain-text error answer that closes the connection."""
    reason = ERROR_REASONS.get(status, b"Error")
    body = reason + b"\n"
    # RFC 9110 §9.3.2: no content in an answer to HEAD (a client would read it as the
    # start of the next response); the header fields stay those of the GET answer.
    content = b"" if head_request else body
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (status, reason, len(body), content)
    )


#: A bare CR or LF (not part of CRLF). RFC 9112 §2.2 lets a recipient take a bare LF as
#: a line end and a bare CR as whitespace; a proxy in front may do neither, so both end
#: the connection instead (CVE-2025-43859 and the "funky chunks" reports of 2025).
BARE_CR_LF = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
#: RFC 9110 §5.6.2: the bytes of a token (``translate`` deletes them: anything left over
#: is not a token).
TOKEN_BYTES = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
#: RFC 9110 §5.6.4: a quoted string (no CR, LF or other controls but HTAB inside).
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
#: RFC 9112 §7.1 and §7.1.1: ``chunk-size *( BWS ";" BWS name [ BWS "=" BWS value ] )``.
#: At most 15 hex digits, so the size fits a signed 64-bit integer whatever the proxy,
#: and at most 20 with leading zeros (h11's limit). Group 1 is the size.
CHUNK_LINE = re.compile(
    rb"(?=[0-9A-Fa-f]{1,20}(?![0-9A-Fa-f]))(0*[0-9A-Fa-f]{1,15})"
    rb"(?:[ \t]*;[ \t]*%s(?:[ \t]*=[ \t]*(?:%s|%s))?)*\r\n" % (_TOKEN, _TOKEN, _QUOTED)
)
#: A Content-Length or Transfer-Encoding field line (group 1: the name).
FRAMING_FIELD = re.compile(rb"\r\n(content-length|transfer-encoding):", re.IGNORECASE)
#: RFC 9112 §3.2: ``Host = uri-host [ ":" port ]`` (IP-literal or reg-name / IPv4).
HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[-A-Za-z0-9._~%!$&'()*+,;=]*)(?::[0-9]*)?")
#: RFC 9110 §6.5.1: fields a recipient needs before the content (framing, routing,
#: connection control, request modifiers, authentication); as trailers a proxy could
#: merge them into the head, so a request that sends them is refused.
FORBIDDEN_TRAILERS = frozenset(
    (
        b"authorization",
        b"connection",
        b"content-encoding",
        b"content-length",
        b"content-range",
        b"content-type",
        b"cookie",
        b"expect",
        b"host",
        b"keep-alive",
        b"max-forwards",
        b"proxy-authorization",
        b"proxy-connection",
        b"range",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    )
)
#: The fields :func:`inspect_request` reads.
_INSPECTED = frozenset(
    (
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"expect",
        b"upgrade",
        b"http2-settings",
    )
)
#: h11 takes at most 20 digits of Content-Length; so does every engine.
_CONTENT_LENGTH_DIGITS = 20


def content_length_is_zero(headers: Headers) -> bool:
    """Every Content-Length field says 0."""
    return all(value.strip() == b"0" for name, value in headers if name == b"content-length")


def absolute_form(target: bytes) -> tuple[bytes, bytes] | None:
    """``(authority, origin-form target)`` of an absolute-form http(s) target, or None."""
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        return None
    end = len(rest)
    for mark in (b"/", b"?"):
        at = rest.find(mark)
        if 0 <= at < end:
            end = at
    authority = rest[:end]
    if not authority or b"@" in authority or HOST.fullmatch(authority) is None:
        return None
    path = rest[end:]
    if path[:1] != b"/":
        path = b"/" + path
    return authority, path


def framing_status(head: bytes | bytearray) -> int:
    """The status for a head whose framing fields are ambiguous, h11's way: 400 for a
    Content-Length list or repeat, or a Transfer-Encoding line whose final coding is not
    chunked; 501 for codings that end in chunked but are not just ``chunked``; else 0.
    An engine whose parser refused the head without saying why asks this."""
    content_length = False
    codings: list[bytes] = []
    for match in FRAMING_FIELD.finditer(head):
        end = head.find(b"\r\n", match.end())
        value = bytes(head[match.end() : end if end >= 0 else len(head)])
        if match[1][0] in b"cC":
            if content_length or b"," in value:
                return 400
            content_length = True
            continue
        line = [c.strip(b" \t").lower() for c in value.split(b",")]
        if line[-1] != b"chunked":
            return 400
        codings += line
    if codings and codings != [b"chunked"]:
        return 501
    return 0


class RequestHead(NamedTuple):
    """What :func:`inspect_request` learned from a head it accepts (a tuple: it is made
    for every request, and a frozen dataclass costs a microsecond more to build)."""

    #: The origin-form target (an absolute-form one is reduced to its path).
    target: bytes
    authority: bytes | None
    expect_continue: bool
    #: ``Upgrade: websocket`` on a body-less request (RFC 6455 §4.1).
    websocket: bool
    #: ``HTTP2-Settings`` of a body-less ``Upgrade: h2c`` request, if h2c is allowed.
    h2c_settings: bytes | None
    #: The body's framing: ``Content-Length`` (``None`` if absent) or chunked.
    content_length: int | None
    chunked: bool
    #: The request keeps the connection open (HTTP/1.1 without ``Connection: close``;
    #: like h11, no HTTP/1.0 request does).
    keep_alive: bool
    #: The request carries an ``Upgrade`` field (a ``101`` may only answer such a one).
    upgrade: bool


def inspect_request(
    method: bytes,
    target: bytes,
    http_version: bytes,
    headers: Headers,
    max_header_bytes: int,
    allow_h2c: bool,
) -> RequestHead | int:
    """Check a parsed request head (lower-case field names, values without surrounding
    whitespace); the status to refuse it with, or what it says. See the module rules."""
    has_cl = has_te = False
    cl_value = b""
    te_values: list[bytes] | None = None
    host: bytes | None = None
    hosts = 0
    expect_continue = False
    upgrade: bytes | None = None
    connection_tokens = b""
    settings: bytes | None = None
    # The size rule of every protocol (fields.field_section_size): the request line
    # counts as the :method and :path field lines it stands for.
    head_size = len(method) + len(target) + REQUEST_LINE_SIZE
    for name, value in headers:
        head_size += len(name) + len(value) + FIELD_LINE_OVERHEAD
        if name not in _INSPECTED:
            continue  # most fields (one set lookup instead of seven comparisons)
        if name == b"host":
            host = value
            hosts += 1
        elif name == b"content-length":
            has_cl = True
            cl_value = value
        elif name == b"transfer-encoding":
            has_te = True
            if te_values is None:
                te_values = [value]
            else:
                te_values.append(value)
        elif name == b"connection":
            connection_tokens += value.lower() + b","
        elif name == b"expect":
            expect_continue = value.lower() == b"100-continue"
        elif name == b"upgrade":
            upgrade = value.lower()
        elif name == b"http2-settings":
            settings = value
    # First what h11 refuses while it parses (so both engines answer a head with several
    # faults alike): the framing fields' syntax, then the Host count.
    chunked = False
    content_length: int | None = None
    if te_values is not None:
        codings: list[bytes] = []
        for value in te_values:
            line = [c.strip(b" \t").lower() for c in value.split(b",")]
            # RFC 9112 §6.1: chunked must be the final coding (of every line, as the h11
            # engine reads them), else 400.
            if line[-1] != b"chunked":
                return 400
            codings += line
        # A coding before chunked (or chunked twice) is one we do not implement: 501
        # (RFC 9110 §15.6.2).
        if len(codings) != 1:
            return 501
        chunked = True
    if has_cl:
        # RFC 9110 §8.6: one run of digits (repeats and lists are refused by the parsers).
        digits = cl_value.strip(b" \t")
        if not digits.isdigit() or len(digits) > _CONTENT_LENGTH_DIGITS:
            return 400
        content_length = int(digits)
    # RFC 9112 §3.2: one Host (none is an error in HTTP/1.1).
    if hosts > 1 or (hosts == 0 and http_version == b"1.1"):
        return 400
    # RFC 6585 §5: 431. (Each engine also bounds the raw bytes of a head that arrives in
    # pieces.)
    if head_size > max_header_bytes:
        return 431
    # RFC 9112 §6.1: a message with both is a smuggling attempt; refuse it.
    if has_cl and has_te:
        return 400
    # RFC 9112 §2.3: a parser may take any "HTTP/d.d"; only major version 1 is ours
    # (RFC 9110 §15.6.6: 505). "PRI * HTTP/2.0" lands here on a cleartext port.
    if http_version[:2] != b"1.":
        return 505
    # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 is faulty framing.
    if has_te and http_version != b"1.1":
        return 400
    # RFC 9112 §3.2: a valid Host.
    if host is not None and HOST.fullmatch(host) is None:
        return 400
    if target[:1] != b"/":
        absolute = absolute_form(target)
        if absolute is not None:
            # RFC 9112 §3.2.2: the target's authority wins over Host; a proxy that
            # routed by Host would disagree, so they must be the same.
            authority, target = absolute
            if host is not None and host.lower() != authority.lower():
                return 400
            host = authority
        elif not ((target == b"*" and method == b"OPTIONS") or method == b"CONNECT"):
            return 400  # §3.2: no form we know
    if method == b"CONNECT":
        # RFC 9110 §9.3.6: a 2xx answer to CONNECT turns the connection into a tunnel,
        # which an ASGI app cannot serve over HTTP/1.1; a proxy in front would also take
        # the connection for a tunnel. Refused with 501 (RFC 9110 §15.6.2) before the
        # app can answer 2xx.
        return 501
    keep_alive = http_version >= b"1.1"
    if connection_tokens and keep_alive:
        keep_alive = b"close" not in [t.strip(b" \t") for t in connection_tokens.split(b",")]
    # A body would have to end before the switch; such a request stays plain HTTP.
    body_less = not has_te and (not has_cl or content_length_is_zero(headers))
    websocket = upgrade == b"websocket" and b"upgrade" in connection_tokens and body_less
    h2c_settings = None
    if (
        allow_h2c
        and upgrade == b"h2c"
        and settings is not None
        and b"http2-settings" in connection_tokens
        and not has_cl
        and not has_te
    ):
        # RFC 7540 §3.2: only body-less requests are upgraded here; the rest are
        # served over HTTP/1.1, which the RFC allows.
        h2c_settings = settings
    return RequestHead(
        target,
        host,
        expect_continue,
        websocket,
        h2c_settings,
        content_length,
        chunked,
        keep_alive,
        upgrade is not None,
    )
