"""Model registry: every registered model bundle with its lineage and lifecycle stage.

A model is ``NAME:VERSION`` (versions count up per name). Registration records where
the bundle lives and the SHA-256 of its files; the server refuses a bundle whose files
no longer match, so a swapped ``weights.pt`` is never served under an old id. Stages
are ``candidate`` -> ``production`` -> ``archived``; promoting a model to production
archives the name's previous production model, in the same transaction as the audit
record of the promotion.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, UniqueConstraint, func, select
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker

from server.serving.audit_log import AuditLog, AuditRecord, VerifyResult
from server.serving.database import Base

STAGES = ("candidate", "production", "archived")
BUNDLE_FILES = ("bundle.json", "schema.json", "weights.pt", "standardizer.npz")
_REF = re.compile(r"^(production|[^/\\]+:(\d+|production))$")


class RegistryError(ValueError):
    """Unknown model, bad reference, or a bundle that cannot be registered or served."""


class ModelRecord(Base):
    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_model_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    version: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(20), default="candidate")
    bundle_path: Mapped[str] = mapped_column(String(1000))
    bundle_sha256: Mapped[str] = mapped_column(String(64))
    schema_sha256: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[str | None] = mapped_column(String(200))
    round: Mapped[int | None] = mapped_column(Integer)
    strategy: Mapped[str | None] = mapped_column(String(50))
    dp: Mapped[str | None] = mapped_column(String(20))  # none, local, central
    per_site_epsilon: Mapped[dict | None] = mapped_column(JSON)
    central_dp: Mapped[dict | None] = mapped_column(JSON)
    data_fingerprints: Mapped[dict | None] = mapped_column(JSON)
    metrics: Mapped[dict | None] = mapped_column(JSON)
    label_names: Mapped[list] = mapped_column(JSON)
    modalities: Mapped[dict] = mapped_column(JSON)  # modality -> feature count
    lineage: Mapped[dict] = mapped_column(JSON)  # the bundle's lineage, verbatim
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    registered_by: Mapped[str] = mapped_column(String(200))
    stage_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.ref, "name": self.name, "version": self.version,
            "stage": self.stage, "run_id": self.run_id, "round": self.round,
            "strategy": self.strategy, "dp": self.dp, "per_site_epsilon": self.per_site_epsilon,
            "central_dp": self.central_dp, "data_fingerprints": self.data_fingerprints or {},
            "metrics": self.metrics or {}, "label_names": list(self.label_names),
            "modalities": dict(self.modalities), "bundle_path": self.bundle_path,
            "bundle_sha256": self.bundle_sha256, "schema_sha256": self.schema_sha256,
            "created_at": _iso(self.created_at), "registered_by": self.registered_by,
            "stage_changed_at": _iso(self.stage_changed_at),
        }


@dataclass(frozen=True)
class Actor:
    """Who does something, for the audit log."""

    subject: str
    role: str


def bundle_digest(bundle_dir: Path) -> str:
    """SHA-256 over the bundle's files (name and content, fixed order)."""
    h = hashlib.sha256()
    for name in BUNDLE_FILES:
        path = bundle_dir / name
        if not path.is_file():
            raise RegistryError(f"{bundle_dir}: bundle is incomplete, {name} is missing")
        h.update(name.encode() + b"\0")
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def bundle_dir_of(path: Path | str) -> Path:
    """The bundle directory itself, given it or a run directory that holds ``model/``."""
    path = Path(path).expanduser().resolve()
    if (path / "bundle.json").is_file():
        return path
    if (path / "model" / "bundle.json").is_file():
        return path / "model"
    raise RegistryError(f"{path}: no model bundle here (expected bundle.json, or a run "
                        "directory with model/bundle.json)")


def is_registry_ref(spec: str) -> bool:
    """True for ``production``, ``NAME:VERSION`` and ``NAME:production`` (not a directory)."""
    return bool(_REF.match(spec)) and not Path(spec).is_dir()


