"""The command line: ``quicserve APP [options]`` and ``quicserve certs``.

The parser is built from :class:`~quicserve.config.Config`'s fields, so each flag maps 1:1
to a field (``--keep-alive-timeout`` -> ``keep_alive_timeout``) and its help is the
field's. Flags a person did not give stay unset, so :func:`quicserve.config.resolve` can
fill them from ``QUICSERVE_*`` variables and the ``--config`` file (command line > env >
file > defaults). Errors a person can act on (bad flag value, bad setting in the file or
environment, missing certificate, port in use, app that cannot be imported, lifespan
failure) print one line on stderr and exit non-zero. ``--reload`` hands the whole command
line to :mod:`quicserve.reload`, which runs it again in a child process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import logging.config
import os
import signal
import sys
import tomllib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio

from . import __version__
from .app import AppLoadError, LifespanFailure, load_app
from .config import Config, ConfigError, config_fields, resolve
from .server import Server
from .tls import TLSConfigError
from .transport.sockets import systemd_binds
from .transport.tcp import BindError
from .types import ASGIApp

if TYPE_CHECKING:
    from .worker import WorkerLink

logger = logging.getLogger("quicserve.error")

DEV_BIND = "127.0.0.1:8443"
TRACE = 5


class UsageError(Exception):
    """A command-line problem; printed as one line."""


def build_parser() -> argparse.ArgumentParser:
    """The ``quicserve APP`` parser, one flag per :class:`Config` field."""
    parser = argparse.ArgumentParser(
        prog="quicserve",
        description=(
            "Serve an ASGI app over HTTP/3, HTTP/2 and HTTP/1.1. With no --bind and no "
            f"--certfile, serves HTTP/3 (UDP) and TLS (TCP) on {DEV_BIND} with a development "
            "certificate made on first use. 'quicserve certs' shows where it is."
        ),
    )
    parser.add_argument("app", metavar="APP", help="the ASGI app, as module:attribute")
    parser.add_argument("--version", action="version", version=f"quicserve {__version__}")
    for f in config_fields():
        meta = f.metadata
        if meta.get("cli", True) is False:
            continue
        flag = "--" + f.name.replace("_", "-")
        # Unset flags stay out of the namespace (SUPPRESS), so the environment and the
        # config file can fill them; the default is shown in the help instead.
        kwargs: dict[str, Any] = {
            "dest": f.name,
            "help": meta.get("help", ""),
            "default": argparse.SUPPRESS,
        }
        type_name = str(f.type)
        if type_name == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif type_name.startswith("tuple["):
            kwargs["action"] = "append"
        elif type_name.startswith("int"):
            kwargs["type"] = int
        elif type_name.startswith("float"):
            kwargs["type"] = float
        if "choices" in meta:
            kwargs["choices"] = meta["choices"]
        if "metavar" in meta:
            kwargs["metavar"] = meta["metavar"]
        if f.default not in (None, (), ""):
            kwargs["help"] += f" (default: {f.default})".replace("%", "%%")
        parser.add_argument(flag, **kwargs)
    return parser


def config_from_args(argv: Sequence[str], environ: dict[str, str] | None = None) -> Config:
    """Parse ``argv`` into a :class:`Config`, layered over ``QUICSERVE_*`` variables and
    the ``--config`` file (argparse exits on usage errors; bad settings raise
    :class:`~quicserve.config.ConfigError`)."""
    namespace = build_parser().parse_args(argv)
    given: dict[str, Any] = {"app": namespace.app}
    for f in config_fields():
        if hasattr(namespace, f.name):
            value = getattr(namespace, f.name)
            given[f.name] = tuple(value) if str(f.type).startswith("tuple[") else value
    return resolve(given, environ)


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
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                count = 0
                async for signum in signals:
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


def run(app: ASGIApp, config: Config, worker: WorkerLink | None = None) -> None:
    """Serve ``app`` with ``config`` on the configured backend until SIGINT/SIGTERM."""
    server = Server(app, config, worker)
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


def certs_command(argv: Sequence[str]) -> int:
    """``quicserve certs``: make (if needed) and show the development certificate."""
    parser = argparse.ArgumentParser(
        prog="quicserve certs",
        description="Create (on first use) and show the development CA and localhost certificate.",
    )
    parser.add_argument("--data-dir", help="where to keep them (default: per-user data dir)")
    args = parser.parse_args(argv)
    from pathlib import Path

    from .certs import ensure_dev_certificate, trust_instructions

    cert = ensure_dev_certificate(Path(args.data_dir) if args.data_dir else None)
    print(trust_instructions(cert))
    return 0


def _pop_worker_fd(args: list[str]) -> int | None:
    """Remove the supervisor's hidden ``--worker-fd N`` from ``args`` and return N."""
    if "--worker-fd" not in args:
        return None
    at = args.index("--worker-fd")
    value = args[at + 1]
    del args[at : at + 2]
    return int(value)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``quicserve`` command."""
    args = list(sys.argv[1:] if argv is None else argv)
    worker: WorkerLink | None = None
    try:
        if args and args[0] == "certs":
            return certs_command(args[1:])
        worker_fd = _pop_worker_fd(args)
        if worker_fd is not None:
            from .worker import WorkerLink

            worker = WorkerLink.from_fd(worker_fd)
        config = config_from_args(args, dict(os.environ))
        configure_logging(config)
        if config.reload:
            from .reload import run_with_reload

            return run_with_reload(args, config)
        config = apply_dev_defaults(config)
        if config.workers > 1 and worker is None:
            from .supervisor import Supervisor

            return Supervisor(config).run()
        app = load_app(config.app, factory=config.factory, app_dir=config.app_dir)
        run(app, config, worker)
    except (
        UsageError,
        ConfigError,
        AppLoadError,
        TLSConfigError,
        BindError,
        LifespanFailure,
    ) as exc:
        prefix = "lifespan startup failed: " if isinstance(exc, LifespanFailure) else ""
        return _fail(f"{prefix}{exc}", worker)
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        from .certs import CertificateError
        from .supervisor import SupervisorError

        if isinstance(exc, (CertificateError, SupervisorError)):
            return _fail(str(exc), worker)
        raise
    finally:
        if worker is not None:
            worker.close()
    return 0


def _fail(message: str, worker: WorkerLink | None) -> int:
    # A worker reports to its supervisor, which prints the error once for all workers.
    if worker is not None:
        worker.send(error=message)
    else:
        print(f"quicserve: error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
