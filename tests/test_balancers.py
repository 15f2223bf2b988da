"""Behind real balancers: two quicserve machines behind a plaintext QUIC-LB balancer.

Two ``python -m quicserve`` processes (the real CLI, asyncio and trio; one of the two with
``--workers 4``) get different 8-byte QUIC-LB server IDs, so they issue 16-byte connection
IDs, the length an AWS NLB QUIC listener requires; one takes its ID from
``AWS_LBC_QUIC_SERVER_ID`` as the AWS Load Balancer Controller hands it to a pod. In front
of them runs ``tests/quiclb_router.py``, a small balancer that knows nothing of quicserve
and routes by the server ID in each datagram's Destination CID
(draft-ietf-quic-load-balancers-19 §5.2). The app (``tests/worker_apps.py``) answers with
the PID that served each request, so every response names its machine.

What the tests show: a connection keeps its machine while the client moves to a new port
and a new CID; with one key ring for both machines (``--quic-secrets-file``), a session
ticket from one machine resumes (with 0-RTT) on the other, a Retry token from one is
accepted by the other, and when a machine dies its connections get a stateless reset from
the other one as soon as their next packet arrives, instead of waiting out the idle
timeout. The Kubernetes recipe of docs/balancers.md is parsed and checked here too.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from clientkit.h3 import H3Client, H3Request, h3_fetch_async
from quicserve.certs import DevCertificate
from quicserve.config import ConfigError, resolve

from . import test_cli
from .helpers import client_ssl_context
from .quiclb_router import QuicLbRouter, parse
from .test_cli import CLIServer, Spawn, app_args
from .test_workers import H3Clients, alive, check_sessions, slot_pids, wait_until

env = test_cli.env
spawn = test_cli.spawn

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.worker_apps:app"
TWO_BACKENDS = [pytest.param("asyncio"), pytest.param("trio")]
AWS_ANNOTATION = "service.beta.kubernetes.io/aws-load-balancer"

ID_A = bytes.fromhex("2d6575a16fa08ea4")  # given to A as AWS_LBC_QUIC_SERVER_ID (base64)
ID_B = bytes.fromhex("11223344556677a8")  # given to B as --quic-lb-server-id (hex)


@pytest.fixture(params=TWO_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


# -- AWS_LBC_QUIC_SERVER_ID -----------------------------------------------------------------


def test_aws_server_id_gives_the_quic_lb_server_id_below_explicit_settings(
    tmp_path: Path,
) -> None:
    aws = {"AWS_LBC_QUIC_SERVER_ID": base64.b64encode(ID_A).decode()}
    assert resolve({}, aws).quic_lb_server_id == ID_A.hex()
    # The flag and QUICSERVE_QUIC_LB_SERVER_ID win; then the AWS value is not even read.
    explicit = {"quic_lb_server_id": "abcd"}
    assert resolve(explicit, aws).quic_lb_server_id == "abcd"
    assert resolve(explicit, {"AWS_LBC_QUIC_SERVER_ID": "%%%"}).quic_lb_server_id == "abcd"
    both = {**aws, "QUICSERVE_QUIC_LB_SERVER_ID": "0102"}
    assert resolve({}, both).quic_lb_server_id == "0102"
    # A --config file is below the environment, the AWS variable included.
    path = tmp_path / "quicserve.toml"
    path.write_text('quic_lb_server_id = "0a0b"\n')
    assert resolve({"config": str(path)}, aws).quic_lb_server_id == ID_A.hex()
    assert resolve({"config": str(path)}, {}).quic_lb_server_id == "0a0b"
    for bad, needle in [
        ("not base64!", "not base64"),
        ("AQIDBAUGBw==", "7 bytes"),
        ("", "0 bytes"),
    ]:
        with pytest.raises(ConfigError, match=needle) as error:
            resolve({}, {"AWS_LBC_QUIC_SERVER_ID": bad})
        assert "AWS_LBC_QUIC_SERVER_ID" in str(error.value)


def test_a_malformed_aws_server_id_is_one_error_line(env: dict[str, str]) -> None:
    bad = {**env, "AWS_LBC_QUIC_SERVER_ID": base64.b64encode(b"x" * 9).decode()}
    result = test_cli.run_cli(bad, APP, "--insecure-bind", "127.0.0.1:0")
    test_cli.assert_one_line_error(result, "AWS_LBC_QUIC_SERVER_ID", "9 bytes", "8 bytes")


# -- the router alone -------------------------------------------------------------------------


def _short(cid: bytes) -> bytes:
    return bytes([0x40]) + cid + os.urandom(40)


def _initial(dcid: bytes, token: bytes = b"") -> bytes:
    scid = os.urandom(8)
    return (
        bytes([0xC0, 0, 0, 0, 1, len(dcid)])
        + dcid
        + bytes([len(scid)])
        + scid
        + bytes([len(token)])
        + token
        + os.urandom(1200)
    )


def test_the_router_routes_by_server_id_hash_and_failover() -> None:
    # CIDs built here by hand from the draft's layout, not by quicserve.quic.lb.
    a, b = b"A" * 8, b"B" * 8
    router = QuicLbRouter({a: ("127.0.0.1", 9), b: ("127.0.0.1", 9)}, server_id_length=8)
    try:
        cid_b = bytes([15]) + b + os.urandom(7)  # CR 0, length 16 - 1, server ID, nonce
        assert router.choose(_short(cid_b)) == ("by-id", b)
        assert router.choose(_initial(cid_b)) == ("by-id", b)
        assert parse(_initial(os.urandom(8), b"token"), 8) is not None
        assert parse(_initial(os.urandom(8), b"token"), 8).has_token  # type: ignore[union-attr]
        # Another config rotation codepoint, an unknown ID: hashed, always the same way.
        other = bytes([0xE0 | 15]) + b + os.urandom(7)
        first = router.choose(_short(other))
        assert first is not None and first[0] == "hash"
        assert all(router.choose(_short(other)) == first for _ in range(5))
        client_chosen = [os.urandom(8) for _ in range(64)]
        spread = {router.choose(_initial(dcid)) for dcid in client_chosen}
        assert spread == {("hash", a), ("hash", b)}
        router.steer_new(a)
        assert {router.choose(_initial(dcid)) for dcid in client_chosen} == {("steered", a)}
        router.steer_tokens(b)
        assert router.choose(_initial(os.urandom(8), b"t")) == ("token", b)
        # B fails: its connections go to A, and nothing is left once A fails too.
        router.mark_down(b)
        assert router.choose(_short(cid_b)) == ("failover", a)
        router.mark_down(a)
        assert router.choose(_short(cid_b)) is None
        assert router.choose(b"\x40") is None  # too short to read a server ID
    finally:
        router.close()


def test_the_router_flow_table_is_bounded_and_expires() -> None:
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    server_id = b"S" * 8
    router = QuicLbRouter(
        {server_id: echo.getsockname()}, server_id_length=8, max_flows=2, idle_timeout=0.5
    ).start()
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        echo.settimeout(5)
        for client in clients:
            client.settimeout(5)
            sent = _short(bytes([15]) + server_id + bytes(7))
            client.sendto(sent, router.address)
            data, upstream = echo.recvfrom(2048)
            assert data == sent  # forwarded unchanged
            echo.sendto(b"reply", upstream)
            assert client.recvfrom(2048)[0] == b"reply"  # relayed back to its client
        assert router.stats["opened"] == 3 and router.stats["evicted"] == 1
        assert router.flows == 2
        wait_until(lambda: router.flows == 0, 5)
        assert router.stats["expired"] == 2
    finally:
        router.close()
        echo.close()
        for client in clients:
            client.close()


# -- two machines -----------------------------------------------------------------------------


@dataclass(eq=False)
class Machine:
    """One quicserve instance: its process, UDP port, server ID and serving PIDs."""

    server: CLIServer
    port: int
    server_id: bytes
    pids: set[int] = field(default_factory=set)

    def kill(self) -> None:
        """SIGKILL the machine: every process of it, by PID (a crashed host)."""
        victims = [self.server.proc.pid, *self.pids]
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.server.proc.wait(10)
        wait_until(lambda: not any(alive(pid) for pid in victims), 10)


def start_machine(
    spawn: Spawn,
    backend: str,
    tls: DevCertificate,
    server_id: bytes,
    workers: int,
    *extra: str,
    aws: bool = False,
) -> Machine:
    """A quicserve machine with ``server_id`` (as the AWS variable if ``aws``)."""
    id_args = [] if aws else ["--quic-lb-server-id", server_id.hex()]
    extra_env = {"AWS_LBC_QUIC_SERVER_ID": base64.b64encode(server_id).decode()} if aws else {}
    server = spawn(
        APP,
        *app_args(backend, tls, workers=workers),
        *id_args,
        *extra,
        extra_env=extra_env,
    )
    if workers > 1:
        server.wait_for(r"All \d+ workers ready", timeout=30)
    port = int(server.wait_for(r"Listening on https://127\.0\.0\.1:(\d+) \(UDP\)", 30)[1])
    # The ID in use is logged at startup, with the CID length it gives (16 = AWS's).
    server.wait_for(rf"QUIC-LB server ID {server_id.hex()} \(16-byte connection IDs\)", 30)
    pids = set(slot_pids(server).values()) if workers > 1 else {server.proc.pid}
    return Machine(server, port, server_id, pids)


@pytest.fixture
def fleet_cleanup() -> Iterator[list[Any]]:
    """Routers and client loops to close after the test (servers: the spawn fixture)."""
    made: list[Any] = []
    yield made
    for thing in reversed(made):
        thing.close()


def machines(
    spawn: Spawn, backend: str, tls: DevCertificate, *extra: str
) -> tuple[Machine, Machine]:
    """A and B; on asyncio and uvloop A has 4 workers, on trio B has (each backend meets
    both a single process and a supervisor, as serving and as surviving machine)."""
    workers_a, workers_b = (1, 4) if backend == "trio" else (4, 1)
    a = start_machine(spawn, backend, tls, ID_A, workers_a, *extra, aws=True)
    b = start_machine(spawn, backend, tls, ID_B, workers_b, *extra)
    return a, b


def router_for(*fleet: Machine) -> QuicLbRouter:
    return QuicLbRouter(
        {m.server_id: ("127.0.0.1", m.port) for m in fleet}, server_id_length=8
    ).start()


def owner(fleet: tuple[Machine, ...], pid: int) -> Machine:
    (machine,) = [m for m in fleet if pid in m.pids]
    return machine


@pytest.fixture(params=test_cli.BACKENDS)
def any_backend(request: pytest.FixtureRequest) -> str:
    """asyncio, uvloop and trio: the migration test is cheap enough for all three."""
    value: str = request.param
    return value


def test_a_connection_keeps_its_machine_through_migration(
    spawn: Spawn,
    any_backend: str,
    tls_files: DevCertificate,
    fleet_cleanup: list[Any],
) -> None:
    a, b = machines(spawn, any_backend, tls_files)
    router = router_for(a, b)
    fleet_cleanup.append(router)
    clients = H3Clients(router.port, tls_files)
    fleet_cleanup.append(clients)
    # Connections hashed by the router, then some steered to each machine; half of them
    # move to a new port and a new CID halfway (clientkit.h3.migrate).
    sessions = clients.run(clients.load(6, 2, migrating=3))
    for target in (a, b):
        router.steer_new(target.server_id)
        steered = clients.run(clients.load(4, 2, migrating=2))
        check_sessions(steered, migrating=2)
        assert {owner((a, b), s[0]["pid"]) for s in steered} == {target}
        sessions += steered
    router.steer_new(None)
    used = check_sessions(sessions, migrating=0)  # one PID per connection, migrated or not
    assert {owner((a, b), pid) for pid in used} == {a, b}
    # Both machines' CIDs were routed by their server ID; nothing failed over.
    assert router.decisions[("by-id", a.server_id)] > 0
    assert router.decisions[("by-id", b.server_id)] > 0
    assert not any(reason == "failover" for reason, _ in router.decisions)
    for machine in (a, b):
        assert "Traceback" not in machine.server.stderr


def secrets_file(tmp_path: Path) -> str:
    """One key ring for both machines: a comment, then the current key (32 random bytes)."""
    path = tmp_path / "quic-secrets"
    path.write_text("# the fleet's QUIC key ring, current key first\n")
    with path.open("a") as file:
        file.write(base64.b64encode(os.urandom(32)).decode() + "\n")
    path.chmod(0o600)
    return str(path)


def ring_fleet(
    spawn: Spawn,
    backend: str,
    tls: DevCertificate,
    tmp_path: Path,
    cleanup: list[Any],
    *extra: str,
) -> tuple[Machine, Machine, QuicLbRouter, asyncio.AbstractEventLoop]:
    """A and B sharing one key ring (plus ``extra``) behind a router, and an event loop
    for the test's clients; the router and the loop go into ``cleanup``."""
    secrets = secrets_file(tmp_path)
    a, b = machines(spawn, backend, tls, "--quic-secrets-file", secrets, *extra)
    router = router_for(a, b)
    cleanup.append(router)
    loop = asyncio.new_event_loop()
    cleanup.append(loop)
    return a, b, router, loop


