"""Development certificates: a local CA and a ``localhost`` certificate, made on first use.

HTTP/3 has no cleartext mode, so ``quicserve app:app`` with no ``--certfile`` still needs a
certificate. This module makes a small development CA and a server certificate signed by it,
keeps them in a per-user data directory (:func:`default_data_dir`), and re-uses them on later
runs. Trusting the CA once (:func:`trust_instructions`) makes browsers, curl and Python accept
every certificate quicserve issues later, including renewals. Tests use
:func:`make_test_certificates` and :func:`make_client_certificate` to make fresh ones in a
temporary directory.

Rules:

* No private key is ever part of the repository or the package. Keys are made at run time and
  written only to the data directory (or the directory a test passes in).
* The data directory is created ``0700`` and key files are ``0600``. Every file is written to a
  temporary file in the same directory, flushed, then moved into place with ``os.replace``; the
  whole check-or-issue step runs under an exclusive lock on ``.lock``, so two servers starting
  at once neither corrupt the files nor make two different CAs.
* Nothing on disk is trusted blindly: a file is re-used only if it parses, the key matches the
  certificate, the leaf verifies against the CA, it covers the requested names and it is valid
  for more than :data:`RENEW_BEFORE`. Anything else is re-issued, keeping the CA while it is
  usable (so people who trusted it need not do it again) and the leaf key while it parses (so
  the SPKI hash given to Chromium stays the same across renewals).
* The certificates follow what browsers and OpenSSL's strict mode check: EC P-256 with
  ECDSA-SHA256, a critical ``basicConstraints``, subject and authority key identifiers,
  ``subjectAltName`` for every name (the CN is ignored by clients), ``serverAuth`` /
  ``clientAuth`` EKU, and a leaf validity of 365 days (the CA/Browser Forum limit is 398 days;
  Apple's limit for locally trusted roots is 825).
* Errors a person can act on (a directory that cannot be written, a file that cannot be read,
  a name that is neither a host name nor an IP address) raise :class:`CertificateError` with a
  one-line message; programming errors (no names at all, a naive ``now``) raise ``ValueError``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_CERT_NAME",
    "CA_KEY_NAME",
    "DEFAULT_HOSTNAMES",
    "LEAF_CERT_NAME",
    "LEAF_KEY_NAME",
    "CertificateError",
    "DevCertificate",
    "default_data_dir",
    "ensure_dev_certificate",
    "make_client_certificate",
    "make_test_certificates",
    "spki_sha256_base64",
    "trust_instructions",
]

CA_CERT_NAME = "ca.pem"
CA_KEY_NAME = "ca-key.pem"
LEAF_CERT_NAME = "localhost.pem"
LEAF_KEY_NAME = "localhost-key.pem"
#: Where the CA goes in the system store on Debian and Ubuntu (``update-ca-certificates``).
SYSTEM_ANCHOR = "/usr/local/share/ca-certificates/quicserve-development-ca.crt"
LOCK_NAME = ".lock"

DEFAULT_HOSTNAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")

CA_VALIDITY = timedelta(days=3650)
#: 365 days: under the 398-day maximum browsers enforce for server certificates.
LEAF_VALIDITY = timedelta(days=365)
#: A certificate with less than this left is renewed rather than re-used.
RENEW_BEFORE = timedelta(days=7)
#: notBefore is set this far in the past so a peer whose clock is slightly behind accepts it.
BACKDATE = timedelta(hours=1)

ORGANIZATION = "quicserve development"

# A DNS name: labels of letters, digits, '-' (not at either end) and '_' (seen in dev setups),
# optionally behind one leading wildcard label (RFC 6125 section 6.4.3).
_DNS_NAME = re.compile(
    r"(\*\.)?(?:[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?\.)*[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?"
)

_PRIVATE_MODE = 0o600
_PUBLIC_MODE = 0o644
_DIR_MODE = 0o700


class CertificateError(Exception):
    """A development certificate could not be made or read; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class DevCertificate:
    """Where a development certificate and its CA are, and whether they were just made."""

    certfile: Path
    """The server certificate chain (leaf, then CA): what ``--certfile`` takes."""
    keyfile: Path
    """The server certificate's private key: what ``--keyfile`` takes."""
    ca_certfile: Path
    """The development CA certificate: what clients are told to trust."""
    created: bool
    """True when the leaf (and maybe the CA) was issued by this call rather than re-used."""

    @property
    def ca_keyfile(self) -> Path:
        """The CA's private key, kept beside :attr:`ca_certfile`."""
        return self.ca_certfile.with_name(CA_KEY_NAME)


