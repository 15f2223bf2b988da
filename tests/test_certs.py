"""Tests for :mod:`quicserve.certs`: development CA, server and client certificates.

Everything is generated into ``tmp_path`` at test time; no key is committed. TLS handshakes run
in memory over ``ssl.MemoryBIO`` pairs, so no socket is opened.
"""

from __future__ import annotations

import base64
import hashlib
import os
import ssl
import stat
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from quicserve.certs import (
    CertificateError,
    DevCertificate,
    default_data_dir,
    ensure_dev_certificate,
    make_client_certificate,
    make_test_certificates,
    spki_sha256_base64,
    trust_instructions,
)

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


def load_certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def load_leaf(path: Path) -> x509.Certificate:
    return load_certs(path)[0]


def snapshot(cert: DevCertificate) -> dict[str, bytes]:
    paths = (cert.certfile, cert.keyfile, cert.ca_certfile, cert.ca_keyfile)
    return {p.name: p.read_bytes() for p in paths}


@pytest.fixture
def dev(tmp_path: Path) -> DevCertificate:
    return ensure_dev_certificate(tmp_path / "data")


# -- files ---------------------------------------------------------------------------------


def test_first_call_creates_the_four_files(dev: DevCertificate, tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert dev.created
    assert dev.certfile == data / "localhost.pem"
    assert dev.keyfile == data / "localhost-key.pem"
    assert dev.ca_certfile == data / "ca.pem"
    assert dev.ca_keyfile == data / "ca-key.pem"
    for path in (dev.certfile, dev.keyfile, dev.ca_certfile, dev.ca_keyfile):
        assert path.is_file()
    # Only the four files (and the lock) remain: temporary files were renamed into place.
    assert sorted(p.name for p in data.iterdir()) == [
        ".lock",
        "ca-key.pem",
        "ca.pem",
        "localhost-key.pem",
        "localhost.pem",
    ]
    assert b"PRIVATE KEY" not in dev.certfile.read_bytes()
    assert b"PRIVATE KEY" not in dev.ca_certfile.read_bytes()


@posix_only
def test_directory_and_key_permissions(dev: DevCertificate) -> None:
    assert stat.S_IMODE(dev.certfile.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(dev.keyfile.stat().st_mode) == 0o600
    assert stat.S_IMODE(dev.ca_keyfile.stat().st_mode) == 0o600
    assert stat.S_IMODE(dev.certfile.stat().st_mode) == 0o644


def test_certfile_is_the_chain_leaf_then_ca(dev: DevCertificate) -> None:
    chain = load_certs(dev.certfile)
    assert len(chain) == 2
    assert chain[1] == x509.load_pem_x509_certificate(dev.ca_certfile.read_bytes())


def test_keys_match_their_certificates(dev: DevCertificate) -> None:
    for cert_path, key_path in ((dev.certfile, dev.keyfile), (dev.ca_certfile, dev.ca_keyfile)):
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert isinstance(key.curve, ec.SECP256R1)
        assert key.public_key() == load_leaf(cert_path).public_key()


# -- certificate contents ------------------------------------------------------------------


def test_ca_certificate(dev: DevCertificate) -> None:
    ca = load_leaf(dev.ca_certfile)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca and constraints.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    cn = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert isinstance(cn, str) and cn.startswith("quicserve development CA ")
    assert len(cn) > len("quicserve development CA ")
    org = ca.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    assert org == "quicserve development"
    assert ca.issuer == ca.subject
    validity = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert timedelta(days=3650) <= validity <= timedelta(days=3651)
    ca.verify_directly_issued_by(ca)


def test_leaf_chains_to_ca_and_has_sans(dev: DevCertificate) -> None:
    ca = load_leaf(dev.ca_certfile)
    leaf = load_leaf(dev.certfile)
    leaf.verify_directly_issued_by(ca)  # raises if the signature is wrong
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ip_address("127.0.0.1"),
        ip_address("::1"),
    ]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA256)
    validity = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert validity < timedelta(days=398)
    assert leaf.not_valid_after_utc - datetime.now(UTC) > timedelta(days=364)


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "::1"])
def test_leaf_passes_the_webpki_verifier(dev: DevCertificate, name: str) -> None:
    # cryptography's verifier applies the CA/Browser Forum profile, stricter than OpenSSL's.
    leaf, *intermediates = load_certs(dev.certfile)
    store = Store([load_leaf(dev.ca_certfile)])
    subject: x509.GeneralName
    try:
        subject = x509.IPAddress(ip_address(name))
    except ValueError:
        subject = x509.DNSName(name)
    verifier = PolicyBuilder().store(store).build_server_verifier(subject)
    chain = verifier.verify(leaf, intermediates)
    assert chain[0] == leaf


