"""WebTransport both ways, for real browsers: the page's script and the app's session.

Shared by tests/test_browser.py (Chromium), tests/test_firefox.py (Firefox) and interop/
(the ``wt-*`` cases): one session carries, in each direction, a datagram, a bidirectional
and a unidirectional stream.

* client to server: a datagram (echoed ``echo <text>``), a bidirectional stream (echoed on
  it), a unidirectional stream (echoed on one the server opens);
* server to client, before the client sent anything: a datagram (repeated until the client
  says ``got <text>``: datagrams may be lost), a bidirectional stream the server opens with
  ``bidi from server?`` (the client answers on it, the server then ends it with
  ``thanks for <answer>``), and a unidirectional stream ``uni from server``.

:data:`WT_SCRIPT` defines ``webtransportBothWays(url, label)``, which resolves to an object
whose keys :func:`expected` gives for a ``label``. :func:`serve_session` is the app's side,
and returns what the server saw; its buffers are bounded (:data:`MAX_ECHO` per stream).
"""

from __future__ import annotations

from typing import Any

import anyio

#: Bytes the app keeps of one stream before it echoes them (the page sends a few dozen).
MAX_ECHO = 64 * 1024
SERVER_DATAGRAM = b"datagram from server"
SERVER_BIDI = b"bidi from server?"
SERVER_UNI = b"uni from server"

WT_SCRIPT = """
async function webtransportBothWays(url, label) {
  const enc = text => new TextEncoder().encode(text);
  const dec = bytes => new TextDecoder().decode(bytes);
  const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));
  async function readAll(reader, text = '', until = null) {
    while (until === null || !text.endsWith(until)) {
      const {value, done} = await reader.read();
      if (done) break;
      text += dec(value);
    }
    return text;
  }
  const wt = new WebTransport(url);
  await wt.ready;
  const out = {client_datagram: null, server_datagram: null};
  const datagrams = wt.datagrams.writable.getWriter();
  (async () => {
    const reader = wt.datagrams.readable.getReader();
    while (true) {
      const {value, done} = await reader.read();
      if (done) return;
      const text = dec(value);
      if (text.startsWith('echo ')) out.client_datagram = text;
      else {
        if (out.server_datagram === null) out.server_datagram = text;
        datagrams.write(enc('got ' + text));
      }
    }
  })().catch(() => {});
  // Datagrams may be lost, in both directions: send until both have been seen.
  for (let i = 0; i < 50 && (out.client_datagram === null || out.server_datagram === null);
       i++) {
    if (out.client_datagram === null) await datagrams.write(enc('datagram from ' + label));
    await sleep(100);
  }
  const bidi = await wt.createBidirectionalStream();
  const bidiWriter = bidi.writable.getWriter();
  await bidiWriter.write(enc('bidi from ' + label));
  await bidiWriter.close();
  out.client_bidi = await readAll(bidi.readable.getReader());
  const uni = await wt.createUnidirectionalStream();
  const uniWriter = uni.getWriter();
  await uniWriter.write(enc('uni from ' + label));
  await uniWriter.close();
  // The server's bidirectional stream: read its question, answer, read the rest.
  const incoming = (await wt.incomingBidirectionalStreams.getReader().read()).value;
  const incomingReader = incoming.readable.getReader();
  let text = await readAll(incomingReader, '', '?');
  const answerWriter = incoming.writable.getWriter();
  await answerWriter.write(enc('answer from ' + label));
  await answerWriter.close();
  out.server_bidi = await readAll(incomingReader, text);
  // Two unidirectional streams come from the server: its own and the echo of ours.
  const unis = wt.incomingUnidirectionalStreams.getReader();
  const texts = [];
  for (let i = 0; i < 2; i++) texts.push(await readAll((await unis.read()).value.getReader()));
  texts.sort();
  out.client_uni = texts.find(t => t.startsWith('echo ')) || null;
  out.server_uni = texts.find(t => !t.startsWith('echo ')) || null;
  wt.close();
  return out;
}
"""


def expected(label: str) -> dict[str, str]:
    """What ``webtransportBothWays(url, label)`` resolves to when everything worked."""
    return {
        "client_datagram": f"echo datagram from {label}",
        "server_datagram": SERVER_DATAGRAM.decode(),
        "client_bidi": f"echo bidi from {label}",
        "server_bidi": f"{SERVER_BIDI.decode()}thanks for answer from {label}",
        "client_uni": f"echo uni from {label}",
        "server_uni": SERVER_UNI.decode(),
    }


async def serve_session(receive: Any, send: Any) -> dict[str, Any]:
    """Accept one session and play the server's part until the client ends it. Returns
    what the server saw: the ids of the streams it opened, the client's answer on its
    bidirectional stream, and whether the client acknowledged its datagram."""
    assert (await receive())["type"] == "webtransport.connect"
    await send({"type": "webtransport.accept"})
    seen: dict[str, Any] = {"datagram_acked": False, "answer": None}
    acked = anyio.Event()

    async def repeat_datagram() -> None:
        for _ in range(50):
            await send({"type": "webtransport.datagram.send", "data": SERVER_DATAGRAM})
            with anyio.move_on_after(0.1):
                await acked.wait()
            if acked.is_set():
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(repeat_datagram)
        bidi: dict[str, Any] = {"type": "webtransport.stream.open", "data": SERVER_BIDI}
        await send(bidi)
        uni: dict[str, Any] = {
            "type": "webtransport.stream.open",
            "unidirectional": True,
            "data": SERVER_UNI,
            "end": True,
        }
        await send(uni)
        seen["opened"] = {"bidi": bidi["stream"], "uni": uni["stream"]}
        buffers: dict[int, bytes] = {}
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "webtransport.datagram.receive":
                if message["data"] == b"got " + SERVER_DATAGRAM:
                    seen["datagram_acked"] = True
                    acked.set()
                else:
                    echo = b"echo " + message["data"]
                    await send({"type": "webtransport.datagram.send", "data": echo})
            elif kind == "webtransport.stream.receive":
                stream = message["stream"]
                buffers[stream] = (buffers.get(stream, b"") + message["data"])[:MAX_ECHO]
                if not message["end"]:
                    continue
                data = buffers.pop(stream)
                if stream == bidi["stream"]:
                    seen["answer"] = data.decode()
                    reply = b"thanks for " + data
                else:
                    reply = b"echo " + data
                await send(
                    {
                        "type": "webtransport.stream.send",
                        "stream": stream,
                        "data": reply,
                        "end": True,
                    }
                )
            elif kind == "webtransport.disconnect":
                tg.cancel_scope.cancel()
                return seen
    return seen
