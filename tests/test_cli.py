"""The real ``quicserve`` command, run as a subprocess on loopback.

Each server is ``python -m quicserve ...`` in its own process, so the backend is a pytest
parameter (asyncio, uvloop, trio) rather than the anyio fixture. Servers listen on
``--insecure-bind 127.0.0.1:0`` and the test reads the real port from the "Listening on"
log line. Every process a test starts is stopped by the ``spawn`` fixture, by PID
(terminate, wait, kill).

Rules the tests hold the command to:

* a mistake a person can fix prints one ``quicserve: error: ...`` line, exits non-zero and
  shows no traceback;
* SIGTERM/SIGINT let in-flight requests finish within ``--graceful-timeout``, a second
  signal stops at once, and a clean stop exits 0;
* with no ``--bind`` and no certificate, it serves TLS on 127.0.0.1:8443 with a development
  certificate kept in ``$QUICSERVE_DATA_DIR``;
* bad bytes from a peer never take the process down.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

import quicserve
from quicserve.certs import DevCertificate, make_test_certificates
from quicserve.config import config_fields

from .cli_apps import SLOW_BODY, SLOW_MARKER, STARTUP_FAILED_MESSAGE

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.cli_apps:app"
LISTENING = re.compile(r"Listening on (https?)://127\.0\.0\.1:(\d+) \(TCP\)")
ACCESS_LINE = re.compile(r'"(GET|POST) (\S+) HTTP/[\d.]+" (\d{3}) ')
DEV_PORT = 8443
CURL = shutil.which("curl")

BACKENDS = [
    pytest.param("asyncio"),
    pytest.param(
        "uvloop",
        marks=pytest.mark.client("uvloop"),
    ),
    pytest.param("trio"),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The ``--backend`` the server process runs on."""
    value: str = request.param
    return value


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The server's environment: its own data dir (never the user's), wide help output."""
    values = dict(os.environ)
    values["QUICSERVE_DATA_DIR"] = str(tmp_path / "quicserve-data")
    values["COLUMNS"] = "500"  # argparse wraps help at the terminal width
    values.pop("SSLKEYLOGFILE", None)
    return values


def app_args(backend: str, tls: DevCertificate, *, workers: int = 1) -> list[str]:
    """The flags most multi-process tests start with: the backend, ``--workers``, QUIC on a
    free port, the certificate, no lifespan and no access log (their lines are noise)."""
    return [
        *("--backend", backend, "--workers", str(workers), "--quic-bind", "127.0.0.1:0"),
        *("--certfile", str(tls.certfile), "--keyfile", str(tls.keyfile)),
        *("--lifespan", "off", "--no-access-log"),
    ]


def quicserve_command(*args: str) -> list[str]:
    """The command line that runs quicserve with ``args``."""
    return [sys.executable, "-m", "quicserve", *args]


class CLIServer:
    """A running ``quicserve`` process whose stderr is collected line by line."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        *,
        pass_fds: tuple[int, ...] = (),
        wrapper: list[str] | None = None,
    ) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [*(wrapper or []), *quicserve_command(*args)],
            cwd=ROOT,
            env=env,
            pass_fds=pass_fds,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self._lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    @property
    def stderr(self) -> str:
        """Everything the process wrote on stderr so far."""
        with self._changed:
            return "\n".join(self._lines)

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float = 10.0) -> re.Match[str]:
        """The first stderr line matching ``pattern``; fails if it does not come in time."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self._lines:
                    match = regex.search(line)
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    pytest.fail(
                        f"no stderr line matching {regex.pattern!r} "
                        f"(exit code {self.proc.poll()}); stderr:\n" + "\n".join(self._lines)
                    )
                self._changed.wait(remaining)

    def ports(self, *schemes: str, timeout: float = 10.0) -> dict[str, int]:
        """``{"http": port, "https": port}`` from the "Listening on" lines.

        Waits until there is a line for each of ``schemes`` (at least one line if none).
        """
        for scheme in schemes or ("https?",):
            self.wait_for(rf"Listening on {scheme}://127\.0\.0\.1:\d+ \(TCP\)", timeout)
        found: dict[str, int] = {}
        for line in self.stderr.splitlines():
            match = LISTENING.search(line)
            if match:
                found.setdefault(match[1], int(match[2]))
        return found

    def port(self, scheme: str = "http") -> int:
        """The real port of the first ``scheme`` endpoint (0 would be a bug)."""
        port = self.ports(scheme)[scheme]
        assert port != 0, f"the log shows port 0 instead of the bound port:\n{self.stderr}"
        return port

    def signal(self, signum: signal.Signals) -> float:
        """Send ``signum``; returns the monotonic time it was sent."""
        self.proc.send_signal(signum)
        return time.monotonic()

    def wait_exit(self, timeout: float) -> int:
        """The exit code; fails if the process is still running after ``timeout``."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"quicserve did not exit within {timeout}s; stderr:\n{self.stderr}")
        self._reader.join(5)
        return code

    def stop(self) -> None:
        """Terminate, wait, kill if needed: only this process, by its PID."""
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        finally:
            self._reader.join(5)
            if self.proc.stderr is not None:
                self.proc.stderr.close()


