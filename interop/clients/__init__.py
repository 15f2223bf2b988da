"""Client adapters: one module per independently written client.

Each module has ``NAME``, ``available() -> str | None`` (None when usable, else an
install hint), ``supports(case) -> bool`` and ``run(case, server) -> Result``. ``run`` is
synchronous and blocking; the harness calls it in a worker thread with a time bound, so
adapters that start processes must give them their own timeout too.
"""

from __future__ import annotations

from types import ModuleType

from . import (
    aioquic_client,
    chromium,
    curl,
    curl_cffi_client,
    firefox,
    gtlsclient,
    h2_client,
    h2load,
    httpx_client,
    niquests_client,
    websockets_client,
)

ALL: list[ModuleType] = [
    aioquic_client,
    curl_cffi_client,
    gtlsclient,
    chromium,
    firefox,
    curl,
    httpx_client,
    h2load,
    niquests_client,
    websockets_client,
    h2_client,
]