def parse_ref(ref: str) -> tuple[str, int]:
    name, sep, version = ref.rpartition(":")
    if not sep or not name or not version.isdigit():
        raise RegistryError(f"model reference {ref!r} is not NAME:VERSION (e.g. cancer-alpha:3)")
    return name, int(version)


class Registry:
    """Registry operations; each mutating call is one transaction with its audit record."""

    def __init__(self, sessions: sessionmaker, audit: AuditLog) -> None:
        self._sessions = sessions
        self.audit = audit

    def verify_audit(self, expect_head: tuple[int, str] | None = None) -> VerifyResult:
        """The audit log's own check (:meth:`AuditLog.verify`) plus one the log cannot make
        alone: every registered model's registration is in it. A log emptied together with
        its anchor looks like a new one; the registry beside it still names the models whose
        records were removed."""
        result = self.audit.verify(expect_head=expect_head)
        with self._sessions() as s:
            refs = [f"{n}:{v}" for n, v in s.execute(
                select(ModelRecord.name, ModelRecord.version).order_by(ModelRecord.id))]
            audited = set(s.scalars(select(AuditRecord.model_id).where(
                AuditRecord.action == "registry.add")))
        missing = [ref for ref in refs if ref not in audited]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more"
                                              if len(missing) > 5 else "")
            result.problems.append(
                f"model(s) {shown} are registered but the log has no record of their "
                "registration: records were removed (emptied or deleted rows)")
        return result

    # ------------------------------------------------------------------- writes
    def add(self, path: Path | str, *, name: str, actor: Actor) -> ModelRecord:
        """Register the bundle in ``path`` (a run directory or the bundle itself)."""
        if not name or ":" in name or len(name) > 100:
            raise RegistryError(f"model name {name!r}: 1-100 characters, no ':'")
        bundle_dir = bundle_dir_of(path)
        meta = json.loads((bundle_dir / "bundle.json").read_text())
        schema = json.loads((bundle_dir / "schema.json").read_text())
        lineage = meta.get("lineage") or {}
        run = _run_files(bundle_dir)
        with self._sessions.begin() as s:
            last = s.scalar(select(func.max(ModelRecord.version)).where(ModelRecord.name == name))
            rec = ModelRecord(
                name=name,
                version=(last or 0) + 1,
                stage="candidate",
                bundle_path=str(bundle_dir),
                bundle_sha256=bundle_digest(bundle_dir),
                schema_sha256=meta.get("schema_sha256", ""),
                run_id=lineage.get("run_id") or run.get("run_id") or bundle_dir.parent.name,
                round=lineage.get("round"),
                strategy=lineage.get("strategy"),
                dp=_dp_mode(lineage, run),
                per_site_epsilon=lineage.get("per_site_epsilon") or run.get("per_site_epsilon"),
                central_dp=lineage.get("central_dp") or run.get("central_dp"),
                data_fingerprints=lineage.get("data_fingerprints") or run.get("fingerprints"),
                metrics=lineage.get("metrics") or run.get("metrics"),
                label_names=list(meta.get("label_names", [])),
                modalities={m: len(f) for m, f in schema.get("modalities", {}).items()},
                lineage=lineage,
                created_at=datetime.now(UTC),
                registered_by=actor.subject,
            )
            s.add(rec)
            s.flush()
            self.audit.append(actor=actor.subject, role=actor.role, action="registry.add",
                              model_id=rec.ref, detail={"bundle_sha256": rec.bundle_sha256},
                              session=s)
        return rec

    def promote(self, ref: str, *, stage: str = "production", actor: Actor,
                request_id: str = "", reason: str = "") -> ModelRecord:
        """Move a model to ``stage``; a new production model archives the previous one.
        A ``reason`` is kept in the audit record."""
        if stage not in STAGES:
            raise RegistryError(f"stage {stage!r} is not one of {STAGES}")
        name, version = parse_ref(ref)
        with self._sessions.begin() as s:
            rec = s.scalar(select(ModelRecord).where(ModelRecord.name == name,
                                                     ModelRecord.version == version))
            if rec is None:
                raise RegistryError(f"no model {ref} in the registry")
            previous = rec.stage
            now = datetime.now(UTC)
            archived = []
            if stage == "production":
                for old in s.scalars(select(ModelRecord).where(
                        ModelRecord.name == name, ModelRecord.stage == "production",
                        ModelRecord.id != rec.id)):
                    old.stage, old.stage_changed_at = "archived", now
                    archived.append(old.ref)
            rec.stage, rec.stage_changed_at = stage, now
            self.audit.append(actor=actor.subject, role=actor.role, action="registry.promote",
                              model_id=rec.ref, request_id=request_id,
                              detail={"from": previous, "to": stage, "archived": archived,
                                      **({"reason": reason} if reason else {})},
                              session=s)
        return rec

    # -------------------------------------------------------------------- reads
    def get(self, ref: str) -> ModelRecord:
        name, version = parse_ref(ref)
        with self._sessions() as s:
            rec = s.scalar(select(ModelRecord).where(ModelRecord.name == name,
                                                     ModelRecord.version == version))
        if rec is None:
            raise RegistryError(f"no model {ref} in the registry")
        return rec

    def models(self, name: str | None = None, stage: str | None = None) -> list[ModelRecord]:
        q = select(ModelRecord).order_by(ModelRecord.name, ModelRecord.version)
        if name:
            q = q.where(ModelRecord.name == name)
        if stage:
            q = q.where(ModelRecord.stage == stage)
        with self._sessions() as s:
            return list(s.scalars(q).all())

    def production(self, name: str) -> ModelRecord:
        found = self.models(name=name, stage="production")
        if not found:
            raise RegistryError(
                f"no production model named {name!r}: register one with `cancer-alpha registry "
                f"add RUN_DIR --name {name}` and promote it with `registry promote {name}:N`")
        return found[-1]

    def resolve(self, spec: str, default_name: str) -> ModelRecord:
        """``production`` (of ``default_name``), ``NAME:production`` or ``NAME:VERSION``."""
        if spec == "production":
            return self.production(default_name)
        if spec.endswith(":production"):
            return self.production(spec.rsplit(":", 1)[0])
        return self.get(spec)