# -- re-use and renewal --------------------------------------------------------------------


def test_second_call_reuses(dev: DevCertificate) -> None:
    before = snapshot(dev)
    again = ensure_dev_certificate(dev.certfile.parent)
    assert not again.created
    assert (again.certfile, again.keyfile, again.ca_certfile) == (
        dev.certfile,
        dev.keyfile,
        dev.ca_certfile,
    )
    assert snapshot(again) == before


def test_reuse_when_a_subset_of_names_is_asked(dev: DevCertificate) -> None:
    again = ensure_dev_certificate(dev.certfile.parent, ["LOCALHOST", "[::1]"])
    assert not again.created


def test_leaf_expiring_soon_is_reissued_keeping_ca_and_key(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    # Issued 360 days ago: 5 days left, inside the 7-day renewal window.
    old = ensure_dev_certificate(tmp_path, now=now - timedelta(days=360))
    before = snapshot(old)
    old_spki = spki_sha256_base64(old.certfile)
    assert ensure_dev_certificate(tmp_path, now=now - timedelta(days=358)).created is False

    new = ensure_dev_certificate(tmp_path, now=now)
    assert new.created
    after = snapshot(new)
    assert after["localhost.pem"] != before["localhost.pem"]
    assert after["ca.pem"] == before["ca.pem"]
    assert after["ca-key.pem"] == before["ca-key.pem"]
    assert after["localhost-key.pem"] == before["localhost-key.pem"]
    assert spki_sha256_base64(new.certfile) == old_spki  # the Chromium pin survives renewal
    leaf = load_leaf(new.certfile)
    assert leaf.not_valid_after_utc - now > timedelta(days=364)
    leaf.verify_directly_issued_by(load_leaf(new.ca_certfile))


def test_expired_leaf_is_reissued(tmp_path: Path) -> None:
    dev = make_test_certificates(tmp_path)
    # Replace the leaf with one that expired yesterday, signed by the same CA.
    ca_cert = load_leaf(dev.ca_certfile)
    ca_key = serialization.load_pem_private_key(dev.ca_keyfile.read_bytes(), password=None)
    leaf_key = serialization.load_pem_private_key(dev.keyfile.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    assert isinstance(leaf_key, ec.EllipticCurvePrivateKey)
    now = datetime.now(UTC)
    expired = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=30))
        .not_valid_after(now - timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    dev.certfile.write_bytes(expired.public_bytes(serialization.Encoding.PEM))

    renewed = ensure_dev_certificate(tmp_path, ["localhost"])
    assert renewed.created
    leaf = load_leaf(renewed.certfile)
    assert leaf.not_valid_after_utc > now + timedelta(days=300)
    assert renewed.ca_certfile.read_bytes() == ca_cert.public_bytes(serialization.Encoding.PEM)


def test_expiring_ca_is_replaced(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    old = make_test_certificates(tmp_path, now=now - timedelta(days=3650 - 3))
    old_ca = old.ca_certfile.read_bytes()
    new = ensure_dev_certificate(tmp_path, now=now)
    assert new.created
    assert new.ca_certfile.read_bytes() != old_ca
    load_leaf(new.certfile).verify_directly_issued_by(load_leaf(new.ca_certfile))


def test_new_hostnames_reissue_the_leaf(dev: DevCertificate) -> None:
    before = snapshot(dev)
    wider = ensure_dev_certificate(dev.certfile.parent, ["localhost", "app.test", "10.0.0.7"])
    assert wider.created
    assert wider.ca_certfile.read_bytes() == before["ca.pem"]
    sans = load_leaf(wider.certfile).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sans.value.get_values_for_type(x509.DNSName) == ["localhost", "app.test"]
    assert sans.value.get_values_for_type(x509.IPAddress) == [ip_address("10.0.0.7")]


@pytest.mark.parametrize("victim", ["localhost.pem", "localhost-key.pem", "ca.pem"])
def test_corrupt_file_is_replaced(dev: DevCertificate, victim: str) -> None:
    (dev.certfile.parent / victim).write_bytes(b"-----BEGIN garbage\n")
    fixed = ensure_dev_certificate(dev.certfile.parent)
    assert fixed.created
    assert not ensure_dev_certificate(dev.certfile.parent).created
    server_context(fixed)  # key and certificate match again


def test_mismatched_leaf_key_is_repaired(dev: DevCertificate) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    dev.keyfile.write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    fixed = ensure_dev_certificate(dev.certfile.parent)
    assert fixed.created
    assert load_leaf(fixed.certfile).public_key() == other.public_key()


def test_concurrent_callers_agree_on_one_ca(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: ensure_dev_certificate(data), range(8)))
    assert sum(r.created for r in results) == 1
    assert len({r.ca_certfile.read_bytes() for r in results}) == 1
    assert not [p for p in data.iterdir() if p.name.endswith(".tmp")]


def test_make_test_certificates_is_always_fresh(tmp_path: Path) -> None:
    first = snapshot(make_test_certificates(tmp_path))
    second_cert = make_test_certificates(tmp_path)
    assert second_cert.created
    second = snapshot(second_cert)
    assert all(first[name] != second[name] for name in first)
    # ensure_dev_certificate accepts what make_test_certificates wrote.
    assert not ensure_dev_certificate(tmp_path).created


# -- errors --------------------------------------------------------------------------------


def test_unwritable_directory_raises_certificate_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(CertificateError) as info:
        ensure_dev_certificate(blocker / "sub")
    message = str(info.value)
    assert "\n" not in message
    assert str(blocker / "sub") in message


@pytest.mark.parametrize("bad", ["", "exa mple", "a..b", "-", "a-.test", "*", "x.*.test"])
def test_bad_hostname_raises_certificate_error(tmp_path: Path, bad: str) -> None:
    with pytest.raises(CertificateError):
        ensure_dev_certificate(tmp_path, ["localhost", bad])
    assert not (tmp_path / "ca.pem").exists()


def test_programming_errors_raise_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ensure_dev_certificate(tmp_path, [])
    with pytest.raises(ValueError):
        ensure_dev_certificate(tmp_path, "localhost")
    with pytest.raises(ValueError):
        ensure_dev_certificate(tmp_path, now=datetime(2030, 1, 1))


# -- real TLS, in memory -------------------------------------------------------------------


def server_context(dev: DevCertificate) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(dev.certfile, dev.keyfile)
    return context


def client_context(dev: DevCertificate) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname
    context.load_verify_locations(cafile=dev.ca_certfile)
    # What Python 3.13's create_default_context turns on: the certificates must pass it.
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def handshake(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext, server_hostname: str
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Pump a TLS handshake between two SSLObjects over memory BIOs until both finish."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client_done = server_done = False
    for _ in range(10):
        if not client_done:
            try:
                client.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        if not server_done:
            try:
                server.do_handshake()
                server_done = True
            except ssl.SSLWantReadError:
                pass
        c_in.write(s_out.read())
        if client_done and server_done:
            # Prove the channel works both ways.
            client.write(b"ping")
            s_in.write(c_out.read())
            assert server.read(4) == b"ping"
            return client, server
    raise AssertionError("handshake did not complete")


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "::1"])
def test_tls_handshake_in_memory(dev: DevCertificate, name: str) -> None:
    client, _ = handshake(client_context(dev), server_context(dev), name)
    peer = client.getpeercert(binary_form=True)
    assert peer == load_leaf(dev.certfile).public_bytes(serialization.Encoding.DER)
    assert client.version() == "TLSv1.3"


