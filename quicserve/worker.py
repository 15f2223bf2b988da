"""The worker side of ``--workers``: the link to the supervisor and datagram forwarding.

A worker is an ordinary ``quicserve`` process started by :mod:`quicserve.supervisor` with
its sockets as ``fd://N`` binds and a hidden ``--worker-fd N``: one end of a Unix socket
pair to the supervisor. Over it, one JSON object per line:

* supervisor -> worker, first: ``slot`` (the worker's index in each UDP ``SO_REUSEPORT``
  group, written into every CID it issues, see :mod:`quicserve.quic.lb`), ``generation``,
  the shared ``secret`` (Retry and stateless-reset tokens must be good in every worker;
  it travels here, never on a command line or in the environment), ``server_id``,
  the routing ``table`` (``slots``, ``active``), ``routing`` per ``--quic-bind``
  (``"kernel"``: a BPF program routes; ``"forward"``: we route ourselves), the
  ``forward_dir``, our ``predecessor`` (below), ``max_requests`` and ``metrics`` (the
  supervisor serves ``--metrics-bind``: keep request durations);
* later: ``{"table": ...}`` (workers added or removed), ``{"predecessor": null}`` (it has
  exited), ``{"handover": true}`` (our successor is ready: stop reading the UDP sockets
  and drain), ``{"scrape": N}`` (answer ``{"snapshot": N, "metrics": ...}``, see
  :mod:`quicserve.metrics`), ``{"ping": true}`` (liveness: answered from this event loop,
  so a wedged loop does not answer);
* worker -> supervisor: ``{"ready": true}`` once listening, ``{"recycle": true}`` after
  ``max_requests``, ``{"error": "..."}`` when it cannot start (the supervisor prints it),
  ``{"pong": true}``, and with ``metrics``, ``{"final": ...}``: our last numbers, once the
  server stopped.

An end of file from the supervisor means it is gone: the worker shuts down gracefully.

Forwarding. Every worker binds a Unix datagram socket ``forward_dir/w<slot>-<gen>.sock``;
``slot<N>.sock`` is a symlink the supervisor points at the current worker of slot N.
A forwarded message is ``index, kind, len(host), host, port`` + the datagram, handled as if
it came from the client on ``--quic-bind`` number ``index``; replies go out from our own
socket of the same group, so they carry the same source address. Two reasons to forward:

1. **Routing fallback** (``"forward"``, no BPF): the kernel spreads datagrams by address,
   so a worker computes :func:`quicserve.quic.lb.route` (what the BPF program would have
   decided) and sends datagrams for another slot to ``slot<N>.sock`` (kind ``ROUTED``).
2. **Handover** (reload, ``--max-requests``): a new worker takes the slot's socket while
   the old one drains. A datagram whose CID the new worker does not know and that is not a
   client Initial belongs to an old connection: it goes to the predecessor (kind
   ``FINAL``: handled there, never forwarded again, so nothing can loop). Until the old
   worker hands over, it reads the socket too, and sends the new worker what it does not
   know in the same way (the supervisor tells it the ``successor``'s path).

If forwarding fails (the target is gone), the datagram is handled here; for a CID we do
not know that means a stateless reset, as for any unknown connection.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from .metrics import collect
from .quic.lb import CidLayout, RoutingTable, route

if TYPE_CHECKING:
    from .connection.context import RoutedEndpoint
    from .registry import ConnectionRegistry


class Server(Protocol):
    """What a worker's link does to the server it runs beside (``quicserve.server.Server``)."""

    registry: ConnectionRegistry

    def quic_stats(self) -> dict[str, int]:
        """Counters summed over the QUIC endpoints (for metrics)."""

    def shutdown(self) -> None:
        """Begin a graceful shutdown."""

    def handover(self) -> None:
        """Stop reading the shared sockets and shut down gracefully."""


logger = logging.getLogger("quicserve.error")

#: Forwarded by routing: the receiver may still pass it on to its predecessor.
ROUTED = 0
#: Forwarded to a predecessor or successor: handle it, never forward again.
FINAL = 1

_QUIC_V2 = 0x6B3343CF


def slot_path(forward_dir: str, slot: int) -> str:
    """The symlink to the forwarding socket of the current worker of ``slot``."""
    return os.path.join(forward_dir, f"slot{slot}.sock")


