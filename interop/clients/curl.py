"""System curl (libcurl + nghttp2): HTTP/1.1, HTTP/2 over TLS, h2c prior knowledge."""

from __future__ import annotations

import hashlib
import subprocess

from clientkit import missing

from ..cases import UPLOAD_SIZE, Result, Server, fail, passed

NAME = "curl"
CASES = {"h1-get", "h2-get", "h2c", "altsvc", "post-streaming"}
UNSUPPORTED = {
    **dict.fromkeys(
        ("ws-h1", "ws-h2", "ws-h3"), "Debian's curl 7.88 is built without WebSocket support"
    ),
    "*": "Debian's curl has no HTTP/3 (that is curl_cffi's column)",
}


def available() -> str | None:
    return missing("curl")


def supports(case: str) -> bool:
    return case in CASES


def _curl(*args: str, data: bytes | None = None) -> tuple[str, str]:
    """Run curl; returns (body, the %{http_version} curl reports)."""
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "60", "-w", "\n%{http_version}", *args],
        input=data,
        capture_output=True,
        timeout=80,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"curl exit {done.returncode}: {done.stderr.decode().strip()[:150]}")
    body, _, version = done.stdout.decode(errors="replace").rpartition("\n")
    return body, version


def run(case: str, server: Server) -> Result:
    tls = f"https://localhost:{server.https_port}"
    ca = ["--cacert", server.ca_certfile]
    if case in ("h1-get", "h2-get"):
        flag, want = ("--http1.1", "1.1") if case == "h1-get" else ("--http2", "2")
        body, version = _curl(*ca, flag, f"{tls}/proto")
        if body != want or version != want:
            return fail(f"server saw {body!r}, curl says {version}")
        return passed(f"curl {flag}: server saw {body!r}, %{{http_version}}={version}")
    if case == "h2c":
        body, version = _curl(
            "--http2-prior-knowledge", f"http://127.0.0.1:{server.http_port}/proto"
        )
        if body != "2" or version != "2":
            return fail(f"server saw {body!r}, curl says {version}")
        return passed(f"prior knowledge on cleartext: server saw {body!r}, curl says {version}")
    if case == "altsvc":
        done = subprocess.run(
            ["curl", "-sS", "-D", "-", "-o", "/dev/null", "--max-time", "30", *ca, f"{tls}/"],
            capture_output=True,
            timeout=40,
            check=False,
        )
        headers = [
            line.split(":", 1)[1].strip()
            for line in done.stdout.decode(errors="replace").splitlines()
            if line.lower().startswith("alt-svc:")
        ]
        want = f'h3=":{server.h3_port}"'
        if not any(want in value for value in headers):
            return fail(f"alt-svc headers {headers}, wanted {want}")
        return passed(f"TLS response carries alt-svc: {headers[0]}")
    if case == "post-streaming":
        payload = hashlib.sha512(b"upload").digest() * (UPLOAD_SIZE // 64)
        # -T - with chunked encoding on h1.1 streams stdin; over h2 it is a DATA stream.
        body, version = _curl(
            *ca, "--http2", "-T", "-", "-X", "POST", f"{tls}/sha256", data=payload
        )
        expected = f"{len(payload)} {hashlib.sha256(payload).hexdigest()}"
        if body != expected:
            return fail(f"server echoed {body[:80]!r} (HTTP/{version})")
        return passed(f"streamed upload (-T -) over HTTP/{version}: sha256 echoed matches")
    return fail(f"unsupported case {case}")
