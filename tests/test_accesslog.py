"""``--access-log-format`` atoms and ``--log-config``: the renderer's rules, then the real
command writing custom lines to stderr and, through a dictConfig file, to a log file."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import httpx
import pytest

from quicserve.accesslog import ATOMS, DEFAULT_FORMAT, compile_format, render
from quicserve.connection_info import ConnectionInfo
from quicserve.events import RequestReceived

from . import test_cli as cli

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