def test_resumption_0rtt_and_stateless_reset_across_machines(
    spawn: Spawn,
    backend: str,
    tls_files: DevCertificate,
    tmp_path: Path,
    fleet_cleanup: list[Any],
) -> None:
    a, b, router, loop = ring_fleet(
        spawn, backend, tls_files, tmp_path, fleet_cleanup, "--quic-0rtt"
    )
    cafile = str(tls_files.ca_certfile)

    # b. A ticket issued by one machine resumes, with a 0-RTT request, on the other.
    for issuer, other in ((a, b), (b, a)):
        router.steer_new(issuer.server_id)
        first = loop.run_until_complete(
            h3_fetch_async(router.port, [H3Request("/pid")], cafile=cafile)
        )
        assert first.session_ticket is not None
        assert owner((a, b), _pid(first.responses[0].body)) is issuer
        router.steer_new(other.server_id)
        second = loop.run_until_complete(
            h3_fetch_async(
                router.port,
                [H3Request("/pid")],
                cafile=cafile,
                session_ticket=first.session_ticket,
            )
        )
        assert second.resumed and second.early_data_accepted, (issuer, second)
        assert second.responses[0].status == 200
        assert owner((a, b), _pid(second.responses[0].body)) is other

    # d. A dies; the balancer marks it down and sends its connections' packets to B, whose
    # stateless reset (the same key ring derives the same token) ends them at once.
    router.steer_new(a.server_id)
    client, closed_after = loop.run_until_complete(_reset_by_the_other_machine(router, a, cafile))
    assert client.stateless_reset_at is not None
    assert closed_after < 5.0, closed_after  # the idle timeout would be 30 s
    assert router.decisions[("failover", b.server_id)] > 0
    assert "Traceback" not in b.server.stderr


