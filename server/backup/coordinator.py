"""The coordinator's backup: serving database (registry and audit log), the registered
model bundles, and the federation's checkpoints, in one archive (:mod:`common.backup`).

Archive layout (restored as is)::

    serving.db                          a consistent SQLite snapshot (registry + audit log)
    serving.db.audit-anchor.json        the audit log's anchor (copied before the snapshot)
    bundles/NAME/VERSION/<bundle files> every registered model's bundle
    checkpoints/RUN/<checkpoint files>  each run's last checkpoint

The manifest records the audit chain's head and each model's bundle digest; restoring
points the restored registry at the restored bundles, then checks the audit chain
against that head and every bundle against its registered digest.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.backup import BackupError, Manifest, Source, extract_archive, write_archive

COORDINATOR_KIND = "coordinator"
DATABASE_FILE = "serving.db"
# Beside the restored database, where the service looks for it by default.
ANCHOR_FILE = f"{DATABASE_FILE}.audit-anchor.json"
REGISTRY, BUNDLES, CHECKPOINTS = "registry", "bundles", "checkpoints"


@dataclass
class CoordinatorSources:
    """What to back up: the serving database URL (SQLite; None: no registry), the audit
    key that signs its chain (empty when unkeyed), checkpoint directories."""

    database_url: str | None
    audit_key: str = ""
    checkpoint_dirs: list[Path] = field(default_factory=list)
    audit_anchor: Path | None = None  # the audit log's anchor file, when it has one


@dataclass
class RestoreReport:
    """What a restore checked."""

    manifest: Manifest
    database: Path
    audit_records: int
    audit_head: tuple[int, str]
    models: list[str]
    checkpoints: list[str]
    warnings: list[str] = field(default_factory=list)
    audit_verified: bool = True  # False: a keyed chain restored without its key


def create_coordinator_backup(sources: CoordinatorSources, dest: Path) -> Manifest:
    """Snapshot the database, collect bundles and checkpoints, write ``dest``."""
    from server.serving.registry import BUNDLE_FILES, RegistryError, bundle_digest

    parent = Path(dest).resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    # The snapshot is made beside the archive: the same disk the backup must fit on.
    with tempfile.TemporaryDirectory(prefix=".cancer-alpha-backup-", dir=parent) as tmp:
        files: list[Source] = []
        components: dict[str, Any] = {}
        if sources.database_url is not None:
            db_path = sqlite_path(sources.database_url)
            anchor = sources.audit_anchor
            if anchor is not None and anchor.is_file():
                # Copied first: the anchor only moves forward after a commit, so the
                # snapshot taken next holds at least the records it names.
                shutil.copyfile(anchor, Path(tmp) / ANCHOR_FILE)
                files.append(Source(ANCHOR_FILE, Path(tmp) / ANCHOR_FILE, REGISTRY))
            snapshot = Path(tmp) / DATABASE_FILE
            snapshot_sqlite(db_path, snapshot)
            registry_facts, bundles = _read_snapshot(snapshot, sources.audit_key)
            registry_facts["audit_anchor"] = bool(files)
            files.append(Source(DATABASE_FILE, snapshot, REGISTRY))
            components[REGISTRY] = registry_facts
            components[BUNDLES] = {}
            for ref, (bundle_dir, digest) in bundles.items():
                try:
                    found = bundle_digest(bundle_dir)
                except RegistryError as exc:
                    raise BackupError(f"model {ref}: {exc}") from None
                if found != digest:
                    raise BackupError(f"model {ref}: the files in {bundle_dir} no longer match "
                                      "the registry; fix or re-register it before backing up")
                stored = f"{BUNDLES}/{ref.replace(':', '/')}"
                files += [Source(f"{stored}/{name}", bundle_dir / name, BUNDLES)
                          for name in BUNDLE_FILES]
                components[BUNDLES][ref] = {"path": stored, "bundle_sha256": digest,
                                            "source": str(bundle_dir)}
        elif not sources.checkpoint_dirs:
            raise BackupError("nothing to back up: no serving database and no checkpoints")
        checkpoints = _checkpoint_sources(sources.checkpoint_dirs)
        files += [s for group in checkpoints.values() for s in group]
        components[CHECKPOINTS] = {run: [s.path for s in group]
                                   for run, group in checkpoints.items()}
        return write_archive(dest, COORDINATOR_KIND, files, components)


def restore_coordinator_backup(archive: Path, into: Path, audit_key: str = "") -> RestoreReport:
    """Restore into ``into`` (new or empty); point the registry at the restored bundles;
    check the audit chain, every bundle and every checkpoint."""
    from common.backup import verify_archive

    manifest = verify_archive(archive)
    if manifest.kind != COORDINATOR_KIND:
        raise BackupError(f"{archive} is a {manifest.kind} backup, not the coordinator's: "
                          f"restore it with `cancer-alpha {manifest.kind} backup restore`")
    extract_archive(archive, into)
    into = Path(into).resolve()
    database = into / DATABASE_FILE
    if REGISTRY not in manifest.components:
        report = RestoreReport(manifest, database, 0, (0, ""), [], [], audit_verified=False)
        report.checkpoints = _check_checkpoints(into, manifest)
        return report
    bundles = manifest.components.get(BUNDLES, {})
    # The registry keeps absolute bundle paths; the restored copies live under ``into``.
    # bundle_path is not part of any audit record, so the chain is untouched.
    con = sqlite3.connect(database)
    try:
        with con:
            for ref, facts in bundles.items():
                name, _, version = ref.rpartition(":")
                con.execute("UPDATE models SET bundle_path = ? WHERE name = ? AND version = ?",
                            (str(into / facts["path"]), name, int(version)))
    finally:
        con.close()
    report = _check_restored(database, manifest, audit_key)
    report.checkpoints = _check_checkpoints(into, manifest)
    return report


# ----------------------------------------------------------------------------- helpers
def sqlite_path(url: str) -> Path:
    """The file of a SQLite URL; other databases have their own backup tools."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        raise BackupError(f"the serving database {parsed.render_as_string(hide_password=True)}"
                          " is not SQLite: back it up with its own tool (pg_dump for "
                          "PostgreSQL); this command backs up SQLite databases")
    if not parsed.database or parsed.database == ":memory:":
        raise BackupError(f"{url}: an in-memory database cannot be backed up")
    path = Path(parsed.database).expanduser()
    if not path.is_file():
        raise BackupError(f"the serving database {path} does not exist")
    return path


