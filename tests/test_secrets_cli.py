"""``--quic-secrets-file`` through the real command line: workers, two servers, rotation.

The servers are real ``python -m quicserve`` subprocesses (``spawn`` from ``test_cli.py``)
running ``tests/worker_apps.py``, whose answers name the process that served them and
whether the request arrived as 0-RTT early data. Clients are aioquic's (``clientkit``).

* Four workers on one key ring: 12 fresh connections, each resuming its own ticket with
  0-RTT, are all accepted whichever worker they reach (without a shared ring about one in
  four is: the issue's reference, 3 of 12); after a rotation and SIGHUP to the supervisor
  the new workers resume the old workers' tickets and issue tickets under the new key.
* Two single-process servers (one on asyncio with Retry always, one on trio) sharing the
  file: a ticket of one resumes on the other with 0-RTT, and one resets the other's
  connections with the token the client holds (after a rotation too: one reset per key).
  Rotation with ``quicserve secrets new`` and SIGHUP: old tickets keep working, new
  tickets carry the new key's id; a bad file on SIGHUP is logged and the old ring kept; a
  key deleted from the file no longer resumes anything.

The sans-IO side (the file, sealing, the strike register, Retry and resets under a
rotating ring) is ``tests/test_secrets.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aioquic.tls import SessionTicket

from clientkit.h3 import H3Client, H3Request, H3Result, h3_fetch_async
from quicserve.certs import DevCertificate
from quicserve.quic.keyring import KeyRing
from quicserve.secretsfile import read_key_file

from . import test_cli
from .test_cli import CLIServer, Spawn, app_args, quicserve_command
from .test_workers import wait_until

env = test_cli.env
spawn = test_cli.spawn

APP = "tests.worker_apps:app"
UDP = r"Listening on https://127\.0\.0\.1:(\d+) \(UDP\)"


def start(
    spawn: Spawn, tls: DevCertificate, backend: str, ring: Path, *extra: str
) -> tuple[CLIServer, int]:
    server = spawn(
        APP,
        *app_args(backend, tls),
        "--quic-0rtt",
        "--quic-secrets-file",
        str(ring),
        *extra,
    )
    return server, int(server.wait_for(UDP, timeout=30)[1])


def secrets_new(ring: Path, *extra: str, env: dict[str, str]) -> None:
    subprocess.run(
        quicserve_command("secrets", "new", str(ring), *extra),
        env=env,
        check=True,
        capture_output=True,
        timeout=30,
    )


def reset_token_of(client: H3Client) -> tuple[bytes, bytes]:
    """The server CID a client sends to, and the reset token the server gave with it."""
    peer = client._quic._peer_cid
    assert peer.stateless_reset_token is not None
    return peer.cid, peer.stateless_reset_token


def resets_for(port: int, cid: bytes, size: int = 60) -> list[bytes]:
    """Send a 1-RTT-looking packet for ``cid`` (a connection this server does not know) and
    collect the stateless resets that come back."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.sendto(bytes([0x41]) + cid + os.urandom(size - 1 - len(cid)), ("127.0.0.1", port))
        answers = [sock.recv(2048)]
        sock.settimeout(0.3)
        with contextlib.suppress(TimeoutError):
            while True:
                answers.append(sock.recv(2048))
    return answers


def fetch_all(
    port: int,
    tls: DevCertificate,
    tickets: list[SessionTicket | None],
    requests: int = 1,
    after_first: Callable[[H3Client], Any] | None = None,
) -> list[H3Result]:
    """One connection per ticket (None: a fresh one), all at once, each ``requests`` GET
    /pid in turn (``after_first``: clientkit's hook). With 0-RTT the first answer can come
    before the server has the client's Finished, and so before the new ticket: a second
    request waits for a new ticket."""

    async def run() -> list[H3Result]:
        return list(
            await asyncio.gather(
                *(
                    h3_fetch_async(
                        port,
                        [H3Request("/pid")] * requests,
                        cafile=str(tls.ca_certfile),
                        session_ticket=t,
                        after_first=after_first,
                    )
                    for t in tickets
                )
            )
        )

    return asyncio.run(run())


def answer(result: H3Result) -> dict[str, Any]:
    response = result.responses[0]
    assert all(r.status == 200 for r in result.responses), result.responses
    body: dict[str, Any] = json.loads(response.body)
    return body


def key_id(ticket: SessionTicket | None) -> bytes:
    assert ticket is not None
    return ticket.ticket[1:5]


# asyncio and trio (uvloop runs the same code as asyncio here; 10 s saved of the budget).
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_four_workers_resume_every_ticket_with_0rtt(
    spawn: Spawn, backend: str, tls_files: DevCertificate, tmp_path: Path, env: dict[str, str]
) -> None:
    ring = tmp_path / "ring"
    secrets_new(ring, env=env)
    server, port = start(spawn, tls_files, backend, ring, "--workers", "4")
    server.wait_for(r"All 4 workers ready", timeout=30)
    first = fetch_all(port, tls_files, [None] * 12)
    issuers = [answer(r)["pid"] for r in first]
    tickets = [r.session_ticket for r in first]
    assert all(t is not None and t.max_early_data_size is not None for t in tickets)
    again = fetch_all(port, tls_files, list(tickets), requests=2)
    assert [r.resumed for r in again] == [True] * 12
    assert [r.early_data_accepted for r in again] == [True] * 12
    assert [answer(r)["early"] for r in again] == [True] * 12  # served as 0-RTT requests
    served = [answer(r)["pid"] for r in again]
    # New connections land on workers by a hash of their random first CID, so about 3 in
    # 4 resumed on a worker that did not issue their ticket (all 12 on their issuer: odds
    # of (1/4)^12).
    assert sum(a != b for a, b in zip(issuers, served, strict=True)) >= 1

    # Rotation with the supervisor: SIGHUP replaces the workers, each reads the new ring.
    # The tickets the old workers issued (key A) resume on the new ones with 0-RTT, and
    # the new workers' tickets carry key B.
    secrets_new(ring, env=env)
    new_id = KeyRing(read_key_file(str(ring))).current.key_id
    server.signal(signal.SIGHUP)
    wait_until(lambda: len(re.findall(r"replaced: pid", server.stderr)) >= 4, 40)
    assert len(re.findall(r"Loaded 2 key\(s\) .*" + new_id.hex(), server.stderr)) == 4
    rotated = fetch_all(port, tls_files, [r.session_ticket for r in again], requests=2)
    assert [r.early_data_accepted for r in rotated] == [True] * 12
    assert {key_id(r.session_ticket) for r in rotated} == {new_id}
    assert not {answer(r)["pid"] for r in rotated} & set(issuers + served)
    assert "Traceback" not in server.stderr, server.stderr


