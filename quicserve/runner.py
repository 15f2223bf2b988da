"""Running a server in this process: dev defaults, logging, the event loop, signals.

Both the command line (``cli.py``) and the programmatic API (``api.py``) start servers
through here, so neither imports the other.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import logging.config
import os
import signal
import sys
import tomllib
from typing import TYPE_CHECKING, Any

import anyio

from .config import Config, ConfigError
from .server import Server
from .streams.wsengine import EngineUnavailable, engine_name
from .tls import ServerTLS
from .transport.sockets import systemd_binds
from .types import ASGIApp

if TYPE_CHECKING:
    from .worker import WorkerLink

logger = logging.getLogger("quicserve.error")

DEV_BIND = "127.0.0.1:8443"
TRACE = 5


class UsageError(Exception):
    """A command-line problem; printed as one line."""


def apply_dev_defaults(config: Config) -> Config:
    """Fill in what a person left out.

    * systemd socket activation (``LISTEN_PID``/``LISTEN_FDS``): stream sockets are added
      as ``fd://N`` to ``--bind`` (with a certificate) or ``--insecure-bind``, datagram
      sockets to ``--quic-bind``.
    * ``--quic-bind`` without ``--bind``: TLS on the same TCP ports, because browsers start
      on TCP and learn about HTTP/3 from ``alt-svc`` (not for inherited ``fd://`` sockets:
      there is no TCP socket to go with them).
    * No bind and no certificate at all: HTTP/3, HTTP/2 and HTTP/1.1 on 127.0.0.1:8443
      with a development certificate made on first use.
    """
    streams, datagrams = systemd_binds()
    if streams or datagrams:
        logger.info("systemd socket activation: %s", ", ".join(streams + datagrams))
        if config.certfile is not None:
            config = dataclasses.replace(config, bind=config.bind + tuple(streams))
        else:
            config = dataclasses.replace(
                config, insecure_bind=config.insecure_bind + tuple(streams)
            )
        config = dataclasses.replace(config, quic_bind=config.quic_bind + tuple(datagrams))
    if config.quic_bind and not config.bind and not streams:
        tcp = tuple(b for b in config.quic_bind if not b.startswith("fd://"))
        if tcp:
            config = dataclasses.replace(config, bind=tcp)
    if config.bind or config.insecure_bind or config.quic_bind:
        return config
    if config.certfile is not None:
        return dataclasses.replace(config, bind=(DEV_BIND,), quic_bind=(DEV_BIND,))
    from .certs import ensure_dev_certificate, trust_instructions

    cert = ensure_dev_certificate()
    if cert.created:
        logger.info("Created a development CA and certificate.\n%s", trust_instructions(cert))
    else:
        logger.info(
            "Using the development certificate %s (CA: %s; 'quicserve certs' for how to trust it)",
            cert.certfile,
            cert.ca_certfile,
        )
    return dataclasses.replace(
        config,
        bind=(DEV_BIND,),
        quic_bind=(DEV_BIND,),
        certfile=str(cert.certfile),
        keyfile=str(cert.keyfile),
    )


def configure_logging(config: Config) -> None:
    """Log to stderr at ``--log-level``; the access log can be switched off alone.

    With ``--log-config`` the file (a ``logging.config.dictConfig`` dict, JSON or TOML by
    its extension) replaces all of this: it owns the ``quicserve.error`` and
    ``quicserve.access`` loggers, their levels and handlers."""
    logging.addLevelName(TRACE, "TRACE")
    if config.log_config is not None:
        load_log_config(config.log_config)
        return
    level = TRACE if config.log_level == "trace" else getattr(logging, config.log_level.upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
    for name in ("quicserve.error", "quicserve.access"):
        log = logging.getLogger(name)
        log.handlers[:] = [handler]
        log.setLevel(level)
        log.propagate = False
    if not config.access_log:
        logging.getLogger("quicserve.access").setLevel(logging.WARNING)


def load_log_config(path: str) -> None:
    """Apply a dictConfig file; every problem is a one-line :class:`ConfigError`."""
    try:
        with open(path, "rb") as file:
            raw = file.read()
        if path.endswith(".toml"):
            settings = tomllib.loads(raw.decode("utf-8"))
        else:
            settings = json.loads(raw)
        if not isinstance(settings, dict):
            raise ConfigError(f"--log-config {path}: expected a dictConfig mapping")
        settings.setdefault("version", 1)
        settings.setdefault("disable_existing_loggers", False)
        logging.config.dictConfig(settings)
    except ConfigError:
        raise
    except OSError as exc:
        raise ConfigError(f"--log-config: cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, TypeError, AttributeError, ImportError, UnicodeDecodeError) as exc:
        # json/tomllib decode errors are ValueErrors; dictConfig raises ValueError too.
        message = " ".join(str(exc).split())
        raise ConfigError(f"--log-config {path}: {message}") from None


async def _run_server(server: Server) -> None:
    async with anyio.create_task_group() as tg:

        async def watch_signals() -> None:
            # SIGHUP reloads in place (systemd's ExecReload=kill -HUP $MAINPID; a worker's
            # own PID); without a receiver its default action would kill the process.
            with anyio.open_signal_receiver(
                signal.SIGINT, signal.SIGTERM, signal.SIGHUP
            ) as signals:
                count = 0
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        logger.info("Received SIGHUP: reloading in place")
                        server.reload()
                        continue
                    count += 1
                    if count == 1:
                        logger.info(
                            "Received %s: shutting down gracefully (again to force)",
                            signal.Signals(signum).name,
                        )
                        server.shutdown()
                    else:
                        logger.warning(
                            "Received %s again: stopping now", signal.Signals(signum).name
                        )
                        tg.cancel_scope.cancel()
                        return

        tg.start_soon(watch_signals)
        if server.worker is None:
            await server.serve()
        else:
            await tg.start(server.serve)
            server.worker.send(ready=True, pid=os.getpid())
            async with anyio.create_task_group() as link:
                link.start_soon(server.worker.serve, server)
                await server.wait_stopped()
                link.cancel_scope.cancel()
        tg.cancel_scope.cancel()


def run(
    app: ASGIApp, config: Config, worker: WorkerLink | None = None, tls: ServerTLS | None = None
) -> None:
    """Serve ``app`` with ``config`` on the configured backend until SIGINT/SIGTERM
    (SIGHUP: :meth:`Server.reload`; ``tls``: certificates already loaded, before
    ``--user`` dropped root)."""
    server = Server(app, config, worker, tls)
    backend = "trio" if config.backend == "trio" else "asyncio"
    options: dict[str, Any] = {}
    if config.backend == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            raise UsageError(
                "--backend uvloop needs uvloop: pip install 'quicserve[uvloop]'"
            ) from None
        options["use_uvloop"] = True
    try:
        # An engine that cannot run stops us here, not at the first WebSocket.
        logger.debug("WebSocket framing: %s", engine_name(config.ws_engine))
    except EngineUnavailable as exc:
        raise UsageError(str(exc)) from None
    try:
        anyio.run(_run_server, server, backend=backend, backend_options=options)
    except BaseExceptionGroup as group:
        # Task groups wrap the one error that stopped the server; show that one.
        raise _single_cause(group) from None


def _single_cause(group: BaseExceptionGroup[BaseException]) -> BaseException:
    leaves: list[BaseException] = []

    def collect(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for sub in exc.exceptions:
                collect(sub)
        else:
            leaves.append(exc)

    collect(group)
    return leaves[0] if len(leaves) == 1 else group