def snapshot_sqlite(source: Path, dest: Path) -> None:
    """A consistent copy of a live SQLite database (WAL included), via SQLite's own
    online backup: a running server may keep writing meanwhile."""
    src = sqlite3.connect(source)
    dst = sqlite3.connect(dest)
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal
    finally:
        dst.close()
        src.close()


def _read_snapshot(snapshot: Path, audit_key: str) -> tuple[dict[str, Any],
                                                            dict[str, tuple[Path, str]]]:
    """The audit chain's head and state, and each model's bundle directory and digest."""
    from server.serving.audit_log import AuditLog
    from server.serving.database import open_database
    from server.serving.registry import Registry

    engine, sessions = open_database(f"sqlite:///{snapshot}")
    try:
        audit = AuditLog(sessions, audit_key)
        result = audit.verify()
        models = Registry(sessions, audit).models()
    finally:
        engine.dispose()
    # open_database turns WAL on: fold it back into the one file we archive.
    con = sqlite3.connect(snapshot)
    con.execute("PRAGMA journal_mode=DELETE")
    con.close()
    facts = {"models": len(models), "audit_records": result.checked,
             "audit_head": list(result.head), "audit_keyed": bool(audit_key),
             "audit_intact": result.ok, "audit_problems": result.problems}
    return facts, {m.ref: (Path(m.bundle_path), m.bundle_sha256) for m in models}