def test_tls_handshake_rejects_wrong_name(dev: DevCertificate) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(client_context(dev), server_context(dev), "example.com")


def test_tls_handshake_rejects_another_ca(dev: DevCertificate, tmp_path: Path) -> None:
    stranger = make_test_certificates(tmp_path / "stranger")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(client_context(stranger), server_context(dev), "localhost")


# -- client certificates (mTLS) ------------------------------------------------------------


def test_client_certificate(dev: DevCertificate, tmp_path: Path) -> None:
    certfile, keyfile = make_client_certificate(dev, tmp_path / "clients", "alice@example")
    assert certfile.name == "alice_example.pem"
    if os.name == "posix":
        assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
    cert = load_leaf(certfile)
    cert.verify_directly_issued_by(load_leaf(dev.ca_certfile))
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice@example"

    # The key signs, and the certificate's public key verifies the signature.
    key = serialization.load_pem_private_key(keyfile.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    signature = key.sign(b"challenge", ec.ECDSA(hashes.SHA256()))
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(signature, b"challenge", ec.ECDSA(hashes.SHA256()))


def test_mutual_tls_handshake(dev: DevCertificate, tmp_path: Path) -> None:
    certfile, keyfile = make_client_certificate(dev, tmp_path, "client")
    server_ctx = server_context(dev)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(cafile=dev.ca_certfile)
    client_ctx = client_context(dev)
    client_ctx.load_cert_chain(certfile, keyfile)
    _, server = handshake(client_ctx, server_ctx, "localhost")
    peer = server.getpeercert(binary_form=True)
    assert peer == load_leaf(certfile).public_bytes(serialization.Encoding.DER)

    # Without a client certificate the server refuses.
    with pytest.raises(ssl.SSLError):
        handshake(client_context(dev), server_ctx, "localhost")


def test_server_certificate_is_not_a_client_certificate(dev: DevCertificate) -> None:
    # The leaf's EKU is serverAuth only, so a server requiring clientAuth must refuse it.
    server_ctx = server_context(dev)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(cafile=dev.ca_certfile)
    client_ctx = client_context(dev)
    client_ctx.load_cert_chain(dev.certfile, dev.keyfile)
    with pytest.raises(ssl.SSLError):
        handshake(client_ctx, server_ctx, "localhost")


# -- SPKI pin and instructions -------------------------------------------------------------


def test_spki_hash(dev: DevCertificate) -> None:
    pin = spki_sha256_base64(dev.certfile)
    assert len(pin) == 44 and pin.endswith("=")
    spki = (
        load_leaf(dev.certfile)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert base64.b64decode(pin) == hashlib.sha256(spki).digest()
    assert pin != spki_sha256_base64(dev.ca_certfile)


def test_spki_hash_of_a_file_without_certificate(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    with pytest.raises(CertificateError):
        spki_sha256_base64(empty)


def test_trust_instructions(dev: DevCertificate) -> None:
    text = trust_instructions(dev)
    assert str(dev.ca_certfile) in text
    assert f"curl --cacert {dev.ca_certfile}" in text
    assert "SSL_CERT_FILE=" in text
    assert "update-ca-certificates" in text
    assert "security add-trusted-cert" in text
    assert f"--ignore-certificate-errors-spki-list={spki_sha256_base64(dev.certfile)}" in text
    assert "localhost, 127.0.0.1, ::1" in text
    assert 5 < len(text.splitlines()) < 20


# -- data directory ------------------------------------------------------------------------


def test_default_data_dir_honours_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QUICSERVE_DATA_DIR", str(tmp_path / "override"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "override"
    dev = ensure_dev_certificate()
    assert dev.certfile.parent == tmp_path / "override"
    assert dev.created


def test_default_data_dir_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("QUICSERVE_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "quicserve"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    assert default_data_dir() != Path("relative/ignored/quicserve")


@pytest.mark.skipif(sys.platform == "win32", reason="HOME-based fallbacks")
@pytest.mark.parametrize(
    ("platform", "expected"),
    [
        ("linux", (".local", "share", "quicserve")),
        ("darwin", ("Library", "Application Support", "quicserve")),
    ],
)
def test_default_data_dir_platform_fallback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, platform: str, expected: tuple[str, ...]
) -> None:
    monkeypatch.delenv("QUICSERVE_DATA_DIR", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(sys, "platform", platform)
    assert default_data_dir() == tmp_path.joinpath(*expected)


def test_default_data_dir_windows(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("QUICSERVE_DATA_DIR", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "Local"))
    monkeypatch.setattr(sys, "platform", "win32")
    assert default_data_dir() == tmp_path / "Local" / "quicserve"
