"""quicserve: an HTTP/3-first ASGI server (QUIC, HTTP/2 and HTTP/1.1 in one process).

The public API: :func:`serve` (inside an anyio event loop), :func:`run` (for scripts) and
:class:`Config`. The command line is ``quicserve APP`` (see ``quicserve --help``).
"""

from __future__ import annotations

from .api import run, serve
from .config import Config, ConfigError
from .version import __version__

__all__ = ["Config", "ConfigError", "__version__", "run", "serve"]
