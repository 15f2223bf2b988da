"""The UDP endpoint: one socket's datagrams in batches, sends with segmentation offload,
one timer wheel and one flusher for every QUIC connection behind it.

Sockets only: it knows nothing of QUIC. Datagrams read go to the ``on_datagram`` callable it
was given (:class:`~quicserve.connection.quic.QuicListener`); timers and deferred sends call
back the :class:`DatagramPeer` registered under a key (one QUIC connection's driver).

Rules:

* Datagrams are read in batches: wait until the socket is readable, then ``recvfrom``
  until it would block (at most ``_BATCH`` at a time, so one busy socket cannot starve
  the loop). Sends are plain non-blocking ``sendto`` calls, which cannot interleave; if
  the kernel buffer is full the datagram waits for writability (serialized by a lock).
* One timer wheel drives every connection's single deadline. The heap holds keys, not
  peers: a finished peer is gone from ``peers`` at once, and its entries cost a tuple until
  they expire. No task is spawned per send or per timer.
* An exception from ``on_datagram`` is logged; a bad datagram never stops the endpoint.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Protocol

import anyio
import anyio.abc
import anyio.lowlevel

from ..addresses import parse_bind
from ..lowlevel import Wakeup, wakeup_factory
from .sockets import BindError, inherited_socket

logger = logging.getLogger("quicserve.error")

_BATCH = 64
# Linux UDP_SEGMENT (GSO): at most 64 segments and 64 KiB per send.
_UDP_SEGMENT = 103
_GSO_MAX_SEGMENTS = 64
_GSO_MAX_BYTES = 65000
_now = time.monotonic


class DatagramPeer(Protocol):
    """One connection behind the endpoint, as its timers and deferred sends see it."""

    def timer_fired(self, now: float) -> None:
        """One of the entries :meth:`UDPEndpoint.arm` made for this peer is due."""

    def transmit_now(self, now: float) -> None:
        """The flusher's turn: send what the connection has."""