def verify_bundle(rec: ModelRecord) -> Path:
    """The record's bundle directory, after checking its files still match the registry."""
    bundle_dir = Path(rec.bundle_path)
    digest = bundle_digest(bundle_dir)
    if digest != rec.bundle_sha256:
        raise RegistryError(
            f"model {rec.ref}: the files in {bundle_dir} changed since registration "
            f"(sha256 {digest[:12]}… != {rec.bundle_sha256[:12]}…); register the new bundle "
            "as a new version instead")
    return bundle_dir


def _run_files(bundle_dir: Path) -> dict[str, Any]:
    """Lineage a run directory keeps beside the bundle (metrics.json, config.json)."""
    out: dict[str, Any] = {}
    run_dir = bundle_dir.parent
    for fname in ("config.json", "metrics.json"):
        path = run_dir / fname
        if not path.is_file():
            continue
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        if fname == "config.json":
            out["run_id"] = doc.get("run_id")
            out["dp"] = (doc.get("run_config") or {}).get("dp")
            out["fingerprints"] = (doc.get("federation") or {}).get("fingerprints")
        else:
            out["per_site_epsilon"] = doc.get("per_site_epsilon")
            out["central_dp"] = doc.get("central_dp")
            keys = ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "roc_auc_ovr")
            if any(k in doc for k in keys):
                out["metrics"] = {"test": {k: doc[k] for k in keys if k in doc}}
    return {k: v for k, v in out.items() if v is not None}


def _dp_mode(lineage: dict[str, Any], run: dict[str, Any]) -> str | None:
    if lineage.get("per_site_epsilon"):
        return "local"
    if lineage.get("central_dp"):
        return "central"
    return run.get("dp")


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite returns naive datetimes; they were stored as UTC
        value = value.replace(tzinfo=UTC)
    return value.isoformat(timespec="seconds")
