"""WSGI apps (``--interface wsgi``) over real sockets on asyncio, uvloop and trio.

The apps below are plain PEP 3333 callables run in worker threads; the tests check the
environ, streaming of ``wsgi.input`` and of the response iterable (the first chunk arrives
while the app is still blocked producing the second), ``start_response`` with
``exc_info``, ``close()``, the thread limit, 413, and that an exception is a 500 after
which the server keeps serving.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import anyio
import httpx
import pytest

from quicserve.certs import DevCertificate

from .helpers import curl, running_server

pytestmark = pytest.mark.anyio

StartResponse = Callable[..., Any]


class Probe:
    """What the apps report to the test from their threads."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.closed = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0


def make_app(probe: Probe) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        if path == "/environ":
            view = {k: v for k, v in environ.items() if isinstance(v, str | tuple | bool)}
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps(view).encode()]
        if path == "/sha256":
            stream = environ["wsgi.input"]
            digest = hashlib.sha256()
            first_line = stream.readline()
            digest.update(first_line)
            size = len(first_line)
            while chunk := stream.read(10_000):
                digest.update(chunk)
                size += len(chunk)
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [f"{size} {digest.hexdigest()}".encode()]
        if path == "/stream":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return _Streamed(probe)
        if path == "/error":
            raise RuntimeError("boom (expected by the test)")
        if path == "/exc-info":
            start_response("200 OK", [("Content-Type", "text/plain")])
            try:
                raise ValueError("late failure")
            except ValueError:
                start_response(
                    "503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info()
                )
            return [b"replaced"]
        if path == "/slow":
            with probe.lock:
                probe.running += 1
                probe.most = max(probe.most, probe.running)
            probe.release.wait(5)
            with probe.lock:
                probe.running -= 1
            start_response("200 OK", [])
            return [b"slow"]
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Wsgi", "yes")])
        return [b"hello ", b"", b"wsgi"]

    return app


class _Streamed:
    """Yields one chunk, then blocks until the test has seen it; records close()."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe

    def __iter__(self) -> Iterator[bytes]:
        yield b"first;"
        if not self.probe.release.wait(5):
            yield b"timeout: the first chunk was buffered;"
        yield b"second"

    def close(self) -> None:
        self.probe.closed.set()


async def test_environ(anyio_backend: object) -> None:
    app = make_app(Probe())
    async with running_server(app, interface="wsgi", root_path="/mnt") as srv:
        async with httpx.AsyncClient() as client:
            response = await client.get(
                srv.url("/environ?a=1&b=%C3%A9"),
                headers={"X-Custom": "v", "Cookie": "a=1", "Content-Type": "text/x"},
            )
            hello = await client.get(srv.url("/"))
    assert response.status_code == 200
    environ = response.json()
    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["SCRIPT_NAME"] == "/mnt"
    assert environ["PATH_INFO"] == "/environ"
    assert environ["QUERY_STRING"] == "a=1&b=%C3%A9"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["SERVER_NAME"] == "127.0.0.1"
    assert environ["SERVER_PORT"] == str(srv.port())
    assert environ["REMOTE_ADDR"] == "127.0.0.1"
    assert environ["HTTP_X_CUSTOM"] == "v"
    assert environ["HTTP_COOKIE"] == "a=1"
    assert environ["CONTENT_TYPE"] == "text/x"
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["wsgi.version"] == [1, 0]
    assert environ["wsgi.multithread"] is True
    assert (hello.status_code, hello.text, hello.headers["x-wsgi"]) == (200, "hello wsgi", "yes")


async def test_request_body_is_streamed_in(anyio_backend: object) -> None:
    payload = b"first line\n" + bytes(range(256)) * 8192  # 2 MiB

    async def in_two_parts() -> Any:
        yield payload[:5]
        yield payload[5:]

    async with running_server(make_app(Probe()), interface="wsgi") as srv:
        async with httpx.AsyncClient() as client:
            response = await client.post(srv.url("/sha256"), content=payload)
            # Chunked (no Content-Length): the input ends by itself.
            chunked = await client.post(srv.url("/sha256"), content=in_two_parts())
    expected = f"{len(payload)} {hashlib.sha256(payload).hexdigest()}"
    assert response.text == expected
    assert chunked.text == expected


async def test_response_iterable_is_streamed_and_closed(anyio_backend: object) -> None:
    probe = Probe()
    async with running_server(make_app(probe), interface="wsgi") as srv:
        async with httpx.AsyncClient() as client:
            async with client.stream("GET", srv.url("/stream")) as response:
                chunks = response.aiter_raw()
                first = await chunks.__anext__()
                assert first == b"first;"  # while the app is still blocked
                probe.release.set()
                rest = b"".join([chunk async for chunk in chunks])
    assert rest == b"second"
    assert probe.closed.wait(5)


async def test_exceptions(anyio_backend: object) -> None:
    async with running_server(make_app(Probe()), interface="wsgi") as srv:
        async with httpx.AsyncClient() as client:
            error = await client.get(srv.url("/error"))
            replaced = await client.get(srv.url("/exc-info"))
            after = await client.get(srv.url("/"))
    assert error.status_code == 500
    assert (replaced.status_code, replaced.text) == (503, "replaced")
    assert (after.status_code, after.text) == (200, "hello wsgi")


async def test_thread_limit(anyio_backend: object) -> None:
    probe = Probe()
    async with running_server(make_app(probe), interface="wsgi", wsgi_max_threads=2) as srv:
        async with httpx.AsyncClient() as client, anyio.create_task_group() as tg:
            results: list[int] = []

            async def get() -> None:
                results.append((await client.get(srv.url("/slow"), timeout=10)).status_code)

            for _ in range(4):
                tg.start_soon(get)
            with anyio.fail_after(5):
                while probe.running < 2:
                    await anyio.sleep(0.01)
            await anyio.sleep(0.2)
            assert probe.running == 2  # the other two wait for a thread
            probe.release.set()
    assert results == [200] * 4
    assert probe.most == 2


@pytest.mark.client("curl")
async def test_body_limit_and_http2(anyio_backend: object, tls_files: DevCertificate) -> None:
    async with running_server(
        make_app(Probe()), tls=tls_files, interface="wsgi", max_request_body_size=1000
    ) as srv:
        url = srv.url("/sha256", scheme="https").replace("127.0.0.1", "localhost")
        ca = str(tls_files.ca_certfile)
        code, out, err = await curl(
            "--http2", "--cacert", ca, "-w", " %{http_version}", "--data-binary", "x\nyz", url
        )
        assert (code, out) == (0, b"4 " + hashlib.sha256(b"x\nyz").hexdigest().encode() + b" 2"), (
            err
        )
        code, out, err = await curl(
            "--http2",
            "--cacert",
            ca,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--data-binary",
            "x" * 5000,
            url,
        )
        assert out == b"413", err