class UDPEndpoint:
    """One bound UDP socket and the tasks that serve it."""

    def __init__(
        self,
        sock: socket.socket,
        peers: Mapping[Hashable, DatagramPeer],
        on_datagram: Callable[[bytes, Any], None],
    ) -> None:
        self.socket = sock
        self._peers = peers
        self._on_datagram = on_datagram
        self.stats = {"datagrams_in": 0, "datagrams_out": 0, "send_blocked": 0, "gso_sends": 0}
        self._gso = hasattr(socket.socket, "sendmsg") and os.name == "posix"
        self._read_scope: anyio.CancelScope | None = None
        self._send_lock = anyio.Lock()
        self._task_group: anyio.abc.TaskGroup | None = None
        self._heap: list[tuple[float, int, Hashable]] = []
        self._heap_seq = itertools.count()
        self._wheel_target = math.inf
        self._wheel_wakeup: anyio.Event | None = None
        # Peers with output to send at the next turn of the flusher task.
        self._dirty: dict[Hashable, DatagramPeer] = {}
        self._flush_wakeup: Wakeup | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        name = self.socket.getsockname()
        return (str(name[0]), int(name[1]))

    @property
    def gso_enabled(self) -> bool:
        """Whether datagram runs still go out with UDP segmentation offload."""
        return self._gso

    async def serve(self, task_group: anyio.abc.TaskGroup) -> None:
        """Run the timer wheel and the flusher in ``task_group`` and read datagrams until
        cancelled or :meth:`stop_reading`."""
        self._task_group = task_group
        task_group.start_soon(self._timer_wheel)
        task_group.start_soon(self._flusher)
        with anyio.CancelScope() as self._read_scope:
            await self._read_loop()

    def stop_reading(self) -> None:
        """Stop reading the socket; sending and timers go on."""
        if self._read_scope is not None:
            self._read_scope.cancel()

    def close(self) -> None:
        """Close the socket."""
        self.socket.close()

    async def _read_loop(self) -> None:
        sock = self.socket
        stats = self.stats
        on_datagram = self._on_datagram
        while True:
            await anyio.wait_readable(sock)
            for _ in range(_BATCH):
                try:
                    data, addr = sock.recvfrom(65536)
                except BlockingIOError:
                    break
                except OSError:
                    # ICMP errors surface here on Linux (e.g. port unreachable): ignore.
                    continue
                stats["datagrams_in"] += 1
                try:
                    on_datagram(data, addr)
                except Exception:
                    logger.exception("Unexpected error handling a datagram from %s", addr)

    # -- sending ------------------------------------------------------------------------

    def send_many(self, datagrams: list[tuple[bytes, Any]]) -> None:
        """Send a connection's datagrams, in runs of one ``sendmsg`` each where possible.

        With UDP generic segmentation offload (Linux ``UDP_SEGMENT``) a run of datagrams
        of one size to one address (the last may be shorter) goes to the kernel as one
        buffer that it splits: one syscall instead of one per ~1350 bytes, which was 14% of
        a bulk download's time. Where the kernel refuses, we fall back to ``sendto``.
        """
        count = len(datagrams)
        if not self._gso or count < 2:
            for data, addr in datagrams:
                self.sendto(data, addr)
            return
        i = 0
        while i < count:
            data, addr = datagrams[i]
            size = len(data)
            total = size
            j = i + 1
            while j < count and j - i < _GSO_MAX_SEGMENTS:
                following, to = datagrams[j]
                length = len(following)
                if to != addr or length > size or total + length > _GSO_MAX_BYTES:
                    break
                total += length
                j += 1
                if length < size:
                    break  # only the last segment may be shorter
            if j - i == 1 or not self._send_segments(datagrams[i:j], size, addr):
                for one, to in datagrams[i:j]:
                    self.sendto(one, to)
            i = j

    def _send_segments(self, run: list[tuple[bytes, Any]], size: int, addr: Any) -> bool:
        try:
            self.socket.sendmsg(
                [data for data, _ in run],  # gathered by the kernel, not joined here
                [(socket.SOL_UDP, _UDP_SEGMENT, size.to_bytes(2, "little"))],
                0,
                addr,
            )
        except BlockingIOError:
            return False
        except OSError as exc:
            logger.info("UDP segmentation offload unavailable (%s); sending datagrams singly", exc)
            self._gso = False
            return False
        self.stats["datagrams_out"] += len(run)
        self.stats["gso_sends"] += 1
        return True

    def sendto(self, data: bytes, addr: Any) -> None:
        """Send one datagram now; if the kernel buffer is full, send it when writable."""
        try:
            self.socket.sendto(data, addr)
            self.stats["datagrams_out"] += 1
        except BlockingIOError:
            self.stats["send_blocked"] += 1
            if self._task_group is not None:
                self._task_group.start_soon(self._send_when_writable, data, addr)
        except OSError as exc:
            logger.debug("sendto %s failed: %s", addr, exc)

    async def _send_when_writable(self, data: bytes, addr: Any) -> None:
        # anyio sockets allow one waiting sender at a time: serialize.
        async with self._send_lock:
            for _ in range(100):
                await anyio.wait_writable(self.socket)
                try:
                    self.socket.sendto(data, addr)
                    self.stats["datagrams_out"] += 1
                    return
                except BlockingIOError:
                    continue
                except OSError:
                    return

    def request_transmit(self, key: Hashable, peer: DatagramPeer) -> None:
        """Call ``peer.transmit_now`` at the flusher's next turn, not now.

        Apps' ``send()`` calls only mark their connection: everything the streams of all
        connections produce until the event loop runs the flusher leaves together, so
        a WebSocket echoing a burst of messages sends a few full packets rather than a
        packet per message.
        """
        self._dirty[key] = peer
        wakeup = self._flush_wakeup
        if wakeup is not None:
            self._flush_wakeup = None
            wakeup.set()

    def forget_transmit(self, key: Hashable) -> None:
        """The peer under ``key`` is sending its output itself right now."""
        self._dirty.pop(key, None)

    async def _flusher(self) -> None:
        new_wakeup = wakeup_factory()
        while True:
            if not self._dirty:
                wakeup = self._flush_wakeup = new_wakeup()
                await wakeup.wait()
            dirty, self._dirty = self._dirty, {}
            now = _now()
            for peer in dirty.values():
                peer.transmit_now(now)
            await anyio.lowlevel.checkpoint()

    # -- timers -------------------------------------------------------------------------

    def arm(self, key: Hashable, deadline: float) -> None:
        """Call ``timer_fired`` on the peer registered under ``key`` at ``deadline``."""
        heapq.heappush(self._heap, (deadline, next(self._heap_seq), key))
        if deadline < self._wheel_target and self._wheel_wakeup is not None:
            self._wheel_wakeup.set()

    @property
    def timer_entries(self) -> int:
        """Entries in the timer wheel (a few per connection)."""
        return len(self._heap)

    async def _timer_wheel(self) -> None:
        heap = self._heap
        peers = self._peers
        while True:
            now = _now()
            while heap and heap[0][0] <= now:
                _, _, key = heapq.heappop(heap)
                peer = peers.get(key)
                if peer is not None:
                    peer.timer_fired(now)
            self._wheel_target = heap[0][0] if heap else math.inf
            wakeup = self._wheel_wakeup = anyio.Event()
            delay = self._wheel_target - now if heap else 3600.0
            with anyio.move_on_after(max(delay, 0.0)):
                await wakeup.wait()


def open_udp_socket(bind: str, *, reuse_port: bool = False) -> socket.socket:
    """A bound non-blocking UDP socket for ``bind`` (``HOST:PORT`` or an inherited
    ``fd://N``); :class:`BindError` if impossible. ``reuse_port`` joins the socket to the
    ``SO_REUSEPORT`` group of the address (for workers)."""
    if bind.startswith("fd://"):
        return inherited_socket(bind, socket.SOCK_DGRAM)
    if bind.startswith("unix:"):
        raise BindError(f"{bind}: QUIC needs a UDP address or fd://N, not a Unix socket")
    try:
        host, port = parse_bind(bind)
    except ValueError as exc:
        raise BindError(str(exc)) from None
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise BindError(f"cannot listen on {bind} (UDP): {exc.strerror}") from None
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, 4 * 1024 * 1024)
            except OSError:
                pass
        sock.bind(sockaddr)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise BindError(
            f"cannot listen on {bind} (UDP): {(exc.strerror or str(exc)).lower()}"
        ) from None
    return sock


__all__ = ["BindError", "DatagramPeer", "UDPEndpoint", "open_udp_socket"]
