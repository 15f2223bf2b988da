"""TLS for TCP and QUIC in one place, built once per server (:func:`build_server_tls`).

Rules:

* TCP TLS offers ALPN ``h2`` then ``http/1.1``; TLS 1.2 is the floor and, for HTTP/2's
  sake, only AEAD ECDHE suites are enabled (RFC 9113 §9.2.2 forbids the rest on h2).
* QUIC offers ALPN ``h3``; its configuration (certificate, qlog, key log) is built once and
  shared by every ``--quic-bind`` listener, so the certificate is read and the key log
  opened once.
* ``SSLKEYLOGFILE`` (or ``--ssl-keylog-file``) is honoured, for debugging with Wireshark.
* A certificate problem becomes :class:`TLSConfigError` with a message a person can act
  on; the CLI prints it as one line. A key that does not belong to the certificate is such
  a problem for QUIC too (aioquic would only fail at the first handshake).
* :func:`reload_server_tls` (SIGHUP) reads the certificate, key and CA certificates again
  into *new* objects; the ones open connections hold are never changed, and a problem
  leaves the current :class:`ServerTLS` in use.
* :class:`TLSInfoBuilder` builds the ASGI ``tls`` extension from a finished handshake.
"""

from __future__ import annotations

import hashlib
import os
import ssl
from dataclasses import dataclass, replace
from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.logger import QuicFileLogger
from aioquic.quic.packet import QuicProtocolVersion
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .config import Config

_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
_VERIFY_MODES = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


class TLSConfigError(Exception):
    """The TLS configuration cannot be used (missing file, bad key, wrong password)."""


def create_ssl_context(
    config: Config, alpn: tuple[str, ...] = ("h2", "http/1.1")
) -> ssl.SSLContext:
    """A server-side ``SSLContext`` for the TCP endpoints."""
    if config.certfile is None:
        raise TLSConfigError("no certificate configured (--certfile)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")
    load_certificate(context, config)
    if config.ca_certs:
        try:
            context.load_verify_locations(cafile=config.ca_certs)
        except (OSError, ssl.SSLError) as exc:
            raise TLSConfigError(
                f"cannot load CA certificates {config.ca_certs!r}: {_why(exc)}"
            ) from None
    context.verify_mode = _VERIFY_MODES[config.verify_mode]
    if context.verify_mode != ssl.CERT_NONE and not config.ca_certs:
        raise TLSConfigError("--verify-mode needs --ca-certs to verify client certificates against")
    context.set_alpn_protocols(list(alpn))
    keylog = config.ssl_keylog_file or os.environ.get("SSLKEYLOGFILE")
    if keylog:
        context.keylog_filename = keylog
    return context


def load_certificate(context: ssl.SSLContext, config: Config) -> None:
    """Load ``certfile``/``keyfile`` into ``context``, with errors fit for a person."""
    certfile = config.certfile
    assert certfile is not None
    for label, path in (("certificate", certfile), ("key", config.keyfile)):
        if path is not None and not os.path.isfile(path):
            raise TLSConfigError(f"{label} file not found: {path}")
        if path is not None and not os.access(path, os.R_OK):
            raise TLSConfigError(f"{label} file is not readable: {path}")
    try:
        context.load_cert_chain(certfile, config.keyfile, config.keyfile_password)
    except ssl.SSLError as exc:
        raise TLSConfigError(
            f"cannot load certificate {certfile!r}"
            + (f" with key {config.keyfile!r}" if config.keyfile else "")
            + f": {_why(exc)}"
        ) from None
    except OSError as exc:
        raise TLSConfigError(f"cannot read certificate {certfile!r}: {_why(exc)}") from None


def load_quic_certificate(configuration: Any, config: Config) -> None:
    """Load ``certfile``/``keyfile`` (and password) into a ``QuicConfiguration``."""
    certfile = config.certfile
    if certfile is None:
        raise TLSConfigError("QUIC needs a certificate (--certfile)")
    for label, path in (("certificate", certfile), ("key", config.keyfile)):
        if path is not None and not os.path.isfile(path):
            raise TLSConfigError(f"{label} file not found: {path}")
    try:
        configuration.load_cert_chain(certfile, config.keyfile, config.keyfile_password)
    except (ValueError, TypeError) as exc:
        raise TLSConfigError(
            f"cannot load certificate {certfile!r} for QUIC: {_why(exc)}"
        ) from None
    except OSError as exc:
        raise TLSConfigError(f"cannot read certificate {certfile!r}: {_why(exc)}") from None
    _check_quic_key(configuration, certfile, config.keyfile)


def _check_quic_key(configuration: Any, certfile: str, keyfile: str | None) -> None:
    """The private key must be the certificate's (OpenSSL checks this for TCP; aioquic does
    not, and a mismatch would only show as failed handshakes)."""
    key = configuration.private_key
    if key is None:
        raise TLSConfigError(f"no private key for {certfile!r} (--keyfile)")
    if _spki(key.public_key()) != _spki(configuration.certificate.public_key()):
        raise TLSConfigError(
            f"the key {keyfile or certfile!r} does not belong to the certificate {certfile!r}"
        )


def _spki(public_key: Any) -> bytes:
    return bytes(public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))


