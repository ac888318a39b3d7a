"""site.toml: loading, validation with clear errors, node config, ``site check --config``."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from common.pki import init_pki, issue_site
from common.site_config import SiteConfigError, load_site_config, node_config_toml

GOOD = """\
[site]
id = "hospital-a"
data-dir = "data"
device = "cpu"
state-dir = "state"

[coordinator]
address = "coordinator.example.org:9092"

[tls]
root-certificates = "pki/sites/hospital-a/ca.crt"
private-key = "pki/sites/hospital-a/site.key"
public-key = "pki/sites/hospital-a/site.pub"

[privacy]
epsilon = 4
delta = 1e-5

[supernode]
port = 9200
"""


@pytest.fixture
def site_dir(tmp_path: Path) -> Path:
    pki = init_pki(tmp_path / "pki")
    issue_site(pki, "hospital-a")
    (tmp_path / "data").mkdir()
    (tmp_path / "site.toml").write_text(GOOD)
    return tmp_path


def test_valid_config_resolves_paths_and_builds_node_config(site_dir):
    cfg = load_site_config(site_dir / "site.toml")
    assert cfg.site_id == "hospital-a"
    assert cfg.data_dir == site_dir / "data"
    assert cfg.root_certificates == site_dir / "pki" / "sites" / "hospital-a" / "ca.crt"
    assert cfg.public_key == site_dir / "pki" / "sites" / "hospital-a" / "site.pub"
    assert cfg.port == 9200 and cfg.device == "cpu" and cfg.demo is None
    assert cfg.privacy.epsilon == 4.0 and cfg.privacy.delta == 1e-5
    node = cfg.node_config()
    assert node["site-name"] == "hospital-a" and node["data-dir"] == str(site_dir / "data")
    assert node["state-dir"] == str(site_dir / "state") and "partition-id" not in node


def test_node_config_file_reads_back_identically_with_flowers_parser(site_dir, tmp_path):
    from flwr.common.config import parse_config_args

    (site_dir / "data with space").mkdir()
    text = GOOD.replace('data-dir = "data"', 'data-dir = "data with space"')
    text += '\n[demo]\npartition-id = 1\nnum-partitions = 3\npartition = "dirichlet:0.5"\n'
    (site_dir / "site.toml").write_text(text)
    cfg = load_site_config(site_dir / "site.toml")
    path = tmp_path / "node-config.toml"
    path.write_text(node_config_toml(cfg.node_config()))
    assert parse_config_args([str(path)]) == cfg.node_config()


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: t.replace('id = "hospital-a"\n', ""), r"\[site\] id is required"),
    (lambda t: t + "\n[sitee]\nx = 1\n", r"unknown section \[sitee\]"),
    (lambda t: t.replace("port = 9200", "prot = 9200"), r"\[supernode\] unknown key 'prot'"),
    (lambda t: t.replace("port = 9200", 'port = "9200"'), r"port must be an integer"),
    (lambda t: t.replace("epsilon = 4", "epsilon = -1"), r"epsilon must be > 0"),
    (lambda t: t.replace("coordinator.example.org:9092", "https://c.org:9092"),
     "must not have a scheme"),
    (lambda t: t.replace("coordinator.example.org:9092", "c.org"), "must be host:port"),
    (lambda t: t.replace('device = "cpu"', 'device = "tpu"'), "device 'tpu'"),
    (lambda t: t.replace('"hospital-a"', '"Hospital A"', 1), "id 'Hospital A'"),
    (lambda t: t.replace("site.key", "missing.key"),
     r"\[tls\] private-key .*missing.key does not exist"),
    (lambda t: t.replace('private-key = "', 'privat-key = "'),
     r"\[tls\] unknown key 'privat-key'.*\[tls\] private-key is required"),
    (lambda t: t.replace("hospital-a/ca.crt", "hospital-a/nope.crt"),
     r"root-certificates .*nope.crt does not exist \(ask the coordinator"),
    (lambda t: t.replace('data-dir = "data"', 'data-dir = "nodata"'),
     r"data-dir .*nodata is not a directory"),
    (lambda t: t + "\n[demo]\npartition-id = 3\nnum-partitions = 3\n",
     r"partition-id must be in \[0, num-partitions\)"),
    (lambda t: t.replace("[privacy]", "[privacy"), "is not valid TOML"),
])
def test_bad_config_names_what_is_wrong(site_dir, edit, message):
    path = site_dir / "site.toml"
    path.write_text(edit(GOOD))
    with pytest.raises(SiteConfigError, match=message):
        load_site_config(path)


def test_every_problem_is_reported_at_once(site_dir):
    path = site_dir / "site.toml"
    path.write_text(GOOD.replace("port = 9200", "port = 0").replace("epsilon = 4",
                                                                     "epsilon = 0"))
    with pytest.raises(SiteConfigError) as info:
        load_site_config(path)
    assert "port must be 1-65535" in str(info.value) and "epsilon must be > 0" in str(info.value)
    with pytest.raises(SiteConfigError, match="does not exist"):
        load_site_config(site_dir / "absent.toml")


def test_site_check_with_config(site_dir, bundled_dir):
    from client.cli import app

    brca = bundled_dir("brca")
    path = site_dir / "site.toml"
    path.write_text(GOOD.replace('data-dir = "data"', f'data-dir = "{brca}"'))
    runner = CliRunner()
    ok = runner.invoke(app, ["check", "--config", str(path)])
    assert ok.exit_code == 0, ok.output
    assert "hospital-a" in ok.output and "OK" in ok.output
    other = init_pki(site_dir / "other")
    issue_site(other, "hospital-a")
    (site_dir / "pki" / "sites" / "hospital-a" / "site.pub").write_bytes(
        other.site_public_key("hospital-a").read_bytes())
    mismatch = runner.invoke(app, ["check", "--config", str(path)])
    assert mismatch.exit_code == 1
    assert "is not the public half" in mismatch.output.replace("\n", "")
    (site_dir / "pki" / "sites" / "hospital-a" / "site.key").write_text("not a key")
    bad_key = runner.invoke(app, ["check", "--config", str(path)])
    assert bad_key.exit_code == 1
    assert "site.key cannot be read" in bad_key.output.replace("\n", "")
    path.write_text("[site\n")
    assert runner.invoke(app, ["check", "--config", str(path)]).exit_code == 2


def test_node_config_partition_gives_the_simulation_engines_site(bundled_dir):
    from client.site import load_site
    from common.config import RunConfig
    from common.simulated_federation import SplitSettings, build_federation

    brca = bundled_dir("brca")
    cfg = RunConfig(partition="iid", sites=3)
    site = load_site({"data-dir": str(brca), "partition-id": 1, "num-partitions": 3,
                      "site-name": "hospital-b", "device": "cpu"}, cfg)
    split = SplitSettings.of(RunConfig(data=str(brca), partition="iid", sites=3))
    _, train, val = build_federation(split).site_data(1)
    assert site.name == "hospital-b" and site.device == "cpu"
    assert list(site.train.patient_ids) == list(train.patient_ids)
    assert list(site.val.patient_ids) == list(val.patient_ids)
    with pytest.raises(ValueError, match="must both be set"):
        load_site({"data-dir": str(brca), "partition-id": 0}, cfg)


def test_preflight_rejects_a_pem_key_flower_cannot_read(site_dir):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from client.launcher import preflight

    key = site_dir / "pki" / "sites" / "hospital-a" / "site.key"
    private = ec.generate_private_key(ec.SECP384R1())
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    key.chmod(0o644)
    result = preflight(load_site_config(site_dir / "site.toml"), check_data=False)
    assert any("OpenSSH format only" in e for e in result.errors), result.errors
    assert any("readable by others" in w for w in result.warnings), result.warnings
