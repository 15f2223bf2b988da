"""The command line: ``quicserve APP [options]``, ``quicserve certs`` and ``quicserve secrets``.

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
import contextlib
import dataclasses
import logging
import logging.config
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .app import AppLoadError, LifespanFailure, load_app
from .config import Config, ConfigError, config_fields, resolve
from .daemon import (
    EXIT_BOOT_FAILURE,
    EXIT_ERROR,
    Identity,
    check_pid_file,
    drop_privileges,
    load_env_file,
    resolve_identity,
)
from .runner import DEV_BIND, UsageError, apply_dev_defaults, configure_logging, run
from .tls import ServerTLS, TLSConfigError, build_server_tls
from .transport.tcp import BindError
from .version import __version__

if TYPE_CHECKING:
    from .worker import WorkerLink

logger = logging.getLogger("quicserve.error")


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


def certs_command(argv: Sequence[str]) -> int:
    """``quicserve certs [trust|untrust|browser]``: the development certificate, where it is
    trusted, and a browser set up for local HTTP/3."""
    parser = argparse.ArgumentParser(
        prog="quicserve certs",
        description=(
            "Create (on first use) and show the development CA and localhost certificate; "
            "trust it in Firefox, Chromium and the system store, undo that, or open a "
            "browser set up for local HTTP/3."
        ),
    )
    parser.add_argument("--data-dir", help="where to keep them (default: per-user data dir)")
    sub = parser.add_subparsers(dest="action", metavar="{trust,untrust,browser}")
    # --data-dir after the action too; SUPPRESS keeps one given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    stores = argparse.ArgumentParser(add_help=False, parents=[common])
    stores.add_argument(
        "--system",
        action="store_true",
        help="also the system store (Debian/Ubuntu update-ca-certificates; needs root)",
    )
    stores.add_argument(
        "--nss-db",
        action="append",
        default=[],
        metavar="DIR",
        help="also this NSS database directory (repeatable)",
    )
    sub.add_parser(
        "trust",
        parents=[stores],
        help="trust the CA in every Firefox profile (with the pref Firefox needs for "
        "HTTP/3) and in Chromium's NSS database (~/.pki/nssdb)",
    )
    sub.add_parser("untrust", parents=[stores], help="undo 'trust' in the same places")
    browser = sub.add_parser(
        "browser",
        parents=[common],
        help="open a browser set up for local HTTP/3 (a throwaway profile, deleted after)",
    )
    browser.add_argument("kind", choices=("firefox", "chromium"))
    browser.add_argument("--url", default="https://localhost:8443/", help="(default: %(default)s)")
    browser.add_argument("--headless", action="store_true", help="no window (for scripts)")
    args = parser.parse_args(argv)
    from pathlib import Path

    from .certs import ensure_dev_certificate, trust_instructions

    cert = ensure_dev_certificate(Path(args.data_dir) if args.data_dir else None)
    if args.action is None:
        print(trust_instructions(cert))
        return 0
    from . import trust

    if args.action == "browser":
        try:
            return trust.run_browser(args.kind, args.url, cert, headless=args.headless)
        except LookupError as exc:
            print(f"quicserve certs browser: {exc}", file=sys.stderr)
            return 2
    home = Path.home()
    nss_dbs = [Path(d) for d in args.nss_db]
    if args.action == "trust":
        lines = trust.trust(cert, home=home, system=args.system, nss_dbs=nss_dbs)
    else:
        lines = trust.untrust(home=home, system=args.system, nss_dbs=nss_dbs)
    print("\n".join(lines))
    return 1 if any(line.startswith("failed") for line in lines) else 0


def secrets_command(argv: Sequence[str]) -> int:
    """``quicserve secrets new FILE [--keep K]``: rotate a ``--quic-secrets-file``."""
    from .quic.keyring import MAX_KEYS
    from .secretsfile import DEFAULT_KEEP, SecretsFileError, new_key

    parser = argparse.ArgumentParser(
        prog="quicserve secrets",
        description=(
            "Manage the key ring of --quic-secrets-file (session tickets, Retry and "
            "stateless reset tokens shared by every worker and machine)."
        ),
    )
    sub = parser.add_subparsers(dest="action", metavar="{new}", required=True)
    new = sub.add_parser(
        "new",
        help=(
            "put a fresh random key first (creating FILE with mode 0600 if missing, "
            "replacing it atomically), keep at most K keys; then copy FILE to every "
            "machine and send SIGHUP to every quicserve"
        ),
    )
    new.add_argument("file", metavar="FILE")
    new.add_argument(
        "--keep",
        type=int,
        default=DEFAULT_KEEP,
        metavar="K",
        help=f"keys kept, the new one included (1 to {MAX_KEYS}, default {DEFAULT_KEEP})",
    )
    args = parser.parse_args(argv)
    try:
        keys = new_key(args.file, args.keep)
    except SecretsFileError as exc:
        print(f"quicserve secrets: error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.file}: new current key first, {len(keys)} key(s)")
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
    """Entry point of the ``quicserve`` command; returns the exit status (see
    :mod:`quicserve.daemon`: 0, 1, 2 from argparse, 3 when the app cannot boot)."""
    args = list(sys.argv[1:] if argv is None else argv)
    worker: WorkerLink | None = None
    unix_paths: list[str] = []
    try:
        if args and args[0] == "certs":
            return certs_command(args[1:])
        if args and args[0] == "secrets":
            return secrets_command(args[1:])
        worker_fd = _pop_worker_fd(args)
        if worker_fd is not None:
            from .worker import WorkerLink

            worker = WorkerLink.from_fd(worker_fd)
        config = config_from_args(args, dict(os.environ))
        configure_logging(config)
        if config.env_file is not None and worker is None:
            # Before the app is imported; workers inherit the environment. QUICSERVE_*
            # variables in the file count as environment settings.
            load_env_file(config.env_file)
            config = config_from_args(args, dict(os.environ))
            configure_logging(config)
        if config.reload:
            from .reload import run_with_reload

            return run_with_reload(args, config)
        # SIGHUP means "reload" (the runner's receiver, the supervisor's handler); until
        # those are installed (importing the app, starting the loop) its default action
        # would kill the process, so a reload sent at start-up would stop the service.
        signal.signal(signal.SIGHUP, _hup_while_starting)
        identity = resolve_identity(config.user, config.group)
        if config.pid_file is not None and worker is None:
            check_pid_file(config.pid_file)
        config = apply_dev_defaults(config)
        if config.workers > 1 and worker is None:
            from .supervisor import Supervisor

            return Supervisor(config).run()
        tls = None
        if identity is not None:
            config, tls, unix_paths = _drop_privileges(config, identity, worker)
        app = load_app(config.app, factory=config.factory, app_dir=config.app_dir)
        run(app, config, worker, tls)
    except (UsageError, ConfigError, TLSConfigError, BindError) as exc:
        return _fail(str(exc), worker, EXIT_ERROR)
    except AppLoadError as exc:
        return _fail(str(exc), worker, EXIT_BOOT_FAILURE)
    except LifespanFailure as exc:
        return _fail(f"lifespan startup failed: {exc}", worker, EXIT_BOOT_FAILURE)
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        from .certs import CertificateError
        from .supervisor import SupervisorError

        if isinstance(exc, CertificateError):
            return _fail(str(exc), worker, EXIT_ERROR)
        if isinstance(exc, SupervisorError):
            return _fail(str(exc), worker, exc.status)
        raise
    finally:
        if worker is not None:
            worker.close()
        for path in unix_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
    return 0


def _drop_privileges(
    config: Config, identity: Identity, worker: WorkerLink | None
) -> tuple[Config, ServerTLS, list[str]]:
    """``--user``/``--group``: do as root what needs root, then become ``identity``.

    A single process binds its sockets here (port 443) and serves them as ``fd://N``; a
    worker got them from its supervisor. Both read the certificates (often readable by
    root only) and make the qlog directory theirs before the app is imported. Returns the
    config to serve, the loaded TLS and the Unix socket paths to remove on exit."""
    unix_paths: list[str] = []
    if worker is None:
        config, unix_paths = _bind_now(config, identity)
    else:
        # The supervisor made the forwarding directory ours; the link's socket in it was
        # bound as root, and the other workers (no longer root) must be able to send to it.
        from .worker import worker_path

        identity.chown(worker_path(worker.forward_dir, worker.slot, worker.generation))
    tls = build_server_tls(config)
    if config.quic_qlog_dir is not None and os.path.isdir(config.quic_qlog_dir):
        if os.stat(config.quic_qlog_dir).st_uid == os.geteuid():
            identity.chown(config.quic_qlog_dir)
    _import_what_serving_needs(config)
    drop_privileges(identity)
    logger.info("Running as uid %d, gid %d", os.getuid(), os.getgid())
    return config, tls, unix_paths


def _import_what_serving_needs(config: Config) -> None:
    """Import quicserve's modules and the event loop's while still root.

    Python and its packages may live where only root can read (a pyenv or a virtualenv
    under /root): once the process has become ``--user``, a module imported lazily at the
    first request would fail to load. The app's own imports are the app's to make
    readable; these are ours. Optional modules that are not installed are skipped."""
    import importlib
    import pkgutil
    import warnings

    backend = "trio" if config.backend == "trio" else "asyncio"
    # Whole packages whose modules load others lazily: anyio (its API, the backend),
    # aioquic and cryptography (the first QUIC handshake loads the OpenSSL backend) ...
    packages = [
        "quicserve",
        "anyio",
        "aioquic",
        "cryptography.hazmat.backends",
        "cryptography.hazmat.primitives",
        "cryptography.x509",
        "h2",
        "hpack",
        "hyperframe",
        "h11",
        "httptools",
        "wsproto",
        "websockets",
        "pylsqpack",
    ]
    skipped = ("anyio._backends.", "anyio.pytest_plugin", "websockets.legacy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        importlib.import_module(f"anyio._backends._{backend}")  # trio, asyncio with it
        if config.backend == "uvloop":
            importlib.import_module("uvloop")
        for package in packages:
            try:
                module = importlib.import_module(package)
            except ImportError:
                continue  # an optional package that is not installed
            for info in pkgutil.walk_packages(getattr(module, "__path__", []), f"{package}."):
                if (
                    info.name.endswith(".__main__")
                    or info.name.startswith(skipped)
                    or "test" in info.name
                ):
                    continue
                with contextlib.suppress(Exception):
                    importlib.import_module(info.name)


def _bind_now(config: Config, identity: Identity) -> tuple[Config, list[str]]:
    """Open every ``--bind``, ``--insecure-bind`` and ``--quic-bind`` socket now, as root,
    and name them ``fd://N`` for the server (as the supervisor does for its workers)."""
    from .addresses import parse_unix_mode
    from .transport.sockets import open_stream_socket
    from .transport.udp import open_udp_socket

    mode = parse_unix_mode(config.unix_socket_mode)
    unix_paths: list[str] = []
    opened: list[socket.socket] = []
    try:
        streams: dict[str, tuple[str, ...]] = {}
        for name in ("bind", "insecure_bind"):
            binds = []
            for bind in getattr(config, name):
                sock = open_stream_socket(bind, unix_mode=mode, backlog=config.backlog)
                opened.append(sock)
                if bind.startswith("unix:"):
                    path = bind[len("unix:") :]
                    unix_paths.append(path)
                    identity.chown(path)
                binds.append(f"fd://{sock.fileno()}")
            streams[name] = tuple(binds)
        datagrams = []
        for bind in config.quic_bind:
            udp = open_udp_socket(bind)
            opened.append(udp)
            datagrams.append(f"fd://{udp.fileno()}")
    except BaseException:
        for sock in opened:
            sock.close()
        for path in unix_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise
    for sock in opened:
        sock.detach()  # the server adopts the descriptor
    return (
        dataclasses.replace(
            config,
            bind=streams["bind"],
            insecure_bind=streams["insecure_bind"],
            quic_bind=tuple(datagrams),
        ),
        unix_paths,
    )


def _hup_while_starting(signum: int, frame: object) -> None:
    logger.warning("Received SIGHUP while starting: nothing loaded yet to reload; ignored")


def _fail(message: str, worker: WorkerLink | None, status: int) -> int:
    # A worker reports to its supervisor, which prints the error once for all workers.
    if worker is not None:
        worker.send(error=message)
    else:
        print(f"quicserve: error: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
