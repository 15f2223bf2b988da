"""Server.serve(): one anyio task group running the endpoints, lifespan and graceful shutdown.

Order of events:

1. TLS is loaded once (``tls.build_server_tls``) and every endpoint is bound; a bad
   certificate or a busy address stops here;
2. lifespan startup (a failure closes the sockets before anything was accepted);
3. ``task_status.started`` reports the bound addresses, so tests and embedders can
   ``await tg.start(server.serve)`` and learn the ports;
4. connections are served until :meth:`Server.shutdown` is called (the CLI calls it on
   SIGINT/SIGTERM); :meth:`Server.reload` (SIGHUP) reloads the certificate meanwhile, for
   new connections only;
5. shutdown: stop accepting, ask every registered connection to close gracefully (GOAWAY
   on HTTP/2, close idle keep-alives), wait up to ``graceful_timeout`` for in-flight
   requests, then cancel what is left; finally lifespan shutdown.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from .addresses import parse_unix_mode
from .app import Lifespan, prepare_app
from .config import Config
from .connection.bytestream import serve_connection
from .connection.context import ServerContext, default_response_headers
from .connection.quic import QuicListener
from .daemon import remove_pid_file, write_pid_file
from .metrics import MetricsEndpoint
from .quic.keyring import KeyRing
from .registry import ConnectionRegistry
from .secretsfile import SecretsFileError, read_key_file
from .stats import RequestStats
from .tls import (
    ServerTLS,
    TLSConfigError,
    build_server_tls,
    describe_certificate,
    reload_server_tls,
)
from .transport.tcp import TCPEndpoint, accept_loop, open_tcp_endpoints
from .transport.udp import open_udp_socket
from .types import ASGIApp

if TYPE_CHECKING:
    from .worker import WorkerLink

logger = logging.getLogger("quicserve.error")


@dataclass(frozen=True, slots=True)
class BoundAddress:
    """One endpoint the server listens on."""

    transport: str  # "tcp", "unix" or "udp"
    scheme: str  # "http", "https"
    host: str
    port: int

    def url(self) -> str:
        """A URL for this endpoint, for logs (``unix:/path`` for a Unix socket)."""
        if self.transport == "unix":
            return f"unix:{self.host}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(slots=True)
class Server:
    """A quicserve server for one app and one :class:`Config`."""

    app: ASGIApp
    config: Config
    #: Set in a worker process started by the supervisor (``--workers``).
    worker: WorkerLink | None = None
    #: Certificates loaded before the process gave up root (``--user``); else loaded
    #: by :meth:`serve`.
    tls: ServerTLS | None = None
    registry: ConnectionRegistry = field(init=False)
    addresses: list[BoundAddress] = field(default_factory=list, init=False)
    _shutdown_requested: anyio.Event | None = field(default=None, init=False)
    _shutdown_early: bool = field(default=False, init=False)
    _quic_listeners: list[QuicListener] = field(default_factory=list, init=False)
    #: The --metrics-bind listener, once bound.
    metrics: MetricsEndpoint | None = field(default=None, init=False)
    _stopped: anyio.Event | None = field(default=None, init=False)
    #: The --quic-secrets-file ring, once loaded (shared by every QUIC listener).
    key_ring: KeyRing | None = field(default=None, init=False)
    #: The ``--pid-file`` this server wrote, removed when it stops.
    _pid_file: str | None = field(default=None, init=False)
    #: What TLS the endpoints use now (replaced by :meth:`reload`), and the TCP endpoints.
    _tls: ServerTLS | None = field(default=None, init=False)
    _tcp_endpoints: list[TCPEndpoint] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.registry = ConnectionRegistry(self.config.max_connections)
        if self.config.metrics_bind is not None or (self.worker and self.worker.metrics):
            self.registry.request_stats = RequestStats()
        # --interface and middleware such as --proxy-headers, for every way in.
        self.app = prepare_app(self.app, self.config)

    def quic_stats(self) -> dict[str, int]:
        """Datagram counters summed over the QUIC endpoints (for tests and reports)."""
        totals: dict[str, int] = {}
        for endpoint in self._quic_listeners:
            for name, value in endpoint.stats.items():
                totals[name] = totals.get(name, 0) + value
            for name, core_value in endpoint.core.stats().items():
                if isinstance(core_value, int):
                    totals[name] = totals.get(name, 0) + core_value
            totals["gso_enabled"] = totals.get("gso_enabled", 0) + int(endpoint.gso_enabled)
        return totals

    async def wait_stopped(self) -> None:
        """Wait until :meth:`serve` has returned (or failed)."""
        if self._stopped is None:
            self._stopped = anyio.Event()
        await self._stopped.wait()

    def reload_secrets(self) -> None:
        """Re-read ``--quic-secrets-file`` into the ring every listener shares."""
        path = self.config.quic_secrets_file
        if path is None or self.key_ring is None:
            return
        try:
            self.key_ring.replace(read_key_file(path))
        except SecretsFileError as exc:
            logger.error("Reload: %s; keeping the %d key(s) loaded before", exc, len(self.key_ring))
            return
        logger.info(
            "Reloaded %d key(s) from %s (current key id %s)",
            len(self.key_ring),
            path,
            self.key_ring.current.key_id.hex(),
        )

    def handover(self) -> None:
        """A worker's successor has taken over its sockets: stop reading them (datagrams
        of our connections are forwarded to us now) and shut down gracefully."""
        for endpoint in self._quic_listeners:
            endpoint.stop_reading()
        self.shutdown()

    def reload(self) -> None:
        """Reload what can change in place (SIGHUP to a single process or to a worker).

        Each part re-reads its files for NEW connections, logs one line, and on a problem
        logs one error and keeps what it had: the server never stops for a bad file, and
        open connections are never touched. One line per part below."""
        self._reload_certificate()
        self.reload_secrets()

    def _reload_certificate(self) -> None:
        current, certfile = self._tls, self.config.certfile
        if current is None or certfile is None or (not current.ssl_context and not current.quic):
            logger.info("Reload: no certificate in use (yet), nothing to reload")
            return
        try:
            tls = reload_server_tls(self.config, current)
        except TLSConfigError as exc:
            logger.error("Certificate reload failed, still using the old one: %s", exc)
            return
        for endpoint in self._tcp_endpoints:
            if endpoint.ssl_context is not None:
                endpoint.ssl_context, endpoint.tls_info = tls.ssl_context, tls.tls_info
        if tls.quic is not None:
            for listener in self._quic_listeners:
                listener.use_certificate(tls.quic)
        self._tls = tls
        logger.info("Certificate reloaded for new connections: %s", describe_certificate(certfile))

    def shutdown(self) -> None:
        """Begin a graceful shutdown (safe to call more than once, from any task)."""
        if self._shutdown_requested is None:
            self._shutdown_early = True
        else:
            self._shutdown_requested.set()

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[list[BoundAddress]] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until :meth:`shutdown`; see the module docstring for the order of events."""
        if self._stopped is None:
            self._stopped = anyio.Event()
        try:
            await self._serve(task_status)
        finally:
            if self._pid_file is not None:
                remove_pid_file(self._pid_file, os.getpid())
                self._pid_file = None
            self._stopped.set()

    async def _serve(self, task_status: anyio.abc.TaskStatus[list[BoundAddress]]) -> None:
        config = self.config
        self._shutdown_requested = anyio.Event()
        if self._shutdown_early:
            self._shutdown_requested.set()
        # Certificate and secrets-file problems surface here, before anything is bound.
        if config.quic_secrets_file is not None:
            self.key_ring = KeyRing(read_key_file(config.quic_secrets_file))
            logger.info(
                "Loaded %d key(s) from %s (current key id %s)",
                len(self.key_ring),
                config.quic_secrets_file,
                self.key_ring.current.key_id.hex(),
            )
        context = ServerContext(
            config=config,
            app=self.app,
            registry=self.registry,
            worker=self.worker,
            key_ring=self.key_ring,
            default_headers=default_response_headers(config),
        )
        context.default_names = frozenset([name for name, _ in context.default_headers] + [b"date"])
        tls = self.tls if self.tls is not None else build_server_tls(config)
        tcp_endpoints = await self._open_tcp_endpoints(tls)
        self._tls, self._tcp_endpoints = tls, tcp_endpoints
        udp_sockets = []
        try:
            for bind in config.quic_bind:
                udp_sockets.append(open_udp_socket(bind))
            if config.metrics_bind is not None:
                self.metrics = MetricsEndpoint(config.metrics_bind, self)
        except BaseException:
            for endpoint in tcp_endpoints:
                await endpoint.listener.aclose()
            for sock in udp_sockets:
                sock.close()
            raise
        quic_listeners = (
            [QuicListener(sock, context, tls.quic) for sock in udp_sockets] if tls.quic else []
        )
        self._quic_listeners = quic_listeners
        self.addresses += [BoundAddress("udp", "https", *e.address) for e in quic_listeners]
        context.alt_svc = alt_svc_value(config, quic_listeners)
        async with anyio.create_task_group() as root:
            lifespan = Lifespan(self.app, config)
            try:
                await lifespan.startup(root)
            except BaseException:
                for endpoint in tcp_endpoints:
                    await endpoint.listener.aclose()
                for quic in quic_listeners:
                    quic.close()
                if self.metrics is not None:
                    self.metrics.close()
                root.cancel_scope.cancel()
                raise
            context.lifespan_state = lifespan.state if lifespan.supported else None
            try:
                await self._serve_endpoints(context, tcp_endpoints, quic_listeners, task_status)
            finally:
                with anyio.CancelScope(shield=True):
                    await lifespan.shutdown()
                root.cancel_scope.cancel()

    async def _open_tcp_endpoints(self, tls: ServerTLS) -> list[TCPEndpoint]:
        config = self.config
        endpoints: list[TCPEndpoint] = []
        ssl_context, tls_info = tls.ssl_context, tls.tls_info
        mode = parse_unix_mode(config.unix_socket_mode)
        try:
            for bind in config.bind:
                endpoints.extend(
                    open_tcp_endpoints(
                        bind, ssl_context, tls_info, unix_mode=mode, backlog=config.backlog
                    )
                )
            for bind in config.insecure_bind:
                endpoints.extend(
                    open_tcp_endpoints(bind, None, None, unix_mode=mode, backlog=config.backlog)
                )
        except BaseException:
            for endpoint in endpoints:
                await endpoint.listener.aclose()
            raise
        self.addresses = [
            BoundAddress(
                "unix" if e.listener.is_unix else "tcp",
                "https" if e.ssl_context else "http",
                *e.address,
            )
            for e in endpoints
        ]
        return endpoints

    async def _serve_endpoints(
        self,
        context: ServerContext,
        tcp_endpoints: list[TCPEndpoint],
        quic_listeners: list[QuicListener],
        task_status: anyio.abc.TaskStatus[list[BoundAddress]],
    ) -> None:
        assert self._shutdown_requested is not None
        async with anyio.create_task_group() as connections:
            # QUIC endpoints keep reading during the drain (in-flight HTTP/3 requests
            # need their ACKs); they only stop accepting new connections.
            for quic in quic_listeners:
                connections.start_soon(quic.serve, connections)
            async with anyio.create_task_group() as acceptors:
                for endpoint in tcp_endpoints:
                    acceptors.start_soon(
                        accept_loop,
                        endpoint,
                        self.registry,
                        connections,
                        functools.partial(serve_connection, context=context),
                    )
                for address in self.addresses:
                    logger.info("Listening on %s (%s)", address.url(), address.transport.upper())
                if quic_listeners and context.config.quic_lb_server_id:
                    logger.info(
                        "QUIC-LB server ID %s (%d-byte connection IDs)",
                        context.config.quic_lb_server_id.lower(),
                        quic_listeners[0].configuration.connection_id_length,
                    )
                if self.metrics is not None:
                    acceptors.start_soon(self.metrics.serve)
                    logger.info("Metrics on %s", self.metrics.url())
                pid_file = self.config.pid_file
                if pid_file is not None and self.worker is None:
                    # Once it serves: a pid file is how a service manager learns it is up.
                    write_pid_file(pid_file, os.getpid())
                    self._pid_file = pid_file
                task_status.started(list(self.addresses))
                await self._shutdown_requested.wait()
                acceptors.cancel_scope.cancel()
            for endpoint in tcp_endpoints:
                with anyio.CancelScope(shield=True):
                    await endpoint.listener.aclose()
            if self.metrics is not None:
                self.metrics.close()
            for quic in quic_listeners:
                quic.shutdown()
            open_count = len(self.registry)
            if open_count:
                logger.info("Shutting down: waiting for %d connection(s)", open_count)
            self.registry.shutdown_all()
            with anyio.move_on_after(self.config.graceful_timeout) as grace:
                await self.registry.wait_empty()
            if grace.cancelled_caught:
                logger.warning(
                    "Graceful timeout: cancelling %d connection(s) still open: %s",
                    len(self.registry),
                    ", ".join(
                        f"{c['protocol']} from {c['client']} ({c['open_streams']} streams)"
                        for c in self.registry.snapshot()
                    ),
                )
            connections.cancel_scope.cancel()
        for quic in quic_listeners:
            quic.close()
        logger.info("Server stopped")


def alt_svc_value(config: Config, quic_listeners: list[QuicListener]) -> bytes | None:
    """The ``alt-svc`` header for TLS responses (RFC 7838): the first QUIC port, unless
    ``--alt-svc`` overrides it (a public port behind NAT) or turns it ``off``."""
    if config.alt_svc is not None:
        return None if config.alt_svc == "off" else config.alt_svc.encode("latin-1")
    if not quic_listeners:
        return None
    return b'h3=":%d"; ma=86400' % quic_listeners[0].address[1]
