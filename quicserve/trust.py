"""Trust the development CA where a person's browsers and tools look, undo it, and open a
browser set up for local HTTP/3 (``quicserve certs trust|untrust|browser``).

Where each tool looks, and what it needs for HTTP/3 on ``localhost``:

* **Firefox** trusts what each profile's NSS database (``cert9.db``) trusts. A root that
  Firefox did not ship turns HTTP/3 off for the whole browser unless the pref
  ``network.http.http3.disable_when_third_party_roots_found`` is false, so trusting the CA
  in a profile also sets that pref in the profile's ``user.js`` (between marker lines that
  ``untrust`` removes again).
* **Chromium and Chrome** on Linux read the NSS database in ``~/.pki/nssdb``. That makes
  HTTPS over TCP work, but Chromium never uses QUIC for a certificate that chains to a
  locally installed root: for HTTP/3 it must be started with the leaf's SPKI pin and
  ``--origin-to-force-quic-on`` (what ``quicserve certs browser chromium`` does).
* **The system store** (curl, Python's ``ssl.create_default_context()``, most CLI tools):
  on Debian and Ubuntu a file in ``/usr/local/share/ca-certificates`` and
  ``update-ca-certificates``; only with ``--system`` and the rights to write there.

NSS databases are changed with NSS's ``certutil`` (Debian ``libnss3-tools``); a missing
``certutil`` is reported, not worked around. Nothing here touches a store it was not
asked to, and every change is undone by :func:`untrust`.

Rules: each step returns a line saying what it did or why it did not; a failed step does
not stop the others; no exception escapes for a store that is missing or refuses.
"""

from __future__ import annotations

import configparser
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from .certs import SYSTEM_ANCHOR as _ANCHOR
from .certs import DevCertificate, spki_sha256_base64

#: The name the CA gets in NSS databases (``certutil -n``).
NICKNAME = "quicserve development CA"
#: The system store's file (Debian and Ubuntu ``update-ca-certificates``).
SYSTEM_ANCHOR = Path(_ANCHOR)
#: The Firefox pref without which a locally trusted root turns HTTP/3 off.
HTTP3_PREF = "network.http.http3.disable_when_third_party_roots_found"
_BEGIN = "// quicserve certs trust: begin (removed by 'quicserve certs untrust')"
_END = "// quicserve certs trust: end"
_PREF_BLOCK = f'{_BEGIN}\nuser_pref("{HTTP3_PREF}", false);\n{_END}\n'

FIREFOXES = ("firefox", "firefox-esr")
CHROMIUMS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@dataclass(frozen=True, slots=True)
class Store:
    """One NSS database to trust the CA in: its directory and what it belongs to."""

    directory: Path
    owner: str  # "Firefox profile <name>" or "Chromium (~/.pki/nssdb)"
    firefox: bool


def firefox_profiles(home: Path) -> list[Store]:
    """Every Firefox profile listed in ``profiles.ini`` under ``home`` (Debian's Firefox and
    Firefox ESR keep theirs in ``~/.mozilla/firefox``; Snap's in ``~/snap/firefox``)."""
    roots = [
        home / ".mozilla" / "firefox",
        home / "snap" / "firefox" / "common" / ".mozilla" / "firefox",
    ]
    stores = []
    for root in roots:
        ini = root / "profiles.ini"
        if not ini.is_file():
            continue
        parser = configparser.RawConfigParser()
        try:
            parser.read(ini, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError):
            continue
        for section in parser.sections():
            if not section.startswith("Profile") or not parser.has_option(section, "Path"):
                continue
            path = parser.get(section, "Path")
            relative = parser.get(section, "IsRelative", fallback="1") == "1"
            directory = root / path if relative else Path(path)
            name = parser.get(section, "Name", fallback=path)
            if directory.is_dir():
                stores.append(Store(directory, f"Firefox profile {name!r}", firefox=True))
    return stores


def chromium_store(home: Path) -> Store:
    """The NSS database Chromium and Chrome read on Linux."""
    return Store(home / ".pki" / "nssdb", "Chromium (~/.pki/nssdb)", firefox=False)


def _certutil(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["certutil", *args], capture_output=True, text=True, check=False)


def trusted_in(store: Store) -> bool:
    """Whether the CA's nickname is in ``store``."""
    return _certutil("-L", "-d", f"sql:{store.directory}", "-n", NICKNAME).returncode == 0


