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
import logging
import logging.config
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .app import AppLoadError, LifespanFailure, load_app
from .config import Config, ConfigError, config_fields, resolve
from .runner import DEV_BIND, UsageError, apply_dev_defaults, configure_logging, run
from .tls import TLSConfigError
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
    """Entry point of the ``quicserve`` command."""
    args = list(sys.argv[1:] if argv is None else argv)
    worker: WorkerLink | None = None
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
