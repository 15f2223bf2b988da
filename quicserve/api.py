"""The programmatic API: ``await quicserve.serve(app, ...)`` and ``quicserve.run(app, ...)``.

* :func:`serve` runs inside a caller's anyio event loop (asyncio or trio) until it is
  cancelled; with ``await task_group.start(serve, app)`` the caller gets the bound
  addresses once the server listens.
* :func:`run` is for scripts: it starts the configured backend (``backend="trio"``...),
  logs like the command line, and stops gracefully on SIGINT/SIGTERM like the command line.

Both take a :class:`~quicserve.config.Config`, keyword options named like its fields, or a
Config plus keywords that override it; both refuse what the command line refuses
(:class:`~quicserve.config.ConfigError`). With no bind at all they serve what the command
line serves: 127.0.0.1:8443 with the development certificate.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import anyio
import anyio.abc

from .config import Config, ConfigError, check, config_fields
from .runner import apply_dev_defaults, configure_logging
from .runner import run as run_server
from .server import BoundAddress, Server


def make_config(config: Config | None = None, **options: Any) -> Config:
    """``config`` (or the defaults) with ``options`` replacing fields; checked."""
    names = {f.name for f in config_fields()}
    unknown = sorted(set(options) - names)
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r}")
    for name, value in options.items():
        if isinstance(value, list):
            options[name] = tuple(value)
    result = dataclasses.replace(config or Config(), **options)
    check(result)
    if result.reload:
        raise ConfigError("reload needs the command line (quicserve APP --reload)")
    for name in ("user", "group", "env_file"):
        # These act before the app is imported; here the caller has imported it already.
        if getattr(result, name) is not None:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{name} needs the command line (quicserve APP {flag} ...)")
    return apply_dev_defaults(result)


async def serve(
    app: Any,
    config: Config | None = None,
    *,
    task_status: anyio.abc.TaskStatus[list[BoundAddress]] = anyio.TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """Serve ``app`` until cancelled; reports the bound addresses through ``task_status``.

    ``app`` is an ASGI 3 or ASGI 2 app, or a WSGI app with ``interface="wsgi"``.
    """
    server = Server(app, make_config(config, **options))
    await server.serve(task_status=task_status)


def run(app: Any, config: Config | None = None, **options: Any) -> None:
    """Serve ``app`` on the configured backend until SIGINT or SIGTERM (graceful stop,
    then lifespan shutdown; a second signal stops at once)."""
    full = make_config(config, **options)
    configure_logging(full)
    try:
        run_server(app, full)
    except KeyboardInterrupt:
        pass
