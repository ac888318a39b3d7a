"""A PKI directory on disk: its layout, issuing into it, revocation and the listing.

Every file is replaced atomically (:mod:`common.atomic`), private keys 0600 from
creation on, and an existing CA is never overwritten without ``force``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from common.atomic import write_bytes_atomic, write_text_atomic
from common.pki.certificates import (
    CA_DAYS,
    SERVER_DAYS,
    PkiError,
    check_nist_curve,
    load_certificate,
    load_private_key,
    load_site_public_key,
    make_ca,
    make_server_cert,
    pem_certificate,
    pem_private_key,
    public_key_fingerprint,
    server_names,
    ssh_public_bytes,
    utc_now,
)

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"
SITES_DIR = "sites"
SITE_PUBLIC_KEY, SITE_PRIVATE_KEY = "site.pub", "site.key"
REVOKED_FILE = "revoked.txt"
# Site ids become file names, Flower node names and Prometheus labels: keep them plain.
SITE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


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
    """``site`` when it is a valid site id, else :class:`PkiError`."""
    if not SITE_ID.match(site):
        raise PkiError(f"site id {site!r} must be 1-63 lowercase letters, digits, '-' or '_', "
                       "starting with a letter or digit")
    return site


def init_pki(root: Path, names: Iterable[str] = (), *, force: bool = False,
             ca_days: int = CA_DAYS, server_days: int = SERVER_DAYS) -> Pki:
    """Create the CA and the coordinator's server certificate under ``root``."""
    pki = Pki(root)
    if pki.ca_cert.exists() and not force:
        raise PkiError(f"a CA already exists at {pki.ca_cert}; refusing to overwrite it (every "
                       "site trusts it). Use --force to replace it, then redistribute ca.crt")
    cert, key = make_ca(days=ca_days)
    write_bytes_atomic(pki.ca_key, pem_private_key(key), private=True)
    write_bytes_atomic(pki.ca_cert, pem_certificate(cert))
    issue_server_cert(pki, names, days=server_days)
    return pki


def issue_server_cert(pki: Pki, names: Iterable[str] = (), *, days: int = SERVER_DAYS) -> Path:
    """(Re)issue the coordinator certificate from the CA: also the rotation step."""
    ca_cert = load_certificate(pki.ca_cert, "CA certificate")
    ca_key = load_private_key(pki.ca_key, "CA key")
    cert, key = make_server_cert(ca_cert, ca_key, list(names), days)
    # Key first: a crash in between leaves a new key with the old cert, which the
    # coordinator's pre-flight check reports as a mismatch rather than a silent failure.
    write_bytes_atomic(pki.server_key, pem_private_key(key), private=True)
    write_bytes_atomic(pki.server_cert, pem_certificate(cert))
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
        check_nist_curve(key, public_key)
        write_bytes_atomic(pub_path, ssh_public_bytes(key) + comment + b"\n")
        pki.site_private_key(site).unlink(missing_ok=True)
    else:
        private = ec.generate_private_key(ec.SECP384R1())
        write_bytes_atomic(pki.site_private_key(site), private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption()), private=True)
        write_bytes_atomic(pub_path, ssh_public_bytes(private.public_key()) + comment + b"\n")
    if pki.ca_cert.exists():  # the site's bundle: its key and the CA it must trust
        write_bytes_atomic(pki.site_dir(site) / CA_CERT, pki.ca_cert.read_bytes())
    unrevoke_site(pki, site)
    return pub_path


def revoke_site(pki: Pki, site: str) -> None:
    """Mark a site revoked; the coordinator unregisters it when it next syncs."""
    if site not in pki.sites():
        raise PkiError(f"no site {site!r} in {pki.root / SITES_DIR}")
    _write_revoked(pki, pki.revoked() | {site})


def unrevoke_site(pki: Pki, site: str) -> None:
    """Allow a revoked site again (a new key for it does this)."""
    revoked = pki.revoked()
    if site in revoked:
        _write_revoked(pki, revoked - {site})


def _write_revoked(pki: Pki, revoked: set[str]) -> None:
    write_text_atomic(pki.root / REVOKED_FILE, "".join(f"{s}\n" for s in sorted(revoked)))


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
    now = utc_now()
    if now < cert.not_valid_before_utc:
        return f"NOT YET VALID (from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC)"
    left = cert.not_valid_after_utc - now
    if left.total_seconds() <= 0:
        return f"EXPIRED on {cert.not_valid_after_utc:%Y-%m-%d}"
    if left.days < warn_days:
        return f"expires in {left.days} days: rotate"
    return "ok"
