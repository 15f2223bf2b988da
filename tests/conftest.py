"""Shared test fixtures.

* ``anyio_backend`` is parametrized over asyncio, asyncio+uvloop and trio, so every test
  marked ``@pytest.mark.anyio`` that exercises the server runs on all of them.
* ``h1_engine`` is parametrized over the HTTP/1.1 engines (h11, httptools), so the
  HTTP/1.1 protocol and end-to-end tests that take it run on both.
* ``ws_engine`` is parametrized over the WebSocket framing engines (``--ws-engine``
  wsproto and websockets): a WebSocket test that takes it runs on both.
* Engines are sans-IO, backends only move bytes: a test that takes an engine *and* a
  backend runs the fast engines (httptools, websockets: what CI's default ``auto`` picks)
  on every backend and the pure-Python ones (h11, wsproto) on asyncio only
  (:func:`pytest_collection_modifyitems` deselects the rest). The full product doubled
  those tests' share of CI's 15-minute budget for no code path of its own; the protocol
  and fuzz tests, which have no backend, still run every engine.
* ``tls_files`` makes a throwaway CA and localhost certificate at run time (nothing
  secret is committed).
* :func:`tests.helpers.running_server` starts a real server on loopback in-process.
* ``@pytest.mark.client("curl", ...)`` names the outside clients a test drives: where one
  is missing the test is skipped, or fails where ``QUICSERVE_REQUIRE_CLIENTS=1`` (CI), by
  :func:`clientkit.require`, before any fixture starts a server.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from clientkit import require
from quicserve.certs import DevCertificate, make_test_certificates

from .helpers import WS_ENGINES

_BACKENDS = [
    pytest.param(("asyncio", {}), id="asyncio"),
    pytest.param(
        ("asyncio", {"use_uvloop": True}),
        id="uvloop",
        marks=pytest.mark.client("uvloop"),
    ),
    pytest.param(("trio", {}), id="trio"),
]


#: The HTTP/1.1 engines (quicserve/protocol/engines.py): h11 always, httptools from the
#: fast extra (CI installs it; a machine without it skips those cases, or fails them
#: with QUICSERVE_REQUIRE_CLIENTS=1).
H1_ENGINES = [
    pytest.param("h11", id="h11"),
    pytest.param("httptools", id="httptools", marks=pytest.mark.client("httptools")),
]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Check every ``client`` mark before the test's fixtures run (a skip raised later,
    inside a server's task group, would reach pytest as an error)."""
    for mark in item.iter_markers("client"):
        for name in mark.args:
            require(name)


@pytest.fixture(params=_BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> object:
    """Every async test runs on asyncio, uvloop and trio."""
    return request.param


@pytest.fixture(params=H1_ENGINES)
def h1_engine(request: pytest.FixtureRequest) -> str:
    """Every HTTP/1.1 test that asks for it runs on each engine (``--http1-engine``)."""
    return str(request.param)


@pytest.fixture(params=WS_ENGINES)
def ws_engine(request: pytest.FixtureRequest) -> str:
    """The WebSocket framing engine a test's server uses: wsproto, then websockets."""
    engine: str = request.param
    return engine


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> DevCertificate:
    """A CA and a localhost certificate made for this test session."""
    return make_test_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A per-test directory for files the test writes."""
    return tmp_path


#: Engine params that run on asyncio only when a test also takes a backend (see above).
_ASYNCIO_ONLY_ENGINES = {("h1_engine", "h11"), ("ws_engine", "wsproto")}
_BACKEND_FIXTURES = ("anyio_backend", "backend")


def _backend_id(params: dict[str, object]) -> str | None:
    for name in _BACKEND_FIXTURES:
        if name in params:
            value = params[name]
            if name == "anyio_backend" and isinstance(value, tuple):
                name_, options = value
                return "uvloop" if options else str(name_)
            return str(value)
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the pure-Python engines on uvloop and trio (module docstring)."""
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        params: dict[str, object] = dict(callspec.params) if callspec is not None else {}
        backend = _backend_id(params)
        pure = any(
            (name, params.get(name)) in _ASYNCIO_ONLY_ENGINES for name, _ in _ASYNCIO_ONLY_ENGINES
        )
        if backend is not None and backend != "asyncio" and pure:
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
