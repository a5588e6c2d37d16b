"""``kvroute epp --require-client-cert`` (issue 20 finding 7): mTLS on the ext_proc port.

Real gRPC over loopback TLS; the certificates are made here (a CA, a server and a client leaf).
"""

from __future__ import annotations

import datetime
import ipaddress

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvroute.app import EppApp
from kvroute.errors import ConfigError
from kvroute.extproc.server import TlsMaterial
from kvroute.settings import EppSettings


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey,
    *, ca: bool,
) -> bytes:  # fmt: skip
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


async def _check(port: int, ca: bytes, client: tuple[bytes, bytes] | None) -> int:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=client[1] if client else None,
        certificate_chain=client[0] if client else None,
    )
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    return int(resp.status)


async def test_ext_proc_requires_a_client_certificate_from_the_ca(tmp_path: object) -> None:
    from pathlib import Path

    tmp = Path(str(tmp_path))
    ca_key, server_key, client_key, rogue_key = (
        ec.generate_private_key(ec.SECP256R1()) for _ in "1234"
    )
    ca = _cert("test-ca", ca_key, "test-ca", ca_key, ca=True)
    server = _cert("kvroute-epp", server_key, "test-ca", ca_key, ca=False)
    client = _cert("envoy", client_key, "test-ca", ca_key, ca=False)
    rogue = _cert("rogue", rogue_key, "rogue", rogue_key, ca=False)  # self-signed, not the CA's
    (tmp / "ca.pem").write_bytes(ca)
    settings = EppSettings(
        grpc_port=0, grpc_health_port=0, metrics_port=0, bind_host="127.0.0.1",
        endpoints=(("127.0.0.1", 1),), secure_serving=True, health_checking=True,
        require_client_cert=True, client_ca_path=tmp / "ca.pem",
    )  # fmt: skip
    tls = TlsMaterial(cert_chain=server, private_key=_pem_key(server_key))
    async with EppApp(settings, tls=tls) as app:
        assert app.tls is not None
        assert app.tls.client_ca == ca
        assert await _check(app.ports.grpc, ca, (client, _pem_key(client_key))) in (1, 2)
        for wrong in (None, (rogue, _pem_key(rogue_key))):
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await _check(app.ports.grpc, ca, wrong)
            assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


def test_require_client_cert_needs_tls_and_a_ca() -> None:
    with pytest.raises(ConfigError, match="--client-ca-path"):
        EppSettings(require_client_cert=True)
    with pytest.raises(ConfigError, match="--secure-serving=true"):
        EppSettings(require_client_cert=True, secure_serving=False)
