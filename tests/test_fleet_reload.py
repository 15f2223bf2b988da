"""Certificates reloaded in place (SIGHUP) and worker liveness (``--worker-healthcheck-timeout``).

The real command runs as a subprocess on asyncio, uvloop and trio (``test_cli.backend``;
the ``--workers 4`` test on asyncio and trio).
Two throwaway certificates, A and B, each from its own CA (so their keys differ), are
copied in turn to the paths the server was started with; clients trust both CAs and
compare the SHA-256 of the certificate the server showed with the files'. HTTP/2 goes
through httpx (its TLS object says which certificate a connection got), HTTP/3 through
aioquic (``tests/test_workers.H3Clients``).

* ``--workers 1``: open connections keep A and keep serving after SIGHUP; new TCP and QUIC
  connections get B; a bad file is one error line and B stays.
* ``--workers 4``: SIGHUP to one worker's PID reloads that worker only, in place; a worker
  whose loop is wedged by the app (``/block`` in ``tests/worker_apps.py``) is replaced in
  its slot while the others serve, and is gone ``--graceful-timeout`` later.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import signal
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import Encoding

from clientkit.h3 import H3Client
from quicserve.certs import DevCertificate, make_test_certificates
from quicserve.cli import config_from_args
from quicserve.config import Config, ConfigError
from quicserve.supervisor import ping_interval
from quicserve.tls import TLSConfigError, build_server_tls, reload_server_tls

from . import test_cli, test_workers, worker_apps
from .test_cli import Spawn
from .test_workers import H3Clients, alive, slot_pids, start_workers, stop_and_check, wait_until

backend = test_cli.backend
env = test_cli.env
spawn = test_cli.spawn
h3_clients = test_workers.h3_clients

RELOADED = "Certificate reloaded for new connections: subject"
FAILED = "Certificate reload failed, still using the old one"


@dataclasses.dataclass
class CertFiles:
    """Certificates A and B, the live paths the server reads, and a CA bundle for both."""

    a: DevCertificate
    b: DevCertificate
    live: DevCertificate  # certfile/keyfile: what the server is started with

    def install(self, cert: DevCertificate, key: DevCertificate | None = None) -> None:
        """Copy ``cert``'s certificate and ``key``'s key (default: its own) to the live paths."""
        shutil.copyfile(cert.certfile, self.live.certfile)
        shutil.copyfile((key or cert).keyfile, self.live.keyfile)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.live.ca_certfile))


@pytest.fixture
def certs(tmp_path: Path) -> CertFiles:
    a = make_test_certificates(tmp_path / "a")
    b = make_test_certificates(tmp_path / "b")
    live = tmp_path / "live"
    live.mkdir()
    bundle = live / "both-cas.pem"
    bundle.write_bytes(a.ca_certfile.read_bytes() + b.ca_certfile.read_bytes())
    files = CertFiles(a, b, DevCertificate(live / "cert.pem", live / "key.pem", bundle, True))
    files.install(a)
    return files


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def file_fingerprint(cert: DevCertificate) -> str:
    """The fingerprint of the leaf (first) certificate of ``cert.certfile``."""
    leaf = x509.load_pem_x509_certificates(cert.certfile.read_bytes())[0]
    return fingerprint(leaf.public_bytes(Encoding.DER))


def h2_peer(response: httpx.Response) -> tuple[str, Any]:
    """(fingerprint of the server's certificate, the TLS object) of the connection that
    carried ``response``."""
    assert response.http_version == "HTTP/2", response.http_version
    ssl_object = response.extensions["network_stream"].get_extra_info("ssl_object")
    return fingerprint(ssl_object.getpeercert(True)), ssl_object


def h3_peer(client: H3Client) -> str:
    """The fingerprint of the certificate the server showed this HTTP/3 connection."""
    certificate = client._quic.tls._peer_certificate
    assert certificate is not None
    return fingerprint(certificate.public_bytes(Encoding.DER))


async def h3_new_connection(clients: H3Clients) -> tuple[int, str]:
    """A new HTTP/3 connection: (pid that answered, fingerprint it saw); closed again."""
    client, manager = await clients.open()
    try:
        return (await clients.get(client))["pid"], h3_peer(client)
    finally:
        await manager.__aexit__(None, None, None)


def h2_new_connection(certs: CertFiles, port: int) -> str:
    with httpx.Client(http2=True, verify=certs.ssl_context()) as http:
        return h2_peer(http.get(f"https://localhost:{port}/pid"))[0]


def test_sighup_reloads_the_certificate_in_a_single_process(
    spawn: Spawn, backend: str, certs: CertFiles, h3_clients: list[H3Clients]
) -> None:
    server = spawn(
        test_workers.APP,
        "--backend",
        backend,
        "--workers",
        "1",
        "--bind",
        "127.0.0.1:0",
        "--quic-bind",
        "127.0.0.1:0",
        "--certfile",
        str(certs.live.certfile),
        "--keyfile",
        str(certs.live.keyfile),
        "--lifespan",
        "off",
        "--keep-alive-timeout",
        "60",
    )
    tcp = int(server.wait_for(r"Listening on https://127\.0\.0\.1:(\d+) \(TCP\)")[1])
    udp = int(server.wait_for(r"Listening on https://127\.0\.0\.1:(\d+) \(UDP\)")[1])
    a, b = file_fingerprint(certs.a), file_fingerprint(certs.b)
    assert a != b
    clients = H3Clients(udp, certs.live)
    h3_clients.append(clients)
    pid = server.proc.pid

    with httpx.Client(http2=True, verify=certs.ssl_context()) as old_h2:
        # Two connections opened with A, kept open across the reloads.
        seen, old_tls = h2_peer(old_h2.get(f"https://localhost:{tcp}/pid"))
        assert seen == a
        old_h3, manager = clients.run(clients.open())
        assert clients.run(clients.get(old_h3))["pid"] == pid
        assert h3_peer(old_h3) == a

        certs.install(certs.b)
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for(RELOADED)
        # The log line names the new certificate.
        assert ":".join(re.findall("..", b.upper())) in server.stderr
        assert h2_new_connection(certs, tcp) == b
        assert clients.run(h3_new_connection(clients)) == (pid, b)
        # The open connections were not touched: same TLS session, still A, still served.
        response = old_h2.get(f"https://localhost:{tcp}/pid")
        assert response.status_code == 200
        assert h2_peer(response) == (a, old_tls)
        assert clients.run(clients.get(old_h3))["pid"] == pid
        assert h3_peer(old_h3) == a

        # Bad files: one error line each, B is kept, the open connections go on.
        bad_states = [
            lambda: certs.live.certfile.write_text("garbage\n"),
            lambda: certs.live.certfile.unlink(),
            lambda: certs.install(certs.a, key=certs.b),  # a key that is not A's
        ]
        for number, make_bad in enumerate(bad_states, start=1):
            make_bad()
            server.proc.send_signal(signal.SIGHUP)
            wait_until(lambda n=number: server.stderr.count(FAILED) == n, 10)
            assert h2_new_connection(certs, tcp) == b
            assert clients.run(h3_new_connection(clients)) == (pid, b)
        assert old_h2.get(f"https://localhost:{tcp}/pid").status_code == 200
        assert clients.run(clients.get(old_h3))["pid"] == pid
        clients.run(manager.__aexit__(None, None, None))

    errors = [line for line in server.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 3 and all(FAILED in line for line in errors), errors
    assert server.stderr.count(RELOADED) == 1
    assert "Traceback" not in server.stderr
    server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit(15) == 0, server.stderr


# The workers' own code is the same on every backend and uvloop runs the reload above;
# asyncio and trio keep the suite's time for this one.
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_worker_reloads_in_place_and_a_wedged_worker_is_replaced(
    spawn: Spawn, backend: str, certs: CertFiles, h3_clients: list[H3Clients]
) -> None:
    server, tcp, udp, pids = start_workers(
        spawn,
        backend,
        certs.live,
        4,
        "--worker-healthcheck-timeout",
        "2",
        "--graceful-timeout",
        "1",
        "--metrics-bind",
        "127.0.0.1:0",
    )
    metrics_url = server.wait_for(r"Metrics on (http://127\.0\.0\.1:\d+/metrics)")[1]
    a, b = file_fingerprint(certs.a), file_fingerprint(certs.b)
    clients = H3Clients(udp, certs.live)
    h3_clients.append(clients)

    # 1. SIGHUP to one worker: that worker, and only it, shows B to new connections.
    target = pids[1]
    certs.install(certs.b)
    os.kill(target, signal.SIGHUP)
    server.wait_for(RELOADED)
    seen: dict[int, set[str]] = {}
    for _ in range(80):  # new QUIC connections spread over the slots by their random CID
        pid, peer = clients.run(h3_new_connection(clients))
        seen.setdefault(pid, set()).add(peer)
        if seen.get(target) and len(seen) > 1:
            break
    assert seen.pop(target) == {b}
    assert seen and all(peers == {a} for peers in seen.values()), seen
    assert slot_pids(server) == pids  # reloaded in place: nobody was replaced
    assert "Replacing worker" not in server.stderr and alive(target)

    # 2. A request wedges its worker's event loop: the supervisor's pings go unanswered.
    client, _ = clients.run(clients.open())
    wedged = clients.run(clients.get(client))["pid"]
    slot = next(s for s, p in pids.items() if p == wedged)
    blocked = clients.submit(clients.get(client, "/block"))
    try:
        server.wait_for(re.escape(f"{worker_apps.BLOCK_MARKER} (pid {wedged})"))
        # The other workers go on serving new connections meanwhile.
        with httpx.Client(verify=certs.ssl_context()) as http:
            for _ in range(8):
                response = http.get(f"https://localhost:{tcp}/pid", headers={"connection": "close"})
                assert response.status_code == 200
                assert response.json()["pid"] != wedged
        warning = server.wait_for(
            rf"WARNING +Worker {slot} \(pid {wedged}\) has not answered for ([\d.]+) s", 15
        )
        assert float(warning[1]) >= 2
        replaced = server.wait_for(rf"Worker {slot} replaced: pid (\d+) serves", 30)
        assert int(replaced[1]) not in pids.values()
        server.wait_for(rf"Old worker {slot} \(pid {wedged}\) killed", 15)
        wait_until(lambda: not alive(wedged), 10)
    finally:
        blocked.cancel()
        clients.loop.call_soon_threadsafe(client.close)
    assert server.stderr.count("has not answered") == 1
    # Counted once, on the fleet's one metrics endpoint.
    scrape = httpx.get(metrics_url).text.splitlines()
    assert "quicserve_worker_unresponsive_total 1" in scrape
    # The fleet is whole again: every slot answers, the wedged PID nowhere.
    now = slot_pids(server)
    assert wedged not in now.values() and len(now) == 4
    sessions = clients.run(clients.load(16, 1, migrating=0))
    assert test_workers.check_sessions(sessions, 0) <= set(now.values())
    stop_and_check(server, list(pids.values()) + list(now.values()))


def test_reload_server_tls_refuses_a_bad_key_and_leaves_the_current_one(
    certs: CertFiles, tmp_path: Path
) -> None:
    # In-process, for what the CLI test above does not reach: an encrypted key with the
    # wrong password, and a QUIC-only server, where only quicserve (not OpenSSL, not
    # aioquic) notices a key that belongs to another certificate.
    key = serialization.load_pem_private_key(certs.a.keyfile.read_bytes(), None)
    locked = tmp_path / "locked-key.pem"
    locked.write_bytes(
        key.private_bytes(
            Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"right"),
        )
    )
    config = Config(
        certfile=str(certs.a.certfile),
        keyfile=str(locked),
        keyfile_password="right",
        bind=("127.0.0.1:0",),
        quic_bind=("127.0.0.1:0",),
    )
    current = build_server_tls(config)
    assert current.quic is not None and current.ssl_context is not None
    before = current.quic.certificate
    with pytest.raises(TLSConfigError):
        reload_server_tls(dataclasses.replace(config, keyfile_password="wrong"), current)
    reloaded = reload_server_tls(config, current)
    assert reloaded.ssl_context is not current.ssl_context
    assert reloaded.quic is not None and reloaded.quic is not current.quic
    assert current.quic.certificate is before  # what open connections hold is not touched

    quic_only = dataclasses.replace(
        config, bind=(), keyfile=str(certs.b.keyfile), keyfile_password=None
    )
    quic_current = dataclasses.replace(current, ssl_context=None, tls_info=None)
    with pytest.raises(TLSConfigError, match="does not belong to the certificate"):
        reload_server_tls(quic_only, quic_current)
    with pytest.raises(TLSConfigError, match="does not belong to the certificate"):
        build_server_tls(quic_only)  # and at start-up, before anything is bound
    right = dataclasses.replace(quic_only, certfile=str(certs.b.certfile))
    assert reload_server_tls(right, quic_current).quic is not None

    # --ca-certs (client certificates) is read again too.
    with_ca = dataclasses.replace(config, ca_certs=str(certs.live.ca_certfile))
    with_ca_tls = build_server_tls(with_ca)
    certs.live.ca_certfile.unlink()
    with pytest.raises(TLSConfigError, match="cannot load CA certificates"):
        reload_server_tls(with_ca, with_ca_tls)


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_worker_healthcheck_timeout_must_be_seconds_or_zero(value: str) -> None:
    with pytest.raises(ConfigError, match="--worker-healthcheck-timeout"):
        config_from_args(["app:app", "--worker-healthcheck-timeout", value], {})
    assert config_from_args(["app:app"], {}).worker_healthcheck_timeout == 30
    assert ping_interval(30) == 5 and ping_interval(2) == 0.5 and ping_interval(0.1) == 0.25
