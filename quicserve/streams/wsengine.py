"""Which WebSocket framing engine ``--ws-engine`` means here (see ``wsframing.py``).

Rules:

* ``wsproto`` always works (wsproto is a dependency). ``websockets`` needs the websockets
  package, 16 or later (``pip install 'quicserve[fast]'``). ``auto`` is websockets when it
  is importable with its C speedups, else wsproto: the pure-Python install frames exactly
  as before.
* Resolved once per process. An explicit engine that cannot run is an
  :class:`EngineUnavailable` whose message is one line; ``runner.run`` checks it before
  the server starts, so it is a startup error, never a failure at the first WebSocket.
"""

from __future__ import annotations

import importlib

from .wsframing import FramerFactory, WsprotoFramer

#: The choices of ``--ws-engine``.
ENGINES = ("auto", "wsproto", "websockets")

_MIN_WEBSOCKETS = 16  # the Protocol internals wsframing_websockets.py extends


class EngineUnavailable(Exception):
    """``--ws-engine`` names an engine that cannot run here; one line for a person."""


def _load_websockets() -> FramerFactory:
    """The websockets engine; ImportError saying why when it cannot run."""
    try:
        version: str = importlib.import_module("websockets.version").version
    except ImportError:
        raise ImportError("the websockets package is not installed") from None
    major = version.split(".", 1)[0]
    if not major.isdigit() or int(major) < _MIN_WEBSOCKETS:
        raise ImportError(f"websockets {version} is too old ({_MIN_WEBSOCKETS} or later needed)")
    from .wsframing_websockets import WebsocketsFramer

    return WebsocketsFramer


def websockets_speedups() -> bool:
    """Whether websockets' C speedups (unmasking in C) are importable."""
    try:
        importlib.import_module("websockets.speedups")
    except ImportError:
        return False
    return True


_resolved: dict[str, FramerFactory] = {}


def framer_factory(engine: str) -> FramerFactory:
    """The framer class ``engine`` names (one of :data:`ENGINES`)."""
    factory = _resolved.get(engine)
    if factory is not None:
        return factory
    if engine == "wsproto":
        factory = WsprotoFramer
    elif engine == "websockets":
        try:
            factory = _load_websockets()
        except ImportError as exc:
            raise EngineUnavailable(
                f"--ws-engine websockets: {exc} (pip install 'quicserve[fast]')"
            ) from None
    elif engine == "auto":
        try:
            factory = _load_websockets() if websockets_speedups() else WsprotoFramer
        except ImportError:
            factory = WsprotoFramer
    else:
        raise EngineUnavailable(
            f"--ws-engine: unknown engine {engine!r} (one of {', '.join(ENGINES)})"
        )
    _resolved[engine] = factory
    return factory


def engine_name(engine: str) -> str:
    """What ``engine`` resolves to here: ``"wsproto"`` or ``"websockets"``."""
    return "wsproto" if framer_factory(engine) is WsprotoFramer else "websockets"