def worker_path(forward_dir: str, slot: int, generation: int) -> str:
    """The forwarding socket of one worker process."""
    return os.path.join(forward_dir, f"w{slot}-{generation}.sock")


def encode_forward(index: int, kind: int, data: bytes, addr: Any) -> bytes:
    """A forwarded datagram: bind index, kind, the client address, the datagram."""
    host = str(addr[0]).encode()
    return bytes([index, kind, len(host)]) + host + int(addr[1]).to_bytes(2, "big") + data


def decode_forward(message: bytes) -> tuple[int, int, tuple[str, int], bytes]:
    """(bind index, kind, client address, datagram) of :func:`encode_forward`'s output."""
    index, kind, size = message[0], message[1], message[2]
    host = message[3 : 3 + size].decode()
    port = int.from_bytes(message[3 + size : 5 + size], "big")
    return index, kind, (host, port), message[5 + size :]


class WorkerLink:
    """This worker's slot, secret and routing, and its connection to the supervisor."""

    def __init__(self, control: socket.socket, init: dict[str, Any]) -> None:
        self.control = control
        self.slot: int = init["slot"]
        self.generation: int = init["generation"]
        self.secret = bytes.fromhex(init["secret"])
        self.layout = CidLayout.from_hex(init["server_id"])
        self.table = RoutingTable(init["table"]["slots"], tuple(init["table"]["active"]))
        self.routing: list[str] = list(init["routing"])
        self.forward_dir: str = init["forward_dir"]
        self.predecessor: str | None = init["predecessor"]
        #: The forwarding path of the worker starting to replace us, until it took over.
        self.successor: str | None = None
        self.max_requests: int = init["max_requests"]
        self.metrics: bool = bool(init.get("metrics"))
        self.endpoints: list[RoutedEndpoint] = []
        self.routers: list[DatagramRouter] = []
        self.forward_socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.forward_socket.bind(worker_path(self.forward_dir, self.slot, self.generation))
        try:
            self.forward_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        except OSError:
            pass
        self.forward_socket.setblocking(False)
        self.forwarded = 0

    @classmethod
    def from_fd(cls, fd: int) -> WorkerLink:
        """Read the supervisor's first message from the inherited socket ``fd``."""
        control = socket.socket(fileno=fd)
        control.set_inheritable(False)
        data = b""
        while not data.endswith(b"\n"):
            chunk = control.recv(65536)
            if not chunk:
                raise ConnectionError("the supervisor closed the worker link")
            data += chunk
        control.setblocking(False)
        return cls(control, json.loads(data))

    def send(self, **message: Any) -> None:
        """One message to the supervisor (small; the socket buffer takes it at once)."""
        payload = json.dumps(message).encode() + b"\n"
        try:
            self.control.setblocking(True)
            self.control.sendall(payload)
        except OSError:
            pass  # the supervisor is gone; the control loop sees EOF and stops us
        finally:
            self.control.setblocking(False)

    def attach(self, endpoint: RoutedEndpoint) -> DatagramRouter:
        """A QUIC listener (in ``--quic-bind`` order) starts: route its datagrams."""
        router = DatagramRouter(self, len(self.endpoints), endpoint)
        self.endpoints.append(endpoint)
        self.routers.append(router)
        return router

    # -- tasks run beside the server ---------------------------------------------------

    async def serve(self, server: Server) -> None:
        """Control messages, forwarded datagrams and the request count, until cancelled."""
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._forwarded)
                if self.max_requests:
                    tg.start_soon(self._count_requests, server)
                await self._control(server)
                tg.cancel_scope.cancel()
        finally:
            if self.metrics:
                # Cancelled once the server has stopped: every connection is counted.
                self.send(final=collect(server).to_json())

    async def _control(self, server: Server) -> None:
        buffer = b""
        while True:
            await anyio.wait_readable(self.control)
            try:
                chunk = self.control.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                logger.warning("Worker %d: the supervisor is gone; shutting down", self.slot)
                server.shutdown()
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                self._handle(json.loads(line), server)

    def _handle(self, message: dict[str, Any], server: Server) -> None:
        if "table" in message:
            table = message["table"]
            self.table = RoutingTable(table["slots"], tuple(table["active"]))
        if "predecessor" in message:
            self.predecessor = message["predecessor"]
        if "successor" in message:
            self.successor = message["successor"]
        if "scrape" in message:
            self.send(snapshot=message["scrape"], metrics=collect(server).to_json())
        if message.get("ping"):
            self.send(pong=True)
        if message.get("handover"):
            logger.info("Worker %d handing over to its successor; draining", self.slot)
            server.handover()

    async def _forwarded(self) -> None:
        sock = self.forward_socket
        while True:
            await anyio.wait_readable(sock)
            for _ in range(64):
                try:
                    message = sock.recv(70000)
                except BlockingIOError:
                    break
                except OSError:
                    continue
                try:
                    index, kind, addr, data = decode_forward(message)
                    endpoint = self.endpoints[index]
                    router = self.routers[index]
                except (IndexError, ValueError, UnicodeDecodeError):
                    continue
                if kind == ROUTED and router.to_predecessor(data, addr):
                    continue
                endpoint.receive(data, addr)

    async def _count_requests(self, server: Server) -> None:
        while server.registry.requests_total < self.max_requests:
            await anyio.sleep(0.25)
        logger.info(
            "Worker %d served %d requests (--max-requests): asking to be replaced",
            self.slot,
            server.registry.requests_total,
        )
        self.send(recycle=True)

    def close(self) -> None:
        """Remove our forwarding socket and close the link."""
        try:
            os.unlink(worker_path(self.forward_dir, self.slot, self.generation))
        except OSError:
            pass
        self.forward_socket.close()
        self.control.close()

    def forward(self, path: str, index: int, kind: int, data: bytes, addr: Any) -> bool:
        """Send a datagram to another worker's forwarding socket; False if it is gone."""
        try:
            self.forward_socket.sendto(encode_forward(index, kind, data, addr), path)
        except BlockingIOError:
            return True  # its queue is full: dropped, as the network may drop a datagram
        except OSError:
            return False
        self.forwarded += 1
        return True


