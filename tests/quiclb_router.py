"""A small plaintext QUIC-LB load balancer for the tests: UDP on loopback, in a thread.

It stands where an AWS NLB QUIC listener (or any QUIC-LB balancer) stands in front of
several quicserve machines, and knows nothing of quicserve (it imports none of it): it reads
connection IDs as draft-ietf-quic-load-balancers-19 describes them, so a test that passes
through it checks our CIDs against the draft, not against our own decoder.

Routing (draft-ietf-quic-load-balancers-19 §3 and §5.2, plaintext CIDs):

* The Destination CID of every datagram is read: at offset 1 for a short header (its length
  is not on the wire; the first ``1 + server_id_length`` octets are all we need), after the
  length octet for a long header (RFC 8999 §5.1).
* Octet 0's 3 high bits are the config rotation codepoint (§3); a CID with the configured
  codepoint carries the server ID in its next ``server_id_length`` octets (§5.2). A known
  server ID whose server is up gets the datagram ("by-id").
* Anything else - the client-chosen DCID of a first Initial and its 0-RTT packets, a CID
  with another codepoint, an unknown server ID, or the ID of a server marked down - is
  hashed over the live servers (§3: the load balancer routes unroutable CIDs by some other
  consistent rule). The same DCID always picks the same server while the live set is
  unchanged, so a client's retransmitted Initial and its 0-RTT meet the server that took
  the Initial. After a server is marked down, its connections' packets hash to another
  one - what a real balancer does on failover, and what lets that server answer with a
  stateless reset.
* Test knobs: :meth:`steer_new` sends new connections (datagrams that did not route by ID)
  to a chosen server, as a hash might; :meth:`steer_tokens` sends Initials that carry a
  token (the answer to a Retry) to a chosen server, as happens when the machine that sent
  the Retry is gone.

Replies: one upstream UDP socket per client address (the client's 4-tuple as the balancer
sees it, on one listening address), so a server sees each client path as its own address
and a migrating client as a new one. Whatever a server sends to that socket goes back to
the client from the listening socket. The flow table is bounded (``max_flows``, the least
recently used flow is evicted) and idle flows expire after ``idle_timeout`` seconds.

Rules: loopback only; one thread, one selector, bounded loops; :meth:`close` stops the
thread and closes every socket it opened.
"""

from __future__ import annotations

import hashlib
import selectors
import socket
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

Address = tuple[str, int]

#: QUIC versions whose long-header packet types we read (RFC 9000 §17.2, RFC 9369 §3.2).
_V1, _V2 = 0x00000001, 0x6B3343CF
_INITIAL_TYPE = {_V1: 0, _V2: 1}
_ZERO_RTT_TYPE = {_V1: 1, _V2: 2}
#: QUIC-LB: codepoint 0b111 marks a CID the balancer must not route by ID (§3).
_UNROUTABLE = 0b111


def _varint(data: bytes, offset: int) -> tuple[int, int] | None:
    """RFC 9000 §16 variable-length integer at ``offset``: (value, next offset)."""
    if offset >= len(data):
        return None
    length = 1 << (data[offset] >> 6)
    if offset + length > len(data):
        return None
    value = data[offset] & 0x3F
    for byte in data[offset + 1 : offset + length]:
        value = (value << 8) | byte
    return value, offset + length


@dataclass(frozen=True, slots=True)
class Packet:
    """What the balancer reads of a datagram's first packet."""

    long_header: bool
    dcid: bytes  # for a short header: the first 1 + server_id_length octets only
    new_connection: bool = False  # an Initial or 0-RTT packet (client-chosen DCID possible)
    has_token: bool = False  # an Initial carrying a (Retry or NEW_TOKEN) token


def parse(datagram: bytes, server_id_length: int) -> Packet | None:
    """The DCID and packet kind of ``datagram``, or ``None`` if too short to route."""
    if not datagram:
        return None
    first = datagram[0]
    if not first & 0x80:
        dcid = datagram[1 : 2 + server_id_length]
        return Packet(False, dcid) if len(dcid) == 1 + server_id_length else None
    if len(datagram) < 6:
        return None
    version = int.from_bytes(datagram[1:5], "big")
    dcid_length = datagram[5]
    dcid = datagram[6 : 6 + dcid_length]
    if len(dcid) != dcid_length:
        return None
    kind = (first >> 4) & 0x03
    initial = _INITIAL_TYPE.get(version) == kind
    zero_rtt = _ZERO_RTT_TYPE.get(version) == kind
    has_token = False
    if initial:
        offset = 6 + dcid_length
        if offset < len(datagram):
            token = _varint(datagram, offset + 1 + datagram[offset])
            has_token = token is not None and token[0] > 0
    return Packet(True, dcid, new_connection=initial or zero_rtt, has_token=has_token)


