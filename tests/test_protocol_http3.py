"""``H3Protocol`` against aioquic's client, in memory with an explicit clock.

The server is quicserve's QUIC connection (``ServerQuicConnection`` from
``quic/compat.py``, built as ``connection/quic.py`` builds it) wrapped in
:class:`H3Protocol`; the client is aioquic's ``QuicConnection`` + ``H3Connection``,
verifying a certificate made for this test session. Datagrams move through
:class:`tests.inmemory.QuicPair`. The test plays the stream type: it reads the neutral
events and answers with the protocol's ``send_*`` calls, so no stream class or app is
involved.
"""

from __future__ import annotations

from quicserve.certs import DevCertificate
from quicserve.events import BodyEnded, BodyReceived, RequestReceived, StreamEvent

from .inmemory import QuicPair, make_config, request_head


class Server:
    """The neutral events of one :class:`QuicPair`'s server, as they come."""

    def __init__(self, tls: DevCertificate) -> None:
        self.events: list[StreamEvent] = []
        self.pair = QuicPair(make_config(), tls, 1000.0, on_server_input=self._drain)
        self.protocol = self.pair.server
        self.client = self.pair.client
        self.pair.handshake()

    def _drain(self) -> None:
        while (event := self.protocol.next_event()) is not None:
            self.events.append(event)

    def take(self) -> list[StreamEvent]:
        events, self.events = self.events, []
        return events


def test_get_and_post_against_aioquic(tls_files: DevCertificate) -> None:
    server = Server(tls_files)
    protocol, client, pair = server.protocol, server.client, server.pair
    assert client.quic.tls.alpn_negotiated == "h3"

    # GET: one RequestReceived with the fields taken apart, then the end of the body.
    get_id = client.send_request(
        request_head(b"GET", b"/index.html?q=1", [(b"user-agent", b"aioquic")]), b"", True
    )
    pair.pump()
    request, ended = server.take()
    assert isinstance(request, RequestReceived)
    assert (request.stream_id, request.method, request.raw_path) == (
        get_id,
        b"GET",
        b"/index.html?q=1",
    )
    assert (request.scheme, request.authority, request.protocol) == ("https", b"localhost", None)
    assert request.headers == [(b"user-agent", b"aioquic")]
    assert not request.early_data
    assert ended == BodyEnded(get_id)
    assert protocol.open_streams == 1

    protocol.send_response(
        get_id,
        200,
        [(b"content-type", b"text/plain"), (b"connection", b"keep-alive"), (b"x-a", b"1")],
    )
    protocol.send_data(get_id, b"hello ", False)
    protocol.send_data(get_id, b"world", True)
    protocol.stream_done(get_id, pair.now)
    pair.pump()
    get = client.observed(get_id)
    assert get.status == 200
    # RFC 9114 §4.2: connection-specific fields never go out on HTTP/3.
    assert get.headers == [(b"content-type", b"text/plain"), (b"x-a", b"1")]
    assert (bytes(get.body), get.ended, get.reset_code) == (b"hello world", True, None)
    assert protocol.open_streams == 0

    # POST: the body arrives as BodyReceived chunks; credit follows ack_body.
    post_id = client.send_request(
        request_head(b"POST", b"/upload", [(b"content-length", b"12")]), b"first ", False
    )
    pair.pump()
    client.send_body(post_id, b"second", True)
    pair.pump()
    events = server.take()
    assert isinstance(events[0], RequestReceived) and events[0].method == b"POST"
    assert events[0].headers == [(b"content-length", b"12")]
    chunks = [e for e in events if isinstance(e, BodyReceived)]
    assert all(e.stream_id == post_id for e in chunks)
    assert b"".join(e.data for e in chunks) == b"first second"
    assert events[-1] == BodyEnded(post_id)
    for chunk in chunks:
        protocol.ack_body(post_id, len(chunk.data))

    protocol.send_response(post_id, 201, [(b"content-length", b"12")])
    protocol.send_data(post_id, b"first second", True)
    protocol.stream_done(post_id, pair.now)
    pair.pump(settle=True)
    post = client.observed(post_id)
    assert (post.status, post.header(b"content-length")) == (201, b"12")
    assert (bytes(post.body), post.ended, post.reset_code) == (b"first second", True, None)
    # Everything was acknowledged: QUIC holds nothing more for the response.
    assert protocol.buffered_amount(post_id) == 0
    assert not client.closed and not protocol.closed
