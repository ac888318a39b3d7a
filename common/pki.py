"""The consortium's keys and certificates: a private CA, the coordinator's TLS
certificate, and one node-authentication key pair per hospital site.

Layout of a PKI directory (``cancer-alpha pki init --dir pki``)::

    pki/ca.crt  pki/ca.key           consortium CA (key 0600: keep it offline)
    pki/server.crt  pki/server.key   coordinator TLS certificate, signed by the CA
    pki/sites/<site>/site.pub        a site's node-auth public key (OpenSSH, EC P-384)
    pki/sites/<site>/site.key        its private key, when the operator issued it (0600)
    pki/sites/<site>/ca.crt          copy of the CA certificate: the directory is the
                                     bundle handed to the site
    pki/revoked.txt                  revoked site ids, one a line

Two different mechanisms protect the federation, matching what Flower 1.41 uses:

* **TLS** (X.509): sites verify the coordinator with ``ca.crt``. The server certificate
  carries SANs for ``localhost``, ``127.0.0.1``, ``::1`` and every name sites dial.
* **Node authentication** (EC key pairs in OpenSSH format, NIST curve as Flower's
  ``flwr supernode register`` requires): a SuperNode signs every Fleet request with its
  private key; the SuperLink (``--enable-supernode-auth``) accepts only public keys
  registered with it. The coordinator registers the non-revoked ``sites/*/site.pub``.

Private keys are written 0600, every file atomically (temp file + rename), and an
existing CA is never overwritten without ``force``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import socket
import ssl
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"
SITES_DIR = "sites"
SITE_PUBLIC_KEY, SITE_PRIVATE_KEY = "site.pub", "site.key"
REVOKED_FILE = "revoked.txt"
DEFAULT_SANS = ("localhost", "127.0.0.1", "::1")
CA_DAYS, SERVER_DAYS = 3650, 365
# Site ids become file names, Flower node names and Prometheus labels: keep them plain.
SITE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class PkiError(RuntimeError):
    """A key or certificate is missing, malformed, expired or does not match."""


# --- files ---------------------------------------------------------------------------
def write_atomic(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory and a rename.

    Private files are created 0600 from the start (never readable by others, not even
    between create and chmod).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PkiError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise PkiError(f"cannot read {what} {path}: {e.strerror}") from None


def load_certificate(path: Path, what: str = "certificate") -> x509.Certificate:
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


# --- certificates ----------------------------------------------------------------------
def _now() -> dt.datetime:
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
    start = not_before or _now() - dt.timedelta(minutes=5)  # tolerate small clock skew
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
    start = not_before or _now() - dt.timedelta(minutes=5)
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


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


# --- the PKI directory -------------------------------------------------------------------
@dataclass(frozen=True)
class Pki:
    """Paths inside one PKI directory."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / CA_CERT

    @property
    def ca_key(self) -> Path:
        return self.root / CA_KEY

    @property
    def server_cert(self) -> Path:
        return self.root / SERVER_CERT

    @property
    def server_key(self) -> Path:
        return self.root / SERVER_KEY

    def site_dir(self, site: str) -> Path:
        return self.root / SITES_DIR / check_site_id(site)

    def site_public_key(self, site: str) -> Path:
        return self.site_dir(site) / SITE_PUBLIC_KEY

    def site_private_key(self, site: str) -> Path:
        return self.site_dir(site) / SITE_PRIVATE_KEY

    def revoked(self) -> set[str]:
        path = self.root / REVOKED_FILE
        if not path.exists():
            return set()
        return {line.split("#")[0].strip() for line in path.read_text().splitlines()} - {""}

    def sites(self) -> list[str]:
        """Every site with a public key, revoked or not, sorted."""
        base = self.root / SITES_DIR
        if not base.is_dir():
            return []
        return sorted(d.name for d in base.iterdir() if (d / SITE_PUBLIC_KEY).is_file())

    def authorized_sites(self) -> dict[str, Path]:
        """``{site: public key path}`` of the sites allowed to join (not revoked)."""
        revoked = self.revoked()
        return {s: self.site_public_key(s) for s in self.sites() if s not in revoked}


def check_site_id(site: str) -> str:
    if not SITE_ID.match(site):
        raise PkiError(f"site id {site!r} must be 1-63 lowercase letters, digits, '-' or '_', "
                       "starting with a letter or digit")
    return site


def init_pki(root: Path, server_names: Iterable[str] = (), *, force: bool = False,
             ca_days: int = CA_DAYS, server_days: int = SERVER_DAYS) -> Pki:
    """Create the CA and the coordinator's server certificate under ``root``."""
    pki = Pki(root)
    if pki.ca_cert.exists() and not force:
        raise PkiError(f"a CA already exists at {pki.ca_cert}; refusing to overwrite it (every "
                       "site trusts it). Use --force to replace it, then redistribute ca.crt")
    cert, key = make_ca(days=ca_days)
    write_atomic(pki.ca_key, _pem_key(key), private=True)
    write_atomic(pki.ca_cert, _pem_cert(cert))
    issue_server_cert(pki, server_names, days=server_days)
    return pki


def issue_server_cert(pki: Pki, names: Iterable[str] = (), *, days: int = SERVER_DAYS) -> Path:
    """(Re)issue the coordinator certificate from the CA: also the rotation step."""
    ca_cert = load_certificate(pki.ca_cert, "CA certificate")
    ca_key = load_private_key(pki.ca_key, "CA key")
    cert, key = make_server_cert(ca_cert, ca_key, list(names), days)
    # Key first: a crash in between leaves a new key with the old cert, which the
    # coordinator's pre-flight check reports as a mismatch rather than a silent failure.
    write_atomic(pki.server_key, _pem_key(key), private=True)
    write_atomic(pki.server_cert, _pem_cert(cert))
    return pki.server_cert


