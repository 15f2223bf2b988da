"""The ASGI app quicserve serves during an interop run.

Every answer is something a client can check on its own, so a case is judged from what
came back, never from the absence of errors:

- ``GET /files/<size>``: ``size`` bytes of deterministic content (:func:`file_body`), so
  the client can compare the sha256 of what it got with :func:`file_sha256`.
- ``POST /sha256``: the body is read as it streams in and answered with
  ``"<length> <sha256 hex>"``.
- ``GET /proto``: the ``http_version`` the server saw (``1.1``, ``2`` or ``3``).
- ``GET /client``: JSON ``{"client": [host, port], "http_version": ...}``: the peer
  address as the server sees it now (it follows NAT rebinding).
- ``GET /early``: ``1`` when quicserve marked the request as received in 0-RTT
  (``early-data: 1``, RFC 8470 §5.1), else ``0``.
- ``GET /page``: an HTML page for browsers that fetches ``/proto`` until it reads ``3``
  (``clientkit.chromium.PROTO_PAGE``, the page of tests/test_browser.py too).
- WebSocket ``/ws``: first sends ``proto:<http_version>``, then echoes every message as it
  came (text as text, bytes as bytes); the text ``close:<code>`` makes the app close with
  that code (reason ``asked``), so the client sees a close code the *server* chose.
- ``GET /wtpage``: an HTML page that opens a WebTransport session to ``/wt`` and shows
  whether a datagram and a bidirectional stream came back echoed (``webtransport`` scope).
- ``GET /wspage``: an HTML page that runs that script in the browser's own WebSocket
  (``wss:`` or ``ws:`` to the page's origin) and writes what it saw into the DOM.
- WebTransport ``/wtx``: the wt-* cases (the QUIC interop runner's WebTransport suite):
  commands on the client's streams and datagrams, answered with sha256 evidence; the app
  opens streams itself for the server-to-client cases (:func:`_wt_transfer`).
  ``GET /wtxpage?case=<case>&wt=<QUIC port>`` runs one of them in a browser.
- ``?report=<token>`` on any of these pages: once the page shows its result, it POSTs
  ``page:<http_version the page came over> <result>`` to ``/report/<token>``, and
  ``GET /report/<token>`` returns it: how a browser with no ``--dump-dom`` (Firefox)
  tells the harness what it saw (at most 64 reports of 4 KiB are kept).
  ``?wt=<port>`` on ``/wtpage``: open the session on that (QUIC) port, for a page loaded
  over TCP.
- anything else: ``ok``.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from typing import Any

from clientkit.chromium import PROTO_PAGE

from .cases import (
    WT_CLIENT_PROTOCOLS,
    WT_DATAGRAM_SIZES,
    WT_SERVER_PROTOCOLS,
    WT_TRANSFER_SIZES,
)

_BLOCK = hashlib.sha256(b"quicserve interop").digest() * 2048  # 64 KiB, never all one byte

WS_PAGE = b"""<!doctype html><html><body><pre id="out">loading</pre><script>
const show = text => { document.getElementById('out').textContent = text; };
const seen = [];
const binary = new Uint8Array(1024).map((_, i) => i % 256);
const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
const ws = new WebSocket(scheme + location.host + '/ws');
ws.binaryType = 'arraybuffer';
let step = 0;
ws.onmessage = event => {
  if (step === 0) { seen.push(event.data); ws.send('h\\u00e9llo, interop \\u2713'); }
  else if (step === 1) {
    seen.push(event.data === 'h\\u00e9llo, interop \\u2713' ? 'text:ok' : 'text:bad');
    ws.send(binary);
  } else if (step === 2) {
    const got = new Uint8Array(event.data);
    const same = got.length === binary.length && got.every((b, i) => b === binary[i]);
    seen.push(same ? 'binary:ok' : 'binary:bad');
    ws.send('close:4321');
  }
  step++;
};
ws.onerror = () => seen.push('error');
let done = false;
ws.onclose = event => { show(seen.join(' ') + ' close:' + event.code); done = true; };
// --dump-dom prints the DOM when the virtual time budget is spent, and an open WebSocket
// does not hold virtual time; a pending fetch does, so keep one going until the close.
(async () => { for (let i = 0; i < 500 && !done; i++) await fetch('/?hold=' + i); })();
</script></body></html>"""

WT_PAGE = b"""<!doctype html><html><body><pre id="out">loading</pre><script>
const show = text => { document.getElementById('out').textContent = text; };
const encode = text => new TextEncoder().encode(text);
const decode = bytes => new TextDecoder().decode(bytes);
let done = false;
async function go() {
  // ?wt=PORT: the QUIC port, for a page loaded over TCP (WebTransport does not follow alt-svc)
  const port = new URLSearchParams(location.search).get('wt');
  const wt = new WebTransport('https://' + (port ? 'localhost:' + port : location.host) + '/wt');
  await wt.ready;
  const reader = wt.datagrams.readable.getReader();
  const writer = wt.datagrams.writable.getWriter();
  let datagram = null;
  for (let i = 0; i < 20 && datagram === null; i++) {  // datagrams may be lost: retry
    await writer.write(encode('datagram ' + i));
    const result = await Promise.race([
      reader.read(), new Promise(resolve => setTimeout(() => resolve(null), 250))]);
    if (result !== null) datagram = decode(result.value);
  }
  const stream = await wt.createBidirectionalStream();
  const streamWriter = stream.writable.getWriter();
  await streamWriter.write(encode('interop stream \\u2713'));
  await streamWriter.close();
  let echoed = '';
  const streamReader = stream.readable.getReader();
  while (true) {
    const {value, done} = await streamReader.read();
    if (done) break;
    echoed += decode(value);
  }
  wt.close();
  return 'datagram:' + (datagram && datagram.startsWith('echo:datagram ') ? 'ok' : datagram)
    + ' stream:' + (echoed === 'echo:interop stream \\u2713' ? 'ok' : echoed);
}
go().catch(error => 'error:' + error).then(text => { show(text); done = true; });
// As on /wspage: a pending fetch holds --dump-dom's virtual time until the session ends.
(async () => { for (let i = 0; i < 500 && !done; i++) await fetch('/?hold=' + i); })();
</script></body></html>"""

#: The wt-* cases in a browser: ``/wtxpage?case=<case>&wt=<QUIC port>`` runs one case on a
#: session to ``/wtx`` (the files it sends are fetched from ``/files/<size>``) and shows
#: its evidence, which the adapter checks against ``file_sha256`` (interop/clients/
#: wt_page.py says the formats).
WTX_PAGE = b"""<!doctype html><html><body><pre id="out">loading</pre><script>
const SIZES = [%(sizes)s];
const DATAGRAMS = %(datagrams)d;
const PROTOCOLS = [%(protocols)s];
const show = text => { document.getElementById('out').textContent = text; };
const enc = text => new TextEncoder().encode(text);
const dec = bytes => new TextDecoder().decode(bytes);
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));
const hex = async bytes => Array.from(new Uint8Array(await crypto.subtle.digest('SHA-256', bytes)))
  .map(b => b.toString(16).padStart(2, '0')).join('');
