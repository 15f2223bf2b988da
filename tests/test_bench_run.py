"""bench/run.py: what a --servers token selects, which rows serve h1tls and how, and the
HTTP/1.1 probe's keep-alive check (against a stdlib TLS server; no server under test starts)."""

from __future__ import annotations

import http.server
import ssl
import sys
import threading
from pathlib import Path

import pytest

from bench.app import HELLO_BODY
from bench.loaders import PROTOCOLS
from bench.run import probe_h1, select_variants
from bench.servers import VARIANTS, Listen, TLSFiles
from quicserve.certs import make_test_certificates


def names(*tokens: str) -> list[str]:
    return [variant.name for variant in select_variants(tokens, [])]


def test_a_family_of_several_rows_selects_them_all() -> None:
    # The default --servers names "uvicorn": it must bring uvicorn-std (httptools + uvloop +
    # websockets, what uvicorn[standard] runs), the reference of issue 11, not only h11.
    assert set(names("uvicorn")) >= {"uvicorn", "uvicorn-wsproto"}
    assert "uvicorn-std" in names("uvicorn") or "uvicorn-std" not in names("uvicorn-std")


def test_a_row_name_or_alias_selects_one_row() -> None:
    assert names("quicserve") == ["quicserve"]
    assert names("uvicorn-h11") == ["uvicorn"]
    assert names("uvicorn-httptools") == names("uvicorn-std")
    assert names("quicserve", "quicserve") == ["quicserve"]


def test_h1tls_is_https_wrk_and_every_tls_capable_h1_row_serves_it(tmp_path: Path) -> None:
    spec = PROTOCOLS["h1tls"]
    assert (spec.tls, spec.scheme, spec.loader.tool, spec.http) == (
        True,
        "https",
        "wrk",
        "HTTP/1.1",
    )
    assert spec.url("127.0.0.1", 8443) == "https://127.0.0.1:8443/"
    tls = TLSFiles(tmp_path / "cert.pem", tmp_path / "key.pem")
    listen = Listen("127.0.0.1", 8443, "h1tls", "asyncio", tls)
    h1_rows = {v.name for v in VARIANTS if "h1" in v.protocols}
    tls_rows = {v.name for v in VARIANTS if "h1tls" in v.protocols}
    # Every plaintext HTTP/1.1 row can serve TLS too; Caddy serves HTTP/1.1 over TLS only.
    assert tls_rows == h1_rows | {"caddy"}
    for variant in VARIANTS:
        if variant.name not in tls_rows or variant.name == "quicserve-base":
            continue
        argv = variant.build(sys.executable, listen)
        joined = " ".join(argv)
        if variant.name == "caddy":  # certificate and key are in its Caddyfile
            caddyfile = Path(argv[argv.index("--config") + 1]).read_text()
            joined += caddyfile
        assert str(tls.certfile) in joined and str(tls.keyfile) in joined, variant.name
        assert "--insecure-bind" not in argv, variant.name


class _Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless the handler says otherwise
    close_each = False

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", str(len(HELLO_BODY)))
        if self.close_each:
            self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(HELLO_BODY)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _HelloClose(_Hello):
    close_each = True


@pytest.mark.parametrize(("handler", "keeps_alive"), [(_Hello, True), (_HelloClose, False)])
def test_the_h1tls_probe_passes_keep_alive_tls_and_rejects_a_server_that_closes(
    tmp_path: Path, handler: type[_Hello], keeps_alive: bool
) -> None:
    # A server that closes after each response would make wrk measure TLS handshakes.
    made = make_test_certificates(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(made.certfile, made.keyfile)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        port = server.server_address[1]
        verdict = probe_h1(port, 5.0, tls=True)
        assert (verdict is None) is keeps_alive, verdict
        if not keeps_alive:
            assert verdict is not None and "keep-alive" in verdict
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
