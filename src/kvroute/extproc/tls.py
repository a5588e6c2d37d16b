"""TLS material for the ext_proc server: ``--cert-path`` files or a self-signed certificate.

Upstream (``internal/tls``) serves a self-signed certificate when no path is given, and the
proxy encrypts without verifying it. The key never touches the disk here: it is generated in
memory for the life of the process.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kvroute.errors import ConfigError
from kvroute.extproc.server import TlsMaterial


def load_cert_dir(path: Path) -> TlsMaterial:
    """``tls.crt`` and ``tls.key`` from a directory (the Kubernetes TLS secret layout)."""
    try:
        return TlsMaterial(
            cert_chain=(path / "tls.crt").read_bytes(), private_key=(path / "tls.key").read_bytes()
        )
    except OSError as exc:
        raise ConfigError(f"--cert-path {path}: {exc.strerror}: {exc.filename}") from exc


def load_client_ca(path: Path) -> bytes:
    """The CA bundle (PEM) client certificates must chain to (``--client-ca-path``)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--client-ca-path {path}: {exc.strerror}") from exc
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ConfigError(f"--client-ca-path {path}: no PEM certificate in the file")
    return data


def self_signed(common_name: str = "kvroute-epp", days: int = 365) -> TlsMaterial:
    """A fresh ECDSA P-256 self-signed certificate for localhost and the EPP's name."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(common_name),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return TlsMaterial(
        cert_chain=cert.public_bytes(serialization.Encoding.PEM),
        private_key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