def describe_certificate(certfile: str) -> str:
    """``subject, notAfter, SHA-256 fingerprint`` of the first certificate in ``certfile``,
    for the log (the file's name if it cannot be read)."""
    try:
        with open(certfile, "rb") as file:
            leaf = x509.load_pem_x509_certificates(file.read())[0]
    except (OSError, ValueError, IndexError):
        return certfile
    digest = hashlib.sha256(leaf.public_bytes(Encoding.DER)).hexdigest().upper()
    fingerprint = ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))
    return (
        f"subject {leaf.subject.rfc4514_string()}, "
        f"notAfter {leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC, SHA-256 {fingerprint}"
    )


def _why(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
    return str(reason).replace("_", " ").lower()


class TLSInfoBuilder:
    """Builds the ASGI ``tls`` extension dict; cipher ids are looked up once."""

    def __init__(self, context: ssl.SSLContext, server_cert_pem: str | None) -> None:
        self._cipher_ids = {c["name"]: c["id"] & 0xFFFF for c in context.get_ciphers()}
        self._server_cert = server_cert_pem

    def build(self, ssl_object: ssl.SSLObject) -> dict[str, Any]:
        """The ``tls`` extension for one handshake."""
        cipher = ssl_object.cipher()
        version = ssl_object.version()
        chain: list[str] = []
        name: str | None = None
        der = ssl_object.getpeercert(binary_form=True)
        if der:
            chain.append(ssl.DER_cert_to_PEM_cert(der))
            name = _subject_name(der)
        return {
            "server_cert": self._server_cert,
            "client_cert_chain": chain,
            "client_cert_name": name,
            "client_cert_error": None,
            "tls_version": _TLS_VERSIONS.get(version or "", None),
            "cipher_suite": self._cipher_ids.get(cipher[0]) if cipher else None,
        }


def _subject_name(der: bytes) -> str | None:
    try:
        return x509.load_der_x509_certificate(der).subject.rfc4514_string()
    except ValueError:
        return None


def read_server_cert_pem(config: Config) -> str | None:
    """The first certificate of ``certfile`` as PEM text (for the ``tls`` extension)."""
    if config.certfile is None:
        return None
    try:
        with open(config.certfile, encoding="ascii", errors="replace") as file:
            text = file.read()
    except OSError:
        return None
    begin = text.find("-----BEGIN CERTIFICATE-----")
    end = text.find("-----END CERTIFICATE-----", begin)
    if begin < 0 or end < 0:
        return None
    return text[begin : end + len("-----END CERTIFICATE-----")] + "\n"


def quic_configuration(
    config: Config, *, max_datagram_size: int | None = None
) -> QuicConfiguration:
    """The server's :class:`QuicConfiguration` for HTTP/3."""
    configuration = QuicConfiguration(
        is_client=False,
        alpn_protocols=["h3"],
        idle_timeout=config.quic_idle_timeout,
        max_datagram_size=max_datagram_size or config.quic_max_datagram_size,
        congestion_control_algorithm=config.quic_congestion_control,
        supported_versions=[QuicProtocolVersion.VERSION_1, QuicProtocolVersion.VERSION_2],
        max_data=config.quic_max_data,
        max_stream_data=config.quic_stream_window_size,
    )
    if config.webtransport:
        # QUIC DATAGRAM frames (RFC 9221) carry WebTransport's HTTP Datagrams.
        configuration.max_datagram_frame_size = 65536
    return configuration


def build_quic_configuration(config: Config) -> QuicConfiguration:
    """The server's QUIC configuration with certificate, qlog and key log."""
    configuration = quic_configuration(config)
    load_quic_certificate(configuration, config)
    if config.quic_qlog_dir:
        os.makedirs(config.quic_qlog_dir, exist_ok=True)
        configuration.quic_logger = QuicFileLogger(config.quic_qlog_dir)
    keylog = config.ssl_keylog_file or os.environ.get("SSLKEYLOGFILE")
    if keylog:
        configuration.secrets_log_file = open(keylog, "a")
    return configuration


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """Everything TLS one server needs, built once before it binds."""

    #: For ``--bind`` (TLS over TCP); ``None`` when there is no certificate or TLS bind.
    ssl_context: ssl.SSLContext | None
    tls_info: TLSInfoBuilder | None
    #: For ``--quic-bind``; ``None`` without QUIC listeners.
    quic: QuicConfiguration | None


def build_server_tls(config: Config) -> ServerTLS:
    """Load the certificate for TCP and QUIC; :class:`TLSConfigError` if it cannot be used
    (raised before anything is bound)."""
    ssl_context = tls_info = None
    if config.certfile is not None and config.bind:
        ssl_context = create_ssl_context(config)
        tls_info = TLSInfoBuilder(ssl_context, read_server_cert_pem(config))
    quic = build_quic_configuration(config) if config.quic_bind else None
    return ServerTLS(ssl_context, tls_info, quic)


def reload_server_tls(config: Config, current: ServerTLS) -> ServerTLS:
    """The certificate, key and ``--ca-certs`` read again (SIGHUP), for the endpoints
    ``current`` serves: a new ``SSLContext`` and a copy of the QUIC configuration with the
    new certificate (its qlog and key-log settings kept, the key-log file not opened
    again). Raises :class:`TLSConfigError` and changes nothing if they cannot be used."""
    ssl_context = tls_info = None
    if current.ssl_context is not None:
        ssl_context = create_ssl_context(config)
        tls_info = TLSInfoBuilder(ssl_context, read_server_cert_pem(config))
    quic = None
    if current.quic is not None:
        # A fresh certificate slot: aioquic keeps a key it does not find in the new files.
        quic = replace(current.quic, certificate=None, certificate_chain=[], private_key=None)
        load_quic_certificate(quic, config)
    return ServerTLS(ssl_context, tls_info, quic)
