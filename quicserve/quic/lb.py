"""Connection IDs that name their worker, and the routing decision made from them.

With ``--workers N`` every worker reads its own UDP socket of one ``SO_REUSEPORT`` group
(socket *i* of the group belongs to worker slot *i*). The kernel alone would spread
datagrams by address, which sends a migrated client's packets to the wrong worker. So the
server puts the worker's slot into every connection ID it issues, and datagrams are routed
by connection ID: by the kernel running :func:`cbpf_program` (``SO_ATTACH_REUSEPORT_CBPF``),
or, where that is not available, by the workers forwarding to each other with the pure
Python :func:`route`, which makes exactly the same decision. This module is sans-IO: it
builds CIDs, bytes of a BPF program and routing decisions, and touches no socket.

Connection ID layout (compatible with the IETF QUIC-LB *plaintext* format,
draft-ietf-quic-load-balancers-19 §3 and §5.2)::

    octet 0        1 .. S          1+S       2+S .. 7+S
    +--------+--------------------+--------+---------------------+
    |CR|LEN  | server ID (S bytes)| worker | nonce (6 random     |
    |3b| 5b  | --quic-lb-server-id| slot   | bytes)              |
    +--------+--------------------+--------+---------------------+

* Octet 0: the 3 high bits are the config rotation codepoint (0 here; 0b111 means
  "unroutable" in QUIC-LB and is never used), the 5 low bits the length of the rest of
  the CID (CID length - 1): the QUIC-LB "length self-description".
* Server ID: the bytes of ``--quic-lb-server-id`` (S = 0 to 12 bytes, default none).
* Worker slot: one byte, the worker's slot in this machine's ``SO_REUSEPORT`` group.
* Nonce: 6 random bytes.

The CID is ``8 + S`` bytes long (8 by default). A QUIC-LB load balancer in front of several
machines is configured for plaintext CIDs with server ID length S and nonce length 7
(the worker byte is nonce to it); with S = 0 it can also use server ID length 1 and
nonce length 6, and then routes to a worker directly. Like every plaintext QUIC-LB CID, the
server ID and worker byte are visible to observers: a migrated connection's new CIDs share
them with the old ones, which links the paths to a machine and worker, not to a connection.

Routing rules (:func:`route`, and the same in BPF):

* **Short header** (1-RTT): the DCID is always one we issued, so the worker byte at
  datagram offset ``1 + 1 + S`` names the slot. A byte that is not a slot (>= ``slots``)
  means a CID we did not issue: hash it (below).
* **Long header whose DCID looks like ours** (DCID length byte = ``8 + S`` and first DCID
  octet = our octet 0): Handshake packets, and the Initial that answers a Retry, carry a
  CID we chose; the worker byte at offset ``6 + 1 + S`` names the slot.
* **Anything else** (the client's first Initial and its 0-RTT, whose DCID the client chose
  at random): slot = ``active[word(DCID[0:4]) mod len(active)]``. The same DCID always
  gives the same slot, so retransmits and the 0-RTT packets reach the worker that took
  the Initial; ``active`` lists the slots taking new connections (a worker being removed
  or replaced keeps its slot for its CIDs but leaves ``active``).
* A datagram too short for a load goes to slot 0 (a classic BPF program that reads past
  the end returns 0); such a datagram is no valid QUIC packet anyway.

Residual: a client-chosen DCID that happens to look like ours (about 1 in 256 random
8-byte DCIDs has our first octet) is routed by its "worker byte" instead of the hash. That
is still a deterministic choice, so its retransmits still meet the same worker, which takes
the connection. Nothing is misrouted because of it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from ..addresses import MAX_WORKER_SLOTS, parse_server_id

__all__ = [
    "MAX_SERVER_ID",
    "MAX_SLOTS",
    "NONCE_LENGTH",
    "CidLayout",
    "RoutingTable",
    "cbpf_program",
    "route",
]

#: Random bytes at the end of every CID.
NONCE_LENGTH = 6
#: Longest ``--quic-lb-server-id``: CIDs are at most 20 bytes (RFC 9000 §17.2).
MAX_SERVER_ID = 20 - 2 - NONCE_LENGTH
#: Worker slots one machine can have (the BPF lookup table stays far below 255 jumps).
MAX_SLOTS = MAX_WORKER_SLOTS
#: QUIC-LB: config rotation codepoint 0b111 marks unroutable CIDs; we never use it.
_UNROUTABLE = 0b111


@dataclass(frozen=True, slots=True)
class CidLayout:
    """The QUIC-LB plaintext layout above, for one machine's ``server_id``."""

    server_id: bytes = b""
    config_rotation: int = 0

    def __post_init__(self) -> None:
        if len(self.server_id) > MAX_SERVER_ID:
            raise ValueError(f"the QUIC-LB server ID is at most {MAX_SERVER_ID} bytes")
        if not 0 <= self.config_rotation < _UNROUTABLE:
            raise ValueError("the config rotation codepoint is 0 to 6")

    @classmethod
    def from_hex(cls, server_id: str) -> CidLayout:
        """The layout for ``--quic-lb-server-id`` (hex, possibly empty)."""
        return cls(parse_server_id(server_id))

    @property
    def cid_length(self) -> int:
        """Bytes per CID: octet 0, server ID, worker byte, nonce."""
        return 2 + len(self.server_id) + NONCE_LENGTH

    @property
    def first_octet(self) -> int:
        """Config rotation (3 bits) and the length of the rest of the CID (5 bits)."""
        return (self.config_rotation << 5) | (self.cid_length - 1)

    @property
    def worker_offset(self) -> int:
        """Offset of the worker byte within the CID."""
        return 1 + len(self.server_id)

    def encode(self, worker: int, nonce: bytes | None = None) -> bytes:
        """A CID for worker slot ``worker`` (random nonce unless given)."""
        if not 0 <= worker < 256:
            raise ValueError("a worker slot is one byte")
        if nonce is None:
            nonce = os.urandom(NONCE_LENGTH)
        if len(nonce) != NONCE_LENGTH:
            raise ValueError(f"the nonce is {NONCE_LENGTH} bytes")
        return bytes([self.first_octet]) + self.server_id + bytes([worker]) + nonce

    def decode(self, cid: bytes) -> int | None:
        """The worker slot of a CID in this layout (our server ID), else ``None``."""
        if len(cid) != self.cid_length or cid[0] != self.first_octet:
            return None
        if cid[1 : self.worker_offset] != self.server_id:
            return None
        return cid[self.worker_offset]

    def generator(self, worker: int) -> Callable[[], bytes]:
        """A ``cid_generator`` for :class:`~quicserve.quic.endpoint.EndpointCore`."""
        self.encode(worker)  # validate once
        prefix = bytes([self.first_octet]) + self.server_id + bytes([worker])
        return lambda: prefix + os.urandom(NONCE_LENGTH)


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """``slots`` sockets in the ``SO_REUSEPORT`` group; ``active`` take new connections."""

    slots: int
    active: tuple[int, ...]

    def __post_init__(self) -> None:
        if not 1 <= self.slots <= MAX_SLOTS:
            raise ValueError(f"1 to {MAX_SLOTS} worker slots")
        if not self.active or any(not 0 <= s < self.slots for s in self.active):
            raise ValueError("active slots must be a non-empty subset of the slots")


