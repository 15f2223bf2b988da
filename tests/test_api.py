"""The programmatic API, ``quicserve.serve`` and ``quicserve.run``: in-process on asyncio,
uvloop and trio, and the README's snippets run as scripts exactly as printed (only the
port and backend are substituted)."""

from __future__ import annotations

import functools
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import quicserve
from quicserve.config import ConfigError

from . import test_cli as cli

env = cli.env
backend = cli.backend

README = (Path(__file__).parent.parent / "README.md").read_text()


def readme_snippet(name: str) -> str:
    """The python block after ``<!-- snippet: NAME -->`` in the README."""
    match = re.search(rf"<!-- snippet: {name} -->\s*```python\n(.*?)```", README, re.S)
    assert match, f"README has no snippet {name!r}"
    return match[1]


class ASGI2App:
    """An ASGI 2 app (a class: instantiated per scope), to show auto-detection."""

    def __init__(self, scope: dict[str, Any]) -> None:
        self.scope = scope

    async def __call__(self, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send(
            {"type": "http.response.body", "body": b"asgi2 " + self.scope["method"].encode()}
        )


@pytest.mark.anyio
async def test_serve_reports_addresses_and_serves(anyio_backend: object) -> None:
    serve = functools.partial(
        quicserve.serve, ASGI2App, insecure_bind=["127.0.0.1:0"], lifespan="off"
    )
    async with anyio.create_task_group() as tg:
        addresses = await tg.start(serve)
        assert [(a.transport, a.scheme, a.host) for a in addresses] == [
            ("tcp", "http", "127.0.0.1")
        ]
        async with httpx.AsyncClient() as client:
            response = await client.get(addresses[0].url() + "/")
        tg.cancel_scope.cancel()
    assert response.text == "asgi2 GET"


@pytest.mark.anyio
async def test_serve_with_a_config_and_overrides(anyio_backend: object) -> None:
    config = quicserve.Config(insecure_bind=("127.0.0.1:0",), lifespan="off", root_path="/x")
    serve = functools.partial(quicserve.serve, ASGI2App, config, root_path="/y")
    async with anyio.create_task_group() as tg:
        addresses = await tg.start(serve)
        tg.cancel_scope.cancel()
    assert addresses[0].port > 0


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"no_such": 1}, "unknown option 'no_such'"),
        ({"keep_alive_timeout": 0}, "--keep-alive-timeout must be positive"),
        ({"reload": True}, "reload needs the command line"),
        ({"forwarded_allow_ips": "nope"}, "--forwarded-allow-ips"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        quicserve.run(ASGI2App, insecure_bind=["127.0.0.1:0"], **options)


def test_readme_serve_snippet(env: dict[str, str], backend: str, tmp_path: Path) -> None:
    code = readme_snippet("serve")
    name, options = (
        ("trio", {}) if backend == "trio" else ("asyncio", {"use_uvloop": backend == "uvloop"})
    )
    assert "anyio.run(main)" in code
    code = code.replace(
        "anyio.run(main)", f"anyio.run(main, backend={name!r}, backend_options={options!r})"
    )
    script = tmp_path / "serve_snippet.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "200 Hello from quicserve" in result.stdout


def test_readme_run_snippet(env: dict[str, str], backend: str, tmp_path: Path) -> None:
    code = readme_snippet("run")
    port = cli.free_port()
    assert "127.0.0.1:8000" in code
    code = code.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    code = code.replace('backend="asyncio"', f"backend={backend!r}")
    script = tmp_path / "run_snippet.py"
    script.write_text(code)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines: list[str] = []
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "Listening on" in line:
                break
        else:
            pytest.fail("".join(lines))
        response = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert response.text == "Hello from quicserve"
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(10) == 0, "".join(lines) + rest
        assert "Server stopped" in rest
        assert "Traceback" not in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if proc.stderr is not None:
            proc.stderr.close()


def asgi2_factory(scope: dict[str, Any]) -> Any:
    """An ASGI 2 app that ``auto`` could not tell from ASGI 3 by its signature alone
    (``*args``): ``interface="asgi2"`` says what it is."""

    async def instance(receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"forced asgi2"})

    return instance


def _asgi2_any(*args: Any) -> Any:
    return asgi2_factory(*args)


@pytest.mark.anyio
async def test_interface_asgi2_is_not_guessed(anyio_backend: object) -> None:
    serve = functools.partial(
        quicserve.serve,
        _asgi2_any,
        interface="asgi2",
        insecure_bind=["127.0.0.1:0"],
        lifespan="off",
    )
    async with anyio.create_task_group() as tg:
        addresses = await tg.start(serve)
        async with httpx.AsyncClient() as client:
            response = await client.get(addresses[0].url() + "/")
        tg.cancel_scope.cancel()
    assert response.text == "forced asgi2"
