"""quicserve: an HTTP/3-first ASGI server (QUIC, HTTP/2 and HTTP/1.1 in one process).

The public API: :func:`serve` (inside an anyio event loop), :func:`run` (for scripts) and
:class:`Config`. The command line is ``quicserve APP`` (see ``quicserve --help``).
"""

from __future__ import annotations

__version__ = "0.1.0"

from .api import run, serve  # after __version__: cli.py imports it
from .config import Config, ConfigError

__all__ = ["Config", "ConfigError", "__version__", "run", "serve"]
