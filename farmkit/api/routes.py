"""The /api routes: agents, paper trading, broker, leaderboard, FMEL. Users see and control only their
own agents and runs (the local token's user sees all); leaderboards are readable by every signed-in user."""

from __future__ import annotations

import asyncio
import json
import math
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

import nbformat
import pandas as pd
from fastapi import APIRouter, Depends, Path as PathParam, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from farmkit import leaderboard
from farmkit.api.context import ApiError, Context, context, current_user
from farmkit.api.auth import User
from farmkit.api.broker import NoBrokerState
from farmkit.api.checks import Checks
from farmkit.api.models import (AGENT_NAME, Account, Agent, AgentCheck, AgentCreate, Boards, Comparison, DecisionRow,
                                Explanation, LeaderboardEntry, Logs, Order, Page, PaperStatus, Position, Rank, Run,
                                TooShortEntry, WhyNot)
from farmkit.errors import FarmError
from farmkit.fmel import query
from farmkit.ops.orchestrators import OrchestratorError
from farmkit.research import notebooks

router = APIRouter(prefix="/api")
Ctx = Annotated[Context, Depends(context)]
Me = Annotated[User, Depends(current_user)]
Name = Annotated[str, PathParam(pattern=AGENT_NAME, max_length=63, description="the agent's name")]
RunId = Annotated[str, PathParam(min_length=1, max_length=200, description="a run id (GET /api/fmel/runs)")]
Limit = Annotated[int, Query(ge=1, le=500, description="items per page")]
Offset = Annotated[int, Query(ge=0, le=1_000_000, description="items to skip")]
Metric = Literal["sharpe", "dsr", "total_return", "max_drawdown"]
Board = Literal["backtest", "paper"]
FINISHED = ("done", "failed", "interrupted", "killed")   # killed: its process is gone, nothing more comes


def _plain(value):
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (pd.Timestamp, datetime)):
        return value.isoformat()
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        return _plain(value.item())
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _page(items: list, total: int, limit: int, offset: int) -> dict:
    return {"items": items, "total": total, "limit": limit, "offset": offset,
            "next_offset": offset + limit if offset + limit < total else None}


def _slice(items: list, limit: int, offset: int) -> dict:
    return _page(items[offset:offset + limit], len(items), limit, offset)


# --- agents ------------------------------------------------------------------------------------------

def _agent_json(record) -> dict:
    m = record.manifest
    return {"name": record.name, "owner": record.owner, "strategy": m.get("strategy"),
            "symbols": [str(s) for s in m.get("symbols") or []], "bar_size": m.get("bar_size"),
            "warmup_bars": m.get("warmup_bars"), "parameters": _plain(m.get("parameters") or []),
            "updated_at": record.updated_at, "manifest": _plain(m)}


def _own_agent(ctx: Context, user: User, name: str):
    record = ctx.agents.get(name)
    if record is None:
        raise ApiError(404, "not_found", f"no agent {name!r}; GET /api/agents lists yours")
    if not user.owns(record.owner):
        raise ApiError(403, "forbidden", f"agent {name!r} belongs to another user; you can only see and "
                       "control your own agents")
    return record


@router.get("/agents", response_model=Page[Agent], tags=["agents"])
def list_agents(ctx: Ctx, user: Me, limit: Limit = 50, offset: Offset = 0):
    """Your agents, by name."""
    mine = [_agent_json(r) for r in ctx.agents.list() if user.owns(r.owner)]
    return _slice(mine, limit, offset)


@router.get("/agents/{name}", response_model=Agent, tags=["agents"])
def get_agent(ctx: Ctx, user: Me, name: Name):
    """One agent: its manifest (strategy, symbols, parameters, warm-up, verification)."""
    return _agent_json(_own_agent(ctx, user, name))


def _checks(request: Request) -> Checks:
    return request.app.state.checks


CheckId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{32}$", description="a check's id (POST /api/agents gave it)")]


