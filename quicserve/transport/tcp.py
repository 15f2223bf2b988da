"""TCP endpoints: listen, accept, TLS handshake, and pick the protocol for the connection.

A thin transport: it knows how to get a connected byte stream and which protocol the peer
asked for (TLS ALPN, or the HTTP/2 connection preface on cleartext), and nothing about
HTTP itself. The connection is then served by :class:`~quicserve.connection.ByteStreamConnection`.

Rules:

* A connection takes a slot in the registry before it is accepted, so the server stops
  accepting at ``max_connections`` instead of failing requests.
* The TLS handshake and the first bytes on cleartext are bounded by
  ``header_read_timeout``: a silent peer cannot hold a slot.
* Accept errors such as EMFILE are logged and retried after a pause, never fatal.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from time import monotonic
from typing import TYPE_CHECKING

import anyio
import anyio.abc
from anyio.streams.tls import TLSAttribute, TLSStream

from ..connection import ByteStreamConnection
from ..connection_info import HTTP1_CAPABILITIES, HTTP2_CAPABILITIES, ConnectionInfo
from ..protocol.base import ByteStreamProtocol
from ..protocol.http1 import H1Protocol
from ..tls import TLSInfoBuilder
from .sockets import BindError, Listener, open_stream_socket

__all__ = ["BindError", "TCPEndpoint", "accept_loop", "open_tcp_endpoints"]

if TYPE_CHECKING:
    from ..server import ServerContext

logger = logging.getLogger("quicserve.error")

# RFC 9113 §3.4: the client connection preface.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass(slots=True)
class TCPEndpoint:
    """One listening TCP socket and how to treat its connections."""

    listener: Listener
    ssl_context: ssl.SSLContext | None
    tls_info: TLSInfoBuilder | None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        return self.listener.address


def open_tcp_endpoints(
    bind: str,
    ssl_context: ssl.SSLContext | None,
    tls_info: TLSInfoBuilder | None,
    *,
    unix_mode: int | None = None,
) -> list[TCPEndpoint]:
    """Listen on ``bind`` (``HOST:PORT``, ``unix:/path`` or ``fd://N``); raises
    :class:`BindError` with a clear reason."""
    sock = open_stream_socket(bind, unix_mode=unix_mode)
    unlink = bind[len("unix:") :] if bind.startswith("unix:") else None
    return [TCPEndpoint(Listener(sock, unlink_path=unlink), ssl_context, tls_info)]


async def accept_loop(
    endpoint: TCPEndpoint, context: ServerContext, task_group: anyio.abc.TaskGroup
) -> None:
    """Accept connections until cancelled, serving each in ``task_group``."""
    registry = context.registry
    listener = endpoint.listener
    while True:
        await registry.acquire_slot()
        try:
            stream = await listener.accept()
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            registry.release_slot()
            return
        except OSError as exc:
            registry.release_slot()
            logger.warning("accept() failed: %s; retrying shortly", exc)
            await anyio.sleep(0.1)
            continue
        except BaseException:
            registry.release_slot()
            raise
        task_group.start_soon(serve_connection, stream, endpoint, context)


async def serve_connection(
    stream: anyio.abc.SocketStream, endpoint: TCPEndpoint, context: ServerContext
) -> None:
    """Handshake, choose HTTP/1.1 or HTTP/2, and serve the connection to its end."""
    config = context.config
    try:
        client = _address(stream.extra(anyio.abc.SocketAttribute.remote_address))
        server = _address(stream.extra(anyio.abc.SocketAttribute.local_address))
    except Exception:
        # The peer already hung up (reset, or closed before we looked): nothing to serve.
        context.registry.release_slot()
        await _aclose(stream)
        return
    record = context.registry.add("tcp", "tls" if endpoint.ssl_context else "tcp", client, server)
    try:
        byte_stream: anyio.abc.ByteStream = stream
        initial = b""
        tls = None
        alt_svc = None
        with anyio.move_on_after(config.header_read_timeout) as scope:
            if endpoint.ssl_context is not None:
                try:
                    tls_stream = await TLSStream.wrap(
                        stream,
                        server_side=True,
                        ssl_context=endpoint.ssl_context,
                        standard_compatible=False,
                    )
                except (ssl.SSLError, OSError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
                    logger.debug("TLS handshake with %s failed: %s", client, exc)
                    context.registry.handshake_failures["tcp"] += 1
                    await _aclose(stream)
                    return
                byte_stream = tls_stream
                alpn = tls_stream.extra(TLSAttribute.alpn_protocol, None)
                assert endpoint.tls_info is not None
                tls = endpoint.tls_info.build(tls_stream.extra(TLSAttribute.ssl_object))
                use_h2 = alpn == "h2"
                alt_svc = context.alt_svc
            else:
                initial, use_h2 = await _sniff_preface(stream)
        if scope.cancelled_caught:
            await _aclose(byte_stream)
            return
        now = monotonic()
        base = ConnectionInfo(
            http_version="1.1",
            scheme="https" if tls is not None else "http",
            client=client,
            server=server,
            capabilities=HTTP1_CAPABILITIES,
            tls=tls,
            alt_svc=alt_svc,
        )
        if use_h2:
            from ..protocol.http2 import H2Protocol

            info = base.with_protocol("2", HTTP2_CAPABILITIES)
            protocol: ByteStreamProtocol = H2Protocol(config, now)
            record.protocol = "h2" if tls is not None else "h2c"
        else:
            info = base
            protocol = H1Protocol(config, now, allow_h2c=tls is None)
            record.protocol = "http/1.1"
        connection = ByteStreamConnection(context, byte_stream, info, protocol, record)
        context.registry.attach(record, connection)
        await connection.run(initial)
    except Exception:
        # A bug in one connection must not take the server down: log it, drop only
        # this connection.
        logger.exception("Unexpected error on connection from %s", client)
        await _aclose(stream)
    finally:
        context.registry.remove(record)


async def _sniff_preface(stream: anyio.abc.SocketStream) -> tuple[bytes, bool]:
    """Read until the first bytes tell HTTP/2 prior knowledge from HTTP/1.1."""
    data = b""
    while True:
        try:
            chunk = await stream.receive(65536)
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            return data, False
        data += chunk
        size = min(len(data), len(_H2_PREFACE))
        if data[:size] != _H2_PREFACE[:size]:
            return data, False
        if size == len(_H2_PREFACE):
            return data, True


def _address(value: object) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return (str(value[0]), int(value[1]))
    return None


async def _aclose(stream: anyio.abc.AsyncResource) -> None:
    with anyio.CancelScope(shield=True), anyio.move_on_after(1):
        try:
            await stream.aclose()
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