const fileBytes = async size =>
  new Uint8Array(await (await fetch('/files/' + size, {cache: 'no-store'})).arrayBuffer());
function join(chunks) {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) { out.set(c, at); at += c.length; }
  return out;
}
async function readAll(readable) {
  const reader = readable.getReader(), chunks = [];
  while (true) {
    const {value, done} = await reader.read();
    if (done) return join(chunks);
    chunks.push(value);
  }
}
async function control(wt, line) {
  const stream = await wt.createBidirectionalStream();
  const writer = stream.writable.getWriter();
  await writer.write(enc(line + '\\n'));
  await writer.close();
  return dec(await readAll(stream.readable));
}
async function streams(wt, kind, send) {
  const out = [];
  const unis = wt.incomingUnidirectionalStreams.getReader();
  const bidis = wt.incomingBidirectionalStreams.getReader();
  for (const size of SIZES) {
    if (send) {
      const body = await fileBytes(size);
      let writable, readable;
      if (kind === 'uni') writable = await wt.createUnidirectionalStream();
      else ({writable, readable} = await wt.createBidirectionalStream());
      const writer = writable.getWriter();
      await writer.write(join([enc('send\\n'), body]));
      await writer.close();
      if (kind === 'uni') readable = (await unis.read()).value;
      out.push(size + '=' + dec(await readAll(readable)).replace(' ', ':'));
    } else {
      const [opened, digest] = (await control(wt, kind + ' ' + size)).split(' ');
      let readable;
      if (kind === 'uni') readable = (await unis.read()).value;
      else {
        const stream = (await bidis.read()).value;
        stream.writable.close().catch(() => {});
        readable = stream.readable;
      }
      const got = await hex(await readAll(readable));
      out.push(size + '=' + (got === digest ? got : 'server said ' + digest + ', got ' + got));
    }
  }
  return 'files:' + out.join(',');
}
async function datagrams(wt, send) {
  const got = new Map();
  const writer = wt.datagrams.writable.getWriter();
  (async () => {
    const reader = wt.datagrams.readable.getReader();
    while (true) {
      const {value, done} = await reader.read();
      if (done) return;
      let bytes = value;
      if (send) bytes = bytes.slice(4);  // 'ack '
      const space = bytes.indexOf(32);
      got.set(parseInt(dec(bytes.slice(0, space))), bytes.slice(space + 1));
    }
  })().catch(() => {});
  const base = send ? await fileBytes(600 + 2 * (DATAGRAMS - 1)) : null;
  for (let round = 0; round < 30 && got.size < DATAGRAMS; round++) {
    for (let i = 0; i < DATAGRAMS; i++) {
      if (got.has(i)) continue;
      if (send) writer.write(join([enc('put ' + i + ' '), base.slice(0, 600 + 2 * i)]));
      else writer.write(enc('get ' + i));
    }
    for (let wait = 0; wait < 10 && got.size < DATAGRAMS; wait++) await sleep(50);
  }
  const ordered = [];
  for (let i = 0; i < DATAGRAMS; i++) ordered.push(got.get(i) || new Uint8Array(0));
  return (send ? 'acks:' : 'datagrams:') + got.size + ':' + await hex(join(ordered));
}
let done = false;
async function go() {
  const params = new URLSearchParams(location.search);
  const kase = params.get('case');
  const url = 'https://localhost:' + params.get('wt') + '/wtx';
  const wt = kase === 'wt-handshake' ? new WebTransport(url, {protocols: PROTOCOLS})
    : new WebTransport(url);
  await wt.ready;
  let result;
  if (kase === 'wt-handshake') result = 'protocol:' + wt.protocol;
  else if (kase.startsWith('wt-transfer-datagram')) {
    result = await datagrams(wt, kase.endsWith('-send'));
  } else {
    const kind = kase.includes('-unidirectional-') ? 'uni' : 'bidi';
    result = await streams(wt, kind, kase.endsWith('-send'));
  }
  wt.close();
  return result;
}
go().catch(error => 'error:' + error).then(text => { show(text); done = true; });
// As on /wspage: a pending fetch holds --dump-dom's virtual time until the case ends.
(async () => { for (let i = 0; i < 3000 && !done; i++) await fetch('/?hold=' + i); })();
</script></body></html>""" % {
    b"sizes": ", ".join(map(str, WT_TRANSFER_SIZES)).encode(),
    b"datagrams": len(WT_DATAGRAM_SIZES),
    b"protocols": ", ".join(f"'{p}'" for p in WT_CLIENT_PROTOCOLS).encode(),
}

MAX_FILE = 200 * 1024 * 1024

#: Appended to a page served with ``?report=<token>``: once the page's ``<pre id="out">``
#: shows a result, POST ``page:<http_version the page was served over> <result>`` to
#: ``/report/<token>`` (for browsers with no ``--dump-dom``).
REPORT_SCRIPT = b"""<script>
(async () => {
  const token = new URLSearchParams(location.search).get('report');
  const out = document.getElementById('out');
  for (let i = 0; i < 1200 && out.textContent === 'loading'; i++) {
    await new Promise(resolve => setTimeout(resolve, 100));
  }
  await fetch('/report/' + token, {method: 'POST', body: 'page:{served} ' + out.textContent});
})();
</script>"""
#: Reports kept (oldest dropped first) and the bytes kept of each: a client of the
#: interop app cannot make it hold more than this.
MAX_REPORTS = 64
MAX_REPORT_BYTES = 4096
_reports: dict[str, bytes] = {}


def file_body(size: int) -> bytes:
    """The content of ``/files/<size>``: a repeating 64 KiB block, cut to ``size``."""
    whole, rest = divmod(size, len(_BLOCK))
    return _BLOCK * whole + _BLOCK[:rest]


@lru_cache(maxsize=32)
def file_sha256(size: int) -> str:
    """The sha256 (hex) a client must find for ``/files/<size>``."""
    return hashlib.sha256(file_body(size)).hexdigest()


async def _respond(send: Any, status: int, body: bytes, kind: bytes = b"text/plain") -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", kind), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _websocket(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/ws``: the http_version first, then echoes; ``close:<code>`` closes with it."""
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": f"proto:{scope['http_version']}"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is not None and text.startswith("close:") and text[6:].isdigit():
            await send({"type": "websocket.close", "code": int(text[6:]), "reason": "asked"})
            continue  # the disconnect follows once the client answers the close
        if text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


