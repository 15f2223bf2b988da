"""Which outside clients this machine has, and the one rule for a missing one.

Tests drive clients we did not write: programs (curl, h2load, gtlsclient, Chromium) and
optional Python packages (curl_cffi, websockets, uvloop). On a developer's machine a
missing one *skips* the test that needs it, with the install hint as the reason. Where
``QUICSERVE_REQUIRE_CLIENTS=1`` is set (``.ci/run`` sets it, after installing every client
in :data:`CLIENTS`) a missing one *fails* the test instead, so CI cannot pass by skipping.

Tests name what they need with ``@pytest.mark.client("curl")`` (``tests/conftest.py``
calls :func:`require` for each before the test starts), or call :func:`require` where
an import needs the check first. ``interop/`` reports a missing client as n/a with the
same hint (:func:`missing`).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass

#: The switch: set to 1 where every client must be present (CI).
REQUIRE_CLIENTS = "QUICSERVE_REQUIRE_CLIENTS"


@dataclass(frozen=True, slots=True)
class Client:
    """A client a test may need: a program on PATH or an importable module."""

    kind: str  # "program" or "module"
    install: str  # how to get it (Debian package or pip)

    def present(self, name: str) -> bool:
        if self.kind == "program":
            return shutil.which(name) is not None
        return importlib.util.find_spec(name) is not None


CLIENTS: dict[str, Client] = {
    "curl": Client("program", "apt-get install curl"),
    "h2load": Client("program", "apt-get install nghttp2-client"),
    "gtlsclient": Client("program", "apt-get install ngtcp2-client"),
    "chromium": Client("program", "apt-get install chromium"),
    # The second real browser; certutil (libnss3-tools) makes its profile trust the test CA.
    "firefox-esr": Client("program", "apt-get install firefox-esr libnss3-tools"),
    "certutil": Client("program", "apt-get install libnss3-tools"),
    # Checks the nginx recipe of docs/balancers.md offline (nginx -t).
    "nginx": Client("program", "apt-get install nginx-light libnginx-mod-stream"),
    "curl_cffi": Client("module", "pip install curl_cffi"),
    "websockets": Client("module", "pip install websockets"),
    "uvloop": Client("module", "pip install uvloop"),
    # The fast HTTP/1.1 engine (quicserve[fast]); the tests run on it and on h11.
    "httptools": Client("module", "pip install httptools"),
    # ss reads a listening socket's backlog (--backlog reaching listen()).
    "ss": Client("program", "apt-get install iproute2"),
    # openssl s_client drives a TLS 1.3 KeyUpdate (Python's ssl module cannot).
    "openssl": Client("program", "apt-get install openssl"),
}


def missing(name: str) -> str | None:
    """None when ``name`` (a key of :data:`CLIENTS`) is usable here, else its install hint."""
    client = CLIENTS[name]
    return None if client.present(name) else client.install


def required() -> bool:
    """True where a missing client is a failure (``QUICSERVE_REQUIRE_CLIENTS=1``)."""
    return os.environ.get(REQUIRE_CLIENTS, "") not in ("", "0")


def require(name: str) -> None:
    """Return if ``name`` is usable; else skip the current test, or fail it in CI.

    Call it before the test starts its server: a skip raised inside a task group
    reaches pytest wrapped in an exception group, as an error. At module level it skips
    (or fails) the whole module.
    """
    hint = missing(name)
    if hint is None:
        return
    import pytest  # only tests call this; interop uses missing()

    if required():
        pytest.fail(
            f"{name} is not installed ({hint}), and {REQUIRE_CLIENTS} is set: "
            "every client must be present here",
            pytrace=False,
        )
    pytest.skip(f"{name} is not installed ({hint})", allow_module_level=True)
