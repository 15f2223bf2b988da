"""``--access-log-format`` atoms and ``--log-config``: the renderer's rules, then the real
command writing custom lines to stderr and, through a dictConfig file, to a log file, then
the format applied to WebSocket (h1, h2, h3) and WebTransport sessions on every backend."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from clientkit.ws import WSClient, open_h3
from quicserve.accesslog import ATOMS, DEFAULT_FORMAT, compile_format, render
from quicserve.certs import DevCertificate
from quicserve.connection_info import ConnectionInfo
from quicserve.events import RequestReceived

from . import test_cli as cli
from .helpers import running_server, wait_for
from .test_webtransport import EchoApp, quic_port
from .wsapp import WSApp, serve, tunnel_for

env = cli.env
spawn = cli.spawn
backend = cli.backend

README = (Path(__file__).parent.parent / "README.md").read_text()
REQUEST = RequestReceived(
    stream_id=1,
    method=b"POST",
    raw_path=b"/a/b?x=1&y=2",
    headers=[(b"user-agent", b"curl/8"), (b"x-multi", b"1"), (b"x-multi", b"2")],
)
INFO = ConnectionInfo(http_version="2", scheme="https", client=("10.0.0.9", 5123), server=None)


def test_every_atom() -> None:
    line = render(
        "%(h)s|%(r)s|%(R)s|%(M)s|%(U)s|%(q)s|%(H)s|%(P)s|%(S)s|%(s)s|%(b)s|%(L)s|%(T)s|%(D)s",
        REQUEST,
        INFO,
        201,
        42,
        0.0123456,
    )
    assert line == (
        "10.0.0.9:5123|POST /a/b?x=1&y=2 HTTP/2|/a/b?x=1&y=2|POST|/a/b|x=1&y=2|HTTP/2|h2|"
        "https|201|42|0.012346|12.3|12346"
    )
    assert render("%(p)s", REQUEST, INFO, 0, 0, 0) == str(os.getpid())


def test_header_atoms() -> None:
    fmt = "%({User-Agent}i)s %({x-multi}i)s %({missing}i)s"
    assert render(fmt, REQUEST, INFO, 200, 0, 0) == "curl/8 1, 2 -"


def test_default_format_is_the_builtin_line() -> None:
    # The stream logs its built-in line without the renderer; this is the same line.
    info = ConnectionInfo(http_version="1.1", scheme="http", client=("1.2.3.4", 5), server=None)
    request = RequestReceived(stream_id=1, method=b"GET", raw_path=b"/x?y", headers=[])
    assert render(DEFAULT_FORMAT, request, info, 200, 5, 0.00123) == (
        '1.2.3.4:5 - "GET /x?y HTTP/1.1" 200 5 1.2ms'
    )


@pytest.mark.parametrize(
    ("fmt", "needle"),
    [
        ("%(nope)s", "unknown atom %(nope)s"),
        ("%(s)d %(b)s", "not a valid format"),
        ("%(s", "not a valid format"),
    ],
)
def test_bad_formats(fmt: str, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        compile_format(fmt)


def test_readme_documents_every_atom() -> None:
    for atom in ATOMS:
        assert f"`%({atom})s`" in README, atom
    assert "`%({header}i)s`" in README


# -- the real command ------------------------------------------------------------------------


def test_custom_format(spawn: cli.Spawn, backend: str) -> None:
    server = spawn(
        cli.APP,
        "--backend",
        backend,
        "--insecure-bind",
        "127.0.0.1:0",
        "--access-log-format",
        "ACCESS %(P)s %(M)s %(U)s q=%(q)s %(s)s %(b)s ua=%({user-agent}i)s",
    )
    response = httpx.get(cli.local_url(server.port(), "/hello?x=1"), headers={"user-agent": "t/1"})
    assert response.status_code == 200
    stderr = cli.stop_and_read_stderr(server)
    assert re.search(r"ACCESS h1 GET /hello q=x=1 200 5 ua=t/1$", stderr, re.M), stderr


def test_log_config_routes_the_access_log_to_a_file(
    spawn: cli.Spawn, backend: str, tmp_path: Path
) -> None:
    log_file = tmp_path / "access.log"
    settings = {
        "version": 1,
        "formatters": {"plain": {"format": "%(name)s %(message)s"}},
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "filename": str(log_file),
                "formatter": "plain",
            },
            "err": {"class": "logging.StreamHandler", "formatter": "plain"},
        },
        "loggers": {
            "quicserve.access": {"handlers": ["file"], "level": "INFO", "propagate": False},
            "quicserve.error": {"handlers": ["err"], "level": "INFO", "propagate": False},
        },
    }
    config_path = tmp_path / "logging.json"
    config_path.write_text(json.dumps(settings))
    server = spawn(
        cli.APP,
        "--backend",
        backend,
        "--insecure-bind",
        "127.0.0.1:0",
        "--log-config",
        str(config_path),
        "--access-log-format",
        "%(M)s %(U)s %(s)s",
    )
    server.wait_for(r"quicserve.error Listening on")
    port = server.port()
    assert httpx.get(cli.local_url(port, "/logged")).status_code == 200
    stderr = cli.stop_and_read_stderr(server)
    assert log_file.read_text() == "quicserve.access GET /logged 200\n"
    assert "/logged" not in stderr


@pytest.mark.parametrize(
    ("content", "name", "needle"),
    [
        ("{not json", "log.json", "--log-config"),
        ('version = 1\n[handlers.x]\nclass = "no.such.Handler"\n', "log.toml", "--log-config"),
        (None, "missing.json", "cannot read"),
    ],
)
def test_bad_log_config_is_one_line(
    env: dict[str, str], tmp_path: Path, content: str | None, name: str, needle: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    result = cli.run_cli(env, cli.APP, "--insecure-bind", "127.0.0.1:0", "--log-config", str(path))
    cli.assert_one_line_error(result, needle)


def test_bad_format_is_one_line(env: dict[str, str]) -> None:
    result = cli.run_cli(env, cli.APP, "--access-log-format", "%(zz)s")
    cli.assert_one_line_error(result, "--access-log-format", "%(zz)s")


# -- WebSocket and WebTransport sessions (in-process servers, every backend) -----------------

SESSION_FORMAT = "SESSION %(P)s %(M)s %(U)s q=%(q)s %(s)s %(b)s ua=%({user-agent}i)s"


def _session_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "quicserve.access" and r.getMessage().startswith("SESSION ")
    ]


@pytest.mark.anyio
@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["h1", "h2", "h3"])
async def test_custom_format_applies_to_websockets(
    anyio_backend: object,
    transport: str,
    tls_files: DevCertificate,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The format used to apply to HTTP requests only: WebSockets logged their own line.
    caplog.set_level(logging.INFO, logger="quicserve.access")
    user_agent = [(b"user-agent", b"t/1")]
    app = WSApp()
    async with serve(app, tls_files, access_log_format=SESSION_FORMAT) as srv:
        async with tunnel_for(transport, srv, tls_files, "/echo?room=7", headers=user_agent) as t:
            client = WSClient(t)
            await client.send_text("hello")
            assert await client.receive_message() == "hello"
            await client.close(1000)
            assert await client.expect_close() == (1000, "")
        async with tunnel_for(transport, srv, tls_files, "/forbid", headers=user_agent) as t:
            assert t.status == 403
        await wait_for(lambda: len(_session_lines(caplog)) == 2)
    method, accepted = ("GET", 101) if transport == "h1" else ("CONNECT", 200)
    # Bytes sent: the echoed text frame (2 + 5) and the close frame answering ours (2 + 2).
    assert _session_lines(caplog) == [
        f"SESSION {transport} {method} /echo q=room=7 {accepted} 11 ua=t/1",
        f"SESSION {transport} {method} /forbid q= 403 0 ua=t/1",
    ]


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_custom_format_applies_to_webtransport(
    anyio_backend: object, tls_files: DevCertificate, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="quicserve.access")
    app = EchoApp()
    async with running_server(
        app,
        tls=tls_files,
        quic_bind=("127.0.0.1:0",),
        webtransport=True,
        access_log_format=SESSION_FORMAT,
    ) as srv:
        options: dict[str, Any] = {
            "cafile": str(tls_files.ca_certfile),
            "protocol": b"webtransport",
            "webtransport": True,
            "headers": [(b"user-agent", b"t/1")],
        }
        async with open_h3(quic_port(srv), "/wt?x=1", **options) as session:
            uni = session.h3.create_webtransport_stream(session.stream_id, is_unidirectional=True)
            session.quic.send_stream_data(uni, b"one way", end_stream=True)
            await session.transmit()
            await wait_for(lambda: any(ended for _, ended in session.wt_streams.values()))
            await session.send(b"", end=True)
            await wait_for(lambda: app.finished == 1)
        async with open_h3(quic_port(srv), "/refuse", **options) as session:
            assert session.status == 403
        await wait_for(lambda: len(_session_lines(caplog)) == 2)
    # Bytes sent: the app's reply on its stream, b"echo one way".
    assert _session_lines(caplog) == [
        "SESSION h3 CONNECT /wt q=x=1 200 12 ua=t/1",
        "SESSION h3 CONNECT /refuse q= 403 0 ua=t/1",
    ]
