"""``--reload``: the file watcher's rules, then the real command restarting its child.

The CLI test runs ``quicserve --reload`` as a subprocess on each backend, edits the app
and checks the new code answers, breaks the app and checks the reloader survives, and
stops it with SIGTERM (exit 0, the child gone with it). Every process is stopped by PID.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from quicserve.config import Config
from quicserve.reload import FileWatcher

from . import test_cli as cli

env = cli.env
spawn = cli.spawn
backend = cli.backend

APP_SOURCE = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": b"{version}"}})
"""


def touch(path: Path, text: str) -> None:
    path.write_text(text)
    # Make the change visible even on a file system with coarse timestamps.
    stamp = time.time() + 1
    os.utime(path, (stamp, stamp))


def test_watcher_patterns(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "data").mkdir()
    for name in ("a.py", "pkg/b.py", ".git/c.py", "notes.txt", "data/x.csv", "data/y.json"):
        (tmp_path / name).write_text("1")
    config = Config(
        reload_dir=(str(tmp_path),), reload_include=("*.json", "*.csv"), reload_exclude=("data/x*",)
    )
    watcher = FileWatcher(config)
    assert sorted(Path(p).relative_to(tmp_path).as_posix() for p in watcher.scan()) == [
        "a.py",
        "data/y.json",
        "pkg/b.py",
    ]
    assert watcher.changes() == []
    touch(tmp_path / "pkg" / "b.py", "2")
    (tmp_path / "new.py").write_text("")
    (tmp_path / "a.py").unlink()
    touch(tmp_path / "notes.txt", "ignored")
    assert sorted(Path(p).name for p in watcher.changes()) == ["a.py", "b.py", "new.py"]
    assert watcher.changes() == []


def get(port: int) -> str:
    return httpx.get(cli.local_url(port), timeout=5).text


def wait_for_body(server: cli.CLIServer, port: int, body: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        try:
            seen = get(port)
            if seen == body:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"expected {body!r}, last saw {seen!r}; stderr:\n{server.stderr}")


def start_reloader(
    spawn: cli.Spawn, tmp_path: Path, *extra: str
) -> tuple[cli.CLIServer, int, Path]:
    """``quicserve --reload`` on an app file written in ``tmp_path`` (answering "v1"),
    on a free plain port, lifespan off, plus ``extra``; the server, its port, the file."""
    app_file = tmp_path / "reload_app.py"
    app_file.write_text(APP_SOURCE.format(version="v1"))
    port = cli.free_port()
    server = spawn(
        "reload_app:app",
        "--reload",
        "--app-dir",
        str(tmp_path),
        *extra,
        "--insecure-bind",
        f"127.0.0.1:{port}",
        "--lifespan",
        "off",
    )
    return server, port, app_file


def test_reload_restarts_on_change(spawn: cli.Spawn, backend: str, tmp_path: Path) -> None:
    server, port, app_file = start_reloader(
        spawn, tmp_path, "--reload-include", "*.txt", "--backend", backend
    )
    server.wait_for("Reloader .* watching")
    wait_for_body(server, port, "v1")

    touch(app_file, APP_SOURCE.format(version="v2"))
    server.wait_for("reload_app.py changed; restarting")
    wait_for_body(server, port, "v2")

    # A broken app: the child fails, the reloader keeps watching.
    touch(app_file, "this is not python\n")
    server.wait_for("server exited with code 3; waiting for changes")
    touch(app_file, APP_SOURCE.format(version="v3"))
    wait_for_body(server, port, "v3")

    # --reload-include: a matching non-Python file restarts too.
    touch(tmp_path / "settings.txt", "x")
    server.wait_for("settings.txt changed; restarting")
    wait_for_body(server, port, "v3")

    server.signal(signal.SIGTERM)
    assert server.wait_exit(15) == 0, server.stderr
    assert "Reloader stopped" in server.stderr
    assert "Traceback" not in server.stderr.replace("this is not python", "")
    with pytest.raises(httpx.TransportError):
        get(port)  # the child went with it


def test_reload_forwards_sigint_once(spawn: cli.Spawn, backend: str, tmp_path: Path) -> None:
    server, port, _ = start_reloader(spawn, tmp_path, "--backend", backend)
    wait_for_body(server, port, "v1")
    server.signal(signal.SIGINT)
    assert server.wait_exit(15) == 0, server.stderr
    stderr = server.stderr
    assert "Received SIGINT: shutting down gracefully" in stderr
    assert "Received SIGINT again" not in stderr  # forwarded once, not a forced stop
    assert "Server stopped" in stderr


def test_sighup_stops_the_reloader_and_its_child(spawn: cli.Spawn, tmp_path: Path) -> None:
    # A closed terminal sends SIGHUP to the reloader; its child, in its own process group,
    # would take SIGHUP as "reload the certificate" and outlive the terminal.
    server, port, _ = start_reloader(spawn, tmp_path)
    wait_for_body(server, port, "v1")
    server.signal(signal.SIGHUP)
    assert server.wait_exit(15) == 0, server.stderr
    assert "Received SIGTERM: shutting down gracefully" in server.stderr
    assert "Reloader stopped" in server.stderr
    with pytest.raises(httpx.TransportError):
        get(port)  # the child went with it