def _trust_nss(store: Store, ca: Path) -> str:
    database = f"sql:{store.directory}"
    if not (store.directory / "cert9.db").exists():
        if store.firefox:
            return f"skipped {store.owner}: no cert9.db (start that Firefox once first)"
        store.directory.mkdir(parents=True, exist_ok=True)
        made = _certutil("-N", "--empty-password", "-d", database)
        if made.returncode != 0:
            return f"failed {store.owner}: certutil -N: {made.stderr.strip()}"
    _certutil("-D", "-d", database, "-n", NICKNAME)  # an older CA of ours, if any
    added = _certutil("-A", "-d", database, "-n", NICKNAME, "-t", "C,,", "-i", str(ca))
    if added.returncode != 0:
        return f"failed {store.owner}: certutil -A: {added.stderr.strip()}"
    said = f"trusted in {store.owner}: {store.directory}"
    if store.firefox:
        _set_pref_block(store.directory / "user.js", on=True)
        said += f" (and {HTTP3_PREF}=false in its user.js, for HTTP/3)"
    return said


def _untrust_nss(store: Store) -> str:
    said = []
    if (store.directory / "cert9.db").exists() and trusted_in(store):
        removed = _certutil("-D", "-d", f"sql:{store.directory}", "-n", NICKNAME)
        if removed.returncode != 0:
            return f"failed {store.owner}: certutil -D: {removed.stderr.strip()}"
        said.append("CA removed")
    if store.firefox and _set_pref_block(store.directory / "user.js", on=False):
        said.append(f"{HTTP3_PREF} line removed")
    if not said:
        return f"nothing to undo in {store.owner}"
    return f"{', '.join(said)} in {store.owner}: {store.directory}"


def _set_pref_block(user_js: Path, *, on: bool) -> bool:
    """Add (``on``) or remove our marked block in a profile's ``user.js``; True if the file
    changed."""
    try:
        text = user_js.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    kept = text
    start = text.find(_BEGIN)
    if start >= 0:
        end = text.find(_END, start)
        end = len(text) if end < 0 else end + len(_END)
        kept = text[:start] + text[end:].removeprefix("\n")
    if on:
        kept += ("\n" if kept and not kept.endswith("\n") else "") + _PREF_BLOCK
    if kept == text:
        return False
    user_js.write_text(kept, encoding="utf-8")
    return True