def default_data_dir() -> Path:
    """The per-user directory quicserve keeps its development certificates in.

    ``$QUICSERVE_DATA_DIR`` if set, else ``$XDG_DATA_HOME/quicserve``, else the platform's
    usual place: ``~/.local/share/quicserve``, ``~/Library/Application Support/quicserve`` on
    macOS, ``%LOCALAPPDATA%\\quicserve`` on Windows. Empty variables count as unset.
    """
    override = os.environ.get("QUICSERVE_DATA_DIR")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    # The XDG spec says relative paths in $XDG_* are invalid and must be ignored.
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "quicserve"
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        base = Path(local) if local else Path.home() / "AppData" / "Local"
        return base / "quicserve"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "quicserve"
    return Path.home() / ".local" / "share" / "quicserve"


def ensure_dev_certificate(
    data_dir: Path | None = None,
    hostnames: Sequence[str] = DEFAULT_HOSTNAMES,
    *,
    now: datetime | None = None,
) -> DevCertificate:
    """Return a usable development certificate for ``hostnames``, making one if needed.

    Re-uses the files in ``data_dir`` (default :func:`default_data_dir`) when they are
    consistent, cover every name in ``hostnames`` and stay valid for more than
    :data:`RENEW_BEFORE`; otherwise issues a new leaf for exactly ``hostnames``, and a new CA
    only if the old one is missing, broken or expiring. ``now`` (timezone-aware) is the clock,
    for tests. Raises :class:`CertificateError` when the directory cannot be used.
    """
    directory = default_data_dir() if data_dir is None else Path(data_dir)
    return _provide(directory, hostnames, _clock(now), fresh=False)


def make_test_certificates(
    directory: Path,
    hostnames: Sequence[str] = DEFAULT_HOSTNAMES,
    *,
    now: datetime | None = None,
) -> DevCertificate:
    """Make a brand-new CA and leaf in ``directory`` (same file names as the data directory).

    For tests: nothing is re-used, so every call yields new keys. ``created`` is always True.
    """
    return _provide(Path(directory), hostnames, _clock(now), fresh=True)


def make_client_certificate(
    ca: DevCertificate, directory: Path, common_name: str = "client"
) -> tuple[Path, Path]:
    """Issue a client certificate (EKU ``clientAuth``) signed by ``ca``'s CA, for mTLS tests.

    Writes ``<name>.pem`` (the certificate followed by the CA) and ``<name>-key.pem`` into
    ``directory``, where ``<name>`` is ``common_name`` made safe for a file name, and returns
    ``(certfile, keyfile)``.
    """
    if not common_name or len(common_name) > 64:
        raise ValueError("common_name must be 1 to 64 characters")
    directory = Path(directory)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", common_name).strip(".") or "client"
    certfile, keyfile = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
    now = _clock(None)
    ca_cert = _read_certs(ca.ca_certfile)
    issuer = _read_issuer(ca_cert[0] if ca_cert else None, ca.ca_keyfile, now)
    if issuer is None:
        raise CertificateError(
            f"cannot issue a client certificate: {ca.ca_certfile} and {ca.ca_keyfile} "
            "are not a usable CA certificate and key"
        )
    key = _new_key()
    cert = _issue(
        issuer,
        key,
        subject=_name(common_name),
        sans=None,
        eku=ExtendedKeyUsageOID.CLIENT_AUTH,
        now=now,
    )
    with _writable(directory):
        _prepare_dir(directory)
        _write_atomic(keyfile, _pem_key(key), private=True)
        _write_atomic(certfile, _pem_cert(cert) + _pem_cert(issuer.cert), private=False)
    return certfile, keyfile


