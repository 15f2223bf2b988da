"""HTTP/1.1 server protocol on httptools (llhttp): the rules of ``http1.py``, at C speed.

Sans-IO, and the same :class:`~quicserve.protocol.base.ByteStreamProtocol` as
:class:`quicserve.protocol.http1.H1Protocol` (the h11 engine), with the same behaviour:
every rule that module's docstring lists holds here too, and the conformance tests run on
both. Chosen with ``Config.http1_engine`` (``protocol/engines.py``).

Rules this module keeps (besides those, which ``http1_rules.py`` writes once):

* This module frames the bytes; llhttp only reads heads. A head is the bytes up to the
  first CRLFCRLF, and exactly those bytes are fed to llhttp, so we always know where a
  head ends, llhttp never reads into a body or the next request, and pipelined requests
  wait unparsed in our buffer until the previous response is complete (one request at a
  time, answered in order). A parser that saw a head with a body (or an upgrade) is
  replaced by a fresh one for the next head.
* llhttp runs in its strict mode (bare CR or LF, obs-fold, whitespace before a colon,
  invalid field characters, duplicate or list Content-Length, CL with TE are refused) with
  one leniency turned on: the HTTP version digits, which ``http1_rules.inspect_request``
  checks instead (505 for a major version other than 1, like h11). Where llhttp refuses a
  head it gives no status, so ``http1_rules.framing_status`` picks h11's (501 for a coding
  we do not know, else 400). A method llhttp does not know (it has a fixed list) is read
  by swapping in ``GET`` for llhttp when the method is a valid token (RFC 9110 §9.1), as
  h11 takes any token. What h11 refuses and llhttp takes is refused here too: a request
  line with other than two spaces or another protocol than ``HTTP/`` (llhttp reads
  RTSP), a head starting with a blank line or a byte below
  ``!`` (h11 refuses those as soon as they arrive), a bare CR or LF anywhere in the head.
* Bodies and trailers are framed here with ``http1.py``'s grammar: Content-Length
  bodies by count, chunk lines must match ``http1_rules.CHUNK_LINE`` (CRLF only, at most
  15 hex digits), chunk data must end in CRLF, a trailer section follows the head's rules.
  Bytes still incomplete past ``max_header_bytes`` (a head, a chunk line, a trailer
  section) get 431, as h11's incomplete-event limit gives.
* Responses are written here, without h11, with h11's framing rules: the app's
  Content-Length or Transfer-Encoding: chunked is kept; a response without either is
  chunked, or for an HTTP/1.0 client delimited by the connection's close; 204 and 304
  and answers to HEAD carry no content; ``Connection: close`` is added when the request
  or the response ends the connection. Response fields with CR, LF or NUL, surrounding
  whitespace, or a name that is not a token are refused (:class:`LocalProtocolError`),
  as h11 refuses them, so an app cannot split a response.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import fields as dataclass_fields
from http import HTTPStatus

from httptools import HttpParserError, HttpParserInvalidMethodError, HttpParserUpgrade
from httptools import HttpRequestParser as _Parser

from ..config import Config
from ..events import (
    BodyEnded,
    BodyReceived,
    Headers,
    PeerHalfClosed,
    RequestReceived,
    StreamEvent,
)
from .fields import field_section_size
from .http1_rules import (
    BARE_CR_LF,
    CHUNK_LINE,
    FORBIDDEN_TRAILERS,
    READ_AHEAD,
    TOKEN_BYTES,
    WRITE_APART,
    H2CUpgrade,
    HTTP1Connection,
    RequestHead,
    framing_status,
    inspect_request,
)

# Where the request's bytes are: a head is due, a body is being read, or the request is
# complete (DONE: the next head waits for the response; CLOSED: nothing more is read).
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _DONE, _CLOSED = range(8)
# How the response body is framed.
_FIXED, _CHUNKED, _UNTIL_CLOSE = range(3)

_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
#: llhttp's strict mode, but for what it would only use to frame a body, which this module
#: does itself (inspect_request checks those fields), and the version digits (505 is
#: ours to say, not a parse error).
_LENIENCIES = {
    "lenient_version": True,
    "lenient_chunked_length": True,
    "lenient_transfer_encoding": True,
}
#: RFC 9110 §5.5 (as h11 checks them): no NUL, CR, LF, VT or FF in a field value, and no
#: whitespace around it.
_BAD_VALUE = re.compile(rb"[\x00\r\n\x0b\x0c]|\A[ \t]|[ \t]\Z")
#: Control characters other than HTAB, refused in request trailer values (llhttp's rule
#: for head values).
_BAD_TRAILER_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
#: A Transfer-Encoding field line, to tell a head whose only fault it is.
_TRANSFER_ENCODING = re.compile(rb"(?<=\r\n)transfer-encoding:[^\r\n]*\r\n", re.IGNORECASE)
#: h11 writes at most 20 digits of Content-Length.
_MAX_LENGTH_DIGITS = 20


class LocalProtocolError(Exception):
    """The app asked for a response HTTP/1.1 cannot frame (h11's exception of that name
    on the other engine): a bad field, more or less body than its Content-Length."""


class _HeadReader:
    """The llhttp callbacks: collects the target and the fields of one head."""

    __slots__ = ("fields", "url")

    def __init__(self) -> None:
        self.url = b""
        self.fields: Headers = []

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp keeps the whitespace after a value; h11 (RFC 9112 §5.1) does not.
        self.fields.append((name.lower(), value.rstrip(b" \t")))


#: Field lines already checked and encoded: an app sends the same few fields (its
#: content type, the date of this second) on every response. Emptied when full.
_LINES: dict[tuple[bytes, bytes], bytes] = {}
_LINES_KEPT = 512
_LINE_VALUE_KEPT = 256


#: Response heads already framed (see ``_response_head``), by status, fields and the
#: request's HTTP/1.0, HEAD and keep-alive flags: the head and the framing it set.
#: Emptied when full; heads longer than ``_HEAD_KEPT`` are not kept.
_HEADS: dict[
    tuple[int, tuple[tuple[bytes, bytes], ...], bool, bool, bool], tuple[bytes, int, int, bool]
] = {}
_HEADS_KEPT = 256
_HEAD_KEPT = 1024


def _field_lines(headers: Headers) -> list[bytes]:
    """``name: value`` lines of response fields; refuses what h11 refuses."""
    lines = []
    cache = _LINES
    for field in headers:
        line = cache.get(field)
        if line is None:
            name, value = field
            if not name or name.translate(None, TOKEN_BYTES) or _BAD_VALUE.search(value):
                raise LocalProtocolError(f"invalid response field {name!r}: {value!r}")
            line = b"%s: %s\r\n" % (name, value)
            if len(value) <= _LINE_VALUE_KEPT:
                if len(cache) >= _LINES_KEPT:
                    cache.clear()
                cache[field] = line
        lines.append(line)
    return lines


#: The slots of the frozen :class:`RequestReceived`, set directly by ``_request_received``
#: (a new field in events.py fails here, at import, until it is set there too).
_new = object.__new__
(
    _set_stream_id,
    _set_method,
    _set_raw_path,
    _set_headers,
    _set_scheme,
    _set_authority,
    _set_protocol,
    _set_early_data,
    _set_expect_continue,
    _set_websocket_upgrade,
) = (getattr(RequestReceived, field.name).__set__ for field in dataclass_fields(RequestReceived))
assert [field.name for field in dataclass_fields(RequestReceived)] == [
    "stream_id",
    "method",
    "raw_path",
    "headers",
    "scheme",
    "authority",
    "protocol",
    "early_data",
    "expect_continue",
    "websocket_upgrade",
]


def _request_received(
    stream_id: int,
    method: bytes,
    raw_path: bytes,
    headers: Headers,
    authority: bytes | None,
    expect_continue: bool,
    websocket_upgrade: bool,
) -> RequestReceived:
    """``RequestReceived(...)`` of an HTTP/1.1 request, made for every request: the frozen
    dataclass's ``__init__`` sets each of its ten fields through ``object.__setattr__``
    (1.3 us); setting the slots directly makes the same object in 0.55 us."""
    request: RequestReceived = _new(RequestReceived)
    _set_stream_id(request, stream_id)
    _set_method(request, method)
    _set_raw_path(request, raw_path)
    _set_headers(request, headers)
    _set_scheme(request, None)
    _set_authority(request, authority)
    _set_protocol(request, None)
    _set_early_data(request, False)
    _set_expect_continue(request, expect_continue)
    _set_websocket_upgrade(request, websocket_upgrade)
    return request


def _parse_trailers(section: bytes) -> Headers | None:
    """The fields of a trailer section (ending in CRLFCRLF), or None if it breaks the
    head's rules: CRLF only, no obs-fold (RFC 9112 §5.2), ``token ":" OWS value OWS``."""
    if BARE_CR_LF.search(section) is not None:
        return None
    trailers: Headers = []
    for line in section[:-4].split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if not colon or not name or name.translate(None, TOKEN_BYTES):
            return None  # also obs-fold: the line starts with whitespace
        value = value.strip(b" \t")
        if _BAD_TRAILER_VALUE.search(value) is not None:
            return None
        trailers.append((name.lower(), value))
    return trailers


