"""What the two HTTP/1.1 and HTTP/2 drivers share, whatever does their I/O.

A TCP, TLS or Unix connection is driven either by anyio streams (a read-loop task and a
timer task: trio, ``connection/bytestream.py`` :class:`ByteStreamDriver`) or by the event
loop's callbacks (asyncio and uvloop, ``connection/callback.py`` :class:`CallbackDriver`).
Both are one :class:`ByteStreamBase`: the protocol chosen the same way
(:func:`start_protocol`), the same events to the same streams (``ConnectionDriver``), the
same h2c switch, graceful shutdown and WebSocket-tunnel write batching. Only how bytes move
and how timers fire differs.

Rules:

* Nothing here awaits the socket; a subclass supplies ``_request_flush`` (write what the
  protocol produced soon, from the connection's own context) and ``_poke_reader``.
* Protocol choice: ALPN ``h2`` on TLS, the HTTP/2 connection preface on cleartext
  (RFC 9113 §3.4), otherwise HTTP/1.1 (with ``Upgrade: h2c`` allowed on cleartext only).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..connection_info import HTTP1_CAPABILITIES, HTTP2_CAPABILITIES, ConnectionInfo
from ..events import PeerHalfClosed
from ..protocol.base import ByteStreamProtocol
from ..protocol.engines import new_http1_protocol
from ..protocol.http1 import H2CUpgrade
from ..protocol.http1_rules import HTTP1Connection
from .driver import ConnectionDriver

if TYPE_CHECKING:
    from ..registry import ConnectionRecord
    from .context import ServerContext

# RFC 9113 §3.4: the client connection preface.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: HTTP/2 reads no more from a peer while this much (or the write budget, if smaller) of
#: what it asked for is framed or being written and it does not read. Low, because each
#: PING or SETTINGS it sends costs ~30 us of h2 and makes a frame to answer: filling a
#: 1 MiB budget with PING ACKs would take 2 s of CPU.
READ_PAUSE = 64 * 1024

_current_time = time.monotonic


def preface_verdict(data: bytes) -> bool | None:
    """``True`` once ``data`` starts with the HTTP/2 preface, ``False`` once it cannot,
    ``None`` while it is a prefix of it (read more)."""
    size = min(len(data), len(H2_PREFACE))
    if data[:size] != H2_PREFACE[:size]:
        return False
    if size == len(H2_PREFACE):
        return True
    return None


def start_protocol(
    context: ServerContext,
    record: ConnectionRecord,
    client: tuple[str, int] | None,
    server: tuple[str, int] | None,
    tls: dict[str, Any] | None,
    use_h2: bool,
) -> tuple[ConnectionInfo, ByteStreamProtocol]:
    """The connection's info and its HTTP/1.1 or HTTP/2 protocol object."""
    config = context.config
    now = _current_time()
    base = ConnectionInfo(
        http_version="1.1",
        scheme="https" if tls is not None else "http",
        client=client,
        server=server,
        capabilities=HTTP1_CAPABILITIES,
        tls=tls,
        alt_svc=context.alt_svc if tls is not None else None,
        default_headers=context.default_headers,
        date_header=context.config.date_header,
        default_names=context.default_names,
    )
    if use_h2:
        from ..protocol.http2 import H2Protocol

        record.alpn = "h2" if tls is not None else "h2c"
        return base.with_protocol("2", HTTP2_CAPABILITIES), H2Protocol(config, now)
    record.alpn = "http/1.1"
    return base, new_http1_protocol(config, now, allow_h2c=tls is None)


class ByteStreamBase(ConnectionDriver):
    """HTTP/1.1 or HTTP/2 on one TCP, TLS or Unix connection: the I/O-free part."""

    protocol: ByteStreamProtocol

    def __init__(
        self,
        context: ServerContext,
        info: ConnectionInfo,
        protocol: ByteStreamProtocol,
        record: ConnectionRecord,
    ) -> None:
        super().__init__(context, info, protocol, record)
        self._read_budget = min(self._budget, READ_PAUSE)
        self._batch_writes = info.capabilities.multiplexed
        self._upgrade: H2CUpgrade | None = None

    def _request_flush(self) -> None:
        """Have what the protocol produced written soon by the connection itself."""
        raise NotImplementedError

    def _receive(self, data: bytes) -> None:
        self.protocol.receive_data(data, _current_time())
        self._dispatch()

    def _on_other_event(self, event: object) -> None:
        if type(event) is H2CUpgrade:
            self._upgrade = event
        elif type(event) is PeerHalfClosed:
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream.peer_half_closed()

    def _become_h2c(self, upgrade: H2CUpgrade) -> None:
        """RFC 7540 §3.2: after the ``101`` (the caller writes it), the server preface; the
        upgraded request becomes stream 1, and what followed it is HTTP/2."""
        from ..protocol.http2 import H2Protocol

        self._batch_writes = True
        self._max_runners = 1_000_000
        self.protocol = H2Protocol.from_h2c_upgrade(
            self.config, _current_time(), upgrade.settings, upgrade.request
        )
        self._info = self._info.with_protocol("2", HTTP2_CAPABILITIES)
        self._record.alpn = "h2c"
        self._dispatch()
        if upgrade.trailing_data:
            self._receive(upgrade.trailing_data)

    # -- the StreamHost interface used by HTTPStream ----------------------------------

    async def flush(self, stream_id: int) -> None:
        """As :meth:`ConnectionDriver.flush`; but on an HTTP/1.1 WebSocket tunnel, while
        less than the write buffer is queued, the write is left to the connection, so
        the frames of a burst (an app echoing queued messages) leave in one write
        instead of one syscall each (py-spy: 24% of an h1 echo was those writes)."""
        if self._defer_tunnel_write():
            return
        await super().flush(stream_id)

    def _defer_tunnel_write(self) -> bool:
        """On an HTTP/1.1 WebSocket tunnel with less than the write buffer queued, leave
        the write to the connection (see :meth:`flush`); whether it did."""
        protocol = self.protocol
        if (
            # Only HTTP/1.1 turns into a WebSocket tunnel.
            isinstance(protocol, HTTP1Connection)
            and protocol.tunnel
            and protocol.pending() < self._buffer_limit
            and not self._broken
        ):
            self._request_flush()
            return True
        return False

    # -- shutdown ----------------------------------------------------------------------

    def shutdown(self) -> None:
        """Begin a graceful close: GOAWAY on HTTP/2, close-when-idle on HTTP/1.1."""
        self.protocol.shutdown()
        self._shutdown_streams()
        # GOAWAY (HTTP/2) is written by the connection itself, from its own context.
        self._request_flush()
        self._poke_reader()
