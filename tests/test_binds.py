"""Binds other than HOST:PORT: ``unix:/path``, inherited ``fd://N`` and systemd activation.

Each test runs the real ``quicserve`` command (see ``test_cli.py``) on asyncio, uvloop and
trio, and talks to it with curl (Unix socket, TCP) and aioquic's HTTP/3 client (UDP).
Inherited sockets are made by the test and passed with ``pass_fds``; systemd activation
is reproduced the way systemd does it: the sockets at fds 3, 4 and ``LISTEN_PID`` set to
the server's own PID (a ``sh`` that ``exec``s quicserve keeps its PID).
"""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from clientkit.h3 import H3Request, h3_fetch
from quicserve.certs import DevCertificate

from . import test_cli
from .helpers import CURL
from .test_cli import Spawn, assert_one_line_error, run_cli

# The command-line fixtures (the --backend parameter, the server's env, spawn).
backend = test_cli.backend
env = test_cli.env
spawn = test_cli.spawn

APP = "tests.apps:echo_app"

pytestmark = pytest.mark.client("curl")


def curl_sync(*args: str) -> tuple[int, str]:
    import subprocess

    assert CURL is not None
    result = subprocess.run(
        [CURL, "-sS", "--max-time", "10", *args], capture_output=True, text=True, check=False
    )
    return result.returncode, result.stdout + result.stderr


@pytest.fixture
def tcp_socket() -> Iterator[socket.socket]:
    """A bound, listening loopback TCP socket for the server to inherit."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(100)
    yield sock
    sock.close()


@pytest.fixture
def udp_socket() -> Iterator[socket.socket]:
    """A bound loopback UDP socket for the server to inherit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


def test_unix_socket_with_mode(spawn: Spawn, backend: str, tmp_path: Path) -> None:
    path = tmp_path / "qs.sock"
    path.write_bytes(b"")  # a leftover regular file is not ours to delete: error
    server = spawn(APP, "--backend", backend, "--insecure-bind", f"unix:{path}")
    assert server.wait_exit(10) == 1
    assert "Traceback" not in server.stderr
    path.unlink()
    server = spawn(
        APP,
        "--backend",
        backend,
        "--insecure-bind",
        f"unix:{path}",
        "--unix-socket-mode",
        "600",
        "--lifespan",
        "off",
    )
    server.wait_for(rf"Listening on unix:{path} \(UNIX\)")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    code, out = curl_sync("--unix-socket", str(path), "http://localhost/scope")
    assert code == 0, out
    scope = json.loads(out)
    assert scope["http_version"] == "1.1" and scope["path"] == "/scope"
    code, out = curl_sync("--unix-socket", str(path), "--http2-prior-knowledge", "http://x/scope")
    assert code == 0 and json.loads(out)["http_version"] == "2", out
    server.proc.terminate()
    assert server.wait_exit(10) == 0
    assert not path.exists()  # the socket file goes with the server that made it


