"""An impairing UDP relay between one client and quicserve.

The client talks to :attr:`Relay.port`; the relay forwards each datagram to the server from
its own "back" socket and sends the answers back to the client. On the way it can, per
direction and reproducibly (one seeded :class:`random.Random`, so a run with the same seed
and the same traffic makes the same choices):

- drop a fraction of datagrams (``drop``), or only the datagrams of the handshake (the
  first ``handshake_datagrams`` of each direction) or only those after it (``phase``);
- corrupt a fraction (``corrupt``): flip 1-4 random bytes, so the packet fails header or
  AEAD checks and must be dropped silently by the receiver (RFC 9000 §12.2, RFC 9001 §5.3);
- delay every datagram by ``delay`` plus a uniform ``jitter`` (forwards are scheduled on a
  heap, so jitter also reorders);
- forward only the first ``pass_to_server`` client datagrams (the amplificationlimit case:
  the server never hears the client's handshake ACKs, so the client address stays
  unvalidated);
- drop everything both ways for a while (:meth:`blackhole`), optionally triggered when the
  server has sent so many bytes (:meth:`when`);
- move its source port (:meth:`rebind`) or its source address to another 127.0.0.0/8
  address (``rebind("127.0.0.2")``; Linux loopback answers the whole /8): NAT rebinding
  (RFC 9000 §9.3) as the server sees it.

Everything it did is counted in :attr:`Relay.stats` (``c2s`` and ``s2c``), so a case can
show the impairment happened, not just that the client survived. It runs in a plain thread
with ``select``, so it works the same whatever event loop the client uses. One client at a
time: the server sees a single relay address per relay.
"""

from __future__ import annotations

import heapq
import random
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Impairment:
    """What the relay does to traffic; tuples are (client->server, server->client)."""

    seed: int = 0
    drop: tuple[float, float] = (0.0, 0.0)
    corrupt: tuple[float, float] = (0.0, 0.0)
    delay: float = 0.0  # seconds, one way
    jitter: float = 0.0  # extra uniform 0..jitter seconds, one way; reorders
    phase: str = "all"  # where drop/corrupt apply: "all", "handshake" or "transfer"
    handshake_datagrams: int = 8  # the first N datagrams of each direction are "handshake"
    pass_to_server: int | None = None  # forward only the first N client datagrams


@dataclass(slots=True)
class Counters:
    """What happened in one direction."""

    seen: int = 0  # datagrams received by the relay
    forwarded: int = 0
    bytes: int = 0  # UDP payload bytes forwarded (what the receiver got)
    dropped: int = 0  # by random loss or pass_to_server
    blackholed: int = 0
    corrupted: int = 0
    delayed: int = 0
    send_errors: int = 0  # the relay's own sendto failed (not an impairment)

    def __str__(self) -> str:
        return (
            f"{self.forwarded}/{self.seen} dgrams {self.bytes} B, dropped {self.dropped}, "
            f"blackholed {self.blackholed}, corrupted {self.corrupted}, delayed {self.delayed}"
            + (f", send errors {self.send_errors}" if self.send_errors else "")
        )


@dataclass(slots=True)
class Stats:
    """Both directions."""

    c2s: Counters = field(default_factory=Counters)
    s2c: Counters = field(default_factory=Counters)

    def __str__(self) -> str:
        return f"c->s {self.c2s}; s->c {self.s2c}"


def _udp_socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # Big buffers: the kernel must not drop datagrams the relay did not decide to drop.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
    sock.setblocking(False)
    sock.bind((host, 0))
    return sock


