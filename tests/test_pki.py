"""The consortium PKI: CA, server certificate, site keys, checks and clear errors."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from typer.testing import CliRunner

from common.atomic import write_bytes_atomic
from common.pki import (
    Pki,
    PkiError,
    check_server_files,
    init_pki,
    issue_site,
    list_pki,
    load_certificate,
    load_private_key,
    make_ca,
    make_server_cert,
    pem_certificate,
    pem_private_key,
    probe_tls,
    revoke_site,
    server_names,
)
from common.processes import free_port


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def pki(tmp_path) -> Pki:
    return init_pki(tmp_path / "pki", ["coordinator.example.org", "10.1.2.3"])


def test_init_writes_ca_and_server_cert_with_sans_and_private_keys_0600(pki):
    for key in (pki.ca_key, pki.server_key):
        assert _mode(key) == 0o600
    assert _mode(pki.ca_cert) == 0o644
    cert = check_server_files(pki.ca_cert, pki.server_cert, pki.server_key,
                              host="coordinator.example.org")
    assert set(server_names(cert)) == {"localhost", "127.0.0.1", "::1",
                                       "coordinator.example.org", "10.1.2.3"}
    check_server_files(pki.ca_cert, pki.server_cert, pki.server_key, host="10.1.2.3")
    with pytest.raises(PkiError, match=r"not valid for 'other\.example\.org'"):
        check_server_files(pki.ca_cert, pki.server_cert, pki.server_key,
                           host="other.example.org")
    assert not list(pki.root.glob(".*.tmp"))  # atomic writes leave no temp files


def test_existing_ca_is_never_overwritten_without_force(pki):
    before = pki.ca_cert.read_bytes()
    with pytest.raises(PkiError, match="refusing to overwrite"):
        init_pki(pki.root)
    assert pki.ca_cert.read_bytes() == before
    init_pki(pki.root, force=True)
    assert pki.ca_cert.read_bytes() != before


def test_site_keys_are_in_the_format_flowers_node_auth_loads(pki):
    from flwr.cli.supernode.register import try_load_public_key

    pub = issue_site(pki, "hospital-a")
    private = pki.site_private_key("hospital-a")
    assert _mode(private) == 0o600
    # What `flwr supernode register` and `flower-supernode --auth-supernode-private-key` do.
    assert try_load_public_key(pub)
    key = serialization.load_ssh_private_key(private.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp384r1"
    assert pub.read_text().endswith(" cancer-alpha:hospital-a\n")
    # The site's bundle: its key pair and the CA certificate it must trust.
    assert (pki.site_dir("hospital-a") / "ca.crt").read_bytes() == pki.ca_cert.read_bytes()
    with pytest.raises(PkiError, match="already has a key"):
        issue_site(pki, "hospital-a")
    with pytest.raises(PkiError, match="site id 'Hospital A'"):
        issue_site(pki, "Hospital A")


def test_importing_a_sites_own_public_key_keeps_no_private_key(pki, tmp_path):
    own = ec.generate_private_key(ec.SECP256R1()).public_key()
    path = tmp_path / "own.pub"
    path.write_bytes(own.public_bytes(serialization.Encoding.OpenSSH,
                                      serialization.PublicFormat.OpenSSH))
    issue_site(pki, "hospital-b", public_key=path)
    assert pki.site_public_key("hospital-b").exists()
    assert not pki.site_private_key("hospital-b").exists()
    edwards = tmp_path / "ed.pub"
    edwards.write_bytes(ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    with pytest.raises(PkiError, match="needs an EC key"):
        issue_site(pki, "hospital-c", public_key=edwards)
    with pytest.raises(PkiError, match="does not exist"):
        issue_site(pki, "hospital-d", public_key=tmp_path / "missing.pub")


def test_revocation_removes_a_site_from_the_authorized_list(pki):
    for site in ("hospital-a", "hospital-b"):
        issue_site(pki, site)
    revoke_site(pki, "hospital-b")
    assert set(pki.authorized_sites()) == {"hospital-a"}
    statuses = {e.name: e.status for e in list_pki(pki) if e.kind == "site"}
    assert statuses == {"hospital-a": "ok", "hospital-b": "revoked"}
    issue_site(pki, "hospital-b", force=True)  # a new key un-revokes
    assert set(pki.authorized_sites()) == {"hospital-a", "hospital-b"}
    with pytest.raises(PkiError, match="no site 'nobody'"):
        revoke_site(pki, "nobody")


def _write_server(pki: Pki, *, days: int, start: dt.datetime | None = None,
                  ca: tuple | None = None) -> None:
    """Replace the server certificate: ``days`` of validity from ``start``, signed by
    ``ca`` (default: the PKI's own CA)."""
    ca_cert, ca_key = ca or (load_certificate(pki.ca_cert), load_private_key(pki.ca_key))
    cert, key = make_server_cert(ca_cert, ca_key, [], days, not_before=start)
    write_bytes_atomic(pki.server_key, pem_private_key(key), private=True)
    write_bytes_atomic(pki.server_cert, pem_certificate(cert))


def test_expired_wrong_ca_and_mismatched_key_give_clear_errors(pki):
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    _write_server(pki, days=10, start=past)
    with pytest.raises(PkiError, match=r"server certificate .* expired on"):
        check_server_files(pki.ca_cert, pki.server_cert, pki.server_key)
    assert any(e.status.startswith("EXPIRED") for e in list_pki(pki))

    _write_server(pki, days=30, ca=make_ca())
    with pytest.raises(PkiError, match="was not issued by the CA"):
        check_server_files(pki.ca_cert, pki.server_cert, pki.server_key)

    _write_server(pki, days=30)
    other = ec.generate_private_key(ec.SECP384R1())
    write_bytes_atomic(pki.server_key, pem_private_key(other), private=True)
    with pytest.raises(PkiError, match="does not belong to the certificate"):
        check_server_files(pki.ca_cert, pki.server_cert, pki.server_key)

    pki.server_key.unlink()
    with pytest.raises(PkiError, match=r"server key .*server.key does not exist"):
        check_server_files(pki.ca_cert, pki.server_cert, pki.server_key)


class _TlsServer:
    """A one-connection-at-a-time TLS server on a free loopback port."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.ctx.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

    def close(self) -> None:
        self.sock.close()


def test_probe_explains_wrong_ca_and_expired_certificate(pki, tmp_path):
    server = _TlsServer(pki.server_cert, pki.server_key)
    try:
        cert = probe_tls(server.address, pki.ca_cert)
        assert "127.0.0.1" in server_names(cert)
        other = init_pki(tmp_path / "other-pki")
        with pytest.raises(PkiError, match=r"was not issued by the CA in .*other-pki"):
            probe_tls(server.address, other.ca_cert)
    finally:
        server.close()
    _write_server(pki, days=1, start=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    server = _TlsServer(pki.server_cert, pki.server_key)
    try:
        with pytest.raises(PkiError, match="certificate has expired; the coordinator must "
                                           "rotate it"):
            probe_tls(server.address, pki.ca_cert)
    finally:
        server.close()
    closed = f"127.0.0.1:{free_port()}"
    with pytest.raises(PkiError, match="cannot reach the coordinator"):
        probe_tls(closed, pki.ca_cert)


def test_pki_cli_init_issue_list_and_refusals(tmp_path):
    from server.cli import pki_app

    runner = CliRunner()
    d = str(tmp_path / "pki")
    ok = runner.invoke(pki_app, ["init", "--dir", d, "--name", "coord.example.org"])
    assert ok.exit_code == 0, ok.output
    again = runner.invoke(pki_app, ["init", "--dir", d])
    assert again.exit_code == 2 and "refusing to overwrite" in again.output
    assert runner.invoke(pki_app, ["issue-site", "site-a", "--dir", d]).exit_code == 0
    assert runner.invoke(pki_app, ["revoke-site", "site-a", "--dir", d]).exit_code == 0
    listing = runner.invoke(pki_app, ["list", "--dir", d])
    assert listing.exit_code == 0 and "revoked" in listing.output
    pki = Pki(tmp_path / "pki")
    _write_server(pki, days=1, start=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    expired = runner.invoke(pki_app, ["list", "--dir", d])
    assert expired.exit_code == 1 and "EXPIRED" in expired.output


def test_coordinator_refuses_to_start_with_an_expired_certificate(tmp_path):
    from server.cli import coordinator_app

    pki = init_pki(tmp_path / "pki")
    issue_site(pki, "site-a")
    _write_server(pki, days=1, start=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    result = CliRunner().invoke(coordinator_app, [
        "start", "--pki", str(pki.root), "--state-dir", str(tmp_path / "state"), "--port", "1"])
    assert result.exit_code == 2
    assert "expired on" in result.output and "issue-server" in result.output
    assert not (tmp_path / "state" / "superlink.pid").exists()  # nothing was started


def test_site_start_refuses_a_coordinator_with_a_foreign_certificate(pki, tmp_path):
    from client.cli import app

    issue_site(pki, "hospital-a")
    stranger = init_pki(tmp_path / "stranger")  # a server certificate from another CA
    server = _TlsServer(stranger.server_cert, stranger.server_key)
    data = tmp_path / "data"
    data.mkdir()
    (data / "rna.csv").write_text("id,g1\np1,1.0\n")
    (data / "labels.csv").write_text("id,label\np1,A\n")
    site = pki.site_dir("hospital-a")
    toml = tmp_path / "site.toml"
    toml.write_text(f'[site]\nid = "hospital-a"\ndata-dir = "{data}"\n'
                    f'state-dir = "{tmp_path / "state"}"\n[coordinator]\n'
                    f'address = "{server.address}"\n[tls]\n'
                    f'root-certificates = "{site / "ca.crt"}"\n'
                    f'private-key = "{site / "site.key"}"\n')
    try:
        result = CliRunner().invoke(app, ["start", "--config", str(toml), "--skip-checks"])
    finally:
        server.close()
    assert result.exit_code == 1
    assert "was not issued by the CA" in result.output.replace("\n", "")
    assert not (tmp_path / "state" / "node-config.toml").exists()  # no SuperNode started