def _check_json(record: dict) -> dict:
    keys = ("id", "name", "owner", "state", "created_at", "started_at", "finished_at", "error", "agent", "sandbox")
    return {**{k: record.get(k) for k in keys}, "status_url": f"/api/agents/checks/{record['id']}"}


@router.post("/agents", response_model=AgentCheck, status_code=202, tags=["agents"])
def create_agent(ctx: Ctx, user: Me, body: AgentCreate, checks: Annotated[Checks, Depends(_checks)],
                 response: Response):
    """Upload a notebook to promote to an agent. It is checked as `farm promote` checks (it runs with
    its default parameters, defines a Strategy, and its promoted copy decides exactly as it did), in a
    sandbox: no credentials, no network, nothing of the API's in sight, limited time and memory. The
    answer (202) is the check, queued; follow `status_url` until it has passed (the agent is stored
    under your name) or failed (`error` says why). It takes about as long as two backtests of it."""
    existing = ctx.agents.get(body.name)
    if existing is not None:
        if not user.owns(existing.owner):
            raise ApiError(403, "forbidden", f"agent {body.name!r} belongs to another user; choose another name")
        if not body.force:
            raise ApiError(409, "exists", f"agent {body.name!r} already exists; send force=true to replace it")
    try:
        notebook = nbformat.reads(json.dumps(body.notebook), as_version=4)
        nbformat.validate(notebook)
    except Exception as exc:  # noqa: BLE001 - nbformat raises several kinds for a bad document
        raise ApiError(422, "invalid_notebook", f"notebook is not a valid .ipynb document: "
                       f"{str(exc).splitlines()[0][:300]}") from None
    text = nbformat.writes(notebook)
    with tempfile.TemporaryDirectory(prefix="farm-upload-") as tmp:
        source = Path(tmp) / f"{body.name}.ipynb"     # its parameters cell is read (parsed, never run) here
        source.write_text(text, encoding="utf-8")
        try:
            notebooks.parameters(source)
        except notebooks.NotebookError as exc:
            raise ApiError(422, "promotion_failed", f"cannot promote: {str(exc).replace(str(source), 'the notebook')}"
                           ) from None
    isolation = checks.sandbox.isolation
    if not user.admin and not isolation.get("filesystem"):
        # Without a jail a notebook could read the API's files and processes; only the machine's owner
        # (the local token) may run their own notebooks so.
        why = "; ".join(sorted(set((isolation.get("not_applied") or {}).values()))) or "no jail"
        raise ApiError(503, "sandbox_unavailable", f"uploaded notebooks cannot be checked safely here ({why}); "
                       "the API needs Linux with unshare (util-linux) for its sandbox, or FARM_API_SANDBOX="
                       "kubernetes://NAMESPACE")
    record = checks.submit(body.name, owner=user.uid, admin=user.admin, notebook=text.encode("utf-8"),
                           force=body.force, allow_overfit=body.allow_overfit)
    answer = _check_json(record)
    response.headers["Location"] = answer["status_url"]
    return answer


@router.get("/agents/checks/{check_id}", response_model=AgentCheck, tags=["agents"])
def agent_check(user: Me, check_id: CheckId, checks: Annotated[Checks, Depends(_checks)]):
    """The check of an uploaded notebook: queued, running, passed (with the stored agent) or failed
    (with why, in one line). Only its uploader sees it."""
    record = checks.get(check_id)
    if record is None:
        raise ApiError(404, "not_found", f"no check {check_id!r}; POST /api/agents starts one (checks are kept "
                       "a week)")
    if not user.owns(record.get("owner")):
        raise ApiError(403, "forbidden", f"check {check_id!r} is another user's")
    return _check_json(record)


