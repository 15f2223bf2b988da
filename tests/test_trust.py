"""``quicserve certs trust|untrust|browser`` through the real CLI, checked with real NSS
databases (``certutil``), real browsers and the real system store.

* trust puts the development CA in every Firefox profile of ``$HOME`` (plus the pref
  without which Firefox turns HTTP/3 off) and in Chromium's ``~/.pki/nssdb``; untrust
  takes both out again and leaves the rest of ``user.js`` alone;
* a Firefox profile trusted that way (no other setup) loads a page from a server using the
  development certificate and moves to HTTP/3 through alt-svc;
* Chromium with nothing but ``~/.pki/nssdb`` trusted (no pin) loads a page over HTTPS;
* ``certs browser firefox|chromium`` opens a browser that reaches the server over HTTP/3;
* ``--system`` (as root) makes Python's default SSL context accept the server, and
  ``untrust --system`` makes it refuse again.

Every test runs with ``HOME`` in a temporary directory: no real profile is touched. The
server here only answers the browser; what is tested is the client side (stores, profiles,
command lines), so these tests run the server on asyncio alone. The same browsers against
every backend are tests/test_firefox.py and tests/test_browser.py.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from clientkit import firefox as firefox_kit
from quicserve.certs import DevCertificate, ensure_dev_certificate
from quicserve.trust import HTTP3_PREF, NICKNAME

from .helpers import running_server
from .test_firefox import FirefoxApp

pytestmark = [pytest.mark.client("certutil"), pytest.mark.timeout(120)]

#: The client side is under test here (see the module docstring): one backend.
one_backend = pytest.mark.parametrize("anyio_backend", ["asyncio"])

PAGE = b"""<!doctype html><html><body><script>
async function go() {
  const seen = [];
  for (let i = 0; i < 100; i++) {
    seen.push(await (await fetch('/proto?i=' + i, {cache: 'no-store'})).text());
    if (seen[seen.length - 1] === '3') break;
    await new Promise(resolve => setTimeout(resolve, 50));
  }
  await fetch('/report', {method: 'POST', body: seen.join(',')});
}
go();
</script></body></html>"""


def certs_argv(home: Path, data: Path, *args: str) -> tuple[list[str], dict[str, str]]:
    """``quicserve certs --data-dir DATA ARGS`` and its environment, with ``HOME`` at
    ``home``."""
    command = [sys.executable, "-m", "quicserve", "certs", "--data-dir", str(data), *args]
    return command, {**os.environ, "HOME": str(home)}


def certs_cli(home: Path, data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command, env = certs_argv(home, data, *args)
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)


def listed(directory: Path) -> bool:
    found = subprocess.run(
        ["certutil", "-L", "-d", f"sql:{directory}", "-n", NICKNAME], capture_output=True
    )
    return found.returncode == 0


def fake_firefox_home(home: Path) -> Path:
    """``$HOME`` with one Firefox profile (an NSS database and a user.js), as Firefox
    leaves it after its first start."""
    root = home / ".mozilla" / "firefox"
    profile = root / "abcd1234.default-esr"
    profile.mkdir(parents=True)
    subprocess.run(["certutil", "-N", "--empty-password", "-d", f"sql:{profile}"], check=True)
    (root / "profiles.ini").write_text(
        "[Profile0]\nName=default-esr\nIsRelative=1\nPath=abcd1234.default-esr\nDefault=1\n"
    )
    (profile / "user.js").write_text('user_pref("mine", 1);\n')
    return profile


def test_trust_and_untrust_firefox_profiles_and_chromium(tmp_path: Path) -> None:
    home, data = tmp_path / "home", tmp_path / "data"
    profile = fake_firefox_home(home)
    nssdb = home / ".pki" / "nssdb"

    trusted = certs_cli(home, data, "trust")
    assert trusted.returncode == 0, trusted.stderr
    assert "trusted in Firefox profile 'default-esr'" in trusted.stdout
    assert "trusted in Chromium (~/.pki/nssdb)" in trusted.stdout
    assert listed(profile) and listed(nssdb)  # nssdb did not exist: made
    assert f'user_pref("{HTTP3_PREF}", false);' in (profile / "user.js").read_text()

    again = certs_cli(home, data, "trust")  # idempotent: one CA, one pref block
    assert again.returncode == 0, again.stderr
    assert (profile / "user.js").read_text().count(HTTP3_PREF) == 1

    undone = certs_cli(home, data, "untrust")
    assert undone.returncode == 0, undone.stderr
    assert not listed(profile) and not listed(nssdb)
    assert (profile / "user.js").read_text() == 'user_pref("mine", 1);\n'
    assert "nothing to undo" in certs_cli(home, data, "untrust").stdout


def test_trust_skips_a_firefox_profile_without_a_database(tmp_path: Path) -> None:
    home, data = tmp_path / "home", tmp_path / "data"
    profile = fake_firefox_home(home)
    for name in ("cert9.db", "key4.db", "pkcs11.txt"):
        (profile / name).unlink(missing_ok=True)
    done = certs_cli(home, data, "trust")
    assert done.returncode == 0, done.stderr
    assert "skipped Firefox profile 'default-esr': no cert9.db" in done.stdout
    assert not (profile / "cert9.db").exists()


@pytest.mark.anyio
@one_backend
@pytest.mark.client("firefox-esr")
async def test_a_trusted_firefox_profile_reaches_http3(
    anyio_backend: object, tmp_path: Path
) -> None:
    """The profile gets nothing but what ``trust`` did; Firefox then follows alt-svc."""
    home, data = tmp_path / "home", tmp_path / "data"
    profile = await anyio.to_thread.run_sync(fake_firefox_home, home)
    dev = await anyio.to_thread.run_sync(ensure_dev_certificate, data)
    done = await anyio.to_thread.run_sync(certs_cli, home, data, "trust")
    assert done.returncode == 0, done.stderr
    app = FirefoxApp(PAGE)
    async with running_server(app, tls=dev, quic_bind=("127.0.0.1:0",)) as srv:
        await firefox_kit.run_until(
            app.reported, f"https://localhost:{srv.port('https')}/", profile
        )
    assert app.report.endswith("3"), app.seen
    assert app.seen[0] == ("http", "/", "2")


@pytest.mark.anyio
@one_backend
@pytest.mark.client("chromium")
async def test_chromium_trusts_the_ca_through_pki_nssdb(
    anyio_backend: object, tmp_path: Path
) -> None:
    home, data = tmp_path / "home", tmp_path / "data"
    dev = await anyio.to_thread.run_sync(ensure_dev_certificate, data)
    done = await anyio.to_thread.run_sync(certs_cli, home, data, "trust")
    assert done.returncode == 0, done.stderr
    app = FirefoxApp(b"<!doctype html><html><body><p id=out>trusted page</p></body></html>")
    async with running_server(app, tls=dev) as srv:
        command = [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--host-resolver-rules=MAP localhost 127.0.0.1",
            "--dump-dom",
            f"https://localhost:{srv.port('https')}/",
        ]
        env = {**os.environ, "HOME": str(home)}
        shown = await anyio.run_process(command, env=env, check=False)
    assert "trusted page" in shown.stdout.decode(), shown.stderr[-500:]
    assert app.seen[0] == ("http", "/", "2"), app.seen


async def run_cli_until(reported: anyio.Event, home: Path, data: Path, *args: str) -> None:
    """``quicserve certs ...`` until the page reports; then SIGTERM to it, which must stop
    its browser too (it waits for the browser)."""
    command, env = certs_argv(home, data, *args)
    async with await anyio.open_process(command, env=env) as cli:
        try:
            with anyio.fail_after(60):
                await reported.wait()
        finally:
            cli.send_signal(signal.SIGTERM)
            with anyio.fail_after(20):
                assert await cli.wait() != 0


@pytest.mark.anyio
@one_backend
@pytest.mark.client("firefox-esr")
async def test_certs_browser_firefox_reaches_http3(anyio_backend: object, tmp_path: Path) -> None:
    home, data = tmp_path / "home", tmp_path / "data"
    dev = await anyio.to_thread.run_sync(ensure_dev_certificate, data)
    app = FirefoxApp(PAGE)
    async with running_server(app, tls=dev, quic_bind=("127.0.0.1:0",)) as srv:
        url = f"https://localhost:{srv.port('https')}/"
        await run_cli_until(
            app.reported, home, data, "browser", "firefox", "--headless", "--url", url
        )
    assert app.report.endswith("3"), app.seen


@pytest.mark.anyio
@one_backend
@pytest.mark.client("chromium")
async def test_certs_browser_chromium_reaches_http3(anyio_backend: object, tmp_path: Path) -> None:
    """QUIC forced to the URL's origin and the leaf pinned: the page itself is HTTP/3."""
    home, data = tmp_path / "home", tmp_path / "data"
    dev = await anyio.to_thread.run_sync(ensure_dev_certificate, data)
    app = FirefoxApp(PAGE)
    async with running_server(app, tls=dev, quic_bind=("127.0.0.1:0",)) as srv:
        quic_port = next(a.port for a in srv.addresses if a.transport == "udp")
        url = f"https://localhost:{quic_port}/"
        await run_cli_until(
            app.reported, home, data, "browser", "chromium", "--headless", "--url", url
        )
    assert app.seen[0] == ("http", "/", "3"), app.seen
    assert app.report == "3"