async def _webtransport(receive: Any, send: Any) -> None:
    """Echo datagrams and stream data with an ``echo:`` prefix (quicserve --webtransport)."""
    await receive()  # webtransport.connect
    await send({"type": "webtransport.accept"})
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "webtransport.datagram.receive":
            await send({"type": "webtransport.datagram.send", "data": b"echo:" + message["data"]})
        elif kind == "webtransport.stream.receive":
            data = b"echo:" + message["data"] if message["data"] else b""
            reply = {"type": "webtransport.stream.send", "stream": message["stream"]}
            await send({**reply, "data": data, "end": message["end"]})
        elif kind == "webtransport.disconnect":
            return


#: The longest command line of a /wtx stream, and the largest file a command may ask for.
WT_MAX_COMMAND = 64
WT_MAX_FILE = 16 * 1024 * 1024


def wt_datagram_digest(sizes: tuple[int, ...] = WT_DATAGRAM_SIZES) -> str:
    """sha256 of the datagram payloads of wt-transfer-datagram-receive, in index order
    (each is ``file_body(size)``)."""
    return hashlib.sha256(b"".join(file_body(size) for size in sizes)).hexdigest()


def wt_ack_digest(sizes: tuple[int, ...] = WT_DATAGRAM_SIZES) -> str:
    """sha256 of the app's acknowledgements in wt-transfer-datagram-send (the sha256 hex
    of each ``file_body(size)``, joined in index order)."""
    acks = "".join(hashlib.sha256(file_body(size)).hexdigest() for size in sizes)
    return hashlib.sha256(acks.encode()).hexdigest()