def issue_site(pki: Pki, site: str, *, public_key: Path | None = None,
               force: bool = False) -> Path:
    """Create (or import) a site's node-auth key pair; return the public key path.

    With ``public_key``, the site generated its key itself and only the public half is
    stored: the coordinator then never holds the site's private key.
    """
    pub_path = pki.site_public_key(site)
    if pub_path.exists() and not force:
        raise PkiError(f"site {site!r} already has a key ({pub_path}); use --force to replace "
                       "it (the old key stops working once the coordinator re-syncs)")
    comment = f" cancer-alpha:{site}".encode()
    if public_key is not None:
        key = load_site_public_key(public_key)
        _check_nist(key, public_key)
        write_atomic(pub_path, _ssh_public(key) + comment + b"\n")
        pki.site_private_key(site).unlink(missing_ok=True)
    else:
        private = ec.generate_private_key(ec.SECP384R1())
        write_atomic(pki.site_private_key(site), private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption()), private=True)
        write_atomic(pub_path, _ssh_public(private.public_key()) + comment + b"\n")
    if pki.ca_cert.exists():  # the site's bundle: its key and the CA it must trust
        write_atomic(pki.site_dir(site) / CA_CERT, pki.ca_cert.read_bytes())
    unrevoke_site(pki, site)
    return pub_path


def _ssh_public(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def _check_nist(key: ec.EllipticCurvePublicKey, path: Path) -> None:
    if not isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1 | ec.SECP521R1):
        raise PkiError(f"{path}: curve {key.curve.name} is not a NIST curve Flower accepts")


def revoke_site(pki: Pki, site: str) -> None:
    """Mark a site revoked; the coordinator unregisters it when it next syncs."""
    if site not in pki.sites():
        raise PkiError(f"no site {site!r} in {pki.root / SITES_DIR}")
    revoked = pki.revoked() | {site}
    write_atomic(pki.root / REVOKED_FILE, "".join(f"{s}\n" for s in sorted(revoked)).encode())


def unrevoke_site(pki: Pki, site: str) -> None:
    revoked = pki.revoked()
    if site in revoked:
        write_atomic(pki.root / REVOKED_FILE,
                     "".join(f"{s}\n" for s in sorted(revoked - {site})).encode())


def public_key_fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """SHA-256 of the OpenSSH key blob, as ``ssh-keygen -lf`` prints it."""
    import base64
    import hashlib

    blob = base64.b64decode(_ssh_public(key).split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


# --- inspection and checks ---------------------------------------------------------------
@dataclass
class Entry:
    """One row of ``pki list``."""

    kind: str  # "ca", "server" or "site"
    name: str
    path: Path
    expires: dt.datetime | None  # certificates only; site keys do not expire
    status: str  # "ok", "expires in N days", "EXPIRED", "revoked", "error: ..."
    detail: str = ""


def list_pki(pki: Pki, *, warn_days: int = 30) -> list[Entry]:
    """The CA, the server certificate and every site key, with expiry and status."""
    out = []
    for kind, path in (("ca", pki.ca_cert), ("server", pki.server_cert)):
        try:
            cert = load_certificate(path)
        except PkiError as e:
            out.append(Entry(kind, path.name, path, None, f"error: {e}"))
            continue
        detail = ""
        if kind == "server":
            detail = ", ".join(server_names(cert))
        out.append(Entry(kind, cert.subject.rfc4514_string(), path, cert.not_valid_after_utc,
                         _expiry_status(cert, warn_days), detail))
    revoked = pki.revoked()
    for site in pki.sites():
        path = pki.site_public_key(site)
        try:
            fp = public_key_fingerprint(load_site_public_key(path))
        except PkiError as e:
            out.append(Entry("site", site, path, None, f"error: {e}"))
            continue
        has_private = pki.site_private_key(site).exists()
        out.append(Entry("site", site, path, None, "revoked" if site in revoked else "ok",
                         fp + ("" if has_private else " (public key only)")))
    return out


def _expiry_status(cert: x509.Certificate, warn_days: int) -> str:
    now = _now()
    if now < cert.not_valid_before_utc:
        return f"NOT YET VALID (from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC)"
    left = cert.not_valid_after_utc - now
    if left.total_seconds() <= 0:
        return f"EXPIRED on {cert.not_valid_after_utc:%Y-%m-%d}"
    if left.days < warn_days:
        return f"expires in {left.days} days: rotate"
    return "ok"


def server_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in san.get_values_for_type(x509.DNSName)] + \
        [str(n) for n in san.get_values_for_type(x509.IPAddress)]


def check_valid_now(cert: x509.Certificate, what: str, path: Path) -> None:
    now = _now()
    if now > cert.not_valid_after_utc:
        raise PkiError(f"{what} {path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} "
                       "UTC; issue a new one (cancer-alpha pki issue-server / pki init)")
    if now < cert.not_valid_before_utc:
        raise PkiError(f"{what} {path} is not valid before "
                       f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (check the clock)")


def check_signed_by(cert: x509.Certificate, ca: x509.Certificate, cert_path: Path,
                    ca_path: Path) -> None:
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