def test_stale_unix_socket_is_replaced(spawn: Spawn, backend: str, tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    server = spawn(APP, "--backend", backend, "--insecure-bind", f"unix:{path}")
    server.wait_for(r"Listening on unix:")
    code, out = curl_sync("--unix-socket", str(path), "http://localhost/")
    assert code == 0, out
    # A second server on the same live path is refused with one line.
    result = run_cli(server_env(), APP, "--backend", backend, "--insecure-bind", f"unix:{path}")
    assert_one_line_error(result, f"unix:{path}", "in use")


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LISTEN_PID", None)
    env.pop("LISTEN_FDS", None)
    return env


def test_inherited_tcp_and_udp_sockets(
    spawn: Spawn,
    backend: str,
    tls_files: DevCertificate,
    tcp_socket: socket.socket,
    udp_socket: socket.socket,
) -> None:
    tcp_fd, udp_fd = tcp_socket.fileno(), udp_socket.fileno()
    server = spawn(
        APP,
        "--backend",
        backend,
        "--bind",
        f"fd://{tcp_fd}",
        "--quic-bind",
        f"fd://{udp_fd}",
        "--certfile",
        str(tls_files.certfile),
        "--keyfile",
        str(tls_files.keyfile),
        pass_fds=(tcp_fd, udp_fd),
    )
    server.wait_for(r"Listening on https://127\.0\.0\.1:\d+ \(UDP\)")
    tcp_port, udp_port = tcp_socket.getsockname()[1], udp_socket.getsockname()[1]
    code, out = curl_sync(
        "--cacert", str(tls_files.ca_certfile), f"https://localhost:{tcp_port}/scope"
    )
    assert code == 0 and json.loads(out)["http_version"] == "2", out
    result = h3_fetch(udp_port, [H3Request("/scope")], cafile=str(tls_files.ca_certfile))
    assert json.loads(result.responses[0].body)["http_version"] == "3"


SYSTEMD_EXEC = """
import fcntl, os, sys
high = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 10) for fd in sys.argv[1:3]]
for target, fd in enumerate(high, start=3):
    os.dup2(fd, target)
    os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="2")
os.execv(sys.argv[3], sys.argv[3:])
"""


def test_systemd_socket_activation(
    spawn: Spawn,
    backend: str,
    tls_files: DevCertificate,
    tcp_socket: socket.socket,
    udp_socket: socket.socket,
) -> None:
    tcp_fd, udp_fd = tcp_socket.fileno(), udp_socket.fileno()
    # What systemd does: sockets at fds 3 and 4, LISTEN_PID = the service's own PID
    # (exec keeps the PID of the wrapper).
    wrapper = [sys.executable, "-c", SYSTEMD_EXEC, str(udp_fd), str(tcp_fd)]
    server = spawn(
        APP,
        "--backend",
        backend,
        "--certfile",
        str(tls_files.certfile),
        "--keyfile",
        str(tls_files.keyfile),
        pass_fds=(tcp_fd, udp_fd),
        wrapper=wrapper,
    )
    server.wait_for(r"systemd socket activation: fd://4, fd://3")
    server.wait_for(r"Listening on https://127\.0\.0\.1:\d+ \(UDP\)")
    tcp_port, udp_port = tcp_socket.getsockname()[1], udp_socket.getsockname()[1]
    code, out = curl_sync(
        "--cacert", str(tls_files.ca_certfile), f"https://localhost:{tcp_port}/scope"
    )
    assert code == 0 and json.loads(out)["http_version"] == "2", out
    result = h3_fetch(udp_port, [H3Request("/scope")], cafile=str(tls_files.ca_certfile))
    assert json.loads(result.responses[0].body)["http_version"] == "3"
    assert "Listening on https://127.0.0.1:8443" not in server.stderr  # no dev defaults


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        pytest.param(["--insecure-bind", "fd://99"], ["fd://99", "not an open socket"], id="fd"),
        pytest.param(["--insecure-bind", "fd://x"], ["fd://x"], id="fd-syntax"),
        pytest.param(
            ["--insecure-bind", "unix:/nonexistent-dir/qs.sock"],
            ["unix:/nonexistent-dir/qs.sock", "no such file"],
            id="unix-dir",
        ),
        pytest.param(["--workers", "0"], ["--workers", "at least 1"], id="workers"),
        pytest.param(["--unix-socket-mode", "999"], ["--unix-socket-mode"], id="mode"),
        pytest.param(["--quic-lb-server-id", "zz"], ["--quic-lb-server-id"], id="server-id"),
    ],
)
def test_bind_errors_are_one_line(args: list[str], needles: list[str]) -> None:
    result = run_cli(server_env(), APP, "--lifespan", "off", *args)
    assert_one_line_error(result, *needles)