class Relay:
    """Relay datagrams client <-> server through the impairments of ``impairment``."""

    def __init__(
        self, server_port: int, impairment: Impairment | None = None, host: str = "127.0.0.1"
    ) -> None:
        self.server = (host, server_port)
        self.impairment = impairment or Impairment()
        self.stats = Stats()
        self.front = _udp_socket(host)
        self.port: int = self.front.getsockname()[1]
        self._random = random.Random(self.impairment.seed)
        self._lock = threading.Lock()
        self.back = self._new_back(host)
        # Every (address, port) the server has been sent from, in order.
        self.addresses: list[tuple[str, int]] = [self.back.getsockname()]
        self.client: tuple[str, int] | None = None
        self._old: list[socket.socket] = []
        self._queue: list[tuple[float, int, bool, bytes]] = []  # (due, seq, to_server, data)
        self._seq = 0
        self._blackhole_until = 0.0
        self._triggers: list[tuple[int, Callable[[], None]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)

    @property
    def ports(self) -> list[int]:
        """The source ports used towards the server, in order."""
        return [port for _, port in self.addresses]

    def _new_back(self, host: str) -> socket.socket:
        return _udp_socket(host)

    def rebind(self, host: str | None = None) -> None:
        """From now on, forward to the server from a new port (on ``host`` if given)."""
        with self._lock:
            # The old socket stays open (and relayed back): packets in flight on the old
            # path still arrive, like behind a real NAT.
            self._old.append(self.back)
            self.back = self._new_back(host or self.addresses[-1][0])
            self.addresses.append(self.back.getsockname())

    def blackhole(self, seconds: float) -> None:
        """Drop every datagram, both ways, for ``seconds`` from now."""
        self._blackhole_until = time.monotonic() + seconds

    def when(self, s2c_bytes: int, action: Callable[[], None]) -> None:
        """Run ``action`` (in the relay thread) once the server has sent ``s2c_bytes``."""
        self._triggers.append((s2c_bytes, action))

    def _impaired(self, to_server: bool, counters: Counters) -> str | None:
        """Decide the fate of the datagram just counted: "drop", "corrupt" or None."""
        imp = self.impairment
        side = 0 if to_server else 1
        if to_server and imp.pass_to_server is not None and counters.seen > imp.pass_to_server:
            return "drop"
        in_handshake = counters.seen <= imp.handshake_datagrams
        if imp.phase == "handshake" and not in_handshake:
            return None
        if imp.phase == "transfer" and in_handshake:
            return None
        # Always draw both numbers, so one knob does not shift the other's choices.
        drop, corrupt = self._random.random(), self._random.random()
        if drop < imp.drop[side]:
            return "drop"
        if corrupt < imp.corrupt[side]:
            return "corrupt"
        return None

    def _corrupt(self, data: bytes) -> bytes:
        buf = bytearray(data)
        for _ in range(self._random.randint(1, 4)):
            buf[self._random.randrange(len(buf))] ^= self._random.randint(1, 255)
        return bytes(buf)

    def _receive(self, data: bytes, to_server: bool, now: float) -> None:
        counters = self.stats.c2s if to_server else self.stats.s2c
        counters.seen += 1
        if now < self._blackhole_until:
            counters.blackholed += 1
            return
        fate = self._impaired(to_server, counters)
        if fate == "drop":
            counters.dropped += 1
            return
        if fate == "corrupt" and data:
            counters.corrupted += 1
            data = self._corrupt(data)
        imp = self.impairment
        wait = imp.delay + (self._random.uniform(0, imp.jitter) if imp.jitter else 0.0)
        if wait <= 0:
            self._send(data, to_server)
            return
        counters.delayed += 1
        self._seq += 1
        heapq.heappush(self._queue, (now + wait, self._seq, to_server, data))

    def _send(self, data: bytes, to_server: bool) -> None:
        counters = self.stats.c2s if to_server else self.stats.s2c
        try:
            if to_server:
                with self._lock:
                    self.back.sendto(data, self.server)
            elif self.client is not None:
                self.front.sendto(data, self.client)
            else:
                return
        except OSError:
            counters.send_errors += 1
            return
        counters.forwarded += 1
        counters.bytes += len(data)
        if not to_server and self._triggers:
            due = [t for t in self._triggers if counters.bytes >= t[0]]
            self._triggers = [t for t in self._triggers if counters.bytes < t[0]]
            for _, action in due:
                action()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            while self._queue and self._queue[0][0] <= now:
                _, _, to_server, data = heapq.heappop(self._queue)
                self._send(data, to_server)
            wait = min(0.05, self._queue[0][0] - now) if self._queue else 0.05
            with self._lock:
                backs = [self.back, *self._old]
            readable, _, _ = select.select([self.front, *backs], [], [], max(wait, 0.0))
            now = time.monotonic()
            for sock in readable:
                for _ in range(64):  # drain a burst, but let the other sockets in too
                    try:
                        data, addr = sock.recvfrom(65536)
                    except OSError:  # BlockingIOError: drained
                        break
                    if sock is self.front:
                        self.client = addr
                        self._receive(data, True, now)
                    else:
                        self._receive(data, False, now)

    def __enter__(self) -> Relay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        for sock in [self.front, self.back, *self._old]:
            sock.close()