Spawn = Callable[..., CLIServer]


@pytest.fixture
def spawn(env: dict[str, str]) -> Iterator[Spawn]:
    """Start ``quicserve ARGS...`` (cwd = repository root); stops every process at the end.

    ``pass_fds`` are inherited by the server; ``wrapper`` runs before it (``sh -c ...``
    for systemd-style socket activation)."""
    started: list[CLIServer] = []

    def start(
        *args: str,
        extra_env: dict[str, str] | None = None,
        pass_fds: tuple[int, ...] = (),
        wrapper: list[str] | None = None,
    ) -> CLIServer:
        server = CLIServer(
            list(args), {**env, **(extra_env or {})}, pass_fds=pass_fds, wrapper=wrapper
        )
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def run_cli(
    env: dict[str, str], *args: str, timeout: float = 15.0
) -> subprocess.CompletedProcess[str]:
    """Run quicserve to completion (for commands expected to exit by themselves)."""
    return subprocess.run(
        quicserve_command(*args),
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def local_url(port: int, path: str = "/", scheme: str = "http") -> str:
    """A loopback URL."""
    return f"{scheme}://127.0.0.1:{port}{path}"


def access_lines(stderr: str) -> list[re.Match[str]]:
    """The access-log entries in ``stderr``."""
    return [m for m in map(ACCESS_LINE.search, stderr.splitlines()) if m is not None]


def start_slow_request(
    pool: ThreadPoolExecutor, server: CLIServer, client: httpx.Client, path: str
) -> Future[httpx.Response]:
    """Send a slow request from a thread and return once the app has started on it."""
    future = pool.submit(client.get, local_url(server.port(), path))
    server.wait_for(re.escape(SLOW_MARKER))
    return future


# -- 1. --help and --version ---------------------------------------------------------------


def test_help_lists_every_config_flag(env: dict[str, str]) -> None:
    result = run_cli(env, "--help")
    assert result.returncode == 0, result.stderr
    flags = set(re.findall(r"--[a-z0-9][a-z0-9-]*", result.stdout))
    text = " ".join(result.stdout.split())
    expected = [f for f in config_fields() if f.metadata.get("cli", True) is not False]
    assert expected, "Config has no command-line fields?"
    for f in expected:
        flag = "--" + f.name.replace("_", "-")
        assert flag in flags, f"{flag} missing from --help"
        assert " ".join(f.metadata["help"].split()) in text, f"help of {flag} missing"
    for f in config_fields():
        if f.metadata.get("cli", True) is False:
            assert "--" + f.name.replace("_", "-") not in flags
    assert "--no-access-log" in flags  # booleans can be switched both ways
    assert "APP" in result.stdout


def test_version(env: dict[str, str]) -> None:
    result = run_cli(env, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"quicserve {quicserve.__version__}"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["version"] == quicserve.__version__


# -- 2. errors a person can act on ---------------------------------------------------------


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], *needles: str, exit_code: int | None = 1
) -> None:
    """Non-zero exit, no traceback, and one "quicserve: error:" line containing ``needles``."""
    stderr = result.stderr
    assert result.returncode != 0, f"exit code 0; stderr:\n{stderr}"
    if exit_code is not None:
        assert result.returncode == exit_code, stderr
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("quicserve: error:")]
    assert len(errors) == 1, stderr
    for needle in needles:
        assert needle in errors[0], stderr
    # The error is the last thing printed: nothing after it hides it.
    assert stderr.rstrip().splitlines()[-1] == errors[0], stderr


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port with a listening socket on it (ours), for "address in use"."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def other_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private key that belongs to some other certificate."""
    return make_test_certificates(tmp_path_factory.mktemp("other")).keyfile


