"""``--workers``: the supervisor, QUIC routing by connection ID, and worker life cycles.

The real command runs as a subprocess on asyncio, uvloop and trio (the ``backend``
parameter of ``test_cli.py``); the app (``tests/worker_apps.py``) answers with the PID of
the worker that served each request. HTTP/3 clients are aioquic's, many connections at
once on one asyncio loop in a background thread. A migrating client (RFC 9000 §9.2) moves
to a new UDP port and a new connection ID halfway: the kernel's ``SO_REUSEPORT`` hash then
picks a socket at random, and only routing by connection ID (BPF, or forwarding between
workers) brings its packets back to its worker. Each test stops every process it started
(the ``spawn`` fixture, by PID) and checks that no worker outlives the supervisor.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import threading
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
import pytest
from aioquic.asyncio.client import connect
from aioquic.h3.connection import ErrorCode

from clientkit.h3 import ConnectionClosed, H3Client, H3Request, client_configuration, migrate
from quicserve.certs import DevCertificate

from . import test_cli
from .helpers import client_ssl_context
from .test_cli import CLIServer, Spawn, app_args

backend = test_cli.backend
env = test_cli.env
spawn = test_cli.spawn

APP = "tests.worker_apps:app"
READY = re.compile(r"Worker (\d+) ready \(pid (\d+)\)")
T = TypeVar("T")


class _Drained(Exception):
    """The server drained the connection (GOAWAY, graceful close) before answering."""


class H3Clients:
    """aioquic connections on one asyncio loop in a thread, driven from the test."""

    def __init__(self, port: int, tls: DevCertificate) -> None:
        self.port = port
        self.cafile = str(tls.ca_certfile)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def open(self) -> tuple[H3Client, Any]:
        """A connected client (and the context manager to close it with)."""
        manager = connect(
            "127.0.0.1",
            self.port,
            configuration=client_configuration(self.cafile),
            create_protocol=H3Client,
        )
        client = await manager.__aenter__()
        assert isinstance(client, H3Client)
        return client, manager

    async def get(self, client: H3Client, path: str = "/pid") -> dict[str, Any]:
        try:
            response = await asyncio.wait_for(client.request(H3Request(path), "localhost"), 30)
        except ConnectionClosed as exc:
            if exc.error_code == ErrorCode.H3_NO_ERROR:
                raise _Drained from exc
            raise
        if response.reset == ErrorCode.H3_REQUEST_REJECTED:
            raise _Drained  # after the server's GOAWAY: not processed (RFC 9114 §5.2)
        assert response.status == 200, response
        answer: dict[str, Any] = json.loads(response.body)
        return answer

    async def session(self, requests: int, migrating: bool) -> list[dict[str, Any]]:
        """One connection: ``requests`` at once, then (migrating) move and do it again.

        A worker that reaches ``--max-requests`` drains: GOAWAY, requests after it
        refused, then a graceful close. The requests it did not take are retried on a new
        connection, as RFC 9114 §5.2 has clients do (at most 3 connections); anything else
        that ends a request still fails the test."""
        for _ in range(2):
            try:
                return await self._session(requests, migrating)
            except _Drained:
                pass
        return await self._session(requests, migrating)

    async def _session(self, requests: int, migrating: bool) -> list[dict[str, Any]]:
        client, manager = await self.open()
        try:
            answers = list(await asyncio.gather(*(self.get(client) for _ in range(requests))))
            if migrating:
                await migrate(client)
                answers += await asyncio.gather(*(self.get(client) for _ in range(requests)))
                # The old socket is closed, so these answers came over the new path. Once
                # the server has validated it, new requests report the new port too.
                for _ in range(40):
                    answers.append(await self.get(client))
                    if answers[-1]["client"][1] != answers[0]["client"][1]:
                        break
                    await asyncio.sleep(0.05)
            return answers
        finally:
            await manager.__aexit__(None, None, None)
            if migrating and client._transport is not None:
                client._transport.close()  # connect() closes only the socket it made

    async def load(self, connections: int, requests: int, migrating: int) -> list[Any]:
        """``connections`` sessions at once, the first ``migrating`` of them migrating."""
        return list(
            await asyncio.gather(
                *(self.session(requests, i < migrating) for i in range(connections))
            )
        )

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def h3_clients() -> Iterator[list[H3Clients]]:
    made: list[H3Clients] = []
    yield made
    for clients in made:
        clients.close()


def start_workers(
    spawn: Spawn, backend: str, tls: DevCertificate, count: int, *extra: str
) -> tuple[CLIServer, int, int, dict[int, int]]:
    """``quicserve --workers count``: (server, TCP port, UDP port, {slot: pid})."""
    server = spawn(APP, *app_args(backend, tls, workers=count), *extra)
    server.wait_for(r"All \d+ workers ready", timeout=30)
    udp = int(server.wait_for(r"Listening on https://127\.0\.0\.1:(\d+) \(UDP\)")[1])
    tcp = int(server.wait_for(r"Listening on https://127\.0\.0\.1:(\d+) \(TCP\)")[1])
    return server, tcp, udp, slot_pids(server)


def slot_pids(server: CLIServer) -> dict[int, int]:
    """The current pid of each slot, from the supervisor's log."""
    pids: dict[int, int] = {}
    for line in server.stderr.splitlines():
        match = READY.search(line) or re.search(r"Worker (\d+) replaced: pid (\d+)", line)
        if match:
            pids[int(match[1])] = int(match[2])
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (its parent, the supervisor, reaps it).
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ")[1][0] != "Z"


