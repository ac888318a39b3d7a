"""``site check`` finds two sites of one host on the same SuperNode port (or state
directory), and a port something else already holds, naming both sites."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from common.pki import init_pki, issue_site
from common.site_config import load_site_config

SITE = """\
[site]
id = "{site}"
data-dir = "data"
state-dir = "state-{state}"

[coordinator]
address = "coordinator.example.org:9092"

[tls]
root-certificates = "pki/sites/{site}/ca.crt"
private-key = "pki/sites/{site}/site.key"

[supernode]
port = {port}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def host(tmp_path: Path):
    """A host directory of site configurations; ``write(name, site, port, state)``."""
    pki = init_pki(tmp_path / "pki")
    (tmp_path / "data").mkdir()
    issued: set[str] = set()

    def write(name: str, site: str, port: int, state: str | None = None) -> Path:
        if site not in issued:
            issue_site(pki, site)
            issued.add(site)
        path = tmp_path / name
        path.write_text(SITE.format(site=site, port=port, state=state or site))
        return path

    return write


def _said(result) -> str:
    return " ".join(result.output.split())


def test_two_sites_on_one_port_are_named_both(host):
    from client.cli import app

    port = _free_port()
    a = host("site-a.toml", "hospital-a", port)
    b = host("site-b.toml", "hospital-b", port)
    result = CliRunner().invoke(app, ["check", "--config", str(a),
                                      "--data", str(a.parent / "data")])
    assert result.exit_code == 1
    said = _said(result)
    assert f"port {port} is configured for both hospital-a ({a}) and hospital-b ({b})" in said
    # distinct ports: no clash, and the port is reported free
    b.write_text(b.read_text().replace(f"port = {port}", f"port = {_free_port() + 1}"))
    from client.launcher import preflight

    ok = preflight(load_site_config(a), check_data=False)
    assert ok.ok, ok.errors
    assert any(f"port {port} is free" in line for line in ok.info)


def test_a_site_configured_elsewhere_is_checked_with_other_config(host, tmp_path):
    from client.launcher import preflight

    port = _free_port()
    a = host("site-a.toml", "hospital-a", port)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    b = host("elsewhere/site-b.toml", "hospital-b", port, state="hospital-a")
    alone = preflight(load_site_config(a), check_data=False)
    assert alone.ok, alone.errors  # not beside it, not named: not known
    both = preflight(load_site_config(a), check_data=False, other_configs=[b])
    assert any("configured for both hospital-a" in e and "hospital-b" in e
               for e in both.errors), both.errors
    # the same state directory: one privacy ledger for two sites (paths relative to each file)
    b.write_text(b.read_text().replace('state-dir = "state-hospital-a"',
                                       f'state-dir = "{tmp_path / "state-hospital-a"}"'))
    shared = preflight(load_site_config(a), check_data=False, other_configs=[b])
    assert any("state-dir" in e and "one privacy ledger" in e for e in shared.errors)


def test_a_port_already_in_use_is_an_error(host):
    from client.launcher import preflight

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        a = host("site-a.toml", "hospital-a", port)
        result = preflight(load_site_config(a), check_data=False)
    assert any(f"port {port} on 127.0.0.1 is already in use" in e for e in result.errors)
    assert preflight(load_site_config(a), check_data=False).ok  # released: free again


def test_other_toml_files_beside_the_config_are_ignored(host, tmp_path):
    from client.ports import sibling_configs

    a = host("site-a.toml", "hospital-a", _free_port())
    (tmp_path / "dataset.toml").write_text('[dataset]\nname = "x"\n')
    (tmp_path / "broken.toml").write_text("[site\n")
    assert sibling_configs(load_site_config(a)) == []