def test_error_missing_certfile(env: dict[str, str], backend: str) -> None:
    result = run_cli(
        env, APP, "--backend", backend, "--bind", "127.0.0.1:0", "--certfile", "/nonexistent.pem"
    )
    assert_one_line_error(result, "/nonexistent.pem")


def test_error_key_does_not_match(
    env: dict[str, str], backend: str, tls_files: DevCertificate, other_key: Path
) -> None:
    result = run_cli(
        env,
        APP,
        "--backend",
        backend,
        "--bind",
        "127.0.0.1:0",
        "--certfile",
        str(tls_files.certfile),
        "--keyfile",
        str(other_key),
    )
    assert_one_line_error(result, str(tls_files.certfile), str(other_key))


def test_error_port_in_use(env: dict[str, str], backend: str, busy_port: int) -> None:
    result = run_cli(env, APP, "--backend", backend, "--insecure-bind", f"127.0.0.1:{busy_port}")
    assert_one_line_error(result, f"127.0.0.1:{busy_port}", "in use")
    assert "Listening on" not in result.stderr


@pytest.mark.parametrize("flag", ["--bind", "--insecure-bind"])
def test_error_bad_bind_syntax(env: dict[str, str], backend: str, flag: str) -> None:
    result = run_cli(env, APP, "--backend", backend, flag, "nonsense")
    assert_one_line_error(result, "nonsense")


def test_error_lifespan_startup_failed(env: dict[str, str], backend: str) -> None:
    result = run_cli(
        env,
        "tests.cli_apps:startup_failed_app",
        "--backend",
        backend,
        "--lifespan",
        "on",
        "--insecure-bind",
        "127.0.0.1:0",
    )
    assert_one_line_error(result, "lifespan", STARTUP_FAILED_MESSAGE, exit_code=3)
    assert "Listening on" not in result.stderr  # nothing listens before startup is done


def test_error_lifespan_startup_failed_in_auto_mode(env: dict[str, str], backend: str) -> None:
    # An app that implements lifespan and says it failed is not "unsupported": still fatal.
    result = run_cli(
        env,
        "tests.cli_apps:startup_failed_app",
        "--backend",
        backend,
        "--insecure-bind",
        "127.0.0.1:0",
    )
    assert_one_line_error(result, "lifespan", STARTUP_FAILED_MESSAGE, exit_code=3)


def test_error_lifespan_raises_with_lifespan_on(env: dict[str, str], backend: str) -> None:
    result = run_cli(
        env,
        "tests.cli_apps:lifespan_raises_app",
        "--backend",
        backend,
        "--lifespan",
        "on",
        "--insecure-bind",
        "127.0.0.1:0",
    )
    assert_one_line_error(
        result, "lifespan", "RuntimeError", "lifespan is not supported here", exit_code=3
    )
    assert "Listening on" not in result.stderr


# Failures found before the event loop starts: the backend plays no part, so one run each.
# An app that cannot be loaded exits 3 (not worth restarting), a bad setting 1.
LOAD_ERRORS = [
    pytest.param(["no_such_module_xyz:app"], ["no_such_module_xyz", "not found"], id="no-module"),
    pytest.param(["tests.cli_apps:no_such_app"], ["tests.cli_apps", "no_such_app"], id="no-attr"),
    pytest.param(
        ["broken_app:app", "--app-dir", "{tmp}"],
        ["broken_app", "RuntimeError", "config file missing"],
        id="import-raises",
    ),
    pytest.param(
        ["needs_dep_app:app", "--app-dir", "{tmp}"],
        ["needs_dep_app", "not_installed_dep_xyz"],
        id="import-of-missing-dependency",
    ),
    pytest.param(
        ["tests.cli_apps:NOT_CALLABLE", "--factory"], ["NOT_CALLABLE", "--factory"], id="factory"
    ),
    pytest.param(["tests.cli_apps:NOT_CALLABLE"], ["NOT_CALLABLE", "not callable"], id="not-app"),
    pytest.param(["tests.cli_apps"], ["module:attribute"], id="no-colon"),
    pytest.param([APP, "--graceful-timeout", "0"], ["--graceful-timeout"], id="zero-timeout"),
    pytest.param([APP, "--max-connections", "0"], ["--max-connections"], id="zero-limit"),
]
SETTING_ERRORS = {"zero-timeout", "zero-limit"}


