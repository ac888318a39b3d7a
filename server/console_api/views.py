"""The API's JSON objects (``Site``, ``RunSummary``, ``RunDetail``, ``Round``, ``Model``,
audit entries) built from the store, the run directories and the registry; a ``site``
caller's view keeps only what is about its own site."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from server.console_api import rundir
from server.console_api.state import ConsoleState
from server.console_api.store import RunRow, SiteRow
from server.serving.audit_log import AuditRecord
from server.serving.registry import ModelRecord


def site_json(row: SiteRow) -> dict[str, Any]:
    return {"name": row.name, "fingerprint": row.fingerprint,
            "status": "revoked" if row.revoked else "enabled",
            "online": row.online and not row.revoked, "last_seen": row.last_seen,
            "data_summary": row.data_summary,
            "registration_problem": row.registration_problem}


def run_summary(state: ConsoleState, row: RunRow) -> dict[str, Any]:
    run_dir = state.run_dir(row.id)
    config = rundir.run_config(run_dir)
    rounds = rundir.rounds(run_dir, config)
    return {"id": row.id, "template": row.template, "status": row.status,
            "started_at": row.started_at, "finished_at": row.finished_at,
            "rounds_done": len(rounds), "rounds_total": rundir.rounds_total(config),
            "best_f1_macro": rundir.best_f1(rounds),
            "flower_runs": row.flower_runs}


def run_detail(state: ConsoleState, row: RunRow, only_site: str | None) -> dict[str, Any]:
    run_dir = state.run_dir(row.id)
    config = rundir.run_config(run_dir)
    rounds = rundir.rounds(run_dir, config)
    rejections = rundir.rejections(run_dir)
    errors = [*row.errors, *rundir.errors(run_dir)]
    if only_site is not None:
        rounds = round_for(rounds, only_site)
        rejections = [r for r in rejections if r["site"] == only_site]
        errors = []  # they may name other sites
    return {**run_summary(state, row), "config": config, "rounds": rounds,
            "rejections": rejections, "errors": errors}


def round_for(rounds: list[dict], only_site: str | None) -> list[dict]:
    """``rounds`` as a caller may see them (a site: its own row only)."""
    if only_site is None:
        return rounds
    return [{**r, "sites": [s for s in r["sites"] if s["name"] == only_site]} for r in rounds]


def model_json(state: ConsoleState, rec: ModelRecord) -> dict[str, Any]:
    data = rec.as_dict()
    return {"id": rec.ref, "run_id": state.model_run(rec.bundle_path) or rec.run_id,
            "created_at": data["created_at"], "metrics": data["metrics"],
            "promoted": rec.stage == "production",
            "promotion_reason": promotion_reason(state, rec.ref),
            "lineage": rec.lineage or {}, "name": rec.name, "version": rec.version,
            "stage": rec.stage, "stage_changed_at": data["stage_changed_at"],
            "dp": rec.dp, "per_site_epsilon": rec.per_site_epsilon}


def promotion_reason(state: ConsoleState, ref: str) -> str | None:
    """The reason given with the model's latest promotion (from the audit log)."""
    with state.audit.sessions() as s:
        rec = s.scalar(select(AuditRecord).where(AuditRecord.model_id == ref,
                                                 AuditRecord.action == "registry.promote")
                       .order_by(AuditRecord.seq.desc()).limit(1))
    return rec.as_dict()["detail"].get("reason") if rec is not None else None


def audit_json(rec: AuditRecord) -> dict[str, Any]:
    data = rec.as_dict()
    return {"seq": data["seq"], "time": data["ts"], "actor": data["actor"],
            "role": data["role"], "action": data["action"], "model_id": data["model_id"],
            "detail": data["detail"], "hash": data["hash"], "prev_hash": data["prev_hash"]}