def _byte(data: bytes, offset: int) -> int | None:
    return data[offset] if offset < len(data) else None


def _word(data: bytes, offset: int) -> int | None:
    if offset + 4 > len(data):
        return None
    return int.from_bytes(data[offset : offset + 4], "big")


def route(datagram: bytes, layout: CidLayout, table: RoutingTable) -> int:
    """The slot whose socket receives ``datagram`` (the module's rules; same as BPF)."""
    first = _byte(datagram, 0)
    if first is None:
        return 0
    if not first & 0x80:  # short header: DCID at offset 1
        worker = _byte(datagram, 1 + layout.worker_offset)
        if worker is None:
            return 0
        if worker < table.slots:
            return worker
        word = _word(datagram, 1)
    else:  # long header: DCID length at 5, DCID at 6 (RFC 8999 §5.1)
        dcid_length = _byte(datagram, 5)
        if dcid_length is None:
            return 0
        if dcid_length == layout.cid_length:
            octet = _byte(datagram, 6)
            if octet is None:
                return 0
            if octet == layout.first_octet:
                worker = _byte(datagram, 6 + layout.worker_offset)
                if worker is None:
                    return 0
                if worker < table.slots:
                    return worker
        word = _word(datagram, 6)
    if word is None:
        return 0
    return table.active[word % len(table.active)]