def test_socket_of_the_wrong_kind_is_one_line_error(
    backend: str, tcp_socket: socket.socket, udp_socket: socket.socket, tls_files: DevCertificate
) -> None:
    import subprocess

    common = ["--backend", backend, "--certfile", str(tls_files.certfile)]
    common += ["--keyfile", str(tls_files.keyfile)]
    for flag, sock, needle in (
        ("--quic-bind", tcp_socket, "not a datagram socket"),
        ("--bind", udp_socket, "not a stream socket"),
    ):
        fd = sock.fileno()
        result = subprocess.run(
            [sys.executable, "-m", "quicserve", APP, *common, flag, f"fd://{fd}"],
            pass_fds=(fd,),
            env=server_env(),
            capture_output=True,
            text=True,
            timeout=15,
        )
        assert_one_line_error(result, f"fd://{fd}", needle)


def unit_file(name: str) -> dict[str, list[str]]:
    """``key -> values`` of a systemd unit in examples/systemd (continuations joined)."""
    text = (Path(__file__).parent.parent / "examples" / "systemd" / name).read_text()
    values: dict[str, list[str]] = {}
    for line in text.replace("\\\n", " ").splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def test_systemd_example_units_run(
    spawn: Spawn, tls_files: DevCertificate, tcp_socket: socket.socket, udp_socket: socket.socket
) -> None:
    # The example pair, run as systemd would: its ExecStart (with the test certificate,
    # and sockets of our own in place of port 8443) under socket activation.
    sockets = unit_file("quicserve.socket")
    service = unit_file("quicserve.service")
    assert sockets["ListenStream"] == sockets["ListenDatagram"] == ["8443"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    command = service["ExecStart"][0].split()
    assert command[0].endswith("/quicserve")
    args = command[1:]
    args[args.index("--certfile") + 1] = str(tls_files.certfile)
    args[args.index("--keyfile") + 1] = str(tls_files.keyfile)
    tcp_fd, udp_fd = tcp_socket.fileno(), udp_socket.fileno()
    wrapper = [sys.executable, "-c", SYSTEMD_EXEC, str(tcp_fd), str(udp_fd)]
    server = spawn(*args, pass_fds=(tcp_fd, udp_fd), wrapper=wrapper)
    server.wait_for(r"All 2 workers ready", timeout=30)
    tcp_port, udp_port = tcp_socket.getsockname()[1], udp_socket.getsockname()[1]
    code, out = curl_sync("--cacert", str(tls_files.ca_certfile), f"https://localhost:{tcp_port}/")
    assert code == 0 and "Hello" in out, out
    result = h3_fetch(udp_port, [H3Request("/")], cafile=str(tls_files.ca_certfile))
    assert result.responses[0].status == 200
    server.proc.terminate()
    assert server.wait_exit(20) == 0


def test_container_example_command_runs(spawn: Spawn, tls_files: DevCertificate) -> None:
    """examples/container/Containerfile's CMD, exactly, with the test certificate in place
    of /certs and a free loopback port in place of 0.0.0.0:8443 (no container runtime
    here: the image build itself is not run)."""
    text = (Path(__file__).parent.parent / "examples" / "container" / "Containerfile").read_text()
    cmd_line = next(line for line in text.splitlines() if line.startswith("CMD "))
    command = json.loads(cmd_line.removeprefix("CMD "))
    assert command[0] == "quicserve"
    port = test_cli.free_port()
    replace = {
        "0.0.0.0:8443": f"127.0.0.1:{port}",
        "/certs/cert.pem": str(tls_files.certfile),
        "/certs/key.pem": str(tls_files.keyfile),
    }
    server = spawn(*[replace.get(arg, arg) for arg in command[1:]])
    server.wait_for(r"All 2 workers ready", timeout=30)
    code, out = curl_sync("--cacert", str(tls_files.ca_certfile), f"https://localhost:{port}/")
    assert code == 0 and "Hello" in out, out
    result = h3_fetch(port, [H3Request("/")], cafile=str(tls_files.ca_certfile))
    assert result.responses[0].status == 200
    server.proc.terminate()
    assert server.wait_exit(20) == 0