def spki_sha256_base64(certfile: Path) -> str:
    """Base64 of the SHA-256 of the first certificate's SubjectPublicKeyInfo (DER).

    This is the pin format of Chromium's ``--ignore-certificate-errors-spki-list``.
    """
    certs = _read_certs(Path(certfile))
    if not certs:
        raise CertificateError(f"no PEM certificate in {certfile}")
    spki = (
        certs[0]
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def trust_instructions(cert: DevCertificate) -> str:
    """Short human text: where the CA is, how to trust it, and the SPKI pin for Chromium."""
    ca = cert.ca_certfile
    certs = _read_certs(cert.certfile)
    if not certs:
        raise CertificateError(f"no PEM certificate in {cert.certfile}")
    leaf = certs[0]
    names = ", ".join(_san_strings(leaf)) or "(no names)"
    until = leaf.not_valid_after_utc.date().isoformat()
    spki = spki_sha256_base64(cert.certfile)
    return "\n".join(
        [
            f"Development certificate for {names} (valid until {until}):",
            f"  {cert.certfile}",
            f"Signed by the quicserve development CA: {ca}",
            "Clients accept it once they trust that CA (keep ca-key.pem private):",
            f"  curl            curl --cacert {ca} https://localhost:8443/",
            f"  Python          SSL_CERT_FILE={ca}, or for httpx"
            f" verify=ssl.create_default_context(cafile='{ca}')",
            f"  Debian/Ubuntu   sudo cp {ca} {SYSTEM_ANCHOR} && sudo update-ca-certificates",
            "  macOS           security add-trusted-cert -r trustRoot"
            f" -k ~/Library/Keychains/login.keychain-db {ca}",
            "  Firefox, Chromium: quicserve certs trust (every Firefox profile, with the pref"
            " Firefox needs for HTTP/3,",
            "                   and ~/.pki/nssdb; --system adds the system store;"
            " 'quicserve certs untrust' undoes it)",
            "HTTP/3 in a browser: Firefox follows alt-svc once the CA is trusted that way."
            " Chromium never uses QUIC",
            "for a locally trusted root: 'quicserve certs browser chromium' starts it with"
            " QUIC forced and the pin",
            f"  --ignore-certificate-errors-spki-list={spki}",
            "('quicserve certs browser firefox' opens a throwaway Firefox profile set up the"
            " same way.)",
        ]
    )


# -- issuing -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Issuer:
    """A CA certificate and the key that signs with it."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _provide(
    directory: Path, hostnames: Sequence[str], now: datetime, *, fresh: bool
) -> DevCertificate:
    """Re-use or (re-)issue the files in ``directory``; the body of the two public makers."""
    wanted = _general_names(hostnames)  # validate before touching the disk
    ca_path, ca_key_path = directory / CA_CERT_NAME, directory / CA_KEY_NAME
    leaf_path, leaf_key_path = directory / LEAF_CERT_NAME, directory / LEAF_KEY_NAME
    with _writable(directory):
        _prepare_dir(directory)
        with _locked(directory):
            ca_certs = None if fresh else _read_certs(ca_path)
            ca_cert = ca_certs[0] if ca_certs and _ca_usable(ca_certs[0], now) else None
            if ca_cert is not None and _leaf_usable(leaf_path, leaf_key_path, ca_cert, wanted, now):
                return DevCertificate(leaf_path, leaf_key_path, ca_path, created=False)

            issuer = None if fresh else _read_issuer(ca_cert, ca_key_path, now)
            if issuer is None:
                issuer = _make_ca(now)
                # Key first: a crash in between leaves a mismatched pair, which the next
                # run detects and replaces, never a certificate without its key.
                _write_atomic(ca_key_path, _pem_key(issuer.key), private=True)
                _write_atomic(ca_path, _pem_cert(issuer.cert), private=False)

            leaf_key = None if fresh else _read_key(leaf_key_path)
            if leaf_key is None:
                leaf_key = _new_key()
                _write_atomic(leaf_key_path, _pem_key(leaf_key), private=True)
            leaf = _issue(
                issuer,
                leaf_key,
                subject=_name(_leaf_common_name(hostnames)),
                sans=wanted,
                eku=ExtendedKeyUsageOID.SERVER_AUTH,
                now=now,
            )
            _write_atomic(leaf_path, _pem_cert(leaf) + _pem_cert(issuer.cert), private=False)
    return DevCertificate(leaf_path, leaf_key_path, ca_path, created=True)


def _make_ca(now: datetime) -> _Issuer:
    """A new self-signed CA that may sign end-entity certificates only (pathlen 0)."""
    key = _new_key()
    # The random id tells two developers' (or two machines') CAs apart in trust stores.
    subject = _name(f"quicserve development CA {secrets.token_hex(4)}")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return _Issuer(cert, key)


def _issue(
    issuer: _Issuer,
    key: ec.EllipticCurvePrivateKey,
    *,
    subject: x509.Name,
    sans: list[x509.GeneralName] | None,
    eku: x509.ObjectIdentifier,
    now: datetime,
) -> x509.Certificate:
    """An end-entity certificate for ``key``, signed by ``issuer``, never outliving it."""
    not_after = min(now + LEAF_VALIDITY, issuer.cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(now - BACKDATE, issuer.cert.not_valid_before_utc))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer.key, hashes.SHA256())


def _new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key: accepted by every TLS stack and cheap to make."""
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    """A subject with ``common_name`` and the development organization."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _leaf_common_name(hostnames: Sequence[str]) -> str:
    """The first name if it fits the 64-character CN limit (clients ignore the CN anyway)."""
    first = hostnames[0]
    return first if len(first) <= 64 else "quicserve development certificate"


def _general_names(hostnames: Sequence[str]) -> list[x509.GeneralName]:
    """``hostnames`` as SAN entries: IP addresses as ``IPAddress``, the rest as ``DNSName``."""
    if isinstance(hostnames, str):
        raise ValueError("hostnames must be a sequence of names, not one string")
    if not hostnames:
        raise ValueError("hostnames must name at least one host")
    names: list[x509.GeneralName] = []
    for raw in hostnames:
        host = raw.strip()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        try:
            # IDNA A-labels: certificates hold ASCII only (RFC 5280 section 7.2).
            ascii_name = host.rstrip(".").encode("idna").decode("ascii").lower()
        except UnicodeError:
            ascii_name = ""
        if not _DNS_NAME.fullmatch(ascii_name):
            raise CertificateError(f"not a host name or IP address: {raw!r}")
        names.append(x509.DNSName(ascii_name))
    return names


# -- checking what is on disk --------------------------------------------------------------


def _ca_usable(cert: x509.Certificate, now: datetime) -> bool:
    """Whether ``cert`` is a CA certificate valid now and for more than RENEW_BEFORE."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca and _valid_for(cert, now)


def _read_issuer(ca_cert: x509.Certificate | None, key_path: Path, now: datetime) -> _Issuer | None:
    """The CA certificate with its key, or None if the key is missing or does not match."""
    if ca_cert is None or not _ca_usable(ca_cert, now):
        return None
    key = _read_key(key_path)
    if key is None or key.public_key() != ca_cert.public_key():
        return None
    return _Issuer(ca_cert, key)


def _leaf_usable(
    cert_path: Path,
    key_path: Path,
    ca_cert: x509.Certificate,
    wanted: list[x509.GeneralName],
    now: datetime,
) -> bool:
    """Whether the leaf on disk can be served as it is for the ``wanted`` names."""
    certs = _read_certs(cert_path)
    key = _read_key(key_path)
    if not certs or key is None:
        return False
    leaf = certs[0]
    if key.public_key() != leaf.public_key() or not _valid_for(leaf, now):
        return False
    try:
        leaf.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    if ExtendedKeyUsageOID.SERVER_AUTH not in eku:
        return False
    # DNSName equality is case-sensitive in cryptography; we only ever write lower case.
    return all(name in sans for name in wanted)


def _valid_for(cert: x509.Certificate, now: datetime) -> bool:
    """Valid at ``now`` and for more than RENEW_BEFORE after it."""
    return cert.not_valid_before_utc <= now and cert.not_valid_after_utc - now > RENEW_BEFORE


def _read_certs(path: Path) -> list[x509.Certificate] | None:
    """The PEM certificates in ``path``, or None if it is missing or does not parse."""
    data = _read_bytes(path)
    if data is None:
        return None
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        return None


def _read_key(path: Path) -> ec.EllipticCurvePrivateKey | None:
    """The unencrypted P-256 key in ``path``, or None if missing, broken or of another kind."""
    data = _read_bytes(path)
    if data is None:
        return None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    return None


def _read_bytes(path: Path) -> bytes | None:
    """The file's bytes, None if it does not exist; other OS errors raise CertificateError."""
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return None
    except OSError as exc:
        raise CertificateError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _san_strings(cert: x509.Certificate) -> list[str]:
    """The certificate's DNS names and IP addresses, for display."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    ips = [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    return [*sans.get_values_for_type(x509.DNSName), *ips]


# -- files ---------------------------------------------------------------------------------


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    # Unencrypted PKCS#8 ("BEGIN PRIVATE KEY"): what ssl.SSLContext.load_cert_chain and
    # aioquic load without a password. The 0600 mode and 0700 directory protect it.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@contextlib.contextmanager
def _writable(directory: Path) -> Iterator[None]:
    """Turn OS errors while creating files in ``directory`` into a one-line CertificateError."""
    try:
        yield
    except OSError as exc:
        raise CertificateError(
            f"cannot write development certificates to {directory}: {exc.strerror or exc} "
            "(set QUICSERVE_DATA_DIR to a writable directory, or pass --certfile/--keyfile)"
        ) from exc


def _prepare_dir(directory: Path) -> None:
    """Create ``directory`` (mode 0700) if it does not exist yet; leave existing ones alone."""
    if not directory.is_dir():
        directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)


def _write_atomic(path: Path, data: bytes, *, private: bool) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never half."""
    # mkstemp creates the file 0600 from the start, so a key is never briefly readable.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, _PRIVATE_MODE if private else _PUBLIC_MODE)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory/.lock`` (blocks until other processes finish).

    Atomic writes keep each file whole; the lock keeps the *set* of files consistent, so two
    servers starting together agree on one CA instead of each writing its own.
    """
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, _PRIVATE_MODE)
    try:
        if sys.platform == "win32":
            import msvcrt

            # LK_LOCK retries for about ten seconds, then raises OSError.
            msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
            try:
                yield
            finally:
                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _clock(now: datetime | None) -> datetime:
    """``now`` checked to be timezone-aware, or the current UTC time."""
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now
