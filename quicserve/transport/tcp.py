"""TCP endpoints: a listening socket (TCP or Unix) with its TLS settings, and the accept loop.

Sockets only: an accepted stream is handed to the ``serve`` callable the server passes in
(:func:`quicserve.connection.bytestream.serve_connection`), which does the TLS handshake,
picks HTTP/1.1 or HTTP/2 and drives the connection.

Rules:

* A connection takes a slot in the registry before it is accepted, so the server stops
  accepting at ``max_connections`` instead of failing requests.
* Accept errors such as EMFILE are logged and retried after a pause, never fatal.
* Each wake-up takes every connection waiting in the backlog (up to ``_ACCEPT_BURST``
  and the free slots), so a busy server does not make new clients wait a loop turn each.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from ..tls import TLSInfoBuilder
from .sockets import DEFAULT_BACKLOG, BindError, Listener, open_stream_socket

__all__ = ["BindError", "TCPEndpoint", "accept_loop", "open_tcp_endpoints"]

if TYPE_CHECKING:
    from ..registry import ConnectionRegistry

logger = logging.getLogger("quicserve.error")

#: Connections taken from the backlog per wake-up of the accept loop, on top of the one
#: ``accept`` returned (asyncio's own servers take up to their backlog, 100).
_ACCEPT_BURST = 100


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
    backlog: int = DEFAULT_BACKLOG,
) -> list[TCPEndpoint]:
    """Listen on ``bind`` (``HOST:PORT``, ``unix:/path`` or ``fd://N``) with a listen()
    queue of ``backlog``; raises :class:`BindError` with a clear reason."""
    sock = open_stream_socket(bind, unix_mode=unix_mode, backlog=backlog)
    unlink = bind[len("unix:") :] if bind.startswith("unix:") else None
    return [TCPEndpoint(Listener(sock, unlink_path=unlink), ssl_context, tls_info)]


async def accept_loop(
    endpoint: TCPEndpoint,
    registry: ConnectionRegistry,
    task_group: anyio.abc.TaskGroup,
    serve: Callable[
        [anyio.abc.SocketStream | socket.socket, TCPEndpoint], Coroutine[Any, Any, None]
    ],
) -> None:
    """Accept connections until cancelled; ``serve(stream, endpoint)`` runs each in
    ``task_group`` (it owns the registry slot taken for it). On asyncio and uvloop the
    stream is the accepted socket itself, to be served callback-driven
    (``transport/callback.py``); elsewhere an anyio socket stream."""
    listener = endpoint.listener
    callback_io = listener.callback_io
    while True:
        await registry.acquire_slot()
        try:
            stream: anyio.abc.SocketStream | socket.socket
            if callback_io:
                stream = await listener.accept_socket()
            else:
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
        task_group.start_soon(serve, stream, endpoint)
        # Take every connection already queued now, not one per loop turn (see
        # Listener.accept_nowait); each makes its stream in its own task.
        for _ in range(_ACCEPT_BURST):
            if not registry.try_acquire_slot():
                break
            try:
                conn = listener.accept_nowait()
            except OSError:
                conn = None  # the next accept() meets the error and reports it
            if conn is None:
                registry.release_slot()
                break
            if callback_io:
                # Served callback-driven like the one accept() gave (it owns the slot).
                listener.prepare_socket(conn)
                task_group.start_soon(serve, conn, endpoint)
            else:
                task_group.start_soon(_open_and_serve, conn, endpoint, registry, serve)


async def _open_and_serve(
    conn: socket.socket,
    endpoint: TCPEndpoint,
    registry: ConnectionRegistry,
    serve: Callable[
        [anyio.abc.SocketStream | socket.socket, TCPEndpoint], Coroutine[Any, Any, None]
    ],
) -> None:
    try:
        stream = await endpoint.listener.open(conn)
    except (OSError, ValueError):
        # The peer hung up before its stream was made: nothing to serve. (anyio's trio
        # stream refuses a socket that is no longer connected with ValueError.)
        conn.close()
        registry.release_slot()
        return
    except BaseException:
        conn.close()
        registry.release_slot()
        raise
    await serve(stream, endpoint)