@pytest.mark.parametrize(("args", "needles"), LOAD_ERRORS)
def test_error_before_serving(
    env: dict[str, str],
    tmp_path: Path,
    args: list[str],
    needles: list[str],
    request: pytest.FixtureRequest,
) -> None:
    (tmp_path / "broken_app.py").write_text('raise RuntimeError("config file missing")\n')
    (tmp_path / "needs_dep_app.py").write_text("import not_installed_dep_xyz\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = run_cli(env, *argv, "--insecure-bind", "127.0.0.1:0")
    case = request.node.callspec.id
    assert_one_line_error(result, *needles, exit_code=1 if case in SETTING_ERRORS else 3)
    assert "Listening on" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([APP, "--backend", "nope"], id="bad-choice"),
        pytest.param([APP, "--ws-engine", "nope"], id="bad-ws-engine"),
        pytest.param([APP, "--graceful-timeout", "soon"], id="not-a-number"),
        pytest.param([], id="no-app"),
        pytest.param([APP, "--no-such-flag"], id="unknown-flag"),
    ],
)
def test_usage_errors_exit_2(env: dict[str, str], args: list[str]) -> None:
    result = run_cli(env, *args)
    assert_one_line_error(result, exit_code=2)
    assert result.stderr.startswith("usage: quicserve")


@pytest.fixture
def without_websockets(tmp_path: Path) -> dict[str, str]:
    """Extra environment that hides the websockets package (importing it fails)."""
    hidden = tmp_path / "hide-websockets" / "websockets"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text('raise ImportError("hidden by the test")\n')
    path = [str(hidden.parent), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in path if p)}


def test_error_ws_engine_websockets_not_installed(
    env: dict[str, str], without_websockets: dict[str, str]
) -> None:
    args = [APP, "--insecure-bind", "127.0.0.1:0", "--ws-engine", "websockets"]
    result = run_cli({**env, **without_websockets}, *args)
    assert_one_line_error(result, "--ws-engine websockets", "not installed", "quicserve[fast]")
    assert "Listening on" not in result.stderr


@pytest.mark.client("websockets")
def test_ws_engine_auto_is_websockets_when_installed_else_wsproto(
    spawn: Spawn, without_websockets: dict[str, str]
) -> None:
    args = [APP, "--insecure-bind", "127.0.0.1:0", "--log-level", "debug"]
    with_it = spawn(*args)
    without_it = spawn(*args, extra_env=without_websockets)
    assert with_it.wait_for(r"WebSocket framing: (\w+)")[1] == "websockets"
    assert without_it.wait_for(r"WebSocket framing: (\w+)")[1] == "wsproto"
    with_it.port()  # and both serve
    without_it.port()


# -- 3. --lifespan auto tolerates apps without lifespan -------------------------------------


def test_lifespan_auto_serves_app_that_raises_on_lifespan(spawn: Spawn, backend: str) -> None:
    server = spawn(
        "tests.cli_apps:lifespan_raises_app", "--backend", backend, "--insecure-bind", "127.0.0.1:0"
    )
    port = server.port()
    response = httpx.get(local_url(port, "/hi"), timeout=5)
    assert (response.status_code, response.content) == (200, b"hello")
    assert "lifespan unsupported" in server.stderr
    assert "Traceback" not in server.stderr
    assert server.proc.poll() is None


