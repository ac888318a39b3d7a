"""Checks with errors a site's or the coordinator's IT can act on: validity now,
issuer, key match, server names, private-key permissions, and a live TLS probe."""

from __future__ import annotations

import ipaddress
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from common.pki.certificates import (
    PkiError,
    load_certificate,
    load_private_key,
    server_names,
    utc_now,
)


def check_valid_now(cert: x509.Certificate, what: str, path: Path) -> None:
    """Raise :class:`PkiError` unless ``cert`` is valid at this moment."""
    now = utc_now()
    if now > cert.not_valid_after_utc:
        raise PkiError(f"{what} {path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} "
                       "UTC; issue a new one (cancer-alpha pki issue-server / pki init)")
    if now < cert.not_valid_before_utc:
        raise PkiError(f"{what} {path} is not valid before "
                       f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (check the clock)")


def check_signed_by(cert: x509.Certificate, ca: x509.Certificate, cert_path: Path,
                    ca_path: Path) -> None:
    """Raise :class:`PkiError` unless ``ca`` signed ``cert``."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise PkiError(f"{cert_path} was not issued by the CA {ca_path} (wrong CA: issuer "
                       f"{cert.issuer.rfc4514_string()!r}, CA {ca.subject.rfc4514_string()!r})"
                       ) from None


def check_server_files(ca_cert: Path, cert_path: Path, key_path: Path,
                       host: str | None = None) -> x509.Certificate:
    """Everything the SuperLink needs, checked up front with errors naming the file."""
    ca = load_certificate(ca_cert, "CA certificate")
    check_valid_now(ca, "CA certificate", ca_cert)
    cert = load_certificate(cert_path, "server certificate")
    check_valid_now(cert, "server certificate", cert_path)
    check_signed_by(cert, ca, cert_path, ca_cert)
    key = load_private_key(key_path, "server key")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise PkiError(f"server key {key_path} does not belong to the certificate {cert_path} "
                       "(re-issue both with `cancer-alpha pki issue-server`)")
    if host and host not in ("0.0.0.0", "::") and not _matches(cert, host):
        raise PkiError(f"server certificate {cert_path} is not valid for {host!r} (it names "
                       f"{', '.join(server_names(cert))}); re-issue it with --name {host}")
    return cert


def _matches(cert: x509.Certificate, host: str) -> bool:
    names = server_names(cert)
    try:
        return str(ipaddress.ip_address(host)) in names
    except ValueError:
        return any(n == host or (n.startswith("*.") and host.endswith(n[1:])) for n in names)


def check_private_key_permissions(path: Path) -> str | None:
    """A warning when a private key is readable by group or others, else None."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        return f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}"
    return None


def probe_tls(address: str, ca_cert: Path, timeout: float = 5.0) -> x509.Certificate:
    """Connect to ``host:port`` and verify its certificate against ``ca_cert``.

    Turns OpenSSL's verification codes into sentences a site's IT can act on.
    """
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    ctx = ssl.create_default_context(cafile=str(ca_cert))
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock, \
                ctx.wrap_socket(sock, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    except ssl.SSLCertVerificationError as e:
        reasons = {
            10: "the coordinator's certificate has expired; the coordinator must rotate it "
                "(cancer-alpha pki issue-server)",
            9: "the coordinator's certificate is not yet valid (check both clocks)",
            20: f"the coordinator's certificate was not issued by the CA in {ca_cert} "
                "(wrong CA file, or the coordinator's CA was replaced)",
            19: f"the coordinator presents a self-signed certificate not in {ca_cert}",
            62: f"the coordinator's certificate is not valid for the name {host!r}",
        }
        raise PkiError(f"TLS to {address} failed: "
                       f"{reasons.get(e.verify_code, e.verify_message)}") from None
    except ssl.SSLError as e:
        raise PkiError(f"TLS to {address} failed: {e.reason or e}") from None
    except OSError as e:
        raise PkiError(f"cannot reach the coordinator at {address}: "
                       f"{e.strerror or e}") from None
    assert der is not None
    return x509.load_der_x509_certificate(der)
