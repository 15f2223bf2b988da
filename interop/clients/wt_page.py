"""The wt-* cases in a browser: what ``/wtxpage`` shows, checked here.

Not an adapter itself: ``chromium`` and ``firefox`` load ``/wtxpage?case=<case>&wt=<QUIC
port>`` their own way and hand what the page showed to :func:`check`. The page
(``interop/app.py`` ``WTX_PAGE``) prints one line:

* ``protocol:<wt.protocol>`` for wt-handshake (the page offers
  :data:`~interop.cases.WT_CLIENT_PROTOCOLS` with the ``protocols`` constructor option);
* ``files:<size>=<sha256>,...`` for the stream cases: for ``receive``, the sha256 the page
  computed of what arrived on the stream the server opened (when it matches what the
  server said it sent); for ``send``, ``<length>:<sha256>`` the server computed of the
  ``/files/<size>`` bytes the page sent;
* ``datagrams:<count>:<sha256>`` / ``acks:<count>:<sha256>``: the payloads (or the app's
  acknowledgements) in index order.

Every value is compared with :func:`~interop.app.file_sha256` and friends, never with
what the page thinks.
"""

from __future__ import annotations

from ..app import file_sha256, wt_ack_digest, wt_datagram_digest
from ..cases import (
    WT_DATAGRAM_SIZES,
    WT_PROTOCOL_WANT,
    WT_TRANSFER_SIZES,
    Result,
    fail,
    passed,
)


def path(case: str, h3_port: int) -> str:
    return f"/wtxpage?case={case}&wt={h3_port}"


def check(case: str, shown: str, browser: str) -> Result:
    if case == "wt-handshake":
        if shown != f"protocol:{WT_PROTOCOL_WANT}":
            return fail(f"page shows {shown[:120]!r}, wanted 'protocol:{WT_PROTOCOL_WANT}'")
        return passed(
            f"{browser}'s session: wt.protocol is {WT_PROTOCOL_WANT}, the first the app supports"
        )
    count = len(WT_DATAGRAM_SIZES)
    if case == "wt-transfer-datagram-receive":
        want = f"datagrams:{count}:{wt_datagram_digest()}"
        if shown != want:
            return fail(f"page shows {shown[:120]!r}, wanted {count} payloads matching")
        return passed(f"{count} datagrams server to client: sha256 of all payloads matches")
    if case == "wt-transfer-datagram-send":
        if shown != f"acks:{count}:{wt_ack_digest()}":
            return fail(f"page shows {shown[:120]!r}, wanted {count} matching acknowledgements")
        return passed(f"{count} datagrams client to server, each acknowledged with its sha256")
    send = case.endswith("-send")
    want = ",".join(
        f"{size}={size}:{file_sha256(size)}" if send else f"{size}={file_sha256(size)}"
        for size in WT_TRANSFER_SIZES
    )
    if shown != f"files:{want}":
        return fail(f"page shows {shown[:160]!r}")
    kind = "uni" if "-unidirectional-" in case else "bidi"
    direction = "client to server" if send else "server-opened, server to client"
    return passed(
        f"{len(WT_TRANSFER_SIZES)} files on {kind} streams, {direction}: every sha256"
        " matches /files/<size>"
    )