def tls_handshake(port: int) -> str:
    """Python's default context (the system store) against the server: "ok" or the error."""
    context = ssl.create_default_context()
    try:
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost"):
                return "ok"
    except ssl.SSLCertVerificationError as exc:
        return f"refused: {exc.verify_message}"


@pytest.mark.anyio
@one_backend
@pytest.mark.skipif(os.geteuid() != 0, reason="the system store needs root (CI runs as root)")
async def test_system_store(anyio_backend: object, tmp_path: Path) -> None:
    home, data = tmp_path / "home", tmp_path / "data"
    (home).mkdir()
    dev: DevCertificate = await anyio.to_thread.run_sync(ensure_dev_certificate, data)
    app: Any = FirefoxApp(PAGE)
    async with running_server(app, tls=dev) as srv:
        port = srv.port("https")
        assert (await anyio.to_thread.run_sync(tls_handshake, port)).startswith("refused")
        try:
            done = await anyio.to_thread.run_sync(certs_cli, home, data, "trust", "--system")
            assert done.returncode == 0, done.stderr
            assert "trusted in the system store" in done.stdout
            assert await anyio.to_thread.run_sync(tls_handshake, port) == "ok"
        finally:
            undone = await anyio.to_thread.run_sync(certs_cli, home, data, "untrust", "--system")
        assert undone.returncode == 0, undone.stderr
        assert "removed from the system store" in undone.stdout
        assert (await anyio.to_thread.run_sync(tls_handshake, port)).startswith("refused")