@router.delete("/agents/{name}", status_code=204, tags=["agents"])
def delete_agent(ctx: Ctx, user: Me, name: Name):
    """Delete an agent that is not paper-trading."""
    _own_agent(ctx, user, name)
    if ctx.orchestrator.status(name)["state"] in ("starting", "running", "stopping"):
        raise ApiError(409, "running", f"agent {name!r} is paper-trading; POST /api/paper-trading/{name}/stop first")
    ctx.agents.delete(name)
    return Response(status_code=204)


# --- paper trading -----------------------------------------------------------------------------------

def _session(ctx: Context, user: User, name: str) -> dict:
    _own_agent(ctx, user, name)
    status = ctx.orchestrator.status(name)
    if status.get("owner") is not None and not user.owns(status["owner"]):
        raise ApiError(403, "forbidden", f"the paper session of {name!r} was started by another user")
    return status


@router.post("/paper-trading/{name}/start", response_model=PaperStatus, status_code=202, tags=["paper-trading"])
def start_paper(ctx: Ctx, user: Me, name: Name):
    """Start paper-trading an agent of yours (locally a runner process; on GKE its StatefulSet)."""
    _session(ctx, user, name)
    try:
        return ctx.orchestrator.start(name, owner=user.uid)
    except OrchestratorError as exc:
        raise ApiError(409, "conflict", str(exc)) from None


@router.post("/paper-trading/{name}/stop", response_model=PaperStatus, status_code=202, tags=["paper-trading"])
def stop_paper(ctx: Ctx, user: Me, name: Name):
    """Ask the agent's paper session to stop cleanly (SIGTERM: FMEL flushed, checkpoint saved)."""
    _session(ctx, user, name)
    try:
        return ctx.orchestrator.stop(name)
    except OrchestratorError as exc:
        raise ApiError(409, "conflict", str(exc)) from None


@router.get("/paper-trading/{name}", response_model=PaperStatus, tags=["paper-trading"])
def paper_status(ctx: Ctx, user: Me, name: Name):
    """The paper session's state, and the session's own status (bars, orders, FMEL backlog)."""
    return _plain(_session(ctx, user, name))


@router.get("/paper-trading/{name}/logs", response_model=Logs, tags=["paper-trading"])
def paper_logs(ctx: Ctx, user: Me, name: Name, lines: Annotated[int, Query(ge=1, le=5000)] = 100):
    """The last lines of the paper session's log."""
    _session(ctx, user, name)
    return {"agent": name, "lines": ctx.orchestrator.logs(name, lines)}


# --- broker ------------------------------------------------------------------------------------------

