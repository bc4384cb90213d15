"""PKI for the local control plane: CA, apiserver serving cert, client certs, SA keys.

ECDSA P-256 keys throughout: generation is instant (RSA-2048 costs ~100 ms per
key) and every component involved accepts them, including ES256 service-account
tokens. Files are written once per state directory and reused, so kubeconfigs
stay valid across restarts of the same cluster.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Service network handed to kube-apiserver; its first IP is the `kubernetes` Service.
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
KUBERNETES_SERVICE_IP = "10.0.0.1"
SERVING_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
SERVING_IPS = ("127.0.0.1", KUBERNETES_SERVICE_IP)
ADMIN_USER = "agentqueue-admin"
VALIDITY = dt.timedelta(days=365)


@dataclass(frozen=True)
class CertPair:
    """PEM certificate and private key files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class ClusterPKI:
    """All key material of one cluster, rooted at `directory`."""

    directory: Path
    ca: CertPair
    serving: CertPair
    admin: CertPair
    sa_private_key: Path
    sa_public_key: Path


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, private: bool = False) -> None:
    # Private keys are created 0600 from the start, never world-readable.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _name(common_name: str, orgs: Sequence[str] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
             ) -> x509.CertificateBuilder:
    # Back-date a little so clock skew between processes never matters.
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + VALIDITY)
    )


def _load_ca(ca: CertPair) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{ca.key}: expected an EC private key")
    return cert, key


def create_ca(out: CertPair, common_name: str = "agentqueue-dev-ca") -> CertPair:
    """Write a self-signed CA certificate and key."""
    key = _new_key()
    name = _name(common_name)
    cert = (
        _builder(name, name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(out.key, _key_pem(key), private=True)
    _write(out.cert, cert.public_bytes(serialization.Encoding.PEM))
    return out


def _issue(ca: CertPair, out: CertPair, subject: x509.Name, usage: x509.ObjectIdentifier,
           sans: Sequence[x509.GeneralName] = ()) -> CertPair:
    ca_cert, ca_key = _load_ca(ca)
    key = _new_key()
    builder = (
        _builder(subject, ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write(out.key, _key_pem(key), private=True)
    _write(out.cert, cert.public_bytes(serialization.Encoding.PEM))
    return out


def issue_serving_cert(ca: CertPair, out: CertPair,
                       dns_names: Sequence[str] = SERVING_DNS_NAMES,
                       ips: Sequence[str] = SERVING_IPS) -> CertPair:
    """Issue the kube-apiserver serving certificate."""
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    return _issue(ca, out, _name("kube-apiserver"), ExtendedKeyUsageOID.SERVER_AUTH, sans)


def issue_client_cert(ca: CertPair, out: CertPair, user: str,
                      groups: Sequence[str] = ()) -> CertPair:
    """Issue a client certificate: the apiserver maps CN to the user, O to groups.

    For a ServiceAccount use user=``system:serviceaccount:<ns>:<sa>`` and
    groups=``("system:serviceaccounts", "system:serviceaccounts:<ns>")``.
    """
    return _issue(ca, out, _name(user, groups), ExtendedKeyUsageOID.CLIENT_AUTH)


def create_sa_keypair(private_key: Path, public_key: Path) -> None:
    """Key pair that signs (private) and verifies (public) service-account tokens."""
    key = _new_key()
    _write(private_key, _key_pem(key), private=True)
    _write(public_key, key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def safe_filename(user: str) -> str:
    """File-system-safe stem for a user name such as ``system:serviceaccount:ns:sa``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", user)


def ensure_pki(directory: Path) -> ClusterPKI:
    """Create the cluster PKI under `directory`, reusing files that already exist."""
    pki = ClusterPKI(
        directory=directory,
        ca=CertPair(directory / "ca.crt", directory / "ca.key"),
        serving=CertPair(directory / "apiserver.crt", directory / "apiserver.key"),
        admin=CertPair(directory / "admin.crt", directory / "admin.key"),
        sa_private_key=directory / "sa.key",
        sa_public_key=directory / "sa.pub",
    )
    fresh_ca = not (pki.ca.cert.exists() and pki.ca.key.exists())
    if fresh_ca:
        create_ca(pki.ca)
    # Anything signed by a previous CA is useless once the CA is regenerated.
    if fresh_ca or not pki.serving.cert.exists():
        issue_serving_cert(pki.ca, pki.serving)
    if fresh_ca or not pki.admin.cert.exists():
        issue_client_cert(pki.ca, pki.admin, ADMIN_USER, ["system:masters"])
    if not (pki.sa_private_key.exists() and pki.sa_public_key.exists()):
        create_sa_keypair(pki.sa_private_key, pki.sa_public_key)
    return pki