def wait_until(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def stop_and_check(server: CLIServer, pids: list[int]) -> None:
    """SIGTERM: exit 0, and no worker left behind."""
    server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit(30) == 0, server.stderr
    assert "Traceback" not in server.stderr, server.stderr
    for pid in pids:
        wait_until(lambda pid=pid: not alive(pid), 5)


def check_sessions(sessions: list[list[dict[str, Any]]], migrating: int) -> set[int]:
    """Every connection stayed on one worker; migrated ones were seen on their new port."""
    used: set[int] = set()
    for index, answers in enumerate(sessions):
        pids = {answer["pid"] for answer in answers}
        assert len(pids) == 1, f"connection {index} was served by {pids}"
        used |= pids
        if index < migrating:
            assert answers[-1]["client"][1] != answers[0]["client"][1], answers
    return used


def test_four_workers_route_200_requests_and_migrations_by_cid(
    spawn: Spawn, backend: str, tls_files: DevCertificate, h3_clients: list[H3Clients]
) -> None:
    server, _, udp, pids = start_workers(spawn, backend, tls_files, 4)
    assert "QUIC routing: kernel" in server.stderr
    clients = H3Clients(udp, tls_files)
    h3_clients.append(clients)
    # 50 connections x 4 requests at once = 200 concurrent requests; 12 of the
    # connections then migrate and send 4 more each.
    sessions = clients.run(clients.load(50, 4, migrating=12))
    assert sum(len(s) for s in sessions) >= 200 + 12 * 5
    assert check_sessions(sessions, migrating=12) == set(pids.values())
    stop_and_check(server, list(pids.values()))


def test_forwarding_fallback_and_max_requests(
    spawn: Spawn, backend: str, tls_files: DevCertificate, h3_clients: list[H3Clients]
) -> None:
    # Without the BPF program the kernel spreads datagrams by address; workers forward
    # what belongs to another worker. --max-requests makes a worker replace itself.
    server, _, udp, pids = start_workers(
        spawn,
        backend,
        tls_files,
        3,
        "--quic-worker-routing",
        "forward",
        "--max-requests",
        "80",
        "--max-requests-jitter",
        "5",
    )
    assert "QUIC routing: forward" in server.stderr
    clients = H3Clients(udp, tls_files)
    h3_clients.append(clients)
    sessions = clients.run(clients.load(24, 3, migrating=8))
    assert check_sessions(sessions, migrating=8) == set(pids.values())
    # One short connection at a time until a worker reaches its limit and is replaced. A
    # draining worker sends GOAWAY, after which a client opens a new connection; one at a
    # time, no client here is caught between the two, so every request must succeed.
    for _ in range(200):
        clients.run(clients.session(4, migrating=False))
        if "replaced: pid" in server.stderr:
            break
    server.wait_for(r"asking to be replaced")
    server.wait_for(r"Worker \d+ replaced: pid \d+", timeout=30)
    # Another worker may reach its --max-requests during this load and drain: the clients
    # retry what it refused on a new connection (H3Clients.session). In CI this load
    # failed twice without that: a 30 s hang, then (once clientkit failed the requests a
    # closed connection left waiting) "connection closed: 0x100 shutting down".
    sessions = clients.run(clients.load(12, 3, migrating=4))
    check_sessions(sessions, migrating=4)
    stop_and_check(server, list(pids.values()) + list(slot_pids(server).values()))


def test_kill_reload_and_scale(
    spawn: Spawn, backend: str, tls_files: DevCertificate, h3_clients: list[H3Clients]
) -> None:
    server, tcp, udp, pids = start_workers(spawn, backend, tls_files, 3)
    clients = H3Clients(udp, tls_files)
    h3_clients.append(clients)
    seen = set(pids.values())

    # 1. A killed worker is replaced in its slot; the others keep their connections.
    client, manager = clients.run(clients.open())
    mine = clients.run(clients.get(client))["pid"]
    slot, victim = next((s, p) for s, p in pids.items() if p != mine)
    os.kill(victim, signal.SIGKILL)
    server.wait_for(rf"Worker {slot} \(pid {victim}\) exited with code -9: starting a new one")
    wait_until(lambda: slot_pids(server)[slot] != victim)
    assert clients.run(clients.get(client))["pid"] == mine
    pids = slot_pids(server)
    seen |= set(pids.values())
    used = check_sessions(clients.run(clients.load(24, 1, migrating=0)), 0)
    assert victim not in used and used <= set(pids.values())

    # 2. SIGHUP replaces every worker; requests in flight on HTTP/3 and HTTP/1.1 finish.
    slow = clients.submit(clients.get(client, "/slow"))
    with ThreadPoolExecutor(1) as pool, httpx.Client(verify=client_ssl_context(tls_files)) as http:
        slow_h1 = pool.submit(http.get, f"https://localhost:{tcp}/slow", timeout=30)
        time.sleep(0.3)
        server.proc.send_signal(signal.SIGHUP)
        for _ in range(3):
            server.wait_for(r"Received SIGHUP")
        wait_until(lambda: len(re.findall(r"replaced: pid", server.stderr)) >= 3, 40)
        assert slow.result(30)["pid"] == mine
        assert slow_h1.result(30).status_code == 200
    new = slot_pids(server)
    assert set(new.values()).isdisjoint(pids.values())
    seen |= set(new.values())
    used = check_sessions(clients.run(clients.load(24, 1, migrating=4)), 4)
    assert used <= set(new.values())
    clients.run(manager.__aexit__(None, None, None))
    wait_until(lambda: not any(alive(p) for p in pids.values()), 30)  # old ones drained

    # 3. SIGTTIN adds a worker in a new slot, SIGTTOU removes it again.
    server.proc.send_signal(signal.SIGTTIN)
    server.wait_for(r"Worker 3 ready \(pid (\d+)\)")
    added = slot_pids(server)[3]
    seen.add(added)
    assert added in check_sessions(clients.run(clients.load(40, 1, migrating=0)), 0)
    server.proc.send_signal(signal.SIGTTOU)
    server.wait_for(r"Worker 3 removed \(now 3\)")
    assert not alive(added)
    used = check_sessions(clients.run(clients.load(12, 1, migrating=4)), 4)
    assert added not in used
    stop_and_check(server, list(seen))


def test_a_worker_that_cannot_start_is_one_error_line(env: dict[str, str]) -> None:
    # Each worker fails the same way; the supervisor prints the error once and exits 3
    # (the app cannot boot: not worth restarting).
    result = test_cli.run_cli(
        env, "no_such_module_xyz:app", "--workers", "3", "--insecure-bind", "127.0.0.1:0"
    )
    test_cli.assert_one_line_error(result, "no_such_module_xyz", "not found", exit_code=3)
    assert "Traceback" not in result.stderr


class _Listener:
    """A QUIC listener as the worker link sees it: knows one connection ID."""

    def __init__(self, known: bytes) -> None:
        self.known = known
        self.received: list[bytes] = []

    def receive(self, data: bytes, addr: Any) -> None:
        self.received.append(data)

    def owns(self, dcid: bytes) -> bool:
        return dcid == self.known


def test_the_old_worker_sends_its_successor_what_it_does_not_know(tmp_path: Any) -> None:
    # While a worker is replaced, both generations read the slot's socket. A packet of a
    # connection the new worker accepted, read by the old one, used to get a stateless
    # reset there (valid: the machine shares the reset secret), which ended the connection.
    import socket

    from quicserve.worker import FINAL, WorkerLink, decode_forward, worker_path

    control, _peer = socket.socketpair()
    init = {
        "slot": 0,
        "generation": 1,
        "secret": "00" * 32,
        "server_id": "",
        "table": {"slots": 1, "active": [0]},
        "routing": ["bpf"],
        "forward_dir": str(tmp_path),
        "predecessor": None,
        "max_requests": 0,
    }
    link = WorkerLink(control, init)
    successor = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    successor.bind(worker_path(str(tmp_path), 0, 2))
    successor.settimeout(1)
    try:
        ours, theirs = b"A" * 8, b"B" * 8
        listener = _Listener(known=ours)
        router = link.attach(listener)
        short = b"\x40" + theirs + b"p" * 40
        initial = b"\xc0\x00\x00\x00\x01\x08" + theirs + b"\x00" + b"p" * 1200
        assert not router.divert(short, ("127.0.0.1", 9))  # no successor yet: ours to answer
        link._handle({"successor": worker_path(str(tmp_path), 0, 2)}, server=None)  # type: ignore[arg-type]
        assert router.divert(short, ("127.0.0.1", 9))
        assert decode_forward(successor.recv(70000))[1:] == (FINAL, ("127.0.0.1", 9), short)
        assert not router.divert(b"\x40" + ours + b"p" * 40, ("127.0.0.1", 9))  # known: ours
        assert not router.divert(initial, ("127.0.0.1", 9))  # a new connection: ours to take
        link._handle({"successor": None}, server=None)  # type: ignore[arg-type]
        assert not router.divert(short, ("127.0.0.1", 9))
    finally:
        successor.close()
        link.close()
        _peer.close()
