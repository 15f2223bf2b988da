"""The operator flags, through the real command: ``--limit-concurrency``, ``--backlog``,
``--server-header``/``--date-header``/``--header``, ``--env-file``, ``--user``/``--group``,
``--pid-file`` and the exit statuses (issue 13, item 6).

Each server is started once and checked for several flags at a time (the app,
``tests/flags_app.py``, says which process, user and groups served a request). The machine
runs the tests as root, so ``--user nobody`` is real: the server binds a privileged port
(below 1024) and reads root-only certificates (pytest's temporary directories are 0700)
before it drops, and the requests show uid ``nobody`` with no supplementary groups and no
way back to root. Requests held in flight end when the test creates a file (no sleeps).
"""

from __future__ import annotations

import json
import os
import pwd
import random
import re
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from clientkit import ws
from clientkit.h3 import H3Request, H3Response
from quicserve.api import make_config
from quicserve.certs import DevCertificate
from quicserve.config import ConfigError, parse_header, resolve
from quicserve.daemon import (
    EXIT_BOOT_FAILURE,
    EXIT_ERROR,
    check_pid_file,
    parse_env_file,
    resolve_identity,
)

from . import test_cli, test_workers
from .flags_app import HOLD_MARKER
from .helpers import client_ssl_context
from .test_cli import Spawn, app_args
from .test_workers import H3Clients

backend = test_cli.backend
env = test_cli.env
spawn = test_cli.spawn
h3_clients = test_workers.h3_clients

APP = "tests.flags_app:app"
NOBODY = pwd.getpwnam("nobody")
ENV_FILE = """\
# settings for the app
export GREETING=hello-env
QUICSERVE_LIMIT_CONCURRENCY=2
QUOTED="a \\"b\\" # not a comment"  # a comment
SINGLE='$NOT_EXPANDED'
"""

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="--user needs root")


