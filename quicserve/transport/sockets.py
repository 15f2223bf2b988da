"""Listening sockets and the byte streams of accepted connections.

This is where the event loop in use matters for sockets (``lowlevel.py`` picks the
one-shot wake-up for it): a :class:`Listener`'s ``accept`` gives an
``anyio.abc.SocketStream`` either way.

* On trio (and anything else) it is anyio's own socket stream. HTTP connections are served
  on its socket with trio's own primitives (``connection/bytestream.py`` ``SocketDriver``
  and ``TLSSocketDriver``); the stream owns the socket (closing it tells trio the
  descriptor is closing) and is what the metrics listener reads and writes.
* On asyncio and uvloop it is :class:`_AsyncioSocketStream`, a thin asyncio ``Protocol``
  adapter (the metrics listener's; HTTP connections there are accepted as plain sockets,
  :meth:`Listener.accept_socket`, and served callback-driven: ``transport/callback.py``).
  anyio's asyncio stream pauses and resumes the transport around every
  ``receive`` (two ``epoll_ctl`` calls per read) and yields to the loop on every ``send``;
  at tens of thousands of small requests a second that was a third of the server's time
  (profiled with py-spy). This adapter keeps reading until its buffer passes a high-water
  mark and only waits in ``send`` when the transport asked to pause writing.

Both behave the same to callers: cancel-safe ``receive``/``send``, ``EndOfStream`` at EOF,
``BrokenResourceError`` once the connection is lost. The whole test suite runs on both.

It also turns a bind string into a socket (:func:`open_stream_socket`,
:func:`~quicserve.transport.udp.open_udp_socket`). A bind is one of

* ``HOST:PORT`` (``[::1]:PORT`` for IPv6): we create and bind the socket;
* ``unix:/path``: a stream socket on a Unix path (TCP-style: HTTP/1.1 and HTTP/2, TLS
  if configured). A stale socket file nobody listens on is replaced; a live one is
  "address already in use". ``--unix-socket-mode`` sets its permissions. The file is
  removed when the listener that created it closes;
* ``fd://N``: a socket we inherited as file descriptor N (from a supervisor, systemd,
  or a shell). ``getsockopt(SO_TYPE)`` must say stream for ``--bind`` and datagram for
  ``--quic-bind``; anything else is a :class:`BindError`, never a traceback.

:func:`systemd_binds` reads systemd socket activation (``LISTEN_PID``/``LISTEN_FDS``, fds
from 3 on) and sorts the sockets into stream (``--bind``) and datagram (``--quic-bind``)
by ``SO_TYPE``.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import socket
import stat
import struct
from collections import deque
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import sniffio

from ..addresses import parse_bind

_HIGH_WATER = 256 * 1024
#: The listen() backlog when none is given (``Config.backlog``, Uvicorn's default too).
DEFAULT_BACKLOG = 2048


class BindError(Exception):
    """An address cannot be listened on (in use, not available, bad syntax)."""


#: systemd's first passed file descriptor (sd_listen_fds(3): SD_LISTEN_FDS_START).
SYSTEMD_FIRST_FD = 3


def inherited_socket(
    bind: str, kind: socket.SocketKind, *, backlog: int = DEFAULT_BACKLOG
) -> socket.socket:
    """The socket inherited as ``fd://N``, checked to be of ``kind`` (stream or datagram)."""
    number = bind[len("fd://") :]
    if not number.isdigit():
        raise BindError(f"bad bind {bind!r}: expected fd://N with N a file descriptor number")
    fd = int(number)
    try:
        sock_type = _sock_type(fd)
    except OSError as exc:
        if exc.errno in (errno.EBADF, errno.ENOTSOCK):
            raise BindError(f"{bind}: file descriptor {fd} is not an open socket") from None
        raise BindError(f"{bind}: {(exc.strerror or str(exc)).lower()}") from None
    if sock_type != kind:
        wanted, option = (
            ("a stream", "--bind") if kind == socket.SOCK_STREAM else ("a datagram", "--quic-bind")
        )
        raise BindError(f"{bind} is not {wanted} socket, which {option} needs")
    sock = socket.socket(fileno=fd)
    if kind == socket.SOCK_STREAM and not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        try:
            sock.listen(backlog)
        except OSError as exc:
            sock.detach()
            reason = (exc.strerror or str(exc)).lower()
            raise BindError(f"{bind}: cannot listen: {reason}") from None
    sock.setblocking(False)
    return sock


def _sock_type(fd: int) -> int:
    # socket.socket(fileno=fd) already reads SO_TYPE, but ask explicitly: this is the
    # documented way to tell a stream from a datagram socket (sd_is_socket(3)).
    probe = socket.socket(fileno=fd)
    try:
        return probe.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
    finally:
        probe.detach()