async def _reset_by_the_other_machine(
    router: QuicLbRouter, a: Machine, cafile: str
) -> tuple[H3Client, float]:
    from aioquic.asyncio.client import connect

    from clientkit.h3 import client_configuration

    async with connect(
        "127.0.0.1",
        router.port,
        configuration=client_configuration(cafile),
        create_protocol=H3Client,
    ) as client:
        assert isinstance(client, H3Client)
        response = await asyncio.wait_for(client.request(H3Request("/pid"), "localhost"), 10)
        assert _pid(response.body) in a.pids
        a.kill()
        router.mark_down(a.server_id)
        started = time.monotonic()
        request = asyncio.ensure_future(client.request(H3Request("/pid"), "localhost"))
        await asyncio.wait_for(client.wait_closed(), 10)
        closed_after = time.monotonic() - started
        with pytest.raises(ConnectionError, match="stateless reset"):
            await asyncio.wait_for(request, 5)  # ended by the reset, not answered
        return client, closed_after


def test_a_retry_token_from_one_machine_is_accepted_by_the_other(
    spawn: Spawn,
    backend: str,
    tls_files: DevCertificate,
    tmp_path: Path,
    fleet_cleanup: list[Any],
) -> None:
    a, b, router, loop = ring_fleet(
        spawn, backend, tls_files, tmp_path, fleet_cleanup, "--quic-retry", "always"
    )
    cafile = str(tls_files.ca_certfile)
    for issuer, other in ((a, b), (b, a)):
        router.steer_new(issuer.server_id)  # the first Initial: a Retry from the issuer
        router.steer_tokens(other.server_id)  # the Initial with its token: the other one
        before = router.decisions[("token", other.server_id)]
        result = loop.run_until_complete(
            h3_fetch_async(router.port, [H3Request("/pid")], cafile=cafile)
        )
        assert result.retry_seen
        assert router.decisions[("token", other.server_id)] > before
        assert owner((a, b), _pid(result.responses[0].body)) is other


