"""A UDP relay between a client and quicserve that can change its source port.

Only NAT rebinding for now (the ``portrebinding`` case): :meth:`Rebinder.rebind` opens a
new socket towards the server, so from then on the server sees the same connection
arrive from a new port (RFC 9000 §9). Loss, corruption, delay, reordering and blackholes
are not built yet; the cases that need them are n/a in the matrix.

It runs in a plain thread with ``select``, so it works the same whatever event loop the
client uses.
"""

from __future__ import annotations

import select
import socket
import threading


class Rebinder:
    """Relay datagrams client <-> server; :meth:`rebind` switches to a new source port."""

    def __init__(self, server_port: int, host: str = "127.0.0.1") -> None:
        self.server = (host, server_port)
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind((host, 0))
        self.port = self.front.getsockname()[1]
        self._lock = threading.Lock()
        self.back = self._new_back()
        self.ports: list[int] = [self.back.getsockname()[1]]
        self.client: tuple[str, int] | None = None
        self._old: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rebinder", daemon=True)

    def _new_back(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((self.server[0], 0))
        return sock

    def rebind(self) -> None:
        """From now on, forward to the server from a new source port."""
        with self._lock:
            # The old socket stays open (and relayed back) briefly: packets in flight on
            # the old path still arrive, like behind a real NAT.
            self._old.append(self.back)
            self.back = self._new_back()
            self.ports.append(self.back.getsockname()[1])

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                backs = [self.back, *self._old]
            readable, _, _ = select.select([self.front, *backs], [], [], 0.05)
            for sock in readable:
                try:
                    data, addr = sock.recvfrom(65536)
                except OSError:
                    continue
                if sock is self.front:
                    self.client = addr
                    with self._lock:
                        self.back.sendto(data, self.server)
                elif self.client is not None:
                    self.front.sendto(data, self.client)

    def __enter__(self) -> Rebinder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        for sock in [self.front, self.back, *self._old]:
            sock.close()
