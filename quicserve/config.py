"""The one typed configuration object, and where its values come from.

Every command-line flag maps 1:1 to a field of :class:`Config`: the flag is the field name
with ``_`` turned into ``-`` (``keep_alive_timeout`` -> ``--keep-alive-timeout``), and its
help text is the field's ``help`` metadata. ``cli.py`` builds the parser from these fields,
so a new setting is added here and nowhere else.

The same names work in a TOML file (``--config PATH``: ``keep_alive_timeout = 5`` or
``keep-alive-timeout = 5``, tuple fields as arrays) and in the environment
(``QUICSERVE_KEEP_ALIVE_TIMEOUT=5``, tuple fields comma-separated). :func:`resolve` layers
them: **command line > environment > file > defaults**.

Rules:

* Every resource a peer can make us hold has a limit here, with a sane default
  (DESIGN.md invariant 5).
* Fields are plain values; parsing of bind strings lives in :func:`parse_bind`.
* A bad value from any source is a :class:`ConfigError` whose message is one line naming
  the source and the setting; :func:`check` holds the rules that span sources, so
  ``quicserve.run()`` and the CLI refuse the same things.
* Unknown keys in a file are errors; unknown ``QUICSERVE_*`` variables are ignored (other
  parts of quicserve, such as ``QUICSERVE_DATA_DIR``, use that prefix too).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields
from typing import Any, Literal

from .accesslog import compile_format
from .addresses import (
    AWS_SERVER_ID_VARIABLE,
    MAX_WORKER_SLOTS,
    parse_aws_server_id,
    parse_bind,
    parse_server_id,
    parse_trusted,
    parse_unix_mode,
)

Backend = Literal["asyncio", "uvloop", "trio"]
Interface = Literal["auto", "asgi3", "asgi2", "wsgi"]

#: Prefix of the environment variables that set :class:`Config` fields.
ENV_PREFIX = "QUICSERVE_"


class ConfigError(ValueError):
    """A setting is unknown or has a bad value; the message is one line for a person."""


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
    backlog: int = field(
        default=2048,
        metadata=_opt(
            "listen() backlog of the TCP and 'unix:' sockets quicserve opens: connections "
            "the kernel queues before they are accepted (capped by net.core.somaxconn)"
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
    worker_healthcheck_timeout: float = field(
        default=30.0,
        metadata=_opt(
            "with --workers above 1: replace a worker whose event loop has not answered the "
            "supervisor's ping for this many seconds (a blocking or CPU-bound app); 0 = never",
            metavar="SECONDS",
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
            "ID so a QUIC-LB load balancer in front of several machines can route by it "
            "(default: AWS_LBC_QUIC_SERVER_ID, base64 of 8 bytes, if set)",
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
    quic_max_fragments: int = field(
        default=4096,
        metadata=_opt(
            "out-of-order pieces of stream data one QUIC connection may hold (more: closed "
            "with H3_EXCESSIVE_LOAD)"
        ),
    )
    quic_max_cancelled_requests: int = field(
        default=1000,
        metadata=_opt(
            "HTTP/3 requests a client may cancel on one connection (RESET_STREAM or "
            "STOP_SENDING before the response ended), beyond as many as it let complete, "
            "before it is closed with H3_EXCESSIVE_LOAD; 0 = no limit"
        ),
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
    quic_max_handshakes: int = field(
        default=1000,
        metadata=_opt(
            "QUIC handshakes in progress at most per endpoint (half-open connections, ~100 "
            "KiB each); more new connections are refused"
        ),
    )
    quic_max_handshakes_per_address: int = field(
        default=100,
        metadata=_opt(
            "QUIC handshakes in progress at most per client IP whose address Retry validated "
            "(all, with --quic-retry never); 0 = no limit"
        ),
    )
    quic_session_tickets: int = field(
        default=10_000,
        metadata=_opt(
            "TLS session tickets kept in memory for resumption (with --quic-secrets-file: "
            "used tickets remembered against 0-RTT replay)"
        ),
    )
    quic_secrets_file: str | None = field(
        default=None,
        metadata=_opt(
            "key ring shared by workers and machines for session tickets, Retry and stateless "
            "reset tokens: one base64 key (>= 32 bytes) per line, the first is current "
            "('quicserve secrets new PATH'); re-read on SIGHUP",
            metavar="PATH",
        ),
    )
    quic_max_crypto_buffer: int = field(
        default=16 * 1024,
        metadata=_opt(
            "QUIC CRYPTO bytes held before TLS can use them (out of order, or part of an "
            "incomplete TLS message) per encryption level; more close the connection with "
            "CRYPTO_BUFFER_EXCEEDED (>= 4096, RFC 9000 §7.5)"
        ),
    )
    quic_max_ack_frames_per_packet: int = field(
        default=2,
        metadata=_opt(
            "ACK frames one QUIC packet may carry; more close the connection with "
            "PROTOCOL_VIOLATION (RFC 9000 §21.9: non-productive frames)"
        ),
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
    http1_engine: Literal["auto", "h11", "httptools"] = field(
        default="auto",
        metadata=_opt(
            "HTTP/1.1 engine: httptools (llhttp in C; pip install 'quicserve[fast]') or h11"
            " (pure Python); 'auto' takes httptools when it is installed",
            choices=["auto", "h11", "httptools"],
        ),
    )
    log_level: str = field(
        default="info",
        metadata=_opt(
            "log level", choices=["critical", "error", "warning", "info", "debug", "trace"]
        ),
    )
    access_log: bool = field(default=True, metadata=_opt("log one line per request"))
    access_log_format: str | None = field(
        default=None,
        metadata=_opt(
            "access log line as a format of atoms such as h (client), r (request line), "
            "s (status): see the README for the list; default: the built-in line",
            metavar="FORMAT",
        ),
    )
    log_config: str | None = field(
        default=None,
        metadata=_opt(
            "logging.config.dictConfig file (.json or .toml) that replaces quicserve's own "
            "log setup",
            metavar="PATH",
        ),
    )
    config: str | None = field(
        default=None,
        metadata=_opt(
            "TOML file of settings named like these flags (precedence: command line > "
            "QUICSERVE_* environment > file > defaults)",
            metavar="PATH",
            file=False,
        ),
    )
    metrics_bind: str | None = field(
        default=None,
        metadata=_opt(
            "serve Prometheus metrics at http://HOST:PORT/metrics (plain HTTP, separate listener)",
            metavar="HOST:PORT",
        ),
    )

    # -- operations ---------------------------------------------------------------------
    server_header: bool = field(
        default=True,
        metadata=_opt("send 'server: quicserve' unless the app sets a server header"),
    )
    date_header: bool = field(
        default=True,
        metadata=_opt("send a 'date' header (RFC 9110 §6.6.1) unless the app sets one"),
    )
    header: tuple[str, ...] = field(
        default=(),
        metadata=_opt(
            "a default response header NAME:VALUE, sent unless the app sets the same name "
            "(repeatable; in the environment one per line, as values may hold commas)",
            metavar="NAME:VALUE",
            split="lines",
        ),
    )
    env_file: str | None = field(
        default=None,
        metadata=_opt(
            "load KEY=VALUE lines (comments, 'export ', quotes) into the environment before "
            "the app is imported; variables already set win",
            metavar="PATH",
        ),
    )
    user: str | None = field(
        default=None,
        metadata=_opt(
            "after binding the sockets and reading the certificates, run as this user "
            "(name or uid; needs root)",
            metavar="USER",
        ),
    )
    group: str | None = field(
        default=None,
        metadata=_opt(
            "with or without --user: run as this group (name or gid; default: the user's); "
            "supplementary groups are dropped",
            metavar="GROUP",
        ),
    )
    pid_file: str | None = field(
        default=None,
        metadata=_opt(
            "write the PID of this process (the supervisor with --workers) here once it "
            "serves, and remove it on exit; refused if it names a live process",
            metavar="PATH",
        ),
    )

    # -- the app interface --------------------------------------------------------------
    interface: Interface = field(
        default="auto",
        metadata=_opt(
            "how to call the app: 'auto' tells ASGI 3 from ASGI 2; WSGI must be named",
            choices=["auto", "asgi3", "asgi2", "wsgi"],
        ),
    )
    wsgi_max_threads: int = field(
        default=10,
        metadata=_opt("with --interface wsgi: requests running at once in worker threads"),
    )

    # -- behind a proxy -----------------------------------------------------------------
    proxy_headers: bool = field(
        default=False,
        metadata=_opt(
            "take client address, scheme and host from Forwarded / X-Forwarded-* headers "
            "sent by a trusted peer"
        ),
    )
    forwarded_allow_ips: str = field(
        default="127.0.0.1,::1",
        metadata=_opt(
            "comma list of IPs and CIDRs trusted to send proxy headers, '*' for all "
            "(also FORWARDED_ALLOW_IPS)",
            metavar="IPS",
        ),
    )

    # -- development --------------------------------------------------------------------
    reload: bool = field(
        default=False,
        metadata=_opt("restart the server when files change (development only)"),
    )
    reload_dir: tuple[str, ...] = field(
        default=(),
        metadata=_opt(
            "directory to watch with --reload (repeatable; default: --app-dir)",
            metavar="DIR",
        ),
    )
    reload_include: tuple[str, ...] = field(
        default=(),
        metadata=_opt(
            "glob of file names that trigger a reload, added to '*.py' (repeatable)",
            metavar="GLOB",
        ),
    )
    reload_exclude: tuple[str, ...] = field(
        default=(),
        metadata=_opt(
            "glob of names or paths never watched, added to '.*', '*.py[cod]', '*~', "
            "'__pycache__' (repeatable)",
            metavar="GLOB",
        ),
    )

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
    limit_concurrency: int = field(
        default=0,
        metadata=_opt(
            "requests (HTTP requests, WebSockets, WebTransport sessions) in flight at once "
            "per process; more get 503 without calling the app; 0 = no limit"
        ),
    )
    max_connections: int = field(
        default=10_000, metadata=_opt("open connections at most; more wait to be accepted")
    )
    max_header_bytes: int = field(
        default=64 * 1024,
        metadata=_opt(
            "largest request header section, and trailer section, on every protocol:"
            " name + value + 32 bytes per field line, pseudo-headers included (HTTP/1.1:"
            " the request line counts as :method and :path); larger gets 431 (trailers:"
            " a reset); past twice this an HTTP/2 or HTTP/3 connection is closed. Sent as"
            " SETTINGS_MAX_HEADER_LIST_SIZE (h2) and SETTINGS_MAX_FIELD_SECTION_SIZE (h3)"
        ),
    )
    max_request_body_size: int = field(
        default=0, metadata=_opt("bytes of request body per request at most (413); 0 = no limit")
    )
    h2_max_concurrent_streams: int = field(
        default=100, metadata=_opt("HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS")
    )
    h2_max_stream_errors: int = field(
        default=100,
        metadata=_opt(
            "HTTP/2 streams per connection the server may reset because of the client's "
            "frames (malformed requests, flow-control or stream-state errors) before it "
            'closes the connection with ENHANCE_YOUR_CALM ("MadeYouReset", CVE-2025-8671)'
        ),
    )
    h2_max_control_frames: int = field(
        default=1000,
        metadata=_opt(
            "HTTP/2 control frames (PING, SETTINGS, PRIORITY, WINDOW_UPDATE, empty DATA, "
            "unknown types) a client may send on one connection beyond 100 per stream it "
            "opened and 2 per DATA frame sent to it; past that GOAWAY ENHANCE_YOUR_CALM"
        ),
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
    connection_write_buffer_size: int = field(
        default=1024 * 1024,
        metadata=_opt(
            "bytes one connection holds for its peer (framed and not yet written, being "
            "written, or on QUIC not yet acknowledged) before every send() on it waits and "
            "HTTP/2 reads no more from that peer; bounds the memory of a peer that does not read"
        ),
    )

    # -- WebSockets and WebTransport ----------------------------------------------------
    ws_max_size: int = field(
        default=16 * 1024 * 1024,
        metadata=_opt("bytes in one incoming WebSocket message at most (close 1009)"),
    )
    ws_max_queue: int = field(
        default=32,
        metadata=_opt(
            "incoming WebSocket messages queued for the app at most; then the peer is "
            "read no further until the app receives"
        ),
    )
    ws_ping_interval: float = field(
        default=20.0,
        metadata=_opt("send a WebSocket ping after this many idle seconds; 0 = never"),
    )
    ws_ping_timeout: float = field(
        default=20.0,
        metadata=_opt(
            "close a WebSocket (1011) whose pong, or closing handshake, takes longer than this"
        ),
    )
    ws_per_message_deflate: bool = field(
        default=True,
        metadata=_opt("accept the permessage-deflate WebSocket extension when a client offers it"),
    )
    ws_engine: Literal["auto", "wsproto", "websockets"] = field(
        default="auto",
        metadata=_opt(
            "WebSocket framing: 'websockets' (the websockets package, 16+, with its C "
            "speedups; pip install 'quicserve[fast]'), 'wsproto' (pure Python), or 'auto': "
            "websockets when installed, else wsproto",
            choices=["auto", "wsproto", "websockets"],
        ),
    )
    webtransport: bool = field(
        default=False,
        metadata=_opt(
            "experimental: accept WebTransport sessions over HTTP/3 (ASGI 'webtransport')"
        ),
    )
    webtransport_max_sessions: int = field(
        default=16,
        metadata=_opt(
            "WebTransport sessions open at once on one HTTP/3 connection at most "
            "(SETTINGS_WT_MAX_SESSIONS); more are refused with H3_REQUEST_REJECTED"
        ),
    )
    webtransport_max_data: int = field(
        default=1024 * 1024,
        metadata=_opt(
            "bytes a WebTransport session's client may send on its streams beyond what "
            "the app has received (SETTINGS_WT_INITIAL_MAX_DATA, then WT_MAX_DATA)"
        ),
    )
    webtransport_max_streams: int = field(
        default=100,
        metadata=_opt(
            "streams of each kind (bidirectional, unidirectional) a WebTransport session's "
            "client may have open (SETTINGS_WT_INITIAL_MAX_STREAMS_*, then WT_MAX_STREAMS)"
        ),
    )

    @property
    def tls_enabled(self) -> bool:
        """Whether ``--bind`` addresses speak TLS."""
        return self.certfile is not None


#: RFC 9110 §5.6.2: the characters of a token (a field name).
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


_FRAMING_FIELDS = frozenset(
    {
        "connection",
        "content-length",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


def parse_header(value: str) -> tuple[bytes, bytes]:
    """``NAME:VALUE`` (``--header``) as a lower-case name and a value; raises ValueError.

    The name is a token (RFC 9110 §5.1), lower-cased as HTTP/2 and HTTP/3 require (RFC 9113
    §8.2.1, RFC 9114 §4.2); the value loses its surrounding whitespace and may hold no CR,
    LF or NUL (RFC 9110 §5.5), which would split or end the field."""
    name, colon, rest = value.partition(":")
    if not colon:
        raise ValueError("expected NAME:VALUE")
    name = name.strip()
    if not name or not all(c in _TCHAR for c in name.encode("latin-1", "replace")):
        raise ValueError(f"{name!r} is not a valid header name")
    if name.lower() in _FRAMING_FIELDS:
        # The protocol modules own framing and connection-specific fields (RFC 9110 §7.6.1,
        # RFC 9113 §8.2.2): a default one would contradict each response's real framing.
        raise ValueError(f"{name.lower()!r} is set by the server, per response")
    rest = rest.strip(" \t")
    if any(c in rest for c in "\r\n\0"):
        raise ValueError("the value may not contain CR, LF or NUL")
    try:
        raw = rest.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("the value must be Latin-1 text") from None
    return name.lower().encode("ascii"), raw


def config_fields() -> list[Any]:
    """The dataclass fields of :class:`Config`, in declaration order."""
    return list(fields(Config))


def _settable() -> dict[str, Field[Any]]:
    return {f.name: f for f in fields(Config) if f.metadata.get("cli", True) is not False}


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def coerce(name: str, value: Any, source: str) -> Any:
    """``value`` (a TOML value or an environment string) as the type of field ``name``.

    ``source`` starts the error message (``"config.toml: keep_alive_timeout"``).
    """
    f = _settable()[name]
    type_name = str(f.type)
    where = f"{source}: {name}"
    if type_name == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if type_name.startswith("tuple["):
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(item, str) for item in items):
            raise ConfigError(f"{where}: expected strings, got {value!r}")
        if f.metadata.get("split") == "lines":
            # Items that may hold commas (header values): whole array items, or lines.
            return tuple(
                line.strip() for item in items for line in item.splitlines() if line.strip()
            )
        return tuple(part.strip() for item in items for part in item.split(",") if part.strip())
    if type_name.startswith(("int", "float")):
        number_type: type[int] | type[float] = int if type_name.startswith("int") else float
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, float) and number_type is int:
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        try:
            return number_type(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choices)}")
    return value


def read_config_file(path: str) -> dict[str, Any]:
    """The settings in a TOML file, checked and typed (keys may use ``-`` or ``_``)."""
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    known = _settable()
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known or known[name].metadata.get("file", True) is False:
            raise ConfigError(f"{path}: unknown setting {key!r}")
        values[name] = coerce(name, value, path)
    return values


def read_environment(environ: Mapping[str, str], *, aws: bool = True) -> dict[str, Any]:
    """The settings given as ``QUICSERVE_<FIELD>`` variables (and FORWARDED_ALLOW_IPS,
    which Uvicorn and Gunicorn read too, below its QUICSERVE_ name; and, if ``aws``,
    AWS_LBC_QUIC_SERVER_ID below QUICSERVE_QUIC_LB_SERVER_ID: the server ID the AWS Load
    Balancer Controller gives a pod, base64, read only when nothing above sets one)."""
    values: dict[str, Any] = {}
    if "FORWARDED_ALLOW_IPS" in environ:
        values["forwarded_allow_ips"] = environ["FORWARDED_ALLOW_IPS"]
    if aws and AWS_SERVER_ID_VARIABLE in environ:
        try:
            values["quic_lb_server_id"] = parse_aws_server_id(environ[AWS_SERVER_ID_VARIABLE]).hex()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    for name in _settable():
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = coerce(name, raw, ENV_PREFIX + name.upper())
    return values


def resolve(command_line: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    """Layer the settings: ``command_line`` (fields a person gave) > environment > the
    ``config`` file (named on the command line or in ``QUICSERVE_CONFIG``) > defaults."""
    env = read_environment(
        os.environ if environ is None else environ,
        aws="quic_lb_server_id" not in command_line,
    )
    path = command_line.get("config") or env.get("config")
    values: dict[str, Any] = read_config_file(path) if path else {}
    values.update(env)
    values.update(command_line)
    config = Config(**values)
    check(config)
    return config


def check(config: Config) -> None:
    """Refuse settings that parse but cannot work; raises :class:`ConfigError`."""
    for name in ("graceful_timeout", "keep_alive_timeout", "header_read_timeout"):
        if getattr(config, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive")
    for name in (
        "max_connections",
        "max_header_bytes",
        "h2_max_concurrent_streams",
        "h2_max_stream_errors",
        "h2_max_control_frames",
        "quic_max_fragments",
        "connection_write_buffer_size",
        "wsgi_max_threads",
        "webtransport_max_sessions",
        "webtransport_max_data",
        "webtransport_max_streams",
    ):
        if getattr(config, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    if config.http1_engine not in ("auto", "h11", "httptools"):
        raise ConfigError(f"--http1-engine: unknown engine {config.http1_engine!r}")
    if config.http1_engine == "httptools":
        try:
            import httptools  # noqa: F401
        except ImportError:
            raise ConfigError(
                "--http1-engine httptools: httptools is not installed"
                " (pip install 'quicserve[fast]')"
            ) from None
    if config.workers < 1:
        raise ConfigError("--workers must be at least 1")
    if config.quic_max_crypto_buffer < 4096:  # RFC 9000 §7.5: at least 4096 bytes
        raise ConfigError("--quic-max-crypto-buffer must be at least 4096")
    if config.quic_max_handshakes < 1:
        raise ConfigError("--quic-max-handshakes must be at least 1")
    if config.quic_max_handshakes_per_address < 0:
        raise ConfigError("--quic-max-handshakes-per-address must not be negative")
    if config.quic_max_ack_frames_per_packet < 1:
        raise ConfigError("--quic-max-ack-frames-per-packet must be at least 1")
    if config.backlog < 1:
        raise ConfigError("--backlog must be at least 1")
    for name in (
        "max_requests",
        "max_requests_jitter",
        "quic_max_cancelled_requests",
        "limit_concurrency",
    ):
        if getattr(config, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must not be negative")
    if not 0 <= config.worker_healthcheck_timeout < float("inf"):  # NaN fails this too
        raise ConfigError("--worker-healthcheck-timeout must be 0 (off) or a number of seconds")
    if config.workers > MAX_WORKER_SLOTS // 2:
        raise ConfigError(f"--workers must be at most {MAX_WORKER_SLOTS // 2}")
    try:
        parse_unix_mode(config.unix_socket_mode)
        parse_server_id(config.quic_lb_server_id)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for value in config.header:
        try:
            parse_header(value)
        except ValueError as exc:
            raise ConfigError(f"--header {value!r}: {exc}") from None
    if config.reload and (config.user is not None or config.group is not None):
        raise ConfigError("--user and --group cannot be combined with --reload")
    if config.reload and config.workers > 1:
        raise ConfigError("--reload cannot be combined with --workers above 1")
    if config.metrics_bind is not None:
        try:
            parse_bind(config.metrics_bind, "127.0.0.1")
        except ValueError as exc:
            raise ConfigError(f"--metrics-bind: {exc}") from None
    try:
        parse_trusted(config.forwarded_allow_ips)
    except ValueError as exc:
        raise ConfigError(f"--forwarded-allow-ips: {exc}") from None
    if config.access_log_format is not None:
        try:
            compile_format(config.access_log_format)
        except ValueError as exc:
            raise ConfigError(f"--access-log-format: {exc}") from None