def _system(ca: Path, *, on: bool) -> str:
    tool = shutil.which("update-ca-certificates")
    if tool is None:
        return "skipped the system store: no update-ca-certificates (Debian/Ubuntu only here)"
    if os.geteuid() != 0:
        verb = f"sudo cp {ca} {SYSTEM_ANCHOR}" if on else f"sudo rm {SYSTEM_ANCHOR}"
        return f"skipped the system store: needs root (run: {verb} && sudo update-ca-certificates)"
    if on:
        SYSTEM_ANCHOR.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ca, SYSTEM_ANCHOR)
    elif SYSTEM_ANCHOR.exists():
        SYSTEM_ANCHOR.unlink()
    else:
        return "nothing to undo in the system store"
    done = subprocess.run([tool, "--fresh"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return f"failed the system store: update-ca-certificates: {done.stderr.strip()[:200]}"
    return f"{'trusted in' if on else 'removed from'} the system store: {SYSTEM_ANCHOR}"


def _stores(home: Path, nss_dbs: Sequence[Path]) -> list[Store]:
    extra = [
        Store(Path(d), f"NSS database {d}", firefox=(Path(d) / "prefs.js").exists())
        for d in nss_dbs
    ]
    return [*firefox_profiles(home), chromium_store(home), *extra]


def trust(
    cert: DevCertificate, *, home: Path, system: bool = False, nss_dbs: Sequence[Path] = ()
) -> list[str]:
    """Trust ``cert``'s CA in every Firefox profile, Chromium's NSS database, each of
    ``nss_dbs`` and (``system``) the system store; one line per store."""
    if shutil.which("certutil") is None:
        lines = ["skipped Firefox and Chromium: no certutil (apt-get install libnss3-tools)"]
    else:
        lines = [_trust_nss(store, cert.ca_certfile) for store in _stores(home, nss_dbs)]
    if system:
        lines.append(_system(cert.ca_certfile, on=True))
    return lines


def untrust(*, home: Path, system: bool = False, nss_dbs: Sequence[Path] = ()) -> list[str]:
    """Undo :func:`trust` in the same stores; one line per store."""
    if shutil.which("certutil") is None:
        lines = ["skipped Firefox and Chromium: no certutil (apt-get install libnss3-tools)"]
    else:
        lines = [_untrust_nss(store) for store in _stores(home, nss_dbs)]
    if system:
        lines.append(_system(SYSTEM_ANCHOR, on=False))
    return lines


# -- a browser set up for local HTTP/3 ----------------------------------------------------


def browser_command(
    kind: str, url: str, cert: DevCertificate, profile: Path, *, headless: bool = False
) -> list[str]:
    """The command line of a browser that reaches ``url`` over HTTP/3 with ``cert``.

    Firefox: a fresh ``profile`` that trusts the CA with the HTTP/3 pref set (made here);
    it moves to HTTP/3 through alt-svc. Chromium: ``profile`` as its user data directory,
    the leaf's SPKI pin and QUIC forced to the URL's origin (``localhost`` mapped to
    127.0.0.1, where quicserve binds by default). Raises ``LookupError`` when no
    such browser is installed."""
    from urllib.parse import urlsplit

    names = FIREFOXES if kind == "firefox" else CHROMIUMS
    program = next(filter(None, map(shutil.which, names)), None)
    if program is None:
        raise LookupError(f"no {kind} on PATH (looked for {', '.join(names)})")
    if kind == "firefox":
        new_firefox_profile(profile, cert.ca_certfile)
        return [
            program,
            *(["--headless"] if headless else []),
            "--no-remote",
            "--profile",
            str(profile),
            url,
        ]
    parts = urlsplit(url)
    origin = f"{parts.hostname}:{parts.port or 443}"
    return [
        program,
        *(["--headless"] if headless else []),
        f"--user-data-dir={profile}",
        # Chromium refuses to run as root with its sandbox on.
        *(["--no-sandbox"] if os.geteuid() == 0 else []),
        "--no-first-run",
        "--enable-quic",
        f"--origin-to-force-quic-on={origin}",
        # Chromium tries QUIC to localhost on ::1 only, and quicserve's default binds are
        # on 127.0.0.1: without this the forced QUIC connection never answers.
        *(
            ["--host-resolver-rules=MAP localhost 127.0.0.1"]
            if parts.hostname == "localhost"
            else []
        ),
        f"--ignore-certificate-errors-spki-list={spki_sha256_base64(cert.certfile)}",
        url,
    ]


def new_firefox_profile(profile: Path, ca: Path) -> Path:
    """Make ``profile`` a fresh Firefox profile that trusts ``ca`` for servers, with the
    HTTP/3 pref set and no first-run questions. Raises ``LookupError`` when ``certutil``
    cannot do its part. (``clientkit/firefox.py`` does the same for the tests on its own:
    the client kit imports nothing of quicserve, ``tests/test_layers.py``.)"""
    profile.mkdir(parents=True, exist_ok=True)
    store = Store(profile, "the new Firefox profile", firefox=True)
    database = f"sql:{profile}"
    if _certutil("-N", "--empty-password", "-d", database).returncode != 0:
        raise LookupError(
            "certutil could not make a profile database (apt-get install libnss3-tools)"
        )
    said = _trust_nss(store, ca)
    if not said.startswith("trusted"):
        raise LookupError(said)
    with (profile / "user.js").open("a", encoding="utf-8") as prefs:
        prefs.write('user_pref("browser.shell.checkDefaultBrowser", false);\n')
        prefs.write('user_pref("browser.startup.homepage_override.mstone", "ignore");\n')
    return profile


def run_browser(kind: str, url: str, cert: DevCertificate, *, headless: bool = False) -> int:
    """Run the browser of :func:`browser_command` in a throwaway profile until it exits (or
    this process gets SIGTERM or SIGINT, which stops it); the profile is deleted after."""
    with tempfile.TemporaryDirectory(prefix=f"quicserve-{kind}-") as tmp:
        command = browser_command(kind, url, cert, Path(tmp) / "profile", headless=headless)
        print(" ".join(command), flush=True)
        browser = subprocess.Popen(command)

        def stop(signum: int, frame: FrameType | None) -> None:
            raise SystemExit(128 + signum)

        previous = signal.signal(signal.SIGTERM, stop)
        try:
            return browser.wait()
        except KeyboardInterrupt:
            return 130
        finally:
            signal.signal(signal.SIGTERM, previous)
            if browser.poll() is None:
                browser.terminate()
                try:
                    browser.wait(10)
                except subprocess.TimeoutExpired:
                    browser.kill()
                    browser.wait()
