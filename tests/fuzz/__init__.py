"""Fuzzing of the sans-IO layers with hypothesis (structure-aware inputs).

One file per target: ``test_fuzz_http1.py`` (H1Protocol), ``test_fuzz_http2.py``
(H2Protocol), ``test_fuzz_http3.py`` (H3Protocol over an in-memory QUIC pair),
``test_fuzz_endpoint.py`` (EndpointCore's datagram classifier) and
``test_fuzz_websocket.py`` (the WebSocket framing WebSocketStream drives). Every finding is
kept as a plain regression test in ``test_regressions.py``.

Two modes (see :func:`fuzz_settings`):

* **CI** (default): a fixed number of examples per test, ``derandomize=True`` (the same
  inputs on every run, so CI is stable), no example database. All targets together stay
  well under two minutes.
* **Long**, on demand: ``QUICSERVE_FUZZ_EXAMPLES=100000 python -m pytest tests/fuzz -x``
  runs that many random examples per test (``derandomize`` off, so every run explores new
  inputs; failures are saved in ``.hypothesis/`` and replayed first next time). Pick one
  target with ``-k``, and add ``--timeout 0`` for runs of many
  minutes; ``--hypothesis-show-statistics`` shows where the time goes.

Rules: the invariants every target checks are (1) no exception escapes but the module's
own protocol errors, (2) every stream that started ends (a ``RequestReceived`` is followed
by ``BodyEnded``, ``StreamReset`` or ``ConnectionClosed`` once the input ends), (3) the
buffers a peer fills stay within a small multiple of the configured limits, and (4) what
the server writes parses with an independent client library (h11, h2/hyperframe, aioquic,
wsproto).
"""
