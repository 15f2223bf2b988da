"""The one typed configuration object.

Every command-line flag maps 1:1 to a field of :class:`Config`: the flag is the field name
with ``_`` turned into ``-`` (``keep_alive_timeout`` -> ``--keep-alive-timeout``), and its
help text is the field's ``help`` metadata. ``cli.py`` builds the parser from these fields,
so a new setting is added here and nowhere else.

Rules:

* Every resource a peer can make us hold has a limit here, with a sane default
  (DESIGN.md invariant 5).
* Fields are plain values; parsing of bind strings lives in :func:`parse_bind`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

Backend = Literal["asyncio", "uvloop", "trio"]


def _opt(help: str, **extra: Any) -> Any:
    """Field metadata: the ``--help`` text and optional CLI hints (choices, metavar, ...)."""
    return {"help": help, **extra}


@dataclass(frozen=True, slots=True)
class Config:
    """Server settings. Construct directly, or from the command line via ``cli.py``."""

    # -- what to serve ------------------------------------------------------------------
    app: str = field(default="", metadata=_opt("the ASGI app as module:attribute", cli=False))
    factory: bool = field(
        default=False,
        metadata=_opt("treat APP as a callable that takes no arguments and returns the app"),
    )
    app_dir: str = field(
        default=".", metadata=_opt("directory put first on sys.path to import APP from")
    )
    root_path: str = field(
        default="", metadata=_opt("ASGI root_path: the prefix this app is mounted under")
    )
    lifespan: Literal["auto", "on", "off"] = field(
        default="auto",
        metadata=_opt(
            "run the ASGI lifespan protocol: 'auto' tolerates apps without it",
            choices=["auto", "on", "off"],
        ),
    )

    # -- where to listen ----------------------------------------------------------------
    bind: tuple[str, ...] = field(
        default=(),
        metadata=_opt(
            "TCP address HOST:PORT, TLS when a certificate is configured (repeatable; "
            "':8443' = all interfaces, '[::1]:8443' for IPv6, 'unix:/path' for a Unix "
            "socket, 'fd://N' for an inherited socket)",
            metavar="HOST:PORT",
        ),
    )
    insecure_bind: tuple[str, ...] = field(
        default=(),
        metadata=_opt(
            "plain TCP address HOST:PORT, 'unix:/path' or 'fd://N', even when TLS is "
            "configured (repeatable)",
            metavar="HOST:PORT",
        ),
    )

    quic_bind: tuple[str, ...] = field(
        default=(),
        metadata=_opt(
            "UDP address HOST:PORT (or inherited 'fd://N') for QUIC / HTTP/3 (repeatable); "
            "also serves TLS on the same TCP port unless --bind is given",
            metavar="HOST:PORT",
        ),
    )
    unix_socket_mode: str | None = field(
        default=None,
        metadata=_opt(
            "permissions of 'unix:' sockets quicserve creates, in octal (e.g. 660)",
            metavar="MODE",
        ),
    )
    alt_svc: str | None = field(
        default=None,
        metadata=_opt(
            "alt-svc value advertised on TLS responses (default: h3 on the first "
            "--quic-bind port); 'off' to send none",
            metavar="VALUE",
        ),
    )

    # -- worker processes ---------------------------------------------------------------
    workers: int = field(
        default=1,
        metadata=_opt(
            "worker processes; more than 1 starts a supervisor that restarts, reloads "
            "(SIGHUP) and scales (SIGTTIN/SIGTTOU) them"
        ),
    )
    max_requests: int = field(
        default=0,
        metadata=_opt("replace a worker after it has served this many requests; 0 = never"),
    )
    max_requests_jitter: int = field(
        default=0,
        metadata=_opt(
            "add a random 0..N to each worker's --max-requests so they do not all restart at once"
        ),
    )
    quic_worker_routing: Literal["auto", "cbpf", "forward"] = field(
        default="auto",
        metadata=_opt(
            "how datagrams reach the worker that owns their connection ID: the kernel "
            "(a classic BPF program on the SO_REUSEPORT group), workers forwarding to each "
            "other, or 'auto' (the kernel where it can)",
            choices=["auto", "cbpf", "forward"],
        ),
    )
    quic_lb_server_id: str = field(
        default="",
        metadata=_opt(
            "QUIC-LB server ID of this machine in hex (up to 12 bytes), put in every connection "
            "ID so a QUIC-LB load balancer in front of several machines can route by it",
            metavar="HEX",
        ),
    )

    # -- QUIC -----------------------------------------------------------------------------
    quic_retry: Literal["never", "always", "auto"] = field(
        default="auto",
        metadata=_opt(
            "QUIC address validation with Retry: 'auto' turns it on while many handshakes "
            "are unvalidated",
            choices=["never", "always", "auto"],
        ),
    )
    quic_retry_threshold: int = field(
        default=100,
        metadata=_opt("with --quic-retry auto: unvalidated handshakes that switch Retry on"),
    )
    quic_0rtt: bool = field(
        default=False,
        metadata=_opt(
            "accept 0-RTT early data on resumed QUIC connections (unsafe methods get 425 "
            "unless the app opts in)"
        ),
    )
    quic_0rtt_unsafe: bool = field(
        default=False,
        metadata=_opt(
            "pass 0-RTT requests with unsafe methods (POST, ...) to the app instead of "
            "answering 425: only if the app is safe against their replay (RFC 8470)"
        ),
    )
    quic_qlog_dir: str | None = field(
        default=None, metadata=_opt("write a qlog file per QUIC connection here", metavar="DIR")
    )
    ssl_keylog_file: str | None = field(
        default=None,
        metadata=_opt("append TLS secrets here for Wireshark (also SSLKEYLOGFILE)", metavar="PATH"),
    )
    quic_idle_timeout: float = field(
        default=30.0, metadata=_opt("close a QUIC connection idle this long (seconds)")
    )
    quic_max_streams: int = field(
        default=100, metadata=_opt("concurrent HTTP/3 request streams per connection")
    )
    quic_max_data: int = field(
        default=4 * 1024 * 1024, metadata=_opt("QUIC receive window of a whole connection")
    )
    quic_stream_window_size: int = field(
        default=1024 * 1024, metadata=_opt("QUIC receive window per stream")
    )
    quic_max_datagram_size: int = field(
        default=1350, metadata=_opt("largest UDP payload we send (>= 1200)")
    )
    quic_congestion_control: Literal["reno", "cubic"] = field(
        default="reno", metadata=_opt("QUIC congestion control", choices=["reno", "cubic"])
    )
    quic_max_connections: int = field(
        default=10_000, metadata=_opt("QUIC connections at most per endpoint")
    )
    quic_session_tickets: int = field(
        default=10_000, metadata=_opt("TLS session tickets kept in memory for resumption")
    )
    qpack_max_table_capacity: int = field(
        default=4096, metadata=_opt("QPACK dynamic table size we allow the peer")
    )
    qpack_blocked_streams: int = field(
        default=16, metadata=_opt("QPACK streams that may wait on the dynamic table")
    )

    # -- TLS ----------------------------------------------------------------------------
    certfile: str | None = field(
        default=None, metadata=_opt("PEM certificate chain for TLS", metavar="PATH")
    )
    keyfile: str | None = field(
        default=None,
        metadata=_opt("PEM private key (optional when CERTFILE also holds it)", metavar="PATH"),
    )
    keyfile_password: str | None = field(
        default=None, metadata=_opt("password of an encrypted KEYFILE", metavar="PASSWORD")
    )
    ca_certs: str | None = field(
        default=None,
        metadata=_opt("PEM CA bundle used to verify client certificates", metavar="PATH"),
    )
    verify_mode: Literal["none", "optional", "required"] = field(
        default="none",
        metadata=_opt("client certificate verification", choices=["none", "optional", "required"]),
    )

    # -- runtime ------------------------------------------------------------------------
    backend: Backend = field(
        default="asyncio",
        metadata=_opt(
            "event loop: asyncio, uvloop (pip install quicserve[uvloop]) or trio",
            choices=["asyncio", "uvloop", "trio"],
        ),
    )
    log_level: str = field(
        default="info",
        metadata=_opt(
            "log level", choices=["critical", "error", "warning", "info", "debug", "trace"]
        ),
    )
    access_log: bool = field(default=True, metadata=_opt("log one line per request"))

    # -- timeouts (seconds) -------------------------------------------------------------
    graceful_timeout: float = field(
        default=10.0,
        metadata=_opt("on SIGINT/SIGTERM, how long in-flight requests may take to finish"),
    )
    keep_alive_timeout: float = field(
        default=5.0, metadata=_opt("close a connection that has been idle this long")
    )
    header_read_timeout: float = field(
        default=10.0,
        metadata=_opt("close a connection whose request head has not arrived in this time"),
    )

    # -- limits -------------------------------------------------------------------------
    max_connections: int = field(
        default=10_000, metadata=_opt("open connections at most; more wait to be accepted")
    )
    max_header_bytes: int = field(
        default=64 * 1024, metadata=_opt("size of a request head at most (431 / protocol error)")
    )
    max_request_body_size: int = field(
        default=0, metadata=_opt("bytes of request body per request at most (413); 0 = no limit")
    )
    h2_max_concurrent_streams: int = field(
        default=100, metadata=_opt("HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS")
    )
    h2_stream_window_size: int = field(
        default=256 * 1024,
        metadata=_opt("HTTP/2 receive window per stream (SETTINGS_INITIAL_WINDOW_SIZE)"),
    )
    h2_connection_window_size: int = field(
        default=1024 * 1024, metadata=_opt("HTTP/2 receive window of the whole connection")
    )
    h2_max_frame_size: int = field(
        default=16_384, metadata=_opt("HTTP/2 SETTINGS_MAX_FRAME_SIZE we accept")
    )
    write_buffer_size: int = field(
        default=64 * 1024,
        metadata=_opt("response bytes buffered per stream before the app's send() waits"),
    )

    @property
    def tls_enabled(self) -> bool:
        """Whether ``--bind`` addresses speak TLS."""
        return self.certfile is not None


def config_fields() -> list[Any]:
    """The dataclass fields of :class:`Config`, in declaration order."""
    return list(fields(Config))


def parse_bind(value: str, default_host: str = "0.0.0.0") -> tuple[str, int]:
    """Split ``HOST:PORT`` into its parts.

    ``":8443"`` means all interfaces, ``"[::1]:8443"`` is IPv6. Raises ``ValueError``
    with a message fit to show a person.
    """
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep:
            raise ValueError(f"bad address {value!r}: expected [IPV6]:PORT")
    else:
        host, sep, port = value.rpartition(":")
        if not sep:
            raise ValueError(f"bad address {value!r}: expected HOST:PORT")
        if ":" in host:
            raise ValueError(f"bad address {value!r}: write IPv6 hosts in brackets, [::1]:PORT")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"bad port in {value!r}")
    return (host or default_host, int(port))