class HttptoolsH1Protocol(HTTP1Connection):
    """One HTTP/1.1 connection, server side, parsed by llhttp."""

    http_version = "1.1"

    def __init__(self, config: Config, now: float, *, allow_h2c: bool = False) -> None:
        self._config = config
        self._max_head = config.max_header_bytes
        self._allow_h2c = allow_h2c
        self._reader = _HeadReader()
        self._parser: _Parser | None = None
        #: Bytes received and not yet framed.
        self._buf = b""
        #: Where the search for the end of an incomplete section resumes in ``_buf``.
        self._scan = 0
        self._state = _HEAD
        #: Body bytes left of a Content-Length body or of a chunk.
        self._remaining = 0
        self._keep_alive = True
        self._upgrade_asked = False
        self._http10 = False
        self._events: deque[StreamEvent | H2CUpgrade] = deque()
        self._out: list[bytes] = []
        self._stream_id = 0
        # The request whose response we are producing, if any.
        self._active: int | None = None
        self._head_request = False
        self._response_started = False
        self._response_done = False
        self._stream_finished = False
        self._framing = _FIXED
        #: Response body bytes still due under the response's Content-Length.
        self._left = 0
        self._body_unacked = 0
        self._pipelined = 0
        self._closed = self.closed = False
        self._upgrading = False
        self._tunnel = False
        #: Tunnel bytes queued and not yet taken by ``data_to_send`` (see ``pending``).
        self._tunnel_out = 0
        self._shutting_down = False
        self._peer_eof = False
        self.split_output = False
        # Fresh connection: the first head must arrive within header_read_timeout.
        self._deadline: float | None = now + config.header_read_timeout
        self._head_deadline_armed = True

    # -- reading ------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes from the peer; ``b""`` means the peer closed its side."""
        if self._closed:
            return
        if self._tunnel:
            assert self._active is not None
            if data:
                self._body_unacked += len(data)
                self._events.append(BodyReceived(self._active, data))
            else:
                self._events.append(BodyEnded(self._active))
            return
        state = self._state
        if not data:
            # FIN: what is buffered was parsed as it came; a request in full is answered
            # (then the next cycle parses on, and closes where it needs more), anything
            # cut short ends the connection with no answer.
            complete = self._active is not None and state >= _DONE
            self._on_peer_eof(complete)
            if not complete:
                self._input_exhausted()
            return
        if self._active is not None and state >= _DONE:
            if state == _CLOSED:
                # RFC 9112 §9.6: after a request that closes the connection (HTTP/1.0,
                # "Connection: close") nothing more is processed; the bytes are dropped.
                return
            self._pipelined += len(data)
        self._buf = self._buf + data if self._buf else data
        self._parse(now)

    def _parse(self, now: float) -> None:
        while not self._closed and not self._upgrading:
            state = self._state
            if state == _HEAD:
                if not self._read_head(now):
                    return
            elif state == _LENGTH or state == _CHUNK_DATA:
                buf = self._buf
                if not buf:
                    return
                remaining = self._remaining
                if len(buf) <= remaining:
                    data = buf
                    self._buf = b""
                else:
                    data = buf[:remaining]
                    self._buf = buf[remaining:]
                self._remaining = remaining = remaining - len(data)
                self._body_unacked += len(data)
                self._events.append(BodyReceived(self._stream_id, data))
                if not remaining:
                    if state == _LENGTH:
                        self._end_request([], now)
                    else:
                        self._state = _CHUNK_END
            elif state == _CHUNK_SIZE:
                buf = self._buf
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > self._max_head:
                        self._framing_error(431)
                    return
                match = CHUNK_LINE.fullmatch(buf, 0, end + 2)
                if match is None:
                    self._framing_error(400)  # RFC 9112 §7.1
                    return
                self._buf = buf[end + 2 :]
                self._remaining = int(match[1], 16)
                self._state = _CHUNK_DATA if self._remaining else _TRAILERS
            elif state == _CHUNK_END:
                buf = self._buf
                if buf[:2] == b"\r\n":
                    self._buf = buf[2:]
                    self._state = _CHUNK_SIZE
                elif not buf or buf == b"\r":
                    return
                else:
                    self._framing_error(400)  # RFC 9112 §7.1: chunk-data CRLF
                    return
            elif state == _TRAILERS:
                if not self._read_trailers(now):
                    return
            else:
                return  # DONE or CLOSED: the next head waits for the next cycle

    def _incomplete(self, status_if_long: int) -> bool:
        """An incomplete head or trailer section: refuse a bare CR or LF in it at once,
        and a section past the limit (h11's rules); True if it may still complete."""
        buf = self._buf
        limit = len(buf) - 1 if buf[-1:] == b"\r" else len(buf)
        if BARE_CR_LF.search(buf, max(0, self._scan - 1), limit) is not None:
            status = 400
        elif len(buf) > self._max_head:
            status = status_if_long
        else:
            self._scan = max(0, len(buf) - 3)
            return True
        if self._state == _HEAD:
            self._send_error(status)
        else:
            self._framing_error(status)
        return False

    def _read_head(self, now: float) -> bool:
        """Frame and parse the next head; True if parsing may go on."""
        buf = self._buf
        if not buf:
            return False
        # Before anything can fail: an error answer to HEAD has no content.
        self._head_request = buf[:5] == b"HEAD "
        if buf[0] < 0x21:
            # h11 refuses a head that starts with a blank line or a control byte.
            self._send_error(400)
            return False
        end = buf.find(b"\r\n\r\n", self._scan)
        if end < 0:
            if self._incomplete(431) and not self._head_deadline_armed:
                # Bytes of a new head arrived: it now has header_read_timeout to finish.
                self._deadline = now + self._config.header_read_timeout
                self._head_deadline_armed = True
            return False
        end += 4
        head = buf[:end]
        self._buf = buf[end:]
        self._scan = 0
        # RFC 9112 §3: method SP target SP "HTTP/" version (llhttp also takes RTSP/ and
        # ICE/ lines, and runs of spaces); and (llhttp refuses them too) no CR or LF
        # outside a CRLF: each CR and each LF counted is one of a CRLF.
        line_end = head.find(b"\r\n")
        crlf = head.count(b"\r\n")
        if (
            head.count(b" ", 0, line_end) != 2
            or head[line_end - 9 : line_end - 3] != b" HTTP/"
            or head.count(b"\r") != crlf
            or head.count(b"\n") != crlf
        ):
            self._send_error(400)
            return False
        # llhttp checks the digits are "d.d" (any digits: 505 is ours to say).
        version = head[line_end - 3 : line_end]
        reader = self._reader
        reader.url = b""
        reader.fields = []
        parser = self._parser
        if parser is None:
            parser = self._parser = _Parser(reader)
            parser.set_dangerous_leniencies(**_LENIENCIES)
        method: bytes | None = None
        try:
            parser.feed_data(head)
        except HttpParserUpgrade:
            self._parser = None  # it stopped mid-message; the next head gets a new one
        except HttpParserError as exc:
            self._parser = None
            retried = self._unknown_method(head, exc)
            if retried is None:
                self._send_error(self._refusal(head))
                return False
            method, parser = retried
        if method is None:
            method = head[: head.find(b" ")]
        request_head = inspect_request(
            method,
            reader.url,
            version,
            reader.fields,
            self._max_head,
            self._allow_h2c,
        )
        self._head_request = method == b"HEAD"
        if type(request_head) is not RequestHead:
            assert isinstance(request_head, int)
            self._send_error(request_head)
            return False
        self._http10 = version < b"1.1"
        self._keep_alive = request_head.keep_alive
        self._upgrade_asked = request_head.upgrade
        self._stream_id += 1
        self._active = self._stream_id
        self._response_started = False
        self._response_done = False
        self._stream_finished = False
        self._body_unacked = 0
        self._pipelined = 0
        self._deadline = None
        fields = reader.fields
        if request_head.chunked:
            # h11 hands the app this value lower-cased; so do we.
            fields = [(n, v.lower() if n == b"transfer-encoding" else v) for n, v in fields]
        request = _request_received(
            self._stream_id,
            method,
            request_head.target,
            fields,
            request_head.authority,
            request_head.expect_continue,
            request_head.websocket,
        )
        if request_head.h2c_settings is not None:
            self._events.append(H2CUpgrade(request, request_head.h2c_settings, self._buf))
            # Not "closed": the connection lives on as HTTP/2. Stop parsing and reading
            # until the driver has switched protocols.
            self._state = _DONE
            self._upgrading = True
            return False
        self._events.append(request)
        if request_head.chunked:
            self._parser = None
            self._state = _CHUNK_SIZE
        elif request_head.content_length:
            self._parser = None
            self._state = _LENGTH
            self._remaining = request_head.content_length
        else:
            self._end_request([], now)
        return True

    def _refusal(self, head: bytes) -> int:
        """The status for a head llhttp refused, as h11 would give it: 501 when the only
        fault is a Transfer-Encoding we do not implement, else 400."""
        status = framing_status(head)
        if status == 501:
            parser = _Parser(_HeadReader())
            parser.set_dangerous_leniencies(**_LENIENCIES)
            try:
                parser.feed_data(_TRANSFER_ENCODING.sub(b"", head))
            except HttpParserUpgrade:
                pass
            except HttpParserError:
                return 400
        return status or 400

    def _unknown_method(self, head: bytes, exc: HttpParserError) -> tuple[bytes, _Parser] | None:
        """llhttp knows a fixed list of methods (and stops at ``PRI``); h11 takes any
        token (RFC 9110 §9.1). Re-read such a head with ``GET`` in its place: the real
        method and the parser that read it, or None."""
        space = head.find(b" ")
        method = head[:space]
        if not (isinstance(exc, HttpParserInvalidMethodError) or method == b"PRI"):
            return None
        if not method or method.translate(None, TOKEN_BYTES):
            return None
        self._reader.url = b""
        self._reader.fields = []
        parser = _Parser(self._reader)
        parser.set_dangerous_leniencies(**_LENIENCIES)
        try:
            parser.feed_data(b"GET" + head[space:])
        except HttpParserUpgrade:
            pass
        except HttpParserError:
            return None
        # Not kept: the next head gets a fresh parser (this one may be mid-message).
        return method, parser

    def _read_trailers(self, now: float) -> bool:
        buf = self._buf
        if buf[:2] == b"\r\n":
            self._buf = buf[2:]
            self._end_request([], now)
            return True
        if not buf or buf == b"\r":
            return False
        end = buf.find(b"\r\n\r\n", self._scan)
        if end < 0:
            self._incomplete(431)
            return False
        end += 4
        trailers = _parse_trailers(buf[:end])
        self._buf = buf[end:]
        self._scan = 0
        if trailers is None:
            self._framing_error(400)
            return False
        if field_section_size(trailers) > self._max_head:
            # Chunked trailers (RFC 9112 §7.1.2) obey the same limit as the head: 431 if
            # the app has not answered yet; the connection closes.
            self._abort_active()
            if self._response_started:
                self._close()
            else:
                self._send_error(431)
            return False
        if any(name in FORBIDDEN_TRAILERS for name, _ in trailers):
            self._framing_error(400)
            return False
        self._end_request(trailers, now)
        return True

    def _end_request(self, trailers: Headers, now: float) -> None:
        self._state = _DONE if self._keep_alive else _CLOSED
        if self._active is not None:
            self._events.append(BodyEnded(self._stream_id, trailers))
            if self._peer_eof:  # a pipelined request read after the FIN
                self._events.append(PeerHalfClosed(self._stream_id))
        self._maybe_next_cycle(now)

    def wants_read(self) -> bool:
        """False while we hold enough unconsumed body or pipelined data."""
        if self._closed or self._upgrading:
            return False
        return self._body_unacked < READ_AHEAD and self._pipelined < READ_AHEAD

    # -- writing ------------------------------------------------------------------------

    def send_response(
        self, stream_id: int, status: int, headers: Headers, end_stream: bool = False
    ) -> None:
        """Start the response (framing headers are added when the app gave none)."""
        if stream_id != self._active or self._response_started or self._closed:
            return
        if status == 101:
            self._switch_to_tunnel(headers)
            return
        self._response_started = True
        if self._shutting_down:
            headers = [*headers, (b"connection", b"close")]
        try:
            head = self._response_head(status, headers)
        except LocalProtocolError:
            self._abort_active()
            self._close()
            raise
        self._out.append(head)
        if end_stream:
            self._end_response()

    def _response_head(self, status: int, headers: Headers) -> bytes:
        # An app answers with the same few heads (its fields, the date of this second):
        # a head already framed for the same fields and request is reused.
        key = (status, tuple(headers), self._http10, self._head_request, self._keep_alive)
        try:
            known = _HEADS.get(key)
        except TypeError:  # a field that is not a (bytes, bytes) tuple: frame it as is
            return self._frame_head(status, headers)
        if known is not None:
            head, self._framing, self._left, self._keep_alive = known
            return head
        head = self._frame_head(status, headers)
        if len(head) <= _HEAD_KEPT:
            if len(_HEADS) >= _HEADS_KEPT:
                _HEADS.clear()
            _HEADS[key] = (head, self._framing, self._left, self._keep_alive)
        return head

    def _frame_head(self, status: int, headers: Headers) -> bytes:
        length: bytes | None = None
        chunked = False
        connection: list[bytes] | None = None
        for name, value in headers:
            if name == b"content-length":
                digits = value.strip(b" \t")
                if length is not None and digits != length:
                    raise LocalProtocolError("conflicting Content-Length fields")
                if not digits.isdigit() or len(digits) > _MAX_LENGTH_DIGITS:
                    raise LocalProtocolError("bad Content-Length")
                length = digits
            elif name == b"transfer-encoding":
                if chunked or value.strip(b" \t").lower() != b"chunked":
                    raise LocalProtocolError("only Transfer-Encoding: chunked is supported")
                chunked = True
            elif name == b"connection":
                tokens = [t.strip(b" \t").lower() for t in value.split(b",")]
                connection = tokens if connection is None else connection + tokens
        lines = _field_lines(headers)
        # RFC 9112 §6.3, the way h11 frames: 204, 304 and answers to HEAD have no
        # content (a HEAD answer's fields are those of the GET answer).
        if status == 204 or status == 304:
            self._framing = _FIXED
            self._left = 0
        elif chunked or length is None:
            # A body of unknown length: chunked for an HTTP/1.1 client; for HTTP/1.0
            # the connection's end delimits it.
            drop = {b"content-length", b"transfer-encoding"}
            lines = [
                line for (name, _), line in zip(headers, lines, strict=True) if name not in drop
            ]
            if self._http10:
                self._framing = _UNTIL_CLOSE
                if not self._head_request:
                    self._keep_alive = False
            else:
                self._framing = _CHUNKED
                lines.append(b"Transfer-Encoding: chunked\r\n")
        else:
            self._framing = _FIXED
            self._left = int(length)
        if self._head_request:
            self._framing = _FIXED
            self._left = 0
        if connection is not None and b"close" in connection:
            self._keep_alive = False
        elif not self._keep_alive:
            # The request (or the framing) ends the connection: say so.
            said = set(connection or ())
            said.discard(b"keep-alive")
            said.add(b"close")
            lines = [line for line in lines if line[:11].lower() != b"connection:"]
            lines += [b"Connection: %s\r\n" % token for token in sorted(said)]
        status_line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status
        return b"".join((status_line, *lines, b"\r\n"))

    def _switch_to_tunnel(self, headers: Headers) -> None:
        # As h11 checks: only a request that asked for an Upgrade, once it has ended.
        if not self._upgrade_asked or self._state < _DONE:
            raise LocalProtocolError("101 answers only a complete Upgrade request")
        lines = _field_lines(headers)
        self._out.append(b"".join((b"HTTP/1.1 101 Switching Protocols\r\n", *lines, b"\r\n")))
        self._tunnel = True
        self._response_started = True
        self._body_unacked = self._pipelined = 0
        trailing = self._buf
        self._buf = b""
        if trailing:
            assert self._active is not None
            self._body_unacked = len(trailing)
            self._events.append(BodyReceived(self._active, trailing))

    def send_informational(self, stream_id: int, status: int, headers: Headers) -> None:
        """A 1xx response: 100 Continue, 103 Early Hints."""
        if stream_id != self._active or self._response_started or self._closed:
            return
        if not 100 <= status < 200:
            raise LocalProtocolError(f"{status} is not an informational status")
        lines = _field_lines(headers)
        # Like h11: no reason phrase (it is optional, RFC 9112 §4).
        self._out.append(b"".join((b"HTTP/1.1 %d \r\n" % status, *lines, b"\r\n")))

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Body bytes. TCP is the only flow control, so nothing is buffered here."""
        if stream_id != self._active or not self._response_started or self._response_done:
            return
        if self._tunnel:
            if data:
                self._out.append(data)
                self._tunnel_out += len(data)
            if end_stream:
                self._response_done = True
                self._close()
            return
        if data and not self._head_request:
            if len(data) >= WRITE_APART:
                self.split_output = True
            framing = self._framing
            if framing == _FIXED:
                left = self._left - len(data)
                if left < 0:
                    # More than the declared Content-Length: an app bug we cannot frame.
                    self._abort_active()
                    self._close()
                    raise LocalProtocolError("more body than the Content-Length")
                self._left = left
                self._out.append(data)
            elif framing == _CHUNKED:
                self._out += (b"%x\r\n" % len(data), data, b"\r\n")
            else:
                self._out.append(data)
        if end_stream:
            self._end_response()

    def _end_response(self, trailers: Headers | None = None) -> None:
        self._response_done = True
        framing = self._framing
        try:
            if framing == _CHUNKED:
                lines = _field_lines(trailers) if trailers else ()
                self._out.append(b"".join((b"0\r\n", *lines, b"\r\n")))
            elif trailers:
                raise LocalProtocolError("trailers need a chunked response")
            elif framing == _FIXED and self._left:
                # Fewer bytes than the declared Content-Length: the peer cannot find the
                # end of this response, so the connection must go.
                raise LocalProtocolError("less body than the Content-Length")
        except LocalProtocolError:
            self._abort_active()
            self._close()
            raise

    def _maybe_next_cycle(self, now: float) -> None:
        # The next request is parsed once our response is complete, the stream type is
        # done with it (stream_done) and the peer's request is complete too.
        if not self._stream_finished:
            return
        if not self._keep_alive:
            self._close()
            return
        if self._state == _DONE:
            if self._shutting_down:
                self._close()
                return
            self._state = _HEAD
            self._active = None
            self._head_request = False
            self._stream_finished = False
            self._pipelined = 0
            self._head_deadline_armed = False
            self._deadline = now + self._config.keep_alive_timeout
            if self._buf:
                self._parse(now)
            if (
                self._peer_eof
                and not self._closed
                and (self._active is None or self._state < _DONE)
            ):
                # The bytes left after the FIN hold no complete request.
                self._input_exhausted()

    def data_to_send(self) -> bytes:
        """Bytes to write, clearing the buffer."""
        self._tunnel_out = 0
        out = self._out
        if not out:
            return b""
        if self.split_output:
            return self._take_out_apart()
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    # -- timers and closing -------------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        """Close an idle connection, or answer 408 to a head that never completed."""
        if self._closed or self._active is not None:
            return
        if self._deadline is None or now < self._deadline:
            return
        if self._buf:
            self._send_error(408)
        else:
            self._close()