# -- 4. graceful shutdown ------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_lets_inflight_request_finish(
    spawn: Spawn, backend: str, signum: signal.Signals
) -> None:
    grace = 5.0
    server = spawn(
        APP,
        "--backend",
        backend,
        "--insecure-bind",
        "127.0.0.1:0",
        "--graceful-timeout",
        str(grace),
    )
    with ThreadPoolExecutor(1) as pool, httpx.Client(timeout=10) as client:
        future = start_slow_request(pool, server, client, "/slow")
        sent = server.signal(signum)
        response = future.result(timeout=10)
        assert response.status_code == 200
        assert response.content == SLOW_BODY
        assert response.headers["content-length"] == str(len(SLOW_BODY))
        code = server.wait_exit(grace)
    took = time.monotonic() - sent
    stderr = server.stderr
    assert code == 0, stderr
    # The request needed ~1 s; exiting long after it means the server sat out the grace period.
    assert took < 3.0, f"exit took {took:.1f}s after {signum.name}\n{stderr}"
    assert f"Received {signum.name}" in stderr
    assert "Server stopped" in stderr
    assert "Graceful timeout" not in stderr
    assert "Traceback" not in stderr
    assert "KeyboardInterrupt" not in stderr


def test_second_signal_forces_stop(spawn: Spawn, backend: str) -> None:
    server = spawn(
        APP, "--backend", backend, "--insecure-bind", "127.0.0.1:0", "--graceful-timeout", "30"
    )
    with ThreadPoolExecutor(1) as pool, httpx.Client(timeout=20) as client:
        future = start_slow_request(pool, server, client, "/slow10")
        server.signal(signal.SIGTERM)
        server.wait_for("shutting down gracefully")
        time.sleep(0.2)
        assert server.proc.poll() is None, "stopped before the in-flight request finished"
        sent = server.signal(signal.SIGINT)
        code = server.wait_exit(5)
        took = time.monotonic() - sent
        with pytest.raises(httpx.HTTPError):
            future.result(timeout=10)
    stderr = server.stderr
    assert took < 3.0, f"forced stop took {took:.1f}s\n{stderr}"
    assert code == 0, stderr
    assert "Received SIGINT again: stopping now" in stderr
    assert "Traceback" not in stderr


def test_graceful_timeout_cancels_slow_request(spawn: Spawn, backend: str) -> None:
    server = spawn(
        APP, "--backend", backend, "--insecure-bind", "127.0.0.1:0", "--graceful-timeout", "0.5"
    )
    with ThreadPoolExecutor(1) as pool, httpx.Client(timeout=20) as client:
        future = start_slow_request(pool, server, client, "/slow10")
        sent = server.signal(signal.SIGTERM)
        code = server.wait_exit(5)
        took = time.monotonic() - sent
        with pytest.raises(httpx.HTTPError):
            future.result(timeout=10)
    stderr = server.stderr
    assert code == 0, stderr
    assert took < 3.0, f"exit took {took:.1f}s with --graceful-timeout 0.5\n{stderr}"
    assert "Graceful timeout: cancelling 1 connection(s)" in stderr
    assert "Server stopped" in stderr
    assert "Traceback" not in stderr


# -- 5. the development default: TLS on 127.0.0.1:8443 with a made-up certificate ----------