def _answer(body: bytes) -> dict[str, Any]:
    """The app's JSON answer (``tests/worker_apps.py``: pid, client, early)."""
    import json

    answer: dict[str, Any] = json.loads(body)
    return answer


def _pid(body: bytes) -> int:
    return int(_answer(body)["pid"])


# -- the Kubernetes recipe ------------------------------------------------------------------


def test_the_kubernetes_recipe_names_one_port_for_tcp_and_udp() -> None:
    documents = list(yaml.safe_load_all((ROOT / "docs" / "kubernetes.yaml").read_text()))
    kinds = {doc["kind"]: doc for doc in documents}
    assert set(kinds) == {"Deployment", "Service"}
    service, deployment = kinds["Service"], kinds["Deployment"]
    ports = {(p["protocol"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {("TCP", 443, "https"), ("UDP", 443, "quic")}
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    container_ports = {(p["name"], p["protocol"], p["containerPort"]) for p in container["ports"]}
    assert container_ports == {("https", "TCP", 8443), ("quic", "UDP", 8443)}
    args = container["args"]
    assert args[args.index("--quic-bind") + 1] == "0.0.0.0:8443"
    # The AWS controller injects the server ID into the containers the pod annotation
    # names; the Service's QUIC port makes the TCP+UDP listener a TCP_QUIC one.
    names = pod["metadata"]["annotations"][f"{AWS_ANNOTATION}-quic-enabled-containers"]
    assert container["name"] in [name.strip() for name in names.split(",")]
    annotations = service["metadata"]["annotations"]
    assert annotations[f"{AWS_ANNOTATION}-quic-enabled-ports"] == "443"
    assert annotations[f"{AWS_ANNOTATION}-enable-tcp-udp-listener"] == "true"
    assert annotations[f"{AWS_ANNOTATION}-disable-nlb-sg"] == "true"
    # Health checks over HTTP on the TCP port; drain longer than the balancer's delay.
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == "https"
    pre_stop = container["lifecycle"]["preStop"]
    assert pre_stop["sleep"]["seconds"] > 0
    graceful = float(args[args.index("--graceful-timeout") + 1])
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace > pre_stop["sleep"]["seconds"] + graceful
    # alt-svc names the Service's UDP port: what a browser reaches, not the container's.
    (udp_port,) = [p["port"] for p in service["spec"]["ports"] if p["protocol"] == "UDP"]
    alt_svc = args[args.index("--alt-svc") + 1]
    assert re.fullmatch(rf'h3=":{udp_port}"; ma=\d+', alt_svc), alt_svc
    # One key ring for every pod, read from the mounted Secret.
    ring = PurePosixPath(args[args.index("--quic-secrets-file") + 1])
    mounts = {m["name"]: PurePosixPath(m["mountPath"]) for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    (mount,) = [name for name, path in mounts.items() if ring.parent == path]
    assert volumes[mount]["secret"]["secretName"] == "quicserve-quic-secrets"
    # Every flag in the recipe is a real quicserve flag.
    flags = {arg for arg in args if arg.startswith("--")}
    assert flags <= set(_all_flags()), flags - set(_all_flags())
    assert re.fullmatch(r"[\w.]+:\w+", args[0])  # the app comes first


def _all_flags() -> list[str]:
    from quicserve.cli import build_parser

    return [flag for action in build_parser()._actions for flag in action.option_strings]


@pytest.mark.client("nginx")
def test_the_nginx_recipe_passes_nginx_t(tmp_path: Path) -> None:
    recipe = (ROOT / "docs" / "nginx-quicserve.conf").read_text()
    assert "hash $remote_addr consistent;" in recipe  # the client IP, not IP and port
    module = Path("/usr/lib/nginx/modules/ngx_stream_module.so")  # Debian: a dynamic module
    prefix = f"load_module {module};\n" if module.exists() else ""
    config = tmp_path / "nginx.conf"
    config.write_text(prefix + recipe)
    directives = f"pid {tmp_path}/nginx.pid; error_log stderr;"
    result = subprocess.run(
        ["nginx", "-t", "-c", str(config), "-p", str(tmp_path), "-g", directives],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


# -- the nginx recipe with live traffic -------------------------------------------------------


def free_tcp_and_udp_port() -> int:
    """A loopback port free for both TCP and UDP right now (nginx listens on both)."""
    for _ in range(50):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no port free for both TCP and UDP")


class Nginx:
    """nginx in the foreground on ``config`` (its own prefix, pid file and stderr log),
    stopped by its PID."""

    def __init__(self, config: str, prefix: Path, port: int) -> None:
        path = prefix / "nginx.conf"
        module = Path("/usr/lib/nginx/modules/ngx_stream_module.so")  # Debian: dynamic
        path.write_text((f"load_module {module};\n" if module.exists() else "") + config)
        directives = f"daemon off; pid {prefix}/nginx.pid; error_log stderr notice;"
        self.log = prefix / "nginx.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                ["nginx", "-c", str(path), "-p", str(prefix), "-g", directives],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

        def serving() -> bool:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                return False
            return True

        wait_until(serving, 10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def nginx_recipe(port: int, a: Machine, b: Machine) -> str:
    """docs/nginx-quicserve.conf with loopback addresses: nginx on ``port``, A and B as the
    two upstream machines (the recipe's 10.0.0.11 and 10.0.0.12, UDP upstream first, then
    TCP: on a test machine, port 0 gives each its own TCP port)."""
    recipe = (ROOT / "docs" / "nginx-quicserve.conf").read_text()
    replacements = [
        ("listen 443 udp reuseport;", f"listen 127.0.0.1:{port} udp reuseport;"),
        ("listen 443;", f"listen 127.0.0.1:{port};"),
    ]
    for machine, address in ((a, "10.0.0.11"), (b, "10.0.0.12")):
        old = f"server {address}:8443;"
        assert recipe.count(old) == 2, old
        replacements.append((old, f"server 127.0.0.1:{machine.port};"))  # quicserve_quic
        tcp = machine.server.port("https")
        replacements.append((old, f"server 127.0.0.1:{tcp};"))  # quicserve_tcp
    for old, new in replacements:
        assert old in recipe, old
        recipe = recipe.replace(old, new, 1)
    return recipe


@pytest.mark.client("nginx")
def test_the_nginx_recipe_carries_https_and_http3_to_both_machines(
    spawn: Spawn,
    backend: str,
    tls_files: DevCertificate,
    tmp_path: Path,
    fleet_cleanup: list[Any],
) -> None:
    """The recipe, run: nginx passes TLS (TCP) and QUIC (UDP) through to A and B, which
    advertise nginx's port in alt-svc as the recipe says. Clients from different loopback
    addresses (127.0.0.N) reach both machines, each address always the same one; a
    connection that moves to a new port keeps its machine (the hash is of the address
    only), and one that moves to an address hashed to the other machine is ended at once
    by that machine's stateless reset (one key ring), not by the 30 s idle timeout."""
    import httpx

    from clientkit.h3 import connect_from, migrate

    port = free_tcp_and_udp_port()
    alt_svc = f'h3=":{port}"; ma=86400'
    secrets = secrets_file(tmp_path)
    a, b = machines(spawn, backend, tls_files, "--quic-secrets-file", secrets, "--alt-svc", alt_svc)
    fleet_cleanup.append(Nginx(nginx_recipe(port, a, b), tmp_path, port))
    cafile = str(tls_files.ca_certfile)

    # HTTPS through nginx's TCP pass-through: HTTP/2 from a machine, alt-svc names nginx.
    with httpx.Client(verify=client_ssl_context(tls_files), http2=True, timeout=10) as https:
        response = https.get(f"https://127.0.0.1:{port}/pid")
    assert response.status_code == 200 and response.http_version == "HTTP/2"
    assert response.headers["alt-svc"] == alt_svc
    assert owner((a, b), response.json()["pid"]) in (a, b)

    loop = asyncio.new_event_loop()
    fleet_cleanup.append(loop)

    async def pid_from(ipv4: str) -> int:
        async with connect_from(ipv4, port, cafile) as client:
            return _pid((await client.request(H3Request("/pid"), "localhost")).body)

    # HTTP/3 through nginx's UDP pass-through, hashed by client address.
    machine_of: dict[str, Machine] = {}
    for n in range(2, 60):
        ipv4 = f"127.0.0.{n}"
        machine_of[ipv4] = owner((a, b), loop.run_until_complete(pid_from(ipv4)))
        if len(machine_of) >= 6 and len(set(machine_of.values())) == 2:
            break
    assert set(machine_of.values()) == {a, b}, "the client addresses did not spread"
    ipv4 = next(iter(machine_of))
    assert owner((a, b), loop.run_until_complete(pid_from(ipv4))) is machine_of[ipv4]
    (elsewhere,) = [ip for ip, m in machine_of.items() if m is not machine_of[ipv4]][:1]

    async def move_twice() -> tuple[dict[str, Any], dict[str, Any], H3Client]:
        async with connect_from(ipv4, port, cafile) as client:
            before = _answer((await client.request(H3Request("/pid"), "localhost")).body)
            await migrate(client, ipv4)  # a new port: nginx opens a new upstream socket
            # Once the machine has validated the new path, requests report its address.
            for _ in range(40):
                after = _answer((await client.request(H3Request("/pid"), "localhost")).body)
                if after["client"] != before["client"]:
                    break
                await asyncio.sleep(0.05)
            await migrate(client, elsewhere)  # a new address: hashed to the other machine
            with pytest.raises(ConnectionError, match="stateless reset"):
                await asyncio.wait_for(client.request(H3Request("/pid"), "localhost"), 5)
            return before, after, client

    before, after, client = loop.run_until_complete(move_twice())
    assert after["pid"] == before["pid"]
    assert owner((a, b), before["pid"]) is machine_of[ipv4]
    # The machine saw the connection come from a new address (nginx's new upstream
    # socket), so the connection really migrated and was kept.
    assert after["client"] != before["client"]
    assert client.stateless_reset_at is not None
    for machine in (a, b):
        assert "Traceback" not in machine.server.stderr
