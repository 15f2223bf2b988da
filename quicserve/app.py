"""Loading the app (``module:attr`` or a factory), adapting its interface, and running
the ASGI lifespan protocol.

Rules:

* :func:`prepare_app` is the one place that turns what a person gave into the ASGI 3
  callable the streams call: the interface adapter (``--interface``: ASGI 2 or WSGI) and
  then the middleware the configuration asks for (``--proxy-headers``). ``Server`` calls it,
  so the CLI, ``quicserve.serve()`` and tests get the same app.

* Import problems become :class:`AppLoadError` with one line a person can act on.
* ``lifespan="auto"`` tolerates apps that do not implement lifespan (they raise or return
  at once); ``"on"`` makes any lifespan failure fatal; ``"off"`` never calls it.
* The lifespan ``state`` dict is shallow-copied into each request's scope by the streams.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc

from .config import Config
from .types import ASGIApp, Message, Scope

logger = logging.getLogger("quicserve.error")


class AppLoadError(Exception):
    """The app named on the command line cannot be loaded."""


class LifespanFailure(Exception):
    """The app reported (or raised) a failure during lifespan startup."""


def load_app(spec: str, *, factory: bool = False, app_dir: str = ".") -> Any:
    """Import ``module:attr`` (a dotted attribute path is allowed) and return the app
    object as it is (:func:`prepare_app` adapts it to the configured interface)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AppLoadError(f"APP must be given as module:attribute, got {spec!r}")
    if app_dir and app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise AppLoadError(f"cannot import module {module_name!r}: not found") from None
        raise AppLoadError(f"importing {module_name!r} failed: {exc}") from None
    except Exception as exc:
        raise AppLoadError(
            f"importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(f"module {module_name!r} has no attribute {attr!r}") from None
    if factory:
        if not callable(obj):
            raise AppLoadError(f"{spec!r} is not callable, so it cannot be a --factory")
        try:
            obj = obj()
        except Exception as exc:
            raise AppLoadError(
                f"app factory {spec!r} failed: {type(exc).__name__}: {exc}"
            ) from None
    if not callable(obj):
        raise AppLoadError(f"{spec!r} is not an ASGI app (not callable)")
    return obj


def prepare_app(app: Any, config: Config) -> ASGIApp:
    """The ASGI 3 app the server calls: ``app`` adapted to ``config.interface``, wrapped
    in the middleware ``config`` switches on. Cheap to call once per server."""
    interface = config.interface
    if interface == "wsgi":
        from .wsgi import WSGIAdapter

        asgi: ASGIApp = WSGIAdapter(app, config)
    elif interface == "asgi2":
        asgi = _asgi2_to_3(app)
    elif interface == "asgi3":
        asgi = app
    else:
        asgi = as_asgi3(app)
    if config.proxy_headers:
        from .proxy import ProxyHeadersMiddleware

        asgi = ProxyHeadersMiddleware(asgi, config.forwarded_allow_ips)
    return asgi


def _asgi2_to_3(app: Callable[[Scope], Any]) -> ASGIApp:
    async def asgi3(scope: Scope, receive: Any, send: Any) -> None:
        instance = app(scope)
        await instance(receive, send)

    return asgi3


def as_asgi3(app: Any) -> ASGIApp:
    """Wrap an ASGI 2 app (``app(scope)`` returning ``instance(receive, send)``)."""
    if _is_asgi2(app):
        return _asgi2_to_3(app)
    result: ASGIApp = app
    return result


def _is_asgi2(app: Any) -> bool:
    if inspect.isclass(app):
        return True
    call: Any
    if inspect.isfunction(app) or inspect.ismethod(app):
        call = app
    else:
        call = app.__call__ if callable(app) else None
    if call is None or inspect.iscoroutinefunction(call):
        return False
    try:
        params = inspect.signature(call).parameters
    except (TypeError, ValueError):
        return False
    return len(params) == 1


class Lifespan:
    """Runs the app's lifespan protocol in a background task."""

    def __init__(self, app: ASGIApp, config: Config) -> None:
        self._app = app
        self._mode = config.lifespan
        self.state: dict[str, Any] = {}
        self.supported = False
        self._to_app_send, self._to_app_recv = anyio.create_memory_object_stream[Message](2)
        self._startup_done = anyio.Event()
        self._shutdown_done = anyio.Event()
        self._startup_error: str | None = None
        self._shutdown_error: str | None = None
        self._app_finished = anyio.Event()

    async def startup(self, task_group: anyio.abc.TaskGroup) -> None:
        """Send ``lifespan.startup`` and wait for the answer."""
        if self._mode == "off":
            self._to_app_send.close()
            self._to_app_recv.close()
            return
        task_group.start_soon(self._run)
        await self._to_app_send.send({"type": "lifespan.startup"})
        await self._startup_done.wait()
        if self._startup_error is not None:
            raise LifespanFailure(self._startup_error)

    async def shutdown(self) -> None:
        """Send ``lifespan.shutdown`` and wait for the answer (never raises)."""
        try:
            if not self.supported or self._app_finished.is_set():
                return
            await self._to_app_send.send({"type": "lifespan.shutdown"})
            with anyio.move_on_after(30):
                await self._shutdown_done.wait()
            if self._shutdown_error is not None:
                logger.error("Lifespan shutdown failed: %s", self._shutdown_error)
        finally:
            self._to_app_send.close()
            self._to_app_recv.close()

    async def _run(self) -> None:
        scope: Scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        try:
            await self._app(scope, self._receive, self._send)
        except Exception as exc:
            if not self._startup_done.is_set():
                if self._mode == "auto":
                    logger.info(
                        "ASGI lifespan unsupported by the app (%s); continuing without it",
                        type(exc).__name__,
                    )
                    self.supported = False
                else:
                    # The CLI reports this as one line; the traceback is for --log-level debug.
                    logger.debug("Exception in lifespan startup", exc_info=True)
                    self._startup_error = f"{type(exc).__name__}: {exc}"
                self._startup_done.set()
            else:
                logger.exception("Exception in lifespan")
                self._shutdown_error = self._shutdown_error or f"{type(exc).__name__}: {exc}"
        finally:
            if not self._startup_done.is_set():
                if self._mode == "on":
                    self._startup_error = "the app returned during lifespan startup"
                self._startup_done.set()
            self._shutdown_done.set()
            self._app_finished.set()

    async def _receive(self) -> Message:
        return await self._to_app_recv.receive()

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            self.supported = True
            self._startup_done.set()
        elif kind == "lifespan.startup.failed":
            self.supported = True
            self._startup_error = message.get("message") or "lifespan.startup.failed"
            self._startup_done.set()
        elif kind == "lifespan.shutdown.complete":
            self._shutdown_done.set()
        elif kind == "lifespan.shutdown.failed":
            self._shutdown_error = message.get("message") or "lifespan.shutdown.failed"
            self._shutdown_done.set()
        else:
            raise RuntimeError(f"unexpected lifespan message {kind!r}")