def dev_port_free() -> bool:
    """Whether 127.0.0.1:8443 can be listened on (SO_REUSEADDR, as the server does)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", DEV_PORT))
            sock.listen()
        except OSError:
            return False
    return True


def start_dev_server(spawn: Spawn, backend: str) -> CLIServer:
    """``quicserve APP`` with no bind and no certificate; skips if 8443 is taken."""
    if not dev_port_free():
        pytest.skip(f"127.0.0.1:{DEV_PORT} is in use on this machine")
    server = spawn(APP, "--backend", backend)
    deadline = time.monotonic() + 10
    while "Listening on" not in server.stderr and time.monotonic() < deadline:
        if server.proc.poll() is not None:
            if "address already in use" in server.stderr:
                pytest.skip(f"127.0.0.1:{DEV_PORT} was taken by another process meanwhile")
            break
        time.sleep(0.05)
    assert server.ports("https") == {"https": DEV_PORT}, server.stderr
    return server


def curl_dev(ca: Path, *args: str) -> tuple[str, str]:
    """GET https://localhost:8443/ with curl trusting ``ca``: (body, HTTP version)."""
    assert CURL is not None
    result = subprocess.run(
        [
            CURL,
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            str(ca),
            "--resolve",
            f"localhost:{DEV_PORT}:127.0.0.1",
            "-w",
            "\n%{http_version}",
            *args,
            f"https://localhost:{DEV_PORT}/",
        ],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    body, _, version = result.stdout.rpartition("\n")
    return body, version


@pytest.mark.client("curl")
@pytest.mark.xdist_group("port-8443")  # the development default's fixed port: one at a time
def test_development_default_makes_and_reuses_a_ca(
    spawn: Spawn, backend: str, env: dict[str, str]
) -> None:
    data_dir = Path(env["QUICSERVE_DATA_DIR"])
    ca = data_dir / "ca.pem"
    server = start_dev_server(spawn, backend)
    for name in ("ca.pem", "ca-key.pem", "localhost.pem", "localhost-key.pem"):
        assert (data_dir / name).is_file(), name
    assert str(ca) in server.stderr  # it says where the CA is, to trust it
    assert "Created a development CA" in server.stderr
    assert curl_dev(ca, "--http1.1") == ("hello", "1.1")
    assert curl_dev(ca, "--http2") == ("hello", "2")
    server.signal(signal.SIGTERM)
    assert server.wait_exit(5) == 0, server.stderr
    ca_bytes = ca.read_bytes()

    again = start_dev_server(spawn, backend)
    assert ca.read_bytes() == ca_bytes
    assert "Created a development CA" not in again.stderr
    assert str(ca) in again.stderr
    assert curl_dev(ca, "--http2") == ("hello", "2")
    # SIGHUP reads the same development files again (they are still good): it neither
    # stops the server nor makes a new CA.
    again.signal(signal.SIGHUP)
    again.wait_for("Certificate reloaded for new connections: subject")
    assert curl_dev(ca, "--http2") == ("hello", "2")
    assert ca.read_bytes() == ca_bytes and again.proc.poll() is None


@pytest.mark.client("firefox-esr", "certutil", "chromium")
@pytest.mark.timeout(120)
@pytest.mark.xdist_group("port-8443")  # the development default's fixed port: one at a time
def test_readme_browser_path_reaches_http3(
    spawn: Spawn, env: dict[str, str], tmp_path: Path
) -> None:
    """The README's path, literally: ``quicserve examples.hello:app``, then ``quicserve certs
    browser firefox`` and ``... chromium`` (headless here). Firefox loads the page over
    HTTP/2 and its script's requests move to HTTP/3 through alt-svc; Chromium's page itself
    comes over HTTP/3. Evidence: the server's own access log. The client side is under
    test, so this runs the server's default backend only."""
    if not dev_port_free():
        pytest.skip(f"127.0.0.1:{DEV_PORT} is in use on this machine")
    server = spawn("examples.hello:app")
    deadline = time.monotonic() + 15
    while "Listening on" not in server.stderr and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.ports("https") == {"https": DEV_PORT}, server.stderr
    browser_env = {**env, "HOME": str(tmp_path / "home")}

    def browse(kind: str, evidence: str) -> None:
        command = quicserve_command("certs", "browser", kind, "--headless")
        browser = subprocess.Popen(
            command, env=browser_env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 60
            while evidence not in server.stderr and time.monotonic() < deadline:
                assert browser.poll() is None, f"quicserve certs browser {kind} exited"
                time.sleep(0.1)
        finally:
            browser.send_signal(signal.SIGTERM)  # it stops its browser too
            out, _ = browser.communicate(timeout=20)
        assert evidence in server.stderr, server.stderr[-2000:]
        assert f"https://localhost:{DEV_PORT}/" in out.decode()  # the command it ran

    browse("firefox", '"GET /protocol HTTP/3" 200')
    assert '"GET / HTTP/2" 200' in server.stderr  # Firefox: the page over HTTP/2 first
    browse("chromium", '"GET / HTTP/3" 200')


def test_certs_command_prints_trust_instructions(env: dict[str, str], tmp_path: Path) -> None:
    data_dir = tmp_path / "certs-here"
    result = run_cli(env, "certs", "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    ca = data_dir / "ca.pem"
    assert ca.is_file()
    assert f"--cacert {ca}" in result.stdout
    assert "ignore-certificate-errors-spki-list=" in result.stdout
    # A second run shows the same CA instead of making a new one.
    ca_bytes = ca.read_bytes()
    assert run_cli(env, "certs", "--data-dir", str(data_dir)).returncode == 0
    assert ca.read_bytes() == ca_bytes


# -- 6. --root-path and logging ------------------------------------------------------------


def test_root_path(spawn: Spawn, backend: str) -> None:
    server = spawn(
        APP, "--backend", backend, "--insecure-bind", "127.0.0.1:0", "--root-path", "/api"
    )
    response = httpx.get(local_url(server.port(), "/scope"), timeout=5)
    assert response.status_code == 200
    view = json.loads(response.content)
    assert view["root_path"] == "/api"
    assert view["path"] == "/api/scope"
    assert view["raw_path"] == "/api/scope"


def stop_and_read_stderr(server: CLIServer) -> str:
    """SIGTERM, expect a clean exit, and return the whole stderr."""
    server.signal(signal.SIGTERM)
    assert server.wait_exit(5) == 0, server.stderr
    return server.stderr


def test_access_log_by_default(spawn: Spawn, backend: str) -> None:
    server = spawn(APP, "--backend", backend, "--insecure-bind", "127.0.0.1:0")
    response = httpx.get(local_url(server.port(), "/hello?x=1"), timeout=5)
    assert response.status_code == 200
    entries = access_lines(stop_and_read_stderr(server))
    assert [(m[1], m[2], m[3]) for m in entries] == [("GET", "/hello?x=1", "200")]


def test_no_access_log(spawn: Spawn, backend: str) -> None:
    server = spawn(APP, "--backend", backend, "--insecure-bind", "127.0.0.1:0", "--no-access-log")
    response = httpx.get(local_url(server.port(), "/hello"), timeout=5)
    assert response.status_code == 200
    stderr = stop_and_read_stderr(server)
    assert access_lines(stderr) == []
    assert "Listening on" in stderr  # only the access log is off


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_serving(server: CLIServer, port: int, timeout: float = 10.0) -> None:
    """Poll ``port`` with requests until one succeeds (for runs that do not log the port)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(local_url(port, "/ready"), timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if server.proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"quicserve is not serving on {port}; stderr:\n{server.stderr}")
        time.sleep(0.05)


def test_log_level_warning_hides_info(spawn: Spawn, backend: str) -> None:
    # At "warning" the log does not say the port, so pick one first.
    port = free_port()
    server = spawn(
        APP,
        "--backend",
        backend,
        "--insecure-bind",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
        "--graceful-timeout",
        "0.3",
    )
    wait_until_serving(server, port)
    with ThreadPoolExecutor(1) as pool, httpx.Client(timeout=20) as client:
        future = pool.submit(client.get, local_url(port, "/slow10"))
        server.wait_for(re.escape(SLOW_MARKER))
        stderr = stop_and_read_stderr(server)
        with pytest.raises(httpx.HTTPError):
            future.result(timeout=10)
    assert "INFO" not in stderr
    assert "Listening on" not in stderr
    assert access_lines(stderr) == []
    assert "WARNING Graceful timeout" in stderr  # warnings still show


# -- 7. bad input does not kill the server -------------------------------------------------


def raw_exchange(port: int, data: bytes, timeout: float = 3.0) -> bytes:
    """Send ``data`` on a fresh connection; what comes back before the server closes."""
    chunks: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass  # the server may close before reading it all
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:  # includes the timeout and a reset
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
PROTOCOL_ERROR = 0x1
FRAME_SIZE_ERROR = 0x6


def goaway_error(data: bytes) -> int | None:
    """The error code of the first HTTP/2 GOAWAY frame in ``data`` (None if there is none)."""
    while len(data) >= 9:
        length, kind = int.from_bytes(data[:3], "big"), data[3]
        if kind == 0x7 and len(data) >= 9 + 8:
            return int.from_bytes(data[13:17], "big")
        data = data[9 + length :]
    return None


def test_bad_input_does_not_kill_the_server(
    spawn: Spawn, backend: str, tls_files: DevCertificate
) -> None:
    server = spawn(
        APP,
        "--backend",
        backend,
        "--insecure-bind",
        "127.0.0.1:0",
        "--bind",
        "127.0.0.1:0",
        "--certfile",
        str(tls_files.certfile),
        "--keyfile",
        str(tls_files.keyfile),
        "--max-header-bytes",
        "8192",
        "--header-read-timeout",
        "2",
    )
    ports = server.ports("http", "https")
    plain, tls = ports["http"], ports["https"]
    assert 0 not in (plain, tls)

    garbage = raw_exchange(plain, b"\x16\x03\x01\x00\xff\xfe garbage \x00\x01\r\n\r\n")
    assert garbage == b"" or garbage.startswith(b"HTTP/1.1 400"), garbage
    huge = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    answer = raw_exchange(plain, huge)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer[:200]
    many = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 5000 + b"\r\n"
    answer = raw_exchange(plain, many)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer[:200]
    # RFC 9113 §3.4: a preface not followed by SETTINGS is a connection error.
    answer = raw_exchange(plain, H2_PREFACE + b"\x00\x00\x01\x00\x01\x00\x00\x00\x01x")
    assert goaway_error(answer) == PROTOCOL_ERROR, answer
    raw_exchange(tls, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # plain text to the TLS port
    raw_exchange(tls, os.urandom(2048))

    assert server.proc.poll() is None, server.stderr
    response = httpx.get(local_url(plain, "/after"), timeout=5)
    assert (response.status_code, response.content) == (200, b"hello")
    context = ssl.create_default_context(cafile=str(tls_files.ca_certfile))
    with httpx.Client(verify=context, http2=True, timeout=5) as client:
        response = client.get(f"https://localhost:{tls}/after")
    assert (response.status_code, response.content, response.http_version) == (
        200,
        b"hello",
        "HTTP/2",
    )
    assert server.proc.poll() is None
    assert "Traceback" not in server.stderr


@pytest.mark.parametrize("hangup", ["fin", "rst"])
def test_clients_hanging_up_at_once_do_not_kill_the_server(
    spawn: Spawn, backend: str, hangup: str
) -> None:
    server = spawn(APP, "--backend", backend, "--insecure-bind", "127.0.0.1:0")
    port = server.port()
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", port))
        if hangup == "rst":  # SO_LINGER 0: close() sends a reset instead of a FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    time.sleep(0.3)
    assert server.proc.poll() is None, server.stderr
    response = httpx.get(local_url(port, "/after"), timeout=5)
    assert (response.status_code, response.content) == (200, b"hello")
    assert "Traceback" not in server.stderr


def test_oversized_http2_frame_is_refused_at_its_header(spawn: Spawn, backend: str) -> None:
    server = spawn(APP, "--backend", backend, "--insecure-bind", "127.0.0.1:0")
    port = server.port()
    too_big = (1 << 24) - 1  # the most a frame header can declare; the default limit is 16 KiB
    header = too_big.to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01"  # DATA, stream 1
    started = time.monotonic()
    answer = raw_exchange(port, H2_PREFACE + EMPTY_SETTINGS + header, timeout=1.5)
    took = time.monotonic() - started
    assert goaway_error(answer) == FRAME_SIZE_ERROR, answer
    assert took < 1.0, f"the connection stayed open {took:.1f}s after a fatal frame"
    assert server.proc.poll() is None


def test_sighup_while_the_app_imports_does_not_stop_the_server(
    spawn: Spawn, backend: str, tmp_path: Path
) -> None:
    # systemd's ExecReload may fire while the service is still starting: a SIGHUP then
    # must not kill it (its default action) before the reload handler exists.
    (tmp_path / "slow_import.py").write_text(
        "import sys, time\n"
        "print('importing the app', file=sys.stderr, flush=True)\n"
        "time.sleep(1)\n"
        "from tests.cli_apps import app\n"
    )
    server = spawn(
        "slow_import:app",
        *("--app-dir", str(tmp_path), "--backend", backend, "--insecure-bind", "127.0.0.1:0"),
    )
    server.wait_for("importing the app")
    server.proc.send_signal(signal.SIGHUP)
    port = int(server.wait_for(r"Listening on http://127\.0\.0\.1:(\d+) \(TCP\)")[1])
    assert "Received SIGHUP while starting" in server.stderr
    assert httpx.get(local_url(port)).status_code == 200
    server.proc.send_signal(signal.SIGHUP)  # now the runner's: a reload, still serving
    server.wait_for("Received SIGHUP: reloading in place")
    assert httpx.get(local_url(port)).status_code == 200
