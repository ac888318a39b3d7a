"""Runs: list, detail, start from a template, stop, resume, and the live event stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from server.console_api import rundir, views
from server.console_api.routes.deps import StartRun, State
from server.console_api.security import Caller, Operator, own_site
from server.console_api.state import ConsoleError, ConsoleState
from server.console_api.store import RUN_STATUSES, RunRow, utc_now
from server.console_api.templates import NAME, TemplateError

router = APIRouter(prefix="/api/runs")
_KEEP_ALIVE_EVERY = 15  # polls between comment lines that keep proxies from closing


@router.get("")
def runs(state: State, _who: Caller, status: str | None = None) -> list[dict[str, Any]]:
    if status is not None and status not in RUN_STATUSES:
        raise ConsoleError(422, f"status {status!r} is not one of {', '.join(RUN_STATUSES)}")
    state.refresh_runs()
    return [views.run_summary(state, r) for r in state.store.runs(status)]


@router.get("/{run_id}")
def run(run_id: str, state: State, who: Caller) -> dict[str, Any]:
    return views.run_detail(state, _row(state, run_id), own_site(who))


@router.post("")
def start(body: StartRun, state: State, who: Operator) -> dict[str, Any]:
    control = _control(state)
    try:
        template = state.templates.get(body.template)
    except TemplateError as e:
        raise ConsoleError(404 if "no template" in str(e) else 422, str(e)) from None
    name = body.name or f"{template.name}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    if not NAME.match(name):
        raise ConsoleError(422, f"run name {name!r} is not valid: 1-64 lowercase letters, "
                           "digits, '-' or '_', starting with a letter or digit")
    with state.lock:
        state.refresh_runs()
        if state.store.run(name) is not None or state.run_dir(name).exists():
            raise ConsoleError(409, f"a run named {name!r} exists; choose another name")
        _refuse_second_run(state)
        try:
            flower_runs = control.start(name, template)
        except ConsoleError as e:
            if state.run_dir(name).exists():  # submitted config kept: listed as failed
                state.store.add_run(RunRow(name, template.name, "failed", utc_now(), utc_now(),
                                           errors=[str(e)]))
            _audit(state, who, "run.start", name, template=template.name, error=str(e))
            raise
        state.store.add_run(RunRow(name, template.name, "running", utc_now(),
                                   flower_runs=flower_runs))
        _audit(state, who, "run.start", name, template=template.name, flower_runs=flower_runs)
        return views.run_summary(state, _row(state, name))


@router.post("/{run_id}/stop")
def stop(run_id: str, state: State, who: Operator) -> dict[str, Any]:
    with state.lock:
        control, row = _controlled_run(state, run_id, ("running",), "not running")
        control.stop(row)
        state.store.update_run(run_id, status="stopped", finished_at=utc_now())
        _audit(state, who, "run.stop", run_id, flower_runs=row.flower_runs)
        return views.run_summary(state, _row(state, run_id))


@router.post("/{run_id}/resume")
def resume(run_id: str, state: State, who: Operator) -> dict[str, Any]:
    with state.lock:
        control, row = _controlled_run(state, run_id, ("stopped", "failed"),
                                       "only a stopped or failed run can be resumed")
        _refuse_second_run(state)
        flower_runs = control.resume(row)
        state.store.update_run(run_id, status="running", finished_at=None,
                               flower_runs=flower_runs)
        _audit(state, who, "run.resume", run_id, flower_runs=flower_runs,
               after_rounds=len(rundir.rounds(state.run_dir(run_id), {})))
        return views.run_summary(state, _row(state, run_id))


@router.get("/{run_id}/events")
async def events(run_id: str, request: Request, state: State, who: Caller
                 ) -> StreamingResponse:
    """Server-sent events: ``round`` for every completed round (those done first),
    ``status`` at the start and whenever the summary changes; ends when the run does."""
    _row(state, run_id)
    return StreamingResponse(_stream(request, state, run_id, own_site(who)),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _stream(request: Request, state: ConsoleState, run_id: str,
                  only_site: str | None) -> AsyncIterator[str]:
    sent, last, polls = 0, None, 0
    yield "retry: 2000\n\n"
    while not await request.is_disconnected():
        row = _row(state, run_id)
        run_dir = state.run_dir(run_id)
        rounds = await run_in_threadpool(rundir.rounds, run_dir, rundir.run_config(run_dir))
        for item in views.round_for(rounds[sent:], only_site):
            yield _event("round", item, item["round"])
        sent = max(sent, len(rounds))
        summary = await run_in_threadpool(views.run_summary, state, row)
        if summary != last:
            yield _event("status", summary)
            last = summary
        if row.status != "running":
            return
        polls += 1
        if polls % _KEEP_ALIVE_EVERY == 0:
            yield ": keep-alive\n\n"
        await asyncio.sleep(state.poll_interval)


def _event(kind: str, data: dict[str, Any], event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _row(state: ConsoleState, run_id: str) -> RunRow:
    state.run_dir(run_id)  # 404 for a name no run can have
    row = state.store.run(run_id)
    if row is None:
        state.refresh_runs()
        row = state.store.run(run_id)
    if row is None:
        raise ConsoleError(404, f"no run {run_id!r}")
    return row


def _control(state: ConsoleState) -> Any:
    if state.control is None:
        raise ConsoleError(503, "this service has no SuperLink (read-only): runs cannot be "
                           "started, stopped or resumed here")
    return state.control


def _controlled_run(state: ConsoleState, run_id: str, allowed: tuple[str, ...],
                    refusal: str) -> tuple[Any, RunRow]:
    """The run control and the run, which must be in one of the ``allowed`` statuses
    (409 with ``refusal`` otherwise); call with ``state.lock`` held."""
    control = _control(state)
    row = _row(state, run_id)
    if row.status not in allowed:
        raise ConsoleError(409, f"run {run_id!r} is {row.status}; {refusal}")
    return control, row


def _refuse_second_run(state: ConsoleState) -> None:
    running = state.store.runs("running")
    if running:
        raise ConsoleError(409, f"run {running[0].id!r} is running; stop it or wait for it "
                           "to end first (the sites train one run at a time)")


def _audit(state: ConsoleState, who: Any, action: str, run_id: str, **detail: Any) -> None:
    state.audit.append(actor=who.subject, role=who.role.value, action=action,
                       detail={"run": run_id, **detail})