class DatagramRouter:
    """Decides, for one QUIC endpoint of a worker, which datagrams belong elsewhere."""

    __slots__ = ("endpoint", "index", "link")

    def __init__(self, link: WorkerLink, index: int, endpoint: RoutedEndpoint) -> None:
        self.link = link
        self.index = index
        self.endpoint = endpoint

    def divert(self, data: bytes, addr: Any) -> bool:
        """True if ``data`` was sent to the worker it belongs to (not ours to handle)."""
        link = self.link
        if link.routing[self.index] == "forward":
            target = route(data, link.layout, link.table)
            if target != link.slot:
                path = slot_path(link.forward_dir, target)
                if link.forward(path, self.index, ROUTED, data, addr):
                    return True
        if link.predecessor is not None:
            return self.to_predecessor(data, addr)
        if link.successor is not None:
            return self._to_other_generation(link.successor, data, addr)
        return False

    def to_predecessor(self, data: bytes, addr: Any) -> bool:
        """Send a datagram of a connection our predecessor still serves to it."""
        predecessor = self.link.predecessor
        if predecessor is None:
            return False
        return self._to_other_generation(predecessor, data, addr)

    def _to_other_generation(self, path: str, data: bytes, addr: Any) -> bool:
        """Send a datagram whose connection we do not know to the other worker reading our
        socket (predecessor or successor), which may know it; Initials stay with us.

        While a worker is replaced both generations read the slot's socket for a moment,
        so each can read the other's packets. Answered here, an unknown connection ID gets
        a stateless reset, and with the machine's shared secret that reset is valid: it
        ended the other worker's connection (seen as an HTTP/3 request that never got an
        answer during a --max-requests replacement)."""
        link = self.link
        if len(data) < 7:
            return False
        first = data[0]
        if first & 0x80:
            version = int.from_bytes(data[1:5], "big")
            initial_type = 1 if version == _QUIC_V2 else 0  # RFC 9369 §3.2
            if (first >> 4) & 3 == initial_type:
                return False  # a client's Initial: a connection for us to take
            dcid = data[6 : 6 + data[5]]
        else:
            dcid = data[1 : 1 + link.layout.cid_length]
        if self.endpoint.owns(dcid):
            return False
        return link.forward(path, self.index, FINAL, data, addr)