def _broker_call(ctx: Context, user: User, name: str, what: str):
    _own_agent(ctx, user, name)
    state_dir = ctx.settings.home / "agents" / name / "state"
    try:
        return getattr(ctx.broker, what)(name, state_dir)
    except NoBrokerState as exc:
        raise ApiError(404, "no_state", str(exc)) from None
    except FarmError as exc:
        raise ApiError(503, "broker_unavailable", str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - the broker's API failing is a 503 the caller can retry
        raise ApiError(503, "broker_unavailable", f"the broker did not answer: {type(exc).__name__}: "
                       f"{str(exc)[:300]}") from None


@router.get("/broker/{name}/account", response_model=Account, tags=["broker"])
def broker_account(ctx: Ctx, user: Me, name: Name):
    """The account of the agent's broker: cash, equity (sim: as of the last checkpoint)."""
    return _broker_call(ctx, user, name, "account")


@router.get("/broker/{name}/positions", response_model=Page[Position], tags=["broker"])
def broker_positions(ctx: Ctx, user: Me, name: Name, limit: Limit = 100, offset: Offset = 0):
    """Open positions."""
    return _slice(_broker_call(ctx, user, name, "positions"), limit, offset)


@router.get("/broker/{name}/orders", response_model=Page[Order], tags=["broker"])
def broker_orders(ctx: Ctx, user: Me, name: Name, limit: Limit = 100, offset: Offset = 0):
    """The agent's orders (sim: those open at the last checkpoint; Alpaca: all of its run's)."""
    return _slice(_broker_call(ctx, user, name, "orders"), limit, offset)


# --- leaderboard ---------------------------------------------------------------------------------------

def _redis(ctx: Context):
    if ctx.redis is None:
        raise ApiError(503, "leaderboard_off", "the leaderboard is switched off (FARM_REDIS=off); "
                       "start the API with FARM_REDIS set, or unset for the embedded Redis")
    return ctx.redis


@router.get("/leaderboard", response_model=Boards, tags=["leaderboard"])
def boards(ctx: Ctx, user: Me):
    """The boards that have runs, and the metrics they rank by."""
    return {"boards": leaderboard.boards(client=_redis(ctx)), "metrics": list(leaderboard.METRICS)}


def _json(model, value) -> bytes:
    """``value`` checked against its response model and rendered once, for answers that are cached."""
    return model.model_validate(value).model_dump_json().encode()


def _top(ctx: Context, board: str, metric: str, limit: int, offset: int) -> bytes:
    client = _redis(ctx)
    frame = leaderboard.top(metric, n=offset + limit, board=board, client=client)
    total = int(client.zcard(f"farm:lb:{board}:{metric}"))
    rows = [_plain(r) for r in frame.iloc[offset:].to_dict("records")]
    return _json(Page[LeaderboardEntry], _page(rows, max(total, offset + len(rows)), limit, offset))


@router.get("/leaderboard/{board}/top", response_model=Page[LeaderboardEntry], tags=["leaderboard"])
async def top(ctx: Ctx, user: Me, board: Board, metric: Metric = "dsr", limit: Limit = 10, offset: Offset = 0):
    """The best agents on a board by a metric (deflated Sharpe unless asked otherwise), best first (each
    agent's best run; runs too short for their deflated Sharpe are not ranked). Answers may be up to
    LEADERBOARD_SECONDS (1 s) old: every reader shares them."""
    key = (board, metric, limit, offset)
    page = ctx.caches["top"].get(key)
    if page is not None:
        return Response(page, media_type="application/json")
    # One computation per key at a time: when the cached answer expires under load, the requests
    # arriving meanwhile wait for it instead of each reading Redis and building the table again.
    pending = ctx.pending.get(key)
    if pending is None:
        pending = ctx.pending[key] = asyncio.ensure_future(run_in_threadpool(_top, ctx, board, metric, limit, offset))

        def settle(done, key=key):
            ctx.pending.pop(key, None)
            if not done.cancelled() and done.exception() is None:
                ctx.caches["top"].put(key, done.result())
        pending.add_done_callback(settle)
    return Response(await asyncio.shield(pending), media_type="application/json")


@router.get("/leaderboard/{board}/rank/{agent}", response_model=Rank, tags=["leaderboard"])
def rank(ctx: Ctx, user: Me, board: Board, agent: Annotated[str, PathParam(min_length=1, max_length=200)],
         metric: Metric = "dsr"):
    """An agent's place on a board (null when it has no ranked run there)."""
    place = leaderboard.rank(agent, metric, board, client=_redis(ctx))
    return {"agent": agent, "board": board, "metric": metric, "rank": place}


@router.get("/leaderboard/{board}/too-short", response_model=Page[TooShortEntry], tags=["leaderboard"])
def too_short(ctx: Ctx, user: Me, board: Board, limit: Limit = 10, offset: Offset = 0):
    """The runs on a board not ranked yet, latest first: their track record is too short for their
    deflated Sharpe, and ``needs`` says what they need (a young paper run is here until it qualifies)."""
    frame = leaderboard.too_short(board, client=_redis(ctx))
    return _slice([{k: _plain(v) for k, v in r.items()} for r in frame.to_dict("records")], limit, offset)


# --- FMEL --------------------------------------------------------------------------------------------

def _run_json(row: dict) -> dict:
    keys = ("run_id", "agent_id", "strategy", "mode", "status", "started_at", "finished_at", "bars", "params",
            "metrics", "error")
    out = {k: _plain(row.get(k)) for k in keys}
    out["bars"] = None if out["bars"] is None else int(out["bars"])
    for k in ("params", "metrics"):
        out[k] = out[k] if isinstance(out[k], dict) else None
    return out


def _can_see_run(ctx: Context, user: User, row: dict) -> bool:
    # By the owner the run was registered with, never by which agent holds its agent name today: that
    # name may since belong to someone else. A run registered without one is the operators' alone.
    return user.admin or user.owns(_text(row.get("owner")))


def _text(value) -> str | None:
    return value if isinstance(value, str) and value else None


def _own_run(ctx: Context, user: User, run_id: str, *, cached: bool = False) -> dict:
    # A finished run's row does not change: with cached=True it is read from the store once.
    row = ctx.caches["runs"].get(run_id) if cached else None
    if row is None:
        row = ctx.store.runs.get(run_id)
        if row is not None and cached and row.get("status") in FINISHED:
            ctx.caches["runs"].put(run_id, row)
    if row is None:
        raise ApiError(404, "not_found", f"no run {run_id!r}; GET /api/fmel/runs lists yours")
    if not _can_see_run(ctx, user, row):
        raise ApiError(403, "forbidden", f"run {run_id!r} is another user's")
    return row


@router.get("/fmel/runs", response_model=Page[Run], tags=["fmel"])
def runs(ctx: Ctx, user: Me, limit: Limit = 50, offset: Offset = 0,
         agent_id: Annotated[str | None, Query(max_length=200)] = None,
         mode: Literal["backtest", "paper", "live"] | None = None,
         status: Literal["queued", "running", "done", "failed", "interrupted", "killed"] | None = None):
    """Your runs (backtests, sweep trials, paper sessions), newest first."""
    frame = query.runs(store=ctx.store)
    if not user.admin:
        owners = frame["owner"] if "owner" in frame else pd.Series(None, index=frame.index, dtype=object)
        frame = frame[owners == user.uid]
    for column, value in (("agent_id", agent_id), ("mode", mode), ("status", status)):
        if value is not None:
            frame = frame[frame[column] == value]
    frame = frame.iloc[::-1]
    rows = [_run_json(r) for r in frame.iloc[offset:offset + limit].to_dict("records")]
    return _page(rows, len(frame), limit, offset)


@router.get("/fmel/runs/{run_id}", response_model=Run, tags=["fmel"])
def run(ctx: Ctx, user: Me, run_id: RunId):
    """One run: what ran, how it went."""
    return _run_json(_own_run(ctx, user, run_id))


@router.get("/fmel/runs/{run_id}/decisions", response_model=Page[DecisionRow], tags=["fmel"])
def decisions(ctx: Ctx, user: Me, run_id: RunId, limit: Limit = 100, offset: Offset = 0,
              symbol: Annotated[str | None, Query(max_length=50)] = None,
              action: Annotated[str | None, Query(max_length=50)] = None,
              start: datetime | None = None, end: datetime | None = None, include_holds: bool = False):
    """A run's decisions, one row each, filtered by symbol, action and time (holds only when asked)."""
    _own_run(ctx, user, run_id)
    try:
        frame = query.decisions(run_id, symbol=symbol, action=action, start=start, end=end,
                                include_holds=include_holds, store=ctx.store)
    except (ValueError, OverflowError) as exc:     # e.g. a start or end outside the timestamps the store holds
        raise ApiError(422, "invalid_request", f"cannot filter decisions so: {exc}") from None
    rows = [_plain(r) for r in frame.iloc[offset:offset + limit].to_dict("records")]
    for r in rows:
        r["signals"] = r["signals"] if isinstance(r.get("signals"), dict) else None
    return _page(rows, len(frame), limit, offset)


def _explain(ctx: Context, user: User, run_id: str, bar: int) -> dict:
    row = _own_run(ctx, user, run_id, cached=True)
    held = None
    if row.get("status") in FINISHED:     # its records never change: read the run once, then look bars up
        held = ctx.records.row(run_id, bar, lambda: ctx.store.fmel(run_id))
    try:
        table = (query.explain_record(query.decoded(held)) if held is not None
                 else query.explain(run_id, bar=bar, store=ctx.store))
    except KeyError as exc:
        raise ApiError(404, "not_found", str(exc.args[0]) if exc.args else str(exc)) from None
    rows = [{"section": s, "field": str(f), "value": str(v)} for (s, f), v in table["value"].items()]
    answer = {"run_id": run_id, "bar_number": table.attrs["bar_number"],
              "timestamp": _plain(table.attrs["timestamp"]), "rows": rows}
    if row.get("status") in FINISHED:       # a finished run's records never change
        ctx.caches["explain"].put((run_id, bar), _json(Explanation, answer))
    return answer


@router.get("/fmel/runs/{run_id}/bars/{bar}", response_model=Explanation, tags=["fmel"])
async def explain(ctx: Ctx, user: Me, run_id: RunId, bar: Annotated[int, PathParam(ge=0, le=10**9)]):
    """One bar explained: the market, what the strategy knew, what it decided and why, what happened."""
    row = ctx.caches["runs"].get(run_id)
    answer = ctx.caches["explain"].get((run_id, bar)) if row is not None else None
    if answer is not None and (user.admin or _can_see_run(ctx, user, row)):
        return Response(answer, media_type="application/json")
    return await run_in_threadpool(_explain, ctx, user, run_id, bar)


@router.get("/fmel/runs/{run_id}/bars/{bar}/why-not", response_model=WhyNot, tags=["fmel"])
def why_not(ctx: Ctx, user: Me, run_id: RunId, bar: Annotated[int, PathParam(ge=0, le=10**9)]):
    """Why the strategy did not trade at a bar, or why its trade did not happen: its conditions and
    how far each was from holding, orders the broker turned down, else its tracked values and recent
    decisions."""
    _own_run(ctx, user, run_id)
    try:
        table = query.why_not(run_id, bar=bar, store=ctx.store)
    except KeyError as exc:
        raise ApiError(404, "not_found", str(exc.args[0]) if exc.args else str(exc)) from None
    rows = [_plain(r) for r in table.to_dict("records")]
    for r in rows:
        r["value"] = r["value"] if isinstance(r["value"], (int, float, str, bool, type(None))) else str(r["value"])
    attrs = table.attrs
    return {"run_id": run_id, "bar_number": attrs["bar_number"], "timestamp": _plain(attrs["timestamp"]),
            "decisions": [str(d) for d in attrs["decisions"]], "traded": attrs["traded"], "refused": attrs["refused"],
            "hint": attrs.get("hint"), "rows": rows}


@router.get("/fmel/compare", response_model=Comparison, tags=["fmel"])
def compare(ctx: Ctx, user: Me, run_a: Annotated[str, Query(min_length=1, max_length=200)],
            run_b: Annotated[str, Query(min_length=1, max_length=200)], limit: Limit = 50):
    """Two runs compared bar by bar (by bar time): decisions, orders, fills and positions; identical, or
    where they differ and in which field first."""
    _own_run(ctx, user, run_a)
    _own_run(ctx, user, run_b)
    try:
        result = query.compare(run_a, run_b, store=ctx.store)
    except KeyError as exc:
        raise ApiError(404, "not_found", str(exc.args[0]) if exc.args else str(exc)) from None
    diffs = [_plain(r) for r in result.differences.head(limit).to_dict("records")]
    return {"run_a": run_a, "run_b": run_b, "bars": int(result.bars), "identical": result.identical,
            "summary": str(result), "differences": diffs, "total_differences": len(result.differences)}
