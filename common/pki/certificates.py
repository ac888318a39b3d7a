"""Keys and certificates: the CA, the coordinator's TLS certificate, site key pairs.

Making them (EC P-384, SHA-384 signatures), reading them from PEM or OpenSSH files
with errors that name the file, and the few facts read from them (server names, key
fingerprints).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_SANS = ("localhost", "127.0.0.1", "::1")
CA_DAYS, SERVER_DAYS = 3650, 365


class PkiError(RuntimeError):
    """A key or certificate is missing, malformed, expired or does not match."""


# --- reading -----------------------------------------------------------------------------
def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PkiError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise PkiError(f"cannot read {what} {path}: {e.strerror}") from None


def load_certificate(path: Path, what: str = "certificate") -> x509.Certificate:
    """A PEM X.509 certificate; errors name ``what`` and the file."""
    try:
        return x509.load_pem_x509_certificate(_read(path, what))
    except ValueError as e:
        raise PkiError(f"{what} {path} is not a PEM X.509 certificate ({e})") from None


def load_private_key(path: Path, what: str = "private key") -> ec.EllipticCurvePrivateKey:
    """A PEM (PKCS#8 / SEC1) or OpenSSH EC private key without passphrase."""
    data = _read(path, what)
    try:
        if data.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
            key = serialization.load_ssh_private_key(data, None)
        else:
            key = serialization.load_pem_private_key(data, None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise PkiError(f"{what} {path} cannot be read: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{what} {path} is not an elliptic-curve key "
                       f"({type(key).__name__}); Flower node authentication needs EC")
    return key


def load_site_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """A site's OpenSSH public key (``ecdsa-sha2-nistp384 AAAA... comment``)."""
    data = _read(path, "site public key")
    try:
        key = serialization.load_ssh_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise PkiError(f"site public key {path} is not an OpenSSH public key: {e}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise PkiError(f"site public key {path} is {type(key).__name__}; Flower node "
                       "authentication needs an EC key on a NIST curve (e.g. "
                       "`ssh-keygen -t ecdsa -b 384`)")
    return key


# --- making -----------------------------------------------------------------------------
def utc_now() -> dt.datetime:
    """The current time in UTC, as certificates state it."""
    return dt.datetime.now(dt.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Cancer Alpha consortium"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _san(names: Iterable[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in dict.fromkeys(names):  # keep order, drop duplicates
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


def make_ca(common_name: str = "Cancer Alpha CA", days: int = CA_DAYS, *,
            not_before: dt.datetime | None = None
            ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA certificate and its key (EC P-384)."""
    key = ec.generate_private_key(ec.SECP384R1())
    start = not_before or utc_now() - dt.timedelta(minutes=5)  # tolerate small clock skew
    subject = _name(common_name)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA384())
    )
    return cert, key


def make_server_cert(
    ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, names: Iterable[str],
    days: int = SERVER_DAYS, *, not_before: dt.datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A TLS server certificate for ``names`` (DNS names or IP addresses) plus defaults."""
    names = list(names)
    sans = [*DEFAULT_SANS, *names]
    key = ec.generate_private_key(ec.SECP384R1())
    start = not_before or utc_now() - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder().subject_name(_name(sans[-1] if names else "localhost"))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
        .add_extension(_san(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    return cert, key


def pem_certificate(cert: x509.Certificate) -> bytes:
    """The certificate in PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def pem_private_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The key in unencrypted PKCS#8 PEM."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def ssh_public_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    """The public key as one OpenSSH line, without comment."""
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def check_nist_curve(key: ec.EllipticCurvePublicKey, path: Path) -> None:
    """Flower's node authentication accepts NIST curves only."""
    if not isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1 | ec.SECP521R1):
        raise PkiError(f"{path}: curve {key.curve.name} is not a NIST curve Flower accepts")


def public_key_fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """SHA-256 of the OpenSSH key blob, as ``ssh-keygen -lf`` prints it."""
    blob = base64.b64decode(ssh_public_bytes(key).split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def server_names(cert: x509.Certificate) -> list[str]:
    """The DNS names, then the IP addresses, a server certificate is valid for."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in san.get_values_for_type(x509.DNSName)] + \
        [str(n) for n in san.get_values_for_type(x509.IPAddress)]
