"""Which engine parses and writes a protocol: the choice ``Config`` makes, resolved once.

Rules:

* HTTP/1.1 has two engines behind the same ``ByteStreamProtocol``: ``h11`` (pure Python,
  always there) and ``httptools`` (llhttp in C, ``pip install 'quicserve[fast]'``).
  ``Config.http1_engine`` picks one; ``"auto"`` takes httptools when it can be imported,
  else h11, so the default install keeps working without it.
* An explicit engine that cannot be imported is refused at startup by ``config.check``
  (one line); here it raises :class:`EngineUnavailable` if it is asked for anyway.
* The choice is resolved once per process and cached: a connection pays one dict lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from ..config import Config
from .base import ByteStreamProtocol

#: The values of ``Config.http1_engine``.
HTTP1_ENGINES = ("auto", "h11", "httptools")

HTTP1Factory = Callable[..., ByteStreamProtocol]


class EngineUnavailable(RuntimeError):
    """An engine was asked for by name and cannot be imported."""


@cache
def http1_engine(choice: str) -> tuple[str, HTTP1Factory]:
    """``(name, class)`` of the HTTP/1.1 engine ``choice`` ("auto", "h11", "httptools")
    stands for."""
    if choice not in HTTP1_ENGINES:
        raise EngineUnavailable(f"unknown HTTP/1.1 engine {choice!r}")
    if choice != "h11":
        try:
            from .http1_httptools import HttptoolsH1Protocol
        except ImportError as exc:
            if choice == "httptools":
                raise EngineUnavailable(
                    f"the httptools HTTP/1.1 engine needs httptools ({exc}):"
                    " pip install 'quicserve[fast]'"
                ) from None
        else:
            return "httptools", HttptoolsH1Protocol
    from .http1 import H1Protocol

    return "h11", H1Protocol


def new_http1_protocol(config: Config, now: float, *, allow_h2c: bool) -> ByteStreamProtocol:
    """The server side of a new HTTP/1.1 connection, on the configured engine."""
    return http1_engine(config.http1_engine)[1](config, now, allow_h2c=allow_h2c)