@pytest.mark.parametrize("backends", [("asyncio", "trio")], ids=["asyncio+trio"])
def test_two_servers_share_tickets_and_rotate(
    spawn: Spawn,
    backends: tuple[str, str],
    tls_files: DevCertificate,
    tmp_path: Path,
    env: dict[str, str],
) -> None:
    ring = tmp_path / "ring"
    secrets_new(ring, env=env)
    (key_a,) = read_key_file(str(ring))
    one, port_one = start(spawn, tls_files, backends[0], ring, "--quic-retry", "always")
    two, port_two = start(spawn, tls_files, backends[1], ring)
    first = fetch_all(port_one, tls_files, [None] * 3, after_first=reset_token_of)
    assert all(r.retry_seen for r in first)  # Retry tokens minted and checked with the ring
    issued = [r.session_ticket for r in first]
    assert {key_id(t) for t in issued} == {KeyRing([key_a]).current.key_id}
    # Server two resets a connection of server one (as after a failover): the reset ends
    # in the token server one gave the client with that CID.
    cid, token = first[0].hook_result
    (reset,) = resets_for(port_two, cid)
    assert reset[-16:] == token and 21 <= len(reset) < 60

    # 1. A ticket of server one resumes on server two with 0-RTT.
    (moved,) = fetch_all(port_two, tls_files, [issued[0]], requests=2)
    assert moved.resumed and moved.early_data_accepted
    assert answer(moved)["early"] and answer(moved)["pid"] == two.proc.pid
    from_two = moved.session_ticket

    # 2. Rotation: a new key first, SIGHUP both. Old tickets still resume; new ones
    #    carry the new key.
    secrets_new(ring, env=env)
    key_b, _ = read_key_file(str(ring))
    for server in (one, two):
        server.signal(signal.SIGHUP)
        server.wait_for(
            r"Reloaded 2 key\(s\) from .* \(current key id " + KeyRing([key_b]).current.key_id.hex()
        )
    (old_ticket,) = fetch_all(port_two, tls_files, [issued[1]], requests=2)
    assert old_ticket.resumed and old_ticket.early_data_accepted
    assert key_id(old_ticket.session_ticket) == KeyRing([key_b]).current.key_id
    (fresh,) = fetch_all(port_one, tls_files, [None])  # Retry under the new key
    assert fresh.retry_seen and key_id(fresh.session_ticket) == KeyRing([key_b]).current.key_id
    # A CID issued under key A before the rotation still gets its reset: one per key.
    cid, token = first[1].hook_result
    resets = resets_for(port_one, cid)
    assert len(resets) == 2 and resets[1][-16:] == token

    # 3. A bad file on SIGHUP: logged, the old ring kept, still serving and resuming.
    good = ring.read_text()
    ring.write_text("not base64!\n")
    two.signal(signal.SIGHUP)
    two.wait_for(r"ERROR .*Reload: --quic-secrets-file .*line 1: not base64.*keeping the 2 key")
    (kept,) = fetch_all(port_two, tls_files, [issued[2]])
    assert kept.resumed and kept.early_data_accepted

    # 4. The old key deleted: its tickets no longer resume (a full handshake, still served).
    ring.write_text(good.replace(good.splitlines()[-1], ""))
    assert read_key_file(str(ring)) == [key_b]
    two.signal(signal.SIGHUP)
    two.wait_for(r"Reloaded 1 key\(s\)")
    (retired,) = fetch_all(port_two, tls_files, [from_two])
    assert not retired.resumed and not retired.early_data_accepted
    assert answer(retired)["pid"] == two.proc.pid
    for server in (one, two):
        assert "Traceback" not in server.stderr, server.stderr
        assert server.proc.poll() is None  # SIGHUP never killed it


def test_a_bad_file_at_start_is_one_line_and_exit_1(
    tls_files: DevCertificate, tmp_path: Path, env: dict[str, str]
) -> None:
    bad = tmp_path / "ring"
    bad.write_text("# a comment\nQUJD\n")
    for workers in ("1", "2"):  # the process itself, or the supervisor before any worker
        done = subprocess.run(
            quicserve_command(
                APP,
                "--workers",
                workers,
                "--quic-bind",
                "127.0.0.1:0",
                "--certfile",
                str(tls_files.certfile),
                "--keyfile",
                str(tls_files.keyfile),
                "--quic-secrets-file",
                str(bad),
                "--log-level",
                "warning",
            ),
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 1
        assert done.stderr.splitlines() == [
            f"quicserve: error: --quic-secrets-file {bad}: line 2: a key of 3 bytes, at least "
            "32 needed"
        ], done.stderr