@pytest.fixture
def privileged_port() -> int:
    """A free loopback TCP port below 1024 (only root may bind it). The tests that take
    one run in one xdist group, and the port is drawn at random: two workers probing the
    same first free port at once both found 700 free, and the second server failed."""
    ports = list(range(600, 1000))
    random.shuffle(ports)
    for port in ports:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail("no free port below 1024")


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory the user nobody may write (for a pid file it removes itself)."""
    path = Path(tempfile.mkdtemp(prefix="quicserve-flags-"))
    os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def backlog_of(port: int) -> int:
    """The listen() backlog of the listening TCP socket on ``port`` (``ss``'s Send-Q)."""
    out = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    fields = out.split()
    assert fields, f"no listening socket on port {port}"
    return int(fields[2])


def wait_until(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def h1_raw(port: int, request: bytes) -> bytes:
    """Everything the server sends back on one plain connection until it closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def h3_get(clients: H3Clients, path: str) -> H3Response:
    async def get() -> H3Response:
        client, manager = await clients.open()
        try:
            return await client.request(H3Request(path), "localhost")
        finally:
            await manager.__aexit__(None, None, None)

    return clients.run(get())


def header_map(pairs: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in pairs:
        name = name.decode() if isinstance(name, bytes) else name
        value = value.decode() if isinstance(value, bytes) else value
        assert name not in out or name == "set-cookie", f"{name} sent twice"
        out[name.lower()] = value
    return out


def check_defaults(headers: dict[str, str]) -> None:
    """The server's default fields, and no date (--no-date-header)."""
    assert headers["server"] == "quicserve"
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-team"] == "ops"
    assert "date" not in headers


def check_app_wins(headers: dict[str, str]) -> None:
    """The app set server, x-team and date itself: its values, once; the rest added."""
    assert headers["server"] == "app"
    assert headers["x-team"] == "app"
    assert headers["date"] == "app-date"
    assert headers["x-frame-options"] == "DENY"


@needs_root
@pytest.mark.client("ss")
@pytest.mark.xdist_group("privileged-port")
def test_one_process_all_flags(
    spawn: Spawn,
    backend: str,
    tls_files: DevCertificate,
    h3_clients: list[H3Clients],
    tmp_path: Path,
    privileged_port: int,
    nobody_dir: Path,
) -> None:
    release = nobody_dir / "release"  # the app, as nobody, cannot see into tmp_path
    env_file = tmp_path / "app.env"
    env_file.write_text(ENV_FILE)
    pid_file = nobody_dir / "quicserve.pid"
    server = spawn(
        APP,
        "--backend",
        backend,
        "--quic-bind",
        "127.0.0.1:0",
        "--insecure-bind",
        f"127.0.0.1:{privileged_port}",
        "--certfile",
        str(tls_files.certfile),
        "--keyfile",
        str(tls_files.keyfile),
        "--lifespan",
        "off",
        # --limit-concurrency 2 comes from the env file (QUICSERVE_LIMIT_CONCURRENCY).
        "--webtransport",
        "--header",
        "X-Frame-Options: DENY",
        "--header",
        "x-team:ops",
        "--no-date-header",
        "--backlog",
        "77",
        "--env-file",
        str(env_file),
        "--pid-file",
        str(pid_file),
        "--user",
        "nobody",
        extra_env={"FLAGS_APP_RELEASE": str(release), "SINGLE": "from the environment"},
    )
    plain = server.port("http")
    tls = server.port("https")
    udp = int(server.wait_for(r"Listening on https://127\.0\.0\.1:(\d+) \(UDP\)")[1])
    assert plain == privileged_port
    # --pid-file: written once serving, with this process's PID.
    wait_until(pid_file.exists)
    assert pid_file.read_text() == f"{server.proc.pid}\n"
    # --backlog reaches listen() on every TCP socket.
    assert backlog_of(plain) == 77
    assert backlog_of(tls) == 77

    context = client_ssl_context(tls_files)
    clients = H3Clients(udp, tls_files)
    h3_clients.append(clients)
    with (
        httpx.Client(timeout=15) as h1,
        httpx.Client(verify=context, http2=True, timeout=15) as h2,
        # Its own connection: httpx's sync HTTP/2 client delivers a response to one
        # thread only once another thread's pending read on the connection returns.
        httpx.Client(verify=context, http2=True, timeout=15) as h2_held,
        ThreadPoolExecutor(2) as pool,
    ):
        # --user: the request runs as nobody, without groups, and cannot become root;
        # --env-file: loaded before the app was imported; the environment wins.
        identity = h1.get(f"http://127.0.0.1:{plain}/id").json()
        assert identity["uid"] == NOBODY.pw_uid
        assert identity["gid"] == NOBODY.pw_gid
        assert identity["groups"] in ([], [NOBODY.pw_gid])
        assert identity["root_again"] is False
        assert identity["greeting"] == "hello-env"
        assert identity["quoted"] == 'a "b" # not a comment'
        assert identity["pid"] == server.proc.pid

        # --header, --server-header (default on), --no-date-header on h1, h2, h3.
        response = h1.get(f"http://127.0.0.1:{plain}/")
        check_defaults(header_map(response.headers.raw))
        response = h2.get(f"https://localhost:{tls}/")
        assert response.http_version == "HTTP/2"
        check_defaults(header_map(response.headers.raw))
        answer = h3_get(clients, "/")
        assert answer.status == 200
        check_defaults(header_map(answer.headers))
        check_app_wins(header_map(h1.get(f"http://127.0.0.1:{plain}/app-headers").headers.raw))
        check_app_wins(header_map(h2.get(f"https://localhost:{tls}/app-headers").headers.raw))
        check_app_wins(header_map(h3_get(clients, "/app-headers").headers))

        # --limit-concurrency 2: two requests held in the app (one h2, one h3) ...
        held_h2 = pool.submit(h2_held.get, f"https://localhost:{tls}/hold")
        held_h3 = clients.submit(_hold(clients))
        wait_until(lambda: server.stderr.count(HOLD_MARKER) == 2)
        # ... then every new request is refused with 503 without reaching the app.
        refused = h1_raw(plain, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert refused.startswith(b"HTTP/1.1 503 "), refused
        assert b"\r\nconnection: close\r\n" in refused.lower()
        websocket = h1_raw(
            plain,
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        assert websocket.startswith(b"HTTP/1.1 503 "), websocket
        response = h2.get(f"https://localhost:{tls}/")
        assert (response.status_code, response.http_version) == (503, "HTTP/2")
        check_defaults(header_map(response.headers.raw))
        assert h3_get(clients, "/").status == 503
        # WebSockets over HTTP/2 (RFC 8441) and HTTP/3 (RFC 9220), and a WebTransport
        # session, count as requests too.
        assert tunnels(tls, udp, tls_files) == (503, 503, 503)
        assert server.stderr.count(HOLD_MARKER) == 2
        # Once the held requests finish, requests are served again.
        release.touch()
        assert held_h2.result(20).status_code == 200
        assert held_h3.result(20).status == 200
        assert h1.get(f"http://127.0.0.1:{plain}/").status_code == 200
        assert h2.get(f"https://localhost:{tls}/").status_code == 200
        assert h3_get(clients, "/").status == 200
        assert tunnels(tls, udp, tls_files) == (200, 200, 200)

    assert server.stderr.count("(--limit-concurrency)") == 7
    server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit(20) == 0, server.stderr
    assert not pid_file.exists()  # removed on a clean exit
    assert "Traceback" not in server.stderr


def tunnels(tls: int, udp: int, certs: DevCertificate) -> tuple[int, int, int]:
    """The statuses of a WebSocket over HTTP/2 and over HTTP/3 and of a WebTransport
    session (200: accepted)."""

    async def statuses() -> tuple[int, int, int]:
        async with ws.open_h2(tls, "/ws", tls=client_ssl_context(certs)) as tunnel:
            over_h2 = tunnel.status
        async with ws.open_h3(udp, "/ws", cafile=str(certs.ca_certfile)) as tunnel:
            over_h3 = tunnel.status
        async with ws.open_h3(
            udp, "/wt", cafile=str(certs.ca_certfile), protocol=b"webtransport", webtransport=True
        ) as tunnel:
            session = tunnel.status
        return over_h2, over_h3, session

    return anyio.run(statuses)


async def _hold(clients: H3Clients) -> H3Response:
    client, manager = await clients.open()
    try:
        return await client.request(H3Request("/hold"), "localhost")
    finally:
        await manager.__aexit__(None, None, None)


@pytest.fixture(params=["asyncio", "trio"])
def supervised_backend(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@needs_root
@pytest.mark.client("ss")
@pytest.mark.xdist_group("privileged-port")
def test_four_workers_as_nobody_then_a_worker_that_cannot_boot_stops_all(
    spawn: Spawn,
    supervised_backend: str,
    tls_files: DevCertificate,
    h3_clients: list[H3Clients],
    tmp_path: Path,
    privileged_port: int,
    nobody_dir: Path,
) -> None:
    broken = nobody_dir / "broken"  # where the app, imported as nobody, can see it
    env_file = tmp_path / "app.env"
    env_file.write_text(ENV_FILE)
    pid_file = tmp_path / "quicserve.pid"  # the supervisor stays root: any directory
    server = spawn(
        APP,
        *app_args(supervised_backend, tls_files, workers=4),
        "--insecure-bind",
        f"127.0.0.1:{privileged_port}",
        "--quic-worker-routing",
        "forward",
        "--backlog",
        "99",
        "--user",
        "nobody",
        "--env-file",
        str(env_file),
        "--pid-file",
        str(pid_file),
        extra_env={"FLAGS_APP_BREAK": str(broken)},
    )
    server.wait_for(r"All 4 workers ready", timeout=30)
    udp = int(server.wait_for(r"Listening on https://127\.0\.0\.1:(\d+) \(UDP\)")[1])
    tcp = int(server.wait_for(r"Listening on https://127\.0\.0\.1:(\d+) \(TCP\)")[1])
    slots = test_workers.slot_pids(server)
    workers = set(slots.values())
    assert len(workers) == 4
    wait_until(pid_file.exists)  # written just after "All 4 workers ready"
    assert pid_file.read_text() == f"{server.proc.pid}\n"
    assert backlog_of(privileged_port) == 99 and backlog_of(tcp) == 99
    # HTTP/3 on eight connections: workers forward datagrams to each other through the
    # supervisor's directory, which they can use after dropping root.
    clients = H3Clients(udp, tls_files)
    h3_clients.append(clients)
    answers = [json.loads(h3_get(clients, "/id").body) for _ in range(8)]
    with httpx.Client(timeout=15) as h1:
        answers.append(h1.get(f"http://127.0.0.1:{privileged_port}/id").json())
    for answer in answers:
        assert answer["pid"] in workers
        assert answer["uid"] == NOBODY.pw_uid
        assert answer["groups"] in ([], [NOBODY.pw_gid])
        assert answer["root_again"] is False
        assert answer["greeting"] == "hello-env"  # the supervisor's environment
    assert len({answer["pid"] for answer in answers}) >= 2

    # The app no longer imports. A SIGHUP replacement that cannot boot keeps the old
    # worker, which goes on serving ...
    broken.touch()
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for(r"New worker 0 \(pid \d+\) exited with code 3 before it was ready; keeping")
    with httpx.Client(timeout=15) as h1:
        assert h1.get(f"http://127.0.0.1:{privileged_port}/id").json()["pid"] in workers
    # ... but a worker that dies and whose replacement cannot boot stops everything with
    # exit status 3, instead of being restarted in a loop.
    os.kill(slots[0], signal.SIGKILL)
    assert server.wait_exit(30) == EXIT_BOOT_FAILURE, server.stderr
    errors = [line for line in server.stderr.splitlines() if line.startswith("quicserve: error:")]
    assert len(errors) == 1, server.stderr
    assert "worker 0 cannot start" in errors[0] and "broken on purpose" in errors[0]
    assert "Traceback" not in server.stderr
    assert not pid_file.exists()
    for pid in workers:
        wait_until(lambda pid=pid: not test_workers.alive(pid), 10)


@pytest.fixture
def break_env(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    broken = tmp_path / "broken"
    broken.touch()
    return {**env, "FLAGS_APP_BREAK": str(broken)}


def test_exit_statuses_and_one_line_errors(
    env: dict[str, str], break_env: dict[str, str], tmp_path: Path
) -> None:
    garbled = tmp_path / "garbled.env"
    garbled.write_text("GOOD=1\nthis line has no equals sign\n")
    live = tmp_path / "live.pid"
    live.write_text(f"{os.getpid()}\n")  # the test process: alive
    cases: list[tuple[list[str], dict[str, str], int, list[str]]] = [
        (["--header", "bad header: x"], env, EXIT_ERROR, ["--header", "not a valid header name"]),
        (["--header", "x-a: b\rc"], env, EXIT_ERROR, ["CR, LF or NUL"]),
        (["--env-file", str(tmp_path / "missing.env")], env, EXIT_ERROR, ["missing.env"]),
        (["--env-file", str(garbled)], env, EXIT_ERROR, ["garbled.env:2", "KEY=VALUE"]),
        (["--user", "no-such-user-xyz"], env, EXIT_ERROR, ["no such user"]),
        (["--group", "no-such-group-xyz"], env, EXIT_ERROR, ["no such group"]),
        (["--pid-file", str(live)], env, EXIT_ERROR, [str(live), f"{os.getpid()} is running"]),
        ([], break_env, EXIT_BOOT_FAILURE, ["broken on purpose"]),
        (["--workers", "2"], break_env, EXIT_BOOT_FAILURE, ["broken on purpose"]),
    ]
    for args, environ, status, needles in cases:
        result = test_cli.run_cli(
            environ, APP, "--insecure-bind", "127.0.0.1:0", "--lifespan", "off", *args
        )
        test_cli.assert_one_line_error(result, *needles, exit_code=status)
        assert "Listening on" not in result.stderr


def test_without_root_user_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # The interpreter here lives under /root, so a non-root quicserve cannot start at all
    # on this machine; the check itself is run in-process as a non-root euid.
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ConfigError, match=r"--user needs root .*uid 1000"):
        resolve_identity("nobody", None)
    with pytest.raises(ConfigError, match=r"--group needs root"):
        resolve_identity(None, "nogroup")
    assert resolve_identity(None, None) is None


def test_env_file_subset(tmp_path: Path) -> None:
    path = tmp_path / "x.env"
    path.write_text(
        ENV_FILE + 'EMPTY=\nSPACED =  padded value   # comment\nESC="tab\\there\\nline"\n'
    )
    assert parse_env_file(str(path)) == {
        "GREETING": "hello-env",
        "QUICSERVE_LIMIT_CONCURRENCY": "2",
        "QUOTED": 'a "b" # not a comment',
        "SINGLE": "$NOT_EXPANDED",
        "EMPTY": "",
        "SPACED": "padded value",
        "ESC": "tab\there\nline",
    }
    for bad, needle in [
        ("1KEY=x", "expected KEY=VALUE"),
        ("KEY='open", "unclosed single quote"),
        ('KEY="open', "unclosed double quote"),
        ('KEY="a" trailing', "after the closing quote"),
    ]:
        path.write_text(f"OK=1\n{bad}\n")
        with pytest.raises(ConfigError, match=re.escape("x.env:2")) as caught:
            parse_env_file(str(path))
        assert needle in str(caught.value)


def test_header_values(tmp_path: Path) -> None:
    # Values may hold commas: TOML array items and environment lines are taken whole.
    toml = tmp_path / "q.toml"
    toml.write_text('header = ["Cache-Control: no-cache, no-store", "X-A: 1"]\n')
    wanted = ("Cache-Control: no-cache, no-store", "X-A: 1")
    assert resolve({"app": "a:b", "config": str(toml)}, {}).header == wanted
    environ = {"QUICSERVE_HEADER": "Cache-Control: no-cache, no-store\nX-A: 1"}
    assert resolve({"app": "a:b"}, environ).header == wanted
    assert parse_header("X-Frame-Options:  DENY ") == (b"x-frame-options", b"DENY")
    assert parse_header("x-empty:") == (b"x-empty", b"")
    for bad in ["no-colon", ":authority: x", "a b: c", "x: a\nb", "x: a\0", "Content-Length: 1"]:
        with pytest.raises(ValueError):
            parse_header(bad)


def test_the_api_refuses_what_acts_before_the_import() -> None:
    for name in ("user", "group", "env_file"):
        with pytest.raises(ConfigError, match=f"{name} needs the command line"):
            make_config(**{name: "x"})


def test_stale_pid_file_is_replaced(tmp_path: Path) -> None:
    stale = tmp_path / "stale.pid"
    # A PID that cannot exist (above pid_max): what a reboot leaves behind.
    stale.write_text(f"{2**22 + 1}\n")
    check_pid_file(str(stale))
    stale.write_text("not a pid\n")
    check_pid_file(str(stale))
    check_pid_file(str(tmp_path / "absent.pid"))
