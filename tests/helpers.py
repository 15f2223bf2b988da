"""Helpers for tests that run a real server on loopback."""

from __future__ import annotations

import dataclasses
import shutil
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from quicserve.app import as_asgi3
from quicserve.certs import DevCertificate
from quicserve.config import Config
from quicserve.server import BoundAddress, Server

#: The WebSocket framing engines (``--ws-engine``) as pytest params: every WebSocket test
#: runs on each (the ``ws_engine`` fixture). The websockets engine is an optional extra
#: (``quicserve[fast]``), in the ``test`` extra too: skipped where missing, failed in CI.
WS_ENGINES = [
    pytest.param("wsproto", id="wsproto"),
    pytest.param("websockets", id="websockets", marks=pytest.mark.client("websockets")),
]

#: The HTTP/1.1 engine a WebSocket-over-HTTP/1.1 test pairs with each framing engine, so
#: the two installs users run are both covered without a four-way product: h11 with
#: wsproto (pure Python), and with websockets the ``auto`` choice (httptools where the
#: ``fast`` extra is installed, as in CI).
H1_WITH_WS = {"wsproto": "h11", "websockets": "auto"}


@dataclass
class RunningServer:
    """A server started by :func:`running_server` and where it listens."""

    server: Server
    addresses: list[BoundAddress]

    def url(self, path: str = "/", scheme: str | None = None) -> str:
        """URL of the first endpoint with ``scheme`` (or the first endpoint)."""
        for address in self.addresses:
            if scheme is None or address.scheme == scheme:
                return address.url() + path
        raise LookupError(scheme)

    def port(self, scheme: str | None = None) -> int:
        """Port of the first endpoint with ``scheme``."""
        for address in self.addresses:
            if scheme is None or address.scheme == scheme:
                return address.port
        raise LookupError(scheme)


@asynccontextmanager
async def running_server(
    app: Any, tls: DevCertificate | None = None, **options: Any
) -> AsyncIterator[RunningServer]:
    """Serve ``app`` on 127.0.0.1 (random ports) for the duration of the block.

    With ``tls`` the server gets a TLS bind and a plain one; without, only a plain one.
    Leaving the block shuts the server down gracefully and waits for it.
    """
    # Test apps mostly ignore lifespan; tests of lifespan pass lifespan="auto" or "on".
    defaults: dict[str, Any] = {
        "insecure_bind": ("127.0.0.1:0",),
        "graceful_timeout": 5.0,
        "lifespan": "off",
    }
    if tls is not None:
        defaults.update(bind=("127.0.0.1:0",), certfile=str(tls.certfile), keyfile=str(tls.keyfile))
    config = dataclasses.replace(Config(), **{**defaults, **options})
    server = Server(as_asgi3(app), config)
    async with anyio.create_task_group() as tg:
        addresses = await tg.start(server.serve)
        try:
            yield RunningServer(server, addresses)
        finally:
            server.shutdown()


def client_ssl_context(tls: DevCertificate) -> ssl.SSLContext:
    """A client context that trusts the test CA."""
    return ssl.create_default_context(cafile=str(tls.ca_certfile))


CURL = shutil.which("curl")


async def curl(*args: str) -> tuple[int, bytes, bytes]:
    """Run system curl; returns (exit code, stdout, stderr)."""
    assert CURL is not None, "curl is not installed (apt-get install curl)"
    result = await anyio.run_process([CURL, "-sS", "--max-time", "20", *args], check=False)
    return result.returncode, result.stdout, result.stderr


async def raw_exchange(port: int, data: bytes, *, read_timeout: float = 5.0) -> bytes:
    """Send raw bytes on a fresh TCP connection and read until the server closes."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(data)
        chunks: list[bytes] = []
        with anyio.move_on_after(read_timeout):
            while True:
                try:
                    chunks.append(await stream.receive())
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    break
        return b"".join(chunks)


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)