class _WTStream:
    """One client stream of a /wtx session: its command line, then what follows."""

    __slots__ = ("command", "digest", "head", "length")

    def __init__(self) -> None:
        self.head = b""
        self.command: bytes | None = None
        self.digest = hashlib.sha256()
        self.length = 0


async def _wt_transfer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/wtx``: the wt-* cases (the QUIC interop runner's WebTransport suite).

    Accepts with the client's first WT-Available-Protocols entry the app supports
    (:data:`~interop.cases.WT_SERVER_PROTOCOLS`). Each client stream starts with a command
    line; what the app does once the client ends it:

    * ``send`` + payload: answers ``<length> <sha256 hex>`` of the payload (on the same
      stream if bidirectional; on a unidirectional stream the server opens, if not);
    * ``uni <size>`` / ``bidi <size>``: opens a stream of that kind, sends
      ``file_body(size)`` on it and ends it, then answers ``<stream id> <sha256 hex>`` of
      what it sent on the command's stream.

    Datagrams: ``get <i>`` is answered with ``<i> `` + ``file_body(WT_DATAGRAM_SIZES[i])``,
    ``put <i> <payload>`` with ``ack <i> <sha256 hex of payload>``. Held per stream: the
    command line (at most :data:`WT_MAX_COMMAND` bytes) and a running digest; streams are
    bounded by quicserve's ``--webtransport-max-streams``."""
    await receive()  # webtransport.connect
    accept: dict[str, Any] = {"type": "webtransport.accept"}
    chosen = next((p for p in scope.get("subprotocols", ()) if p in WT_SERVER_PROTOCOLS), None)
    if chosen is not None:
        accept["subprotocol"] = chosen
    await send(accept)
    streams: dict[int, _WTStream] = {}
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "webtransport.disconnect":
            return
        if kind == "webtransport.datagram.receive":
            await _wt_datagram(message["data"], send)
            continue
        if kind != "webtransport.stream.receive":
            continue
        stream_id = message["stream"]
        if stream_id & 1:
            continue  # the client's side of a stream the app opened: not a command
        state = streams.get(stream_id)
        if state is None:
            state = streams[stream_id] = _WTStream()
        data = message["data"]
        if state.command is None:
            head = state.head + data
            line, newline, rest = head.partition(b"\n")
            if newline:
                state.command, state.head, data = line, b"", rest
            elif len(head) > WT_MAX_COMMAND:
                state.command, data = b"bad", b""
            else:
                state.head, data = head, b""
        state.digest.update(data)
        state.length += len(data)
        if not message["end"]:
            continue
        del streams[stream_id]
        answer = await _wt_command(state, send)
        await send(
            {"type": "webtransport.stream.send", "stream": stream_id, "data": answer, "end": True}
        )


async def _wt_command(state: _WTStream, send: Any) -> bytes:
    verb, _, argument = (state.command or b"").partition(b" ")
    if verb == b"send":
        return f"{state.length} {state.digest.hexdigest()}".encode()
    if verb in (b"uni", b"bidi") and argument.isdigit() and int(argument) <= WT_MAX_FILE:
        body = file_body(int(argument))
        opened: dict[str, Any] = {
            "type": "webtransport.stream.open",
            "unidirectional": verb == b"uni",
            "data": body,
            "end": True,
        }
        await send(opened)
        return f"{opened['stream']} {hashlib.sha256(body).hexdigest()}".encode()
    return b"error: unknown command"


async def _wt_datagram(data: bytes, send: Any) -> None:
    verb, _, rest = data.partition(b" ")
    if verb == b"get":
        index = int(rest) if rest.isdigit() else -1
        if 0 <= index < len(WT_DATAGRAM_SIZES):
            payload = b"%d " % index + file_body(WT_DATAGRAM_SIZES[index])
            await send({"type": "webtransport.datagram.send", "data": payload})
    elif verb == b"put":
        label, _, payload = rest.partition(b" ")
        if label.isdigit():
            ack = b"ack %s %s" % (label, hashlib.sha256(payload).hexdigest().encode())
            await send({"type": "webtransport.datagram.send", "data": ack})


async def _report(token: str, method: str, receive: Any, send: Any) -> None:
    """``POST /report/<token>`` keeps what a page saw; ``GET`` returns it (404 until then)."""
    token = token[:64]
    if method != "POST":
        said = _reports.get(token)
        await _respond(send, 404 if said is None else 200, said or b"not reported")
        return
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body = (body + message.get("body", b""))[:MAX_REPORT_BYTES]
        if not message.get("more_body", False):
            break
    _reports[token] = body
    while len(_reports) > MAX_REPORTS:
        del _reports[next(iter(_reports))]
    await _respond(send, 200, b"ok")


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The interop app (see the module docstring for its routes)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        if scope["path"] == "/ws":
            await _websocket(scope, receive, send)
        return  # any other path: refused (403)
    if scope["type"] == "webtransport":
        if scope["path"] == "/wtx":
            await _wt_transfer(scope, receive, send)
        else:
            await _webtransport(receive, send)
        return
    if scope["type"] != "http":
        return
    path: str = scope["path"]
    if path.startswith("/files/"):
        try:
            size = int(path.removeprefix("/files/"))
        except ValueError:
            size = -1
        if not 0 <= size <= MAX_FILE:
            await _respond(send, 404, b"no such file")
            return
        # Sent in 1 MiB pieces so big files also exercise flow control on the way out.
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/octet-stream"),
                    (b"content-length", b"%d" % size),
                ],
            }
        )
        body = file_body(size)
        step = 1024 * 1024
        for start in range(0, max(size, 1), step):
            piece = body[start : start + step]
            await send(
                {"type": "http.response.body", "body": piece, "more_body": start + step < size}
            )
        return
    if path == "/sha256":
        digest = hashlib.sha256()
        length = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            digest.update(chunk)
            length += len(chunk)
            if not message.get("more_body", False):
                break
        await _respond(send, 200, f"{length} {digest.hexdigest()}".encode())
        return
    if path == "/proto":
        await _respond(send, 200, scope["http_version"].encode())
        return
    if path == "/client":
        client = list(scope.get("client") or ("", 0))
        seen = json.dumps({"client": client, "http_version": scope["http_version"]})
        await _respond(send, 200, seen.encode(), b"application/json")
        return
    if path == "/early":
        early = (b"early-data", b"1") in [tuple(h) for h in scope["headers"]]
        await _respond(send, 200, b"1" if early else b"0")
        return
    pages = {"/page": PROTO_PAGE, "/wspage": WS_PAGE, "/wtpage": WT_PAGE, "/wtxpage": WTX_PAGE}
    if path in pages:
        page = pages[path]
        if b"report=" in scope["query_string"]:
            page += REPORT_SCRIPT.replace(b"{served}", scope["http_version"].encode())
        await _respond(send, 200, page, b"text/html")
        return
    if path.startswith("/report/"):
        await _report(path.removeprefix("/report/"), scope["method"], receive, send)
        return
    await _respond(send, 200, b"ok")
