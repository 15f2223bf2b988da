"""The well-behaved client of the adversarial suite, as a process of its own.

``python -m tests.adversarial.prober JSON`` (ports, CA file, protocols, interval): every
``interval`` seconds, one request per protocol on a fresh connection; one JSON line per
request on stdout, ``[protocol, seconds, error or null]``. When stdin closes it runs one
last round and exits. :class:`tests.adversarial.harness.Prober` drives it.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

from .harness import PROBES


class _Ports:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.http = spec["http"]
        self.https = spec["https"]
        self.quic = spec["quic"]
        self.tls = type("TLS", (), {"ca_certfile": spec["ca"]})()

    def client_context(self, alpn: list[str]) -> Any:
        import ssl

        context = ssl.create_default_context(cafile=self.tls.ca_certfile)
        context.set_alpn_protocols(alpn)
        return context


def _round(target: Any, protocols: list[str]) -> None:
    for name in protocols:
        started = time.monotonic()
        error = None
        try:
            PROBES[name](target, timeout=5.0)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        print(json.dumps([name, time.monotonic() - started, error]), flush=True)


def main() -> None:
    spec = json.loads(sys.argv[1])
    target = _Ports(spec)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    while not stop.is_set():
        _round(target, spec["protocols"])
        stop.wait(spec["interval"])
    _round(target, spec["protocols"])


if __name__ == "__main__":
    main()
