"""WSGI apps (PEP 3333) served from worker threads: ``--interface wsgi``.

:class:`WSGIAdapter` is an ASGI 3 app that runs a WSGI app in ``anyio.to_thread`` under a
:class:`anyio.CapacityLimiter` of ``--wsgi-max-threads``. The thread talks back to the
event loop with ``anyio.from_thread.run``.

Rules:

* Nothing is buffered whole. ``wsgi.input`` pulls request body from the event loop as the
  app reads it (one ASGI message ahead at most), so request backpressure and
  ``--max-request-body-size`` (413) work as for ASGI apps. The response iterable is sent
  chunk by chunk as the app yields it; each chunk waits for the connection to take it.
* Headers leave with the first non-empty chunk (or at the end), as PEP 3333 requires, so
  ``start_response(..., exc_info)`` can still replace them until then; afterwards it
  re-raises the app's exception.
* The iterable's ``close()`` is always called. When the client goes away the adapter stops
  iterating; on server shutdown the thread is asked to stop at its next chunk.
* An exception before the response starts becomes a 500 and the server keeps serving (the
  stream does that for every app); after it, the stream is reset.
* WSGI has no lifespan and no WebSockets: lifespan is acknowledged, WebSocket connections
  are refused.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
import anyio.to_thread

from .config import Config
from .types import Message, Receive, Scope, Send

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], None]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class _Body:
    """Request body handed from the event loop to the app's thread."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.send, self.recv = anyio.create_memory_object_stream[bytes](0)
        self.disconnected = False

    async def pump(self) -> None:
        """Runs in the event loop: body chunks to the thread (as it asks), then watch for
        the client going away."""
        async with self.send:
            while True:
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    self.disconnected = True
                    return
                chunk = message.get("body", b"")
                if chunk:
                    await self.send.send(chunk)
                if not message.get("more_body", False):
                    break
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.disconnected = True


class InputStream:
    """``wsgi.input``: reads pull body from the event loop as they need it."""

    def __init__(self, body: _Body) -> None:
        self._body = body
        self._buffer = bytearray()
        self._eof = False

    def _fill(self) -> bool:
        if self._eof:
            return False
        try:
            chunk = anyio.from_thread.run(self._body.recv.receive)
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._eof = True
            return False
        self._buffer += chunk
        return True

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (all that remain when ``size`` is negative or None)."""
        if size is None or size < 0:
            while self._fill():
                pass
            size = len(self._buffer)
        while len(self._buffer) < size and self._fill():
            pass
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def readline(self, size: int | None = -1) -> bytes:
        """One line, newline included (at most ``size`` bytes)."""
        while True:
            end = self._buffer.find(b"\n")
            limit = size if size is not None and size >= 0 else None
            if end >= 0 and (limit is None or end < limit):
                return self.read(end + 1)
            if limit is not None and len(self._buffer) >= limit:
                return self.read(limit)
            if not self._fill():
                return self.read(len(self._buffer))

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        """The remaining lines."""
        lines: list[bytes] = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


def build_environ(scope: Scope, body: InputStream) -> dict[str, Any]:
    """The PEP 3333 environ for an ASGI ``http`` scope (strings are latin-1 "bytes as
    str", paths percent-decoded as UTF-8 bytes, as PEP 3333 says)."""
    root_path: str = scope.get("root_path", "")
    path: str = scope["path"]
    if root_path and path.startswith(root_path):
        path = path[len(root_path) :]
    server = scope.get("server") or ("localhost", 80)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": root_path.encode("utf-8").decode("latin-1"),
        "PATH_INFO": path.encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope["query_string"].decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope['http_version']}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": body,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        # Not in PEP 3333, but read by Werkzeug and others: the input ends by itself, so
        # chunked bodies without Content-Length can be read to the end.
        "wsgi.input_terminated": True,
    }
    client = scope.get("client")
    if client:
        environ["REMOTE_ADDR"] = str(client[0])
        environ["REMOTE_PORT"] = str(client[1])
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        value = raw_value.decode("latin-1")
        if name == "CONTENT_TYPE" or name == "CONTENT_LENGTH":
            key = name
        else:
            key = "HTTP_" + name
        if key in environ:
            # RFC 9110 §5.3 combines repeated fields with commas; cookies with "; ".
            environ[key] += ("; " if key == "HTTP_COOKIE" else ",") + value
        else:
            environ[key] = value
    return environ


class _Response:
    """``start_response`` and ``write`` for one request, called from the app's thread."""

    def __init__(self, send: Send, body: _Body) -> None:
        self._send = send
        self._body = body
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_sent = False

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = None,
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # PEP 3333: avoid a reference cycle through the frame
        elif self.status is not None:
            raise RuntimeError("start_response() called twice without exc_info")
        code = status[:3]
        if not code.isdigit() or status[3:4] not in ("", " "):
            raise RuntimeError(f"invalid WSGI status {status!r}")
        self.status = int(code)
        self.headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers
        ]
        return self.write

    def _call(self, message: Message) -> None:
        anyio.from_thread.run(self._send_async, message)

    async def _send_async(self, message: Message) -> None:
        await self._send(message)

    def _start(self) -> None:
        if self.status is None:
            raise RuntimeError("the WSGI app did not call start_response()")
        self.headers_sent = True
        self._call({"type": "http.response.start", "status": self.status, "headers": self.headers})

    def write(self, data: bytes) -> None:
        """Send one chunk of body (the ``write`` callable, and each item of the iterable)."""
        if not data:
            return
        if not self.headers_sent:
            self._start()
        self._call({"type": "http.response.body", "body": bytes(data), "more_body": True})

    def finish(self) -> None:
        if not self.headers_sent:
            self._start()
        self._call({"type": "http.response.body", "body": b"", "more_body": False})

    @property
    def gone(self) -> bool:
        return self._body.disconnected


class WSGIAdapter:
    """An ASGI 3 app that serves a WSGI app from a bounded pool of threads."""

    def __init__(self, app: WSGIApp, config: Config) -> None:
        self.app = app
        self._max_threads = config.wsgi_max_threads
        self._limiter: anyio.CapacityLimiter | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if kind != "http":
            await send({"type": "websocket.close", "code": 1000})
            return
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self._max_threads)
        body = _Body(receive)
        response = _Response(send, body)
        environ = build_environ(scope, InputStream(body))
        async with anyio.create_task_group() as tg:
            tg.start_soon(body.pump)
            try:
                await anyio.to_thread.run_sync(self._run, environ, response, limiter=self._limiter)
            finally:
                tg.cancel_scope.cancel()

    def _run(self, environ: dict[str, Any], response: _Response) -> None:
        """In a worker thread: call the app and stream its iterable."""
        result = self.app(environ, response.start_response)
        try:
            for chunk in result:
                if response.gone:
                    return
                anyio.from_thread.check_cancelled()
                response.write(chunk)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if not response.gone:
            response.finish()