def systemd_binds(unset: bool = True) -> tuple[list[str], list[str]]:
    """Sockets passed by systemd socket activation as ``fd://N`` binds: (stream, datagram).

    Only when ``LISTEN_PID`` is this process (sd_listen_fds(3)); the variables are then
    removed (``unset``) so that processes the app starts do not take the sockets for theirs.
    """
    pid, count = os.environ.get("LISTEN_PID", ""), os.environ.get("LISTEN_FDS", "")
    if not pid.isdigit() or int(pid) != os.getpid() or not count.isdigit():
        return [], []
    if unset:
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)
    streams: list[str] = []
    datagrams: list[str] = []
    for fd in range(SYSTEMD_FIRST_FD, SYSTEMD_FIRST_FD + int(count)):
        try:
            kind = _sock_type(fd)
        except OSError:
            continue  # not a socket (systemd can pass FIFOs): not ours to serve
        if kind == socket.SOCK_STREAM:
            streams.append(f"fd://{fd}")
        elif kind == socket.SOCK_DGRAM:
            datagrams.append(f"fd://{fd}")
    return streams, datagrams


def create_unix_socket(
    path: str, mode: int | None = None, *, backlog: int = DEFAULT_BACKLOG
) -> socket.socket:
    """A listening stream socket on the Unix ``path`` (see the module docstring)."""
    where = f"unix:{path}"
    if not path:
        raise BindError("bad bind 'unix:': expected unix:/path/to/socket")
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # stale: left by a process that is gone
            else:
                raise BindError(f"cannot listen on {where}: address already in use")
            finally:
                probe.close()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise BindError(f"cannot listen on {where}: {(exc.strerror or str(exc)).lower()}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        if mode is not None:
            os.chmod(path, mode)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise BindError(f"cannot listen on {where}: {(reason or str(exc)).lower()}") from None
    return sock


def open_stream_socket(
    bind: str,
    *,
    unix_mode: int | None = None,
    reuse_port: bool = False,
    backlog: int = DEFAULT_BACKLOG,
) -> socket.socket:
    """A listening stream socket for ``bind`` (``HOST:PORT``, ``unix:/path``, ``fd://N``);
    ``backlog`` (``--backlog``) is its listen() queue (an inherited socket that already
    listens keeps the one it was given)."""
    if bind.startswith("fd://"):
        return inherited_socket(bind, socket.SOCK_STREAM, backlog=backlog)
    if bind.startswith("unix:"):
        return create_unix_socket(bind[len("unix:") :], unix_mode, backlog=backlog)
    try:
        host, port = parse_bind(bind)
    except ValueError as exc:
        raise BindError(str(exc)) from None
    return create_listening_socket(host, port, reuse_port=reuse_port, backlog=backlog)


def create_listening_socket(
    host: str, port: int, *, backlog: int = DEFAULT_BACKLOG, reuse_port: bool = False
) -> socket.socket:
    """A bound, listening, non-blocking TCP socket (IPv6 sockets are IPv6-only)."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise BindError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, socktype, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise BindError(f"cannot listen on {host}:{port}: {(reason or str(exc)).lower()}") from None
    return sock


class Listener:
    """Accepts connections on one listening socket, on whichever backend is running."""

    def __init__(self, sock: socket.socket, *, unlink_path: str | None = None) -> None:
        self.socket = sock
        self._asyncio = sniffio.current_async_library() == "asyncio"
        self._anyio_listener: anyio.abc.SocketListener | None = None
        self._inet = sock.family in (socket.AF_INET, socket.AF_INET6)
        #: The Unix socket file this process created, removed on close.
        self._unlink_path = unlink_path

    @property
    def is_unix(self) -> bool:
        """Whether this listens on a Unix path rather than an IP address."""
        return self.socket.family == socket.AF_UNIX

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); (path, 0) for a Unix socket."""
        name = self.socket.getsockname()
        if isinstance(name, (str, bytes)):
            return (os.fsdecode(name), 0)
        return (str(name[0]), int(name[1]))

    @property
    def callback_io(self) -> bool:
        """Whether connections are served callback-driven (asyncio and uvloop: see
        ``transport/callback.py``), accepted with :meth:`accept_socket`."""
        return self._asyncio

    async def accept_socket(self) -> socket.socket:
        """The next connection as a plain non-blocking socket (asyncio only), with
        TCP_NODELAY set."""
        loop = asyncio.get_running_loop()
        try:
            conn, _ = await loop.sock_accept(self.socket)
        except OSError as exc:
            if self.socket.fileno() < 0:
                raise anyio.ClosedResourceError from exc
            raise
        self.prepare_socket(conn)
        return conn

    def prepare_socket(self, conn: socket.socket) -> None:
        """Set what an accepted connection needs before it is served (TCP_NODELAY). A
        peer that already reset is left for the server to find and drop."""
        if self._inet:
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    async def accept(self) -> anyio.abc.SocketStream:
        """The next connection, with TCP_NODELAY set."""
        if not self._asyncio:
            if self._anyio_listener is None:
                self._anyio_listener = await anyio.abc.SocketListener.from_socket(self.socket)
            return await self._anyio_listener.accept()
        loop = asyncio.get_running_loop()
        try:
            conn, _ = await loop.sock_accept(self.socket)
        except OSError as exc:
            if self.socket.fileno() < 0:
                raise anyio.ClosedResourceError from exc
            raise
        if self._inet:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport, protocol = await loop.connect_accepted_socket(_StreamProtocol, conn)
        return _AsyncioSocketStream(transport, protocol)

    def accept_nowait(self) -> socket.socket | None:
        """A connection already waiting in the backlog, or ``None`` if there is none.

        The accept loop drains the backlog with this after each ``accept``: one
        ``accept`` a loop turn starves new clients while the server is busy, because a
        turn then runs every busy connection's work (issue 11: under h2load's 50 TLS
        connections the last ten waited over 2 s to be accepted). OSError (EMFILE, a
        closed socket) propagates, as from ``accept``. Make the stream with ``open``.
        """
        try:
            conn, _ = self.socket.accept()
        except (BlockingIOError, InterruptedError):
            return None
        conn.setblocking(False)
        return conn

    async def open(self, conn: socket.socket) -> anyio.abc.SocketStream:
        """The stream ``accept`` would have made of the accepted socket ``conn``."""
        if self._inet:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self._asyncio:
            return await anyio.abc.SocketStream.from_socket(conn)
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.connect_accepted_socket(_StreamProtocol, conn)
        return _AsyncioSocketStream(transport, protocol)

    async def aclose(self) -> None:
        """Stop listening."""
        if self._anyio_listener is not None:
            await self._anyio_listener.aclose()
        self.socket.close()
        if self._unlink_path is not None:
            path, self._unlink_path = self._unlink_path, None
            try:
                os.unlink(path)
            except OSError:
                pass


class _StreamProtocol(asyncio.Protocol):
    """Buffers what asyncio delivers until :class:`_AsyncioSocketStream` takes it."""

    __slots__ = (
        "buffer",
        "buffered",
        "eof",
        "lost",
        "read_paused",
        "reader",
        "transport",
        "write_paused",
        "writer",
    )

    def __init__(self) -> None:
        self.buffer: deque[bytes] = deque()
        self.buffered = 0
        self.eof = False
        self.lost = False
        self.read_paused = False
        self.write_paused = False
        self.reader: asyncio.Future[None] | None = None
        self.writer: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer.append(data)
        self.buffered += len(data)
        if self.buffered > _HIGH_WATER and not self.read_paused:
            self.read_paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self._wake_reader()
        self._wake_writer()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_writer()

    def _wake_reader(self) -> None:
        reader = self.reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    def _wake_writer(self) -> None:
        writer = self.writer
        if writer is not None and not writer.done():
            writer.set_result(None)


class _AsyncioSocketStream(anyio.abc.SocketStream):
    """An ``anyio.abc.SocketStream`` over an asyncio transport and :class:`_StreamProtocol`."""

    def __init__(self, transport: asyncio.Transport, protocol: _StreamProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        self._closed = False

    @property
    def _raw_socket(self) -> Any:
        sock = self._transport.get_extra_info("socket")
        if sock is None:  # uvloop drops it once the connection is lost
            raise anyio.BrokenResourceError
        return sock

    async def receive(self, max_bytes: int = 65536) -> bytes:
        protocol = self._protocol
        while not protocol.buffer:
            if self._closed:
                raise anyio.ClosedResourceError
            if protocol.eof:
                raise anyio.EndOfStream
            if protocol.lost:
                raise anyio.BrokenResourceError
            waiter = protocol.reader = self._loop.create_future()
            try:
                await waiter
            finally:
                protocol.reader = None
        data = protocol.buffer.popleft()
        if len(data) > max_bytes:
            protocol.buffer.appendleft(data[max_bytes:])
            data = data[:max_bytes]
        protocol.buffered -= len(data)
        if protocol.read_paused and protocol.buffered < _HIGH_WATER // 2:
            protocol.read_paused = False
            self._transport.resume_reading()
        return data

    async def send(self, item: bytes) -> None:
        protocol = self._protocol
        if self._closed:
            raise anyio.ClosedResourceError
        if protocol.lost or self._transport.is_closing():
            raise anyio.BrokenResourceError
        self._transport.write(item)
        while protocol.write_paused and not protocol.lost:
            waiter = protocol.writer = self._loop.create_future()
            try:
                await waiter
            finally:
                protocol.writer = None
        if protocol.lost:
            raise anyio.BrokenResourceError

    async def send_eof(self) -> None:
        if self._transport.can_write_eof():
            self._transport.write_eof()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._transport.close()
            self._protocol._wake_reader()


#: setsockopt(SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF) from asm-generic/socket.h.
SO_ATTACH_REUSEPORT_CBPF = 51


def attach_cbpf(fileno: int, program: Sequence[tuple[int, int, int, int]]) -> None:
    """Attach ``program`` to the ``SO_REUSEPORT`` group of socket ``fileno`` (Linux).

    Raises ``OSError`` where the kernel does not support it; replacing a program that is
    attached already is allowed (the group keeps its sockets and their order).
    """
    raw = b"".join(struct.pack("=HBBI", opcode, jt, jf, k) for opcode, jt, jf, k in program)
    filters = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("@HP", len(program), ctypes.addressof(filters))
    sock = socket.socket(fileno=fileno)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    finally:
        sock.detach()
