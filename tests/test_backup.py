"""Backups: create, verify and restore the coordinator's serving state and checkpoints and
a site's privacy ledger; a restore predicts, audits and accounts exactly as before, and a
damaged or unfinished archive never verifies."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_serving_helpers import make_bundle, make_data, make_settings, open_registry
from typer.testing import CliRunner

from common.backup import BackupError, extract_archive, verify_archive, write_archive
from common.backup.archive import MANIFEST_NAME, Source, checksum_path
from common.cli import build_app

ADMIN = ("test-admin", "admin")
runner = CliRunner()


def _said(result) -> str:
    """A command's output with Rich's line wrapping undone."""
    return " ".join(result.output.split())


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def coordinator(tmp_path_factory) -> dict:
    """A serving database with two registered models (one promoted) and their audit
    records, and a run directory holding a checkpoint."""
    from common.config import RunConfig
    from server.rounds import Checkpoint, save_checkpoint
    from server.serving.audit_log import AuditLog
    from server.serving.database import open_database
    from server.serving.registry import Actor, Registry

    root = tmp_path_factory.mktemp("coordinator")
    settings = make_settings(root, audit_key="k" * 32)
    _, sessions = open_database(settings.database_url)
    # as the service keeps it: with its anchor beside the database
    registry = Registry(sessions, AuditLog(sessions, settings.audit_key,
                                           anchor=settings.audit_anchor_path()))
    runs = [make_bundle(root / "runs" / f"run-{seed}", seed=seed) for seed in (0, 1)]
    for run in runs:
        registry.add(run, name="brca", actor=Actor(*ADMIN))
    registry.promote("brca:2", actor=Actor(*ADMIN))
    weights = {"w": torch.arange(6.0)}
    save_checkpoint(runs[0] / "checkpoint", Checkpoint(
        round=2, global_state=weights, best_round=1, best_state=weights,
        rounds=[{"round": 1}, {"round": 2}], sites=[{"site": "a"}],
        schema={"modalities": {"rna": ["g1"]}, "label_names": ["x", "y"]},
        standardizer={"mean/rna": [0.0], "std/rna": [1.0]}, class_weight=[1.0, 2.0],
        selection={"best": [0.5], "best_step": 1}, strategy={"releases": 2},
        central_dp=None, config=RunConfig(rounds=3).to_dict()))
    return {"root": root, "settings": settings, "registry": registry, "runs": runs}


@pytest.fixture(scope="module")
def coordinator_archive(coordinator, tmp_path_factory) -> Path:
    from server.backup.coordinator import CoordinatorSources, create_coordinator_backup

    out = tmp_path_factory.mktemp("backups") / "coordinator.tar.gz"
    s = coordinator["settings"]
    create_coordinator_backup(
        CoordinatorSources(s.database_url, s.audit_key, [coordinator["root"] / "runs"],
                           s.audit_anchor_path()), out)
    return out


def _ledger(state_dir: Path) -> Path:
    from client.privacy import LedgerEntry, PrivacyLedger, ledger_path

    ledger = PrivacyLedger.open(ledger_path(state_dir))
    for rnd, sigma in enumerate((1.1, 1.3, 0.9), start=1):
        ledger.record(LedgerEntry(run_id="run-1", round=rnd, noise_multiplier=sigma,
                                  sample_rate=0.05, steps=40, delta=1e-5,
                                  timestamp="2026-01-01T00:00:00+00:00"))
    return ledger_path(state_dir)


def _rewrite(archive: Path, dest: Path, change) -> None:
    """Copy ``archive`` member by member, passing each (name, bytes) through ``change``
    (which returns new bytes, or None to drop the member)."""
    with tarfile.open(archive, "r:gz") as src, tarfile.open(dest, "w:gz") as out:
        for member in src:
            data = change(member.name, src.extractfile(member).read())
            if data is None:
                continue
            info = tarfile.TarInfo(member.name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))


# ------------------------------------------------------------------ coordinator
def test_restore_gives_identical_predictions_audit_chain_and_checkpoint(
        coordinator, coordinator_archive, tmp_path):
    from common.bundle import load_bundle
    from server.backup.coordinator import restore_coordinator_backup
    from server.rounds import load_checkpoint
    from server.serving.registry import verify_bundle

    settings = coordinator["settings"]
    before = coordinator["registry"]
    into = tmp_path / "restored"
    report = restore_coordinator_backup(coordinator_archive, into, settings.audit_key)
    assert report.models == ["brca:1", "brca:2"]

    after = open_registry(make_settings(into.parent, database_url=f"sqlite:///{report.database}",
                                        audit_key=settings.audit_key))
    data = make_data(n=30, seed=7)
    for ref in ("brca:1", "brca:2"):
        old, new = before.get(ref), after.get(ref)
        assert Path(new.bundle_path).is_relative_to(into)  # the restored copy, not the source
        assert new.bundle_sha256 == old.bundle_sha256
        assert (new.stage, new.lineage) == (old.stage, old.lineage)
        verify_bundle(new)
        p_old = load_bundle(old.bundle_path).predict_proba(data)
        p_new = load_bundle(new.bundle_path).predict_proba(data)
        np.testing.assert_array_equal(p_old, p_new)
    assert after.resolve("production", "brca").ref == "brca:2"

    # the whole chain, keyed, up to the head noted at backup time
    old_head = before.audit.verify().head
    result = after.audit.verify(expect_head=old_head)
    assert result.ok and result.checked == before.audit.count() == 3
    assert report.audit_head == old_head
    # a wrong key shows every record as modified: the key was really checked
    from server.serving.audit_log import AuditLog
    from server.serving.database import open_database

    _, sessions = open_database(f"sqlite:///{report.database}")
    assert not AuditLog(sessions, "x" * 32).verify().ok

    ckpt = load_checkpoint(into / "checkpoints" / "run-0")
    assert ckpt is not None and ckpt.round == 2 and ckpt.strategy == {"releases": 2}
    assert torch.equal(ckpt.global_state["w"], torch.arange(6.0))
    assert report.checkpoints == ["run-0 (round 2)"]


def test_manifest_records_audit_head_models_and_checksums(coordinator_archive):
    manifest = verify_archive(coordinator_archive)
    registry = manifest.components["registry"]
    assert registry["audit_intact"] and registry["audit_keyed"]
    assert registry["audit_records"] == 3 and registry["models"] == 2
    assert sorted(manifest.components["bundles"]) == ["brca:1", "brca:2"]
    assert {f.component for f in manifest.files} == {"registry", "bundles", "checkpoints"}
    assert {"serving.db", "serving.db.audit-anchor.json"} <= {f.path for f in manifest.files}
    assert all(len(f.sha256) == 64 for f in manifest.files)


def test_restore_refuses_a_non_empty_directory_naming_it(coordinator_archive, tmp_path):
    from server.backup.coordinator import restore_coordinator_backup

    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(BackupError, match=f"{target} is not empty"):
        restore_coordinator_backup(coordinator_archive, target)
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]


def test_create_refuses_to_replace_an_archive_and_a_non_sqlite_database(coordinator, tmp_path,
                                                                        coordinator_archive):
    from server.backup.coordinator import CoordinatorSources, create_coordinator_backup

    s = coordinator["settings"]
    with pytest.raises(BackupError, match="already exists"):
        create_coordinator_backup(CoordinatorSources(s.database_url), coordinator_archive)
    with pytest.raises(BackupError, match="pg_dump"):
        create_coordinator_backup(CoordinatorSources("postgresql://u:p@db/x"), tmp_path / "b")


# ------------------------------------------------------------------ damaged archives
def test_truncated_archive_fails_verify_at_every_cut(coordinator_archive, tmp_path):
    """What an interrupted backup or copy leaves: no prefix of an archive verifies."""
    blob = coordinator_archive.read_bytes()
    for fraction in (0.0, 0.1, 0.5, 0.9, 0.999):
        cut = tmp_path / f"cut-{fraction}.tar.gz"
        cut.write_bytes(blob[: int(len(blob) * fraction)])
        with pytest.raises(BackupError, match=r"truncated or corrupt|incomplete"):
            verify_archive(cut)
    # a copy cut short beside its checksum file: the checksum names it
    cut = tmp_path / "copy.tar.gz"
    cut.write_bytes(blob[:-100])
    checksum_path(cut).write_text(checksum_path(coordinator_archive).read_text())
    with pytest.raises(BackupError, match="SHA-256 differs"):
        verify_archive(cut)


def test_tampered_archive_fails_verify_naming_the_file(coordinator_archive, tmp_path):
    def flip(name: str, data: bytes) -> bytes:
        if name.endswith("brca/1/weights.pt"):
            return data[:-1] + bytes([data[-1] ^ 1])
        return data

    tampered = tmp_path / "tampered.tar.gz"
    _rewrite(coordinator_archive, tampered, flip)
    with pytest.raises(BackupError, match=r"bundles/brca/1/weights.pt: content differs"):
        verify_archive(tampered)
    with pytest.raises(BackupError):
        extract_archive(tampered, tmp_path / "never")
    assert not (tmp_path / "never").exists()

    dropped = tmp_path / "dropped.tar.gz"
    _rewrite(coordinator_archive, dropped,
             lambda n, d: None if n == "serving.db" else d)
    with pytest.raises(BackupError, match=r"serving\.db: listed in the manifest but not in"):
        verify_archive(dropped)

    extra = tmp_path / "extra.tar.gz"
    with tarfile.open(coordinator_archive, "r:gz") as src, tarfile.open(extra, "w:gz") as out:
        info = tarfile.TarInfo("smuggled.sh")
        info.size = 2
        out.addfile(info, io.BytesIO(b"hi"))
        for member in src:
            out.addfile(member, src.extractfile(member))
    with pytest.raises(BackupError, match=r"smuggled\.sh: in the archive but not in the manifest"):
        verify_archive(extra)

    not_ours = tmp_path / "other.tar.gz"
    not_ours.write_bytes(gzip.compress(b"plain text, not a tar"))
    with pytest.raises(BackupError, match=r"truncated or corrupt|incomplete"):
        verify_archive(not_ours)


def test_interrupted_backup_leaves_no_archive(tmp_path, monkeypatch):
    """A backup that fails half way (here: a file vanishes) leaves neither the archive nor
    a temporary file behind."""
    good = tmp_path / "a.bin"
    good.write_bytes(b"a" * 100_000)
    missing = tmp_path / "gone.bin"
    dest = tmp_path / "out" / "b.tar.gz"
    with pytest.raises(FileNotFoundError):
        write_archive(dest, "coordinator", [Source("a.bin", good, "x"),
                                            Source("gone.bin", missing, "x")])
    assert list((tmp_path / "out").iterdir()) == []


def test_killed_backup_leaves_nothing_that_verifies(tmp_path):
    """SIGKILL in the middle of writing: the archive's name never appears, and what the
    writer left (its temporary file) does not verify."""
    import os
    import signal
    import subprocess
    import sys
    import time

    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(32 << 20))  # incompressible: gzip takes a while
    dest = tmp_path / "out" / "b.tar.gz"
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from pathlib import Path; from common.backup import Source, write_archive;"
         "print('go', flush=True);"
         f"write_archive(Path({str(dest)!r}), 'coordinator', [Source('big.bin', "
         f"Path({str(big)!r}), 'x')])"],
        stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1])
    assert child.stdout.readline().strip() == b"go"
    time.sleep(0.3)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(30)
    if child.returncode == 0:
        pytest.skip("the backup finished before it could be interrupted")
    assert not dest.exists() and not checksum_path(dest).exists()
    leftovers = list(dest.parent.iterdir())
    assert leftovers, "the writer had started its temporary file"
    for partial in leftovers:
        with pytest.raises(BackupError, match=r"truncated or corrupt|incomplete"):
            verify_archive(partial)


def test_archive_refuses_unsafe_names(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    for name in ("../escape", "/abs", MANIFEST_NAME, "a/../b"):
        with pytest.raises(BackupError, match="not a safe relative file name"):
            write_archive(tmp_path / f"x-{len(name)}.tar.gz", "site", [Source(name, f, "x")])


# ------------------------------------------------------------------ site ledger
def test_site_ledger_restore_spends_the_same_epsilon(tmp_path):
    from client.backup import create_site_backup, restore_site_backup
    from client.privacy import PrivacyLedger, ledger_path

    state = tmp_path / "state"
    path = _ledger(state)
    archive = tmp_path / "site.tar.gz"
    manifest = create_site_backup(state, archive)
    assert manifest.kind == "site"
    _, facts = restore_site_backup(archive, tmp_path / "restored")
    original = PrivacyLedger.open(path, accountant=None)
    restored = PrivacyLedger.open(ledger_path(tmp_path / "restored"), accountant=None)
    assert restored.entries == original.entries
    assert restored.epsilon(1e-5) == original.epsilon(1e-5) == facts.epsilon
    assert facts.epsilon > 0 and facts.entries == 3

    # a site archive is not restored as the coordinator's, nor the reverse
    from server.backup.coordinator import restore_coordinator_backup

    with pytest.raises(BackupError, match="site backup restore"):
        restore_coordinator_backup(archive, tmp_path / "wrong")

    # a ledger edited inside the archive (one round fewer) fails verify
    def drop_round(name: str, data: bytes) -> bytes:
        doc = json.loads(data)
        doc["entries"] = doc["entries"][:-1]
        return json.dumps(doc).encode()

    edited = tmp_path / "edited.tar.gz"
    _rewrite(archive, edited, lambda n, d: drop_round(n, d) if n.endswith("ledger.json") else d)
    with pytest.raises(BackupError, match=r"privacy-ledger\.json: content differs"):
        verify_archive(edited)


def test_site_backup_commands(tmp_path):
    app = build_app()
    state = tmp_path / "state"
    _ledger(state)
    archive = tmp_path / "b" / "site.tar.gz"
    result = runner.invoke(app, ["site", "backup", "create", "--state-dir", str(state),
                                 "--out", str(archive)])
    assert result.exit_code == 0, result.output
    assert "3 round(s)" in _said(result)
    result = runner.invoke(app, ["site", "backup", "verify", str(archive)])
    assert result.exit_code == 0 and "valid site backup" in _said(result)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    result = runner.invoke(app, ["site", "backup", "restore", str(archive), "--into", str(busy)])
    assert result.exit_code == 2 and "is not empty" in _said(result)
    result = runner.invoke(app, ["site", "backup", "restore", str(archive),
                                 "--into", str(tmp_path / "new")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["site", "budget", "--state-dir", str(tmp_path / "new")])
    assert result.exit_code == 0 and "rounds: 3" in _said(result)
    archive.write_bytes(archive.read_bytes()[:200])
    result = runner.invoke(app, ["backup", "verify", str(archive)])
    assert result.exit_code == 1 and "NOT valid" in _said(result)


def test_coordinator_backup_commands(coordinator, tmp_path, monkeypatch):
    app = build_app()
    s = coordinator["settings"]
    monkeypatch.setenv("CANCER_ALPHA_AUDIT_KEY", s.audit_key)
    archive = tmp_path / "c.tar.gz"
    result = runner.invoke(app, ["backup", "create", "--db", s.database_url, "--out",
                                 str(archive), "--checkpoints", str(coordinator["runs"][0])])
    assert result.exit_code == 0, result.output
    assert "2 model(s)" in _said(result) and "1 checkpoint(s)" in _said(result)
    result = runner.invoke(app, ["backup", "verify", str(archive), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["kind"] == "coordinator"
    result = runner.invoke(app, ["backup", "restore", str(archive), "--into",
                                 str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "audit log intact to record 3" in _said(result)
    # the service's own check, with the restored anchor beside the restored database
    result = runner.invoke(app, ["audit", "verify", "--db",
                                 f"sqlite:///{tmp_path / 'r' / 'serving.db'}"])
    assert result.exit_code == 0, result.output
    assert "anchor record 3" in _said(result)

    # checkpoints only (a registry kept in PostgreSQL is backed up with pg_dump)
    only = tmp_path / "ckpt.tar.gz"
    result = runner.invoke(app, ["backup", "create", "--no-registry", "--out", str(only),
                                 "--checkpoints", str(coordinator["root"] / "runs")])
    assert result.exit_code == 0, result.output
    assert {f.component for f in verify_archive(only).files} == {"checkpoints"}
    result = runner.invoke(app, ["backup", "restore", str(only), "--into", str(tmp_path / "c")])
    assert result.exit_code == 0 and "1 checkpoint(s)" in _said(result), result.output
    assert (tmp_path / "c" / "checkpoints" / "run-0" / "checkpoint.pt").is_file()