class QuicLbRouter:
    """A plaintext QUIC-LB balancer on ``127.0.0.1`` in front of ``servers``.

    ``servers`` maps each server ID (``server_id_length`` bytes) to the UDP address of
    that machine. :attr:`decisions` counts ``(reason, server ID)`` pairs, reason being
    ``by-id``, ``hash``, ``failover`` (routable to a server that is down), ``steered`` or
    ``token``; :attr:`stats` counts flows ``opened``, ``evicted``, ``expired`` and
    datagrams ``dropped`` (unroutable or no live server).
    """

    def __init__(
        self,
        servers: Mapping[bytes, Address],
        *,
        server_id_length: int,
        config_rotation: int = 0,
        max_flows: int = 256,
        idle_timeout: float = 30.0,
    ) -> None:
        if any(len(sid) != server_id_length for sid in servers):
            raise ValueError("every server ID must be server_id_length bytes")
        if not 0 <= config_rotation < _UNROUTABLE:
            raise ValueError("the config rotation codepoint is 0 to 6")
        self.servers = dict(servers)
        self.server_id_length = server_id_length
        self.config_rotation = config_rotation
        self.max_flows = max_flows
        self.idle_timeout = idle_timeout
        self.down: set[bytes] = set()
        self.decisions: Counter[tuple[str, bytes]] = Counter()
        self.stats: Counter[str] = Counter()
        self._steer_new: bytes | None = None
        self._steer_tokens: bytes | None = None
        self._flows: OrderedDict[Address, tuple[socket.socket, float]] = OrderedDict()
        self._owners: dict[socket.socket, Address] = {}
        self._selector = selectors.DefaultSelector()
        self._listen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._listen.bind(("127.0.0.1", 0))
        self._listen.setblocking(False)
        self._selector.register(self._listen, selectors.EVENT_READ)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="quic-lb-router", daemon=True)

    # -- control (from the test's thread) ------------------------------------------------
    @property
    def address(self) -> Address:
        host, port = self._listen.getsockname()[:2]
        return (str(host), int(port))

    @property
    def port(self) -> int:
        return self.address[1]

    def start(self) -> QuicLbRouter:
        self._thread.start()
        return self

    def mark_down(self, server_id: bytes) -> None:
        """Stop sending anything to ``server_id`` (a failed health check)."""
        with self._lock:
            self.down.add(server_id)

    def mark_up(self, server_id: bytes) -> None:
        with self._lock:
            self.down.discard(server_id)

    def steer_new(self, server_id: bytes | None) -> None:
        """New connections go to ``server_id`` (``None``: back to hashing)."""
        with self._lock:
            self._steer_new = server_id

    def steer_tokens(self, server_id: bytes | None) -> None:
        """Initials that carry a token go to ``server_id`` (``None``: normal routing)."""
        with self._lock:
            self._steer_tokens = server_id

    @property
    def flows(self) -> int:
        with self._lock:
            return len(self._flows)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        for sock, _ in self._flows.values():
            sock.close()
        self._flows.clear()
        self._listen.close()
        self._selector.close()

    # -- routing ---------------------------------------------------------------------------
    def choose(self, datagram: bytes) -> tuple[str, bytes] | None:
        """``(reason, server ID)`` for ``datagram``, or ``None`` to drop it."""
        packet = parse(datagram, self.server_id_length)
        if packet is None:
            return None
        with self._lock:
            live = sorted(sid for sid in self.servers if sid not in self.down)
            steer_new, steer_tokens = self._steer_new, self._steer_tokens
        if not live:
            return None
        if packet.has_token and steer_tokens in live:
            assert steer_tokens is not None
            return ("token", steer_tokens)
        dcid = packet.dcid
        reason = "hash"
        if dcid and dcid[0] >> 5 == self.config_rotation:
            server_id = dcid[1 : 1 + self.server_id_length]
            if server_id in live:
                return ("by-id", server_id)
            if server_id in self.servers:
                reason = "failover"
        if reason == "hash" and packet.new_connection and steer_new in live:
            assert steer_new is not None
            return ("steered", steer_new)
        digest = hashlib.sha256(dcid).digest()
        return (reason, live[int.from_bytes(digest[:4], "big") % len(live)])

    # -- the loop ----------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                for _ in range(64):  # bounded: one busy socket cannot starve the rest
                    try:
                        data, addr = sock.recvfrom(65535)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break  # e.g. ICMP port unreachable from a dead server
                    if sock is self._listen:
                        self._from_client(data, (str(addr[0]), int(addr[1])))
                    else:
                        self._from_server(sock, data)
            self._expire(time.monotonic())

    def _from_client(self, data: bytes, client: Address) -> None:
        decision = self.choose(data)
        if decision is None:
            self.stats["dropped"] += 1
            return
        self.decisions[decision] += 1
        upstream = self._flow(client)
        try:
            upstream.sendto(data, self.servers[decision[1]])
        except OSError:
            self.stats["dropped"] += 1

    def _from_server(self, upstream: socket.socket, data: bytes) -> None:
        client = self._owners.get(upstream)
        if client is None:
            return
        with self._lock:
            if client in self._flows:
                self._flows[client] = (upstream, time.monotonic())
                self._flows.move_to_end(client)
        try:
            self._listen.sendto(data, client)
        except OSError:
            self.stats["dropped"] += 1

    def _flow(self, client: Address) -> socket.socket:
        now = time.monotonic()
        with self._lock:
            entry = self._flows.get(client)
            if entry is not None:
                self._flows[client] = (entry[0], now)
                self._flows.move_to_end(client)
                return entry[0]
            while len(self._flows) >= self.max_flows:
                _, (old, _) = self._flows.popitem(last=False)
                self._drop(old)
                self.stats["evicted"] += 1
            upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            upstream.bind(("127.0.0.1", 0))
            upstream.setblocking(False)
            self._flows[client] = (upstream, now)
            self._owners[upstream] = client
            self.stats["opened"] += 1
        self._selector.register(upstream, selectors.EVENT_READ)
        return upstream

    def _expire(self, now: float) -> None:
        with self._lock:
            while self._flows:
                client, (sock, seen) = next(iter(self._flows.items()))
                if now - seen < self.idle_timeout:
                    break
                del self._flows[client]
                self._drop(sock)
                self.stats["expired"] += 1

    def _drop(self, sock: socket.socket) -> None:
        self._owners.pop(sock, None)
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()