def _checkpoint_sources(dirs: list[Path]) -> dict[str, list[Source]]:
    """Every checkpoint under ``dirs``: a checkpoint directory, a run directory (its
    ``checkpoint/``), or a directory of runs."""
    from server.outputs import CHECKPOINT_DIR
    from server.rounds.checkpoint import CHECKPOINT_FILE, GLOBAL_WEIGHTS_FILE, SUMMARY_FILE

    found: dict[str, Path] = {}
    for d in dirs:
        d = Path(d).resolve()
        if (d / CHECKPOINT_FILE).is_file():
            found[d.parent.name if d.name == CHECKPOINT_DIR else d.name] = d
        elif (d / CHECKPOINT_DIR / CHECKPOINT_FILE).is_file():
            found[d.name] = d / CHECKPOINT_DIR
        elif d.is_dir():
            runs = sorted(r for r in d.iterdir()
                          if (r / CHECKPOINT_DIR / CHECKPOINT_FILE).is_file())
            if not runs:
                raise BackupError(f"{d}: no checkpoint here (no {CHECKPOINT_FILE}, "
                                  f"{CHECKPOINT_DIR}/{CHECKPOINT_FILE} or runs holding one)")
            found.update({r.name: r / CHECKPOINT_DIR for r in runs})
        else:
            raise BackupError(f"{d}: no such directory")
    return {run: [Source(f"{CHECKPOINTS}/{run}/{name}", d / name, CHECKPOINTS)
                  for name in (CHECKPOINT_FILE, GLOBAL_WEIGHTS_FILE, SUMMARY_FILE)
                  if (d / name).is_file()]
            for run, d in sorted(found.items())}


def _check_restored(database: Path, manifest: Manifest, audit_key: str) -> RestoreReport:
    from server.serving.audit_log import AuditLog
    from server.serving.database import open_database
    from server.serving.registry import Registry, RegistryError, verify_bundle

    facts = manifest.components.get(REGISTRY, {})
    head = tuple(facts.get("audit_head", (0, "")))
    warnings: list[str] = []
    expect = (int(head[0]), str(head[1])) if head and head[0] else None
    anchor = database.with_name(ANCHOR_FILE)
    engine, sessions = open_database(f"sqlite:///{database}")
    try:
        if facts.get("audit_keyed") and not audit_key:
            warnings.append("the audit chain is keyed and no audit key is configured: "
                            "its hashes were not checked (set CANCER_ALPHA_AUDIT_KEY)")
            result = None
        else:
            result = AuditLog(sessions, audit_key).verify(expect_head=expect)
            if result.ok and expect and not anchor.exists():
                # A backup of a log kept without an anchor: anchor the verified head, so
                # the restored log is checked for truncation from now on.
                _write_anchor(anchor, audit_key, expect)
            if result.ok:
                result = AuditLog(sessions, audit_key, anchor=anchor).verify(expect_head=expect)
        audit = AuditLog(sessions, audit_key)
        registry = Registry(sessions, audit)
        models = registry.models()
        for rec in models:
            try:
                verify_bundle(rec)
            except RegistryError as exc:
                raise BackupError(f"restored model {rec.ref}: {exc}") from None
    finally:
        engine.dispose()
    if result is not None and not result.ok and facts.get("audit_intact", True):
        raise BackupError("the restored audit log does not verify: " + "; ".join(result.problems))
    if not facts.get("audit_intact", True):
        warnings.append("the audit log was already not intact when it was backed up: "
                        + "; ".join(facts.get("audit_problems", [])))
    if len(models) != facts.get("models", len(models)):
        raise BackupError(f"the restored registry has {len(models)} models, the backup "
                          f"recorded {facts['models']}")
    return RestoreReport(manifest, database, facts.get("audit_records", 0),
                         (int(head[0]), str(head[1])) if head else (0, ""),
                         [m.ref for m in models], [], warnings, audit_verified=result is not None)


def _write_anchor(path: Path, audit_key: str, head: tuple[int, str]) -> None:
    from common.atomic import write_json_atomic
    from server.serving.audit_log import AuditAnchor

    anchor = AuditAnchor.sign(audit_key.encode() or None, *head)
    write_json_atomic(path, {"seq": anchor.seq, "hash": anchor.hash, "mac": anchor.mac},
                      private=True)


def _check_checkpoints(into: Path, manifest: Manifest) -> list[str]:
    from server.rounds.checkpoint import load_checkpoint
    from server.rounds.outcome import FederationError

    runs = []
    for run in manifest.components.get(CHECKPOINTS, {}):
        try:
            ckpt = load_checkpoint(into / CHECKPOINTS / run)
        except FederationError as exc:
            raise BackupError(f"restored checkpoint of {run}: {exc}") from None
        runs.append(f"{run} (round {ckpt.round})" if ckpt else run)
    return runs
