"""Headless Firefox (Debian ``firefox-esr``): a throwaway profile that trusts a CA, and a run.

Firefox has no SPKI-pin flag as Chromium has: it trusts what the profile's NSS database
(``cert9.db``) trusts, so :func:`make_profile` makes a fresh profile, imports the CA with
NSS's ``certutil`` (Debian ``libnss3-tools``) and writes the preferences a test needs:

* ``network.http.http3.disable_when_third_party_roots_found`` false. Firefox does not use
  HTTP/3 at all while a root it did not ship is trusted (a locally installed CA is such a
  root): without this every request stays on HTTP/2, however the server advertises
  HTTP/3. This is also what a person needs for local HTTP/3 in Firefox.
* no first-run pages, update checks or telemetry, so the only traffic is the test's.

Firefox moves to HTTP/3 through ``alt-svc`` only; there is no "force QUIC to this origin"
switch. WebTransport goes straight to QUIC on the URL's port (it does not follow
``alt-svc``), so a page opens it on the QUIC endpoint's port.

A page reports what it saw by fetching back to the server (:func:`run_until` waits for the
app to say so); there is no WebDriver.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import anyio

#: The program (Debian package ``firefox-esr``).
PROGRAM = "firefox-esr"

#: Preferences for every test profile (``user.js`` lines).
PREFS: dict[str, bool | int | str] = {
    "network.http.http3.disable_when_third_party_roots_found": False,
    "network.http.http3.enable": True,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "app.update.enabled": False,
    "app.normandy.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "browser.safebrowsing.update.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
}


def _pref_value(value: bool | int | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def make_profile(
    directory: Path, ca_certfile: Path, extra: dict[str, bool | int | str] | None = None
) -> Path:
    """A new Firefox profile in ``directory`` that trusts ``ca_certfile`` for servers.

    Blocking (runs ``certutil``): call it from a worker thread in async code, or before
    the loop starts. Raises ``subprocess.CalledProcessError`` if ``certutil`` refuses."""
    directory.mkdir(parents=True, exist_ok=True)
    database = f"sql:{directory}"
    subprocess.run(
        ["certutil", "-N", "--empty-password", "-d", database],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            "certutil",
            "-A",
            "-d",
            database,
            "-n",
            "quicserve test CA",
            "-t",
            "C,,",
            "-i",
            str(ca_certfile),
        ],
        check=True,
        capture_output=True,
    )
    prefs = {**PREFS, **(extra or {})}
    lines = [f'user_pref("{name}", {_pref_value(value)});' for name, value in prefs.items()]
    (directory / "user.js").write_text("\n".join(lines) + "\n")
    return directory


def command(url: str, profile: Path | str) -> list[str]:
    """Headless Firefox on ``url`` with ``profile`` (not shared with any running Firefox)."""
    return [PROGRAM, "--headless", "--no-remote", "--profile", str(profile), url]


async def run_until(
    reported: anyio.Event, url: str, profile: Path | str, timeout: float = 60.0
) -> None:
    """Run Firefox on ``url`` until the page reports to the app (``reported`` is set),
    then stop the browser (the process this started, by its PID)."""
    async with await anyio.open_process(
        command(url, profile), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    ) as browser:
        try:
            with anyio.fail_after(timeout):
                await reported.wait()
        finally:
            browser.terminate()