# -- classic BPF -----------------------------------------------------------------------
# Opcodes from linux/filter.h (struct sock_filter: u16 code, u8 jt, u8 jf, u32 k).
_LD_B_ABS = 0x30  # BPF_LD | BPF_B | BPF_ABS: A = byte at k
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS: A = big-endian word at k
_ALU_MOD_K = 0x94  # BPF_ALU | BPF_MOD | BPF_K: A %= k
_JMP_JA = 0x05
_JMP_JEQ_K = 0x15
_JMP_JGE_K = 0x35
_JMP_JSET_K = 0x45
_RET_K = 0x06
_RET_A = 0x16


Instruction = tuple[int, int, int, int]


def cbpf_program(layout: CidLayout, table: RoutingTable) -> list[Instruction]:
    """The classic BPF program making :func:`route`'s decision, as (code, jt, jf, k).

    For ``SO_REUSEPORT`` UDP groups the program sees the UDP payload at offset 0 and its
    return value is the index of the socket in the group. A load past the end of the
    datagram ends the program with 0, as :func:`route` returns 0.
    """
    # Assembled with symbolic labels; jumps are resolved to relative offsets at the end.
    code: list[tuple[int, str | int, str | int, int]] = []
    labels: dict[str, int] = {}

    def op(opcode: int, k: int = 0, jt: str | int = 0, jf: str | int = 0) -> None:
        code.append((opcode, jt, jf, k))

    def label(name: str) -> None:
        labels[name] = len(code)

    wo = layout.worker_offset
    op(_LD_B_ABS, 0)
    op(_JMP_JSET_K, 0x80, jt="long", jf=0)
    # short header
    op(_LD_B_ABS, 1 + wo)
    op(_JMP_JGE_K, table.slots, jt=0, jf="ret_a")
    op(_LD_W_ABS, 1)
    op(_JMP_JA, 0, jt="hash")  # jt holds the target of a JA; moved to k below
    label("long")
    op(_LD_B_ABS, 5)
    op(_JMP_JEQ_K, layout.cid_length, jt=0, jf="long_hash")
    op(_LD_B_ABS, 6)
    op(_JMP_JEQ_K, layout.first_octet, jt=0, jf="long_hash")
    op(_LD_B_ABS, 6 + wo)
    op(_JMP_JGE_K, table.slots, jt=0, jf="ret_a")
    label("long_hash")
    op(_LD_W_ABS, 6)
    label("hash")
    op(_ALU_MOD_K, len(table.active))
    if table.active == tuple(range(len(table.active))):
        op(_RET_A)
    else:
        # A is an index into `active`: a chain of "if A == i return active[i]".
        for index, slot in enumerate(table.active[:-1]):
            op(_JMP_JEQ_K, index, jt=0, jf=1)
            op(_RET_K, slot)
        op(_RET_K, table.active[-1])
    label("ret_a")
    op(_RET_A)

    program: list[Instruction] = []
    for pc, (opcode, jt, jf, k) in enumerate(code):
        if opcode == _JMP_JA:
            assert isinstance(jt, str)
            program.append((opcode, 0, 0, labels[jt] - pc - 1))
            continue
        offsets = [labels[j] - pc - 1 if isinstance(j, str) else j for j in (jt, jf)]
        if not all(0 <= o < 256 for o in offsets):
            raise ValueError("BPF jump out of range")
        program.append((opcode, offsets[0], offsets[1], k))
    return program
