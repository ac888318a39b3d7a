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

Modules: :mod:`~common.pki.certificates` (making and reading keys and certificates),
:mod:`~common.pki.store` (the directory: layout, issuing, revocation, listing),
:mod:`~common.pki.checks` (validity, issuer, key match, permissions, TLS probe).
"""

from common.pki.certificates import (
    CA_DAYS,
    DEFAULT_SANS,
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
)
from common.pki.checks import (
    check_private_key_permissions,
    check_server_files,
    check_signed_by,
    check_valid_now,
    probe_tls,
)
from common.pki.store import (
    CA_CERT,
    CA_KEY,
    REVOKED_FILE,
    SERVER_CERT,
    SERVER_KEY,
    SITE_ID,
    SITE_PRIVATE_KEY,
    SITE_PUBLIC_KEY,
    SITES_DIR,
    Entry,
    Pki,
    check_site_id,
    init_pki,
    issue_server_cert,
    issue_site,
    list_pki,
    revoke_site,
    unrevoke_site,
)

__all__ = [
    "CA_CERT",
    "CA_DAYS",
    "CA_KEY",
    "DEFAULT_SANS",
    "REVOKED_FILE",
    "SERVER_CERT",
    "SERVER_DAYS",
    "SERVER_KEY",
    "SITES_DIR",
    "SITE_ID",
    "SITE_PRIVATE_KEY",
    "SITE_PUBLIC_KEY",
    "Entry",
    "Pki",
    "PkiError",
    "check_nist_curve",
    "check_private_key_permissions",
    "check_server_files",
    "check_signed_by",
    "check_site_id",
    "check_valid_now",
    "init_pki",
    "issue_server_cert",
    "issue_site",
    "list_pki",
    "load_certificate",
    "load_private_key",
    "load_site_public_key",
    "make_ca",
    "make_server_cert",
    "pem_certificate",
    "pem_private_key",
    "probe_tls",
    "public_key_fingerprint",
    "revoke_site",
    "server_names",
    "ssh_public_bytes",
    "unrevoke_site",
]
