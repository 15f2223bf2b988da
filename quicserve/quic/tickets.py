"""TLS session tickets for QUIC resumption and 0-RTT, kept in memory.

Sans-IO: aioquic calls :meth:`SessionTicketStore.add` when it issues a ticket and
:meth:`SessionTicketStore.pop` when a client presents one.
"""

from __future__ import annotations

from collections import OrderedDict

from aioquic.tls import SessionTicket


class SessionTicketStore:
    """TLS session tickets for resumption, in memory and bounded.

    A ticket is handed out once (``pop``): that makes 0-RTT data single-use, the
    anti-replay measure RFC 9001 §9.2 asks servers to consider.
    """

    def __init__(self, capacity: int) -> None:
        self._tickets: OrderedDict[bytes, SessionTicket] = OrderedDict()
        self._capacity = capacity

    def add(self, ticket: SessionTicket) -> None:
        """Keep a ticket we issued (the oldest goes when full)."""
        self._tickets[ticket.ticket] = ticket
        while len(self._tickets) > self._capacity:
            self._tickets.popitem(last=False)

    def pop(self, label: bytes) -> SessionTicket | None:
        """The ticket a client presents, removed so it cannot be used twice."""
        return self._tickets.pop(label, None)

    def __len__(self) -> int:
        return len(self._tickets)
