"""The API's JSON shapes (they are what /openapi.json publishes)."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")
AGENT_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class ErrorBody(BaseModel):
    """Every error: a short code a program can test and a message a person can act on."""

    error: str
    message: str


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int
    next_offset: int | None = Field(description="offset of the next page; null on the last page")


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}


class Agent(BaseModel):
    name: str
    owner: str | None
    strategy: str | None
    symbols: list[str]
    bar_size: str | None
    warmup_bars: int | None
    parameters: list[dict[str, Any]]
    updated_at: float | None
    manifest: dict[str, Any]


class AgentCreate(BaseModel):
    """A notebook to promote to an agent, as ``farm promote NOTEBOOK --name NAME`` does."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=AGENT_NAME, max_length=63, description="the agent's name (a Kubernetes name)")
    notebook: dict[str, Any] = Field(description="the .ipynb file's JSON, with a cell tagged 'parameters'")
    force: bool = Field(False, description="replace an agent of yours with the same name")
    allow_overfit: bool = Field(False, description="promote even when the overfitting gate refuses (DSR below "
                                "0.95 or PBO above 0.5); the manifest records that it was overridden")


class AgentCheck(BaseModel):
    """The check of an uploaded notebook, run in a sandbox: ``queued``, ``running``, then ``passed`` (the
    agent is stored under its uploader) or ``failed`` (``error`` says why, in one line)."""

    id: str
    name: str = Field(description="the agent's name")
    owner: str | None
    state: Literal["queued", "running", "passed", "failed"]
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None = Field(description="why the check failed, in one line; null unless it failed")
    agent: Agent | None = Field(description="the stored agent, once the check passed")
    sandbox: dict[str, Any] = Field(description="where the check runs and how it is isolated: network, filesystem, "
                                    "processes, user, limits, and what could not be applied on this machine")
    status_url: str = Field(description="where to follow the check: GET it until its state is passed or failed")


class PaperStatus(BaseModel):
    agent: str
    state: str = Field(description="not_started, starting, running, stopping, stopped or failed")
    owner: str | None
    pid: int | None
    started_at: float | None
    exit_code: int | None
    run_id: str | None
    paper: dict[str, Any] = Field(description="the paper session's own status (bars, orders, FMEL backlog)")


class Logs(BaseModel):
    agent: str
    lines: list[str]


class Account(BaseModel):
    agent: str
    broker: str
    run_id: str | None
    cash: float | None
    equity: float | None
    buying_power: float | None = None
    start_value: float | None = None
    currency: str | None = None
    updated_at: float | None = None


class Position(BaseModel):
    symbol: str
    qty: float
    avg_price: float | None
    market_value: float | None = None
    unrealized_pl: float | None = None


class Order(BaseModel):
    id: str | None
    client_order_id: str | None
    symbol: str
    side: str
    type: str | None
    qty: float | None
    filled_qty: float | None = None
    filled_avg_price: float | None = None
    limit_price: float | None = None
    status: str
    submitted_at: str | None = None


class LeaderboardEntry(BaseModel):
    rank: int
    agent: str
    score: float
    run_id: str | None
    strategy: str | None
    mode: str | None
    sharpe: float | None
    dsr: float | None
    total_return: float | None
    max_drawdown: float | None
    finished_at: str | None
    params: dict[str, Any]


class TooShortEntry(BaseModel):
    agent: str
    run_id: str | None
    strategy: str | None
    mode: str | None
    status: str | None
    days: float | None
    needs: str = Field(description="what the run needs to be ranked, e.g. '12 days; needs 31 for its Sharpe'")
    sharpe: float | None
    dsr: float | None
    min_track_record_days: float | None
    finished_at: str | None
    updated_at: str | None


class Rank(BaseModel):
    agent: str
    board: str
    metric: str
    rank: int | None = Field(description="1-based place; null when the agent has no ranked run on this board")


class Boards(BaseModel):
    boards: list[str]
    metrics: list[str]


class Run(BaseModel):
    run_id: str
    agent_id: str | None
    strategy: str | None
    mode: str | None
    status: str | None
    started_at: str | None
    finished_at: str | None
    bars: int | None
    params: dict[str, Any] | None
    metrics: dict[str, Any] | None
    error: str | None


class DecisionRow(BaseModel):
    run_id: str
    agent_id: str | None
    bar_number: int
    timestamp: str | None
    action: str | None
    symbol: str | None
    size: float | None
    reason: str | None
    confidence: float | None
    signals: dict[str, Any] | None


class ExplainRow(BaseModel):
    section: str
    field: str
    value: str


class Explanation(BaseModel):
    run_id: str
    bar_number: int
    timestamp: str | None
    rows: list[ExplainRow]


class Difference(BaseModel):
    timestamp: str | None
    bar_a: int | None
    bar_b: int | None
    field: str | None = Field(None, description="the first of decisions, orders, fills, positions that differs")
    a: Any = None
    b: Any = None
    decisions_a: Any
    decisions_b: Any


class WhyNotRow(BaseModel):
    kind: str = Field(description="condition, broker (an order turned down or never placed), tracked or recent")
    condition: str
    value: Any = None
    op: str | None = None
    threshold: float | None = None
    met: bool | None = None
    distance: float | None = None
    detail: str | None = None


class WhyNot(BaseModel):
    run_id: str
    bar_number: int
    timestamp: str | None
    decisions: list[str]
    traded: bool
    refused: list[str]
    hint: str | None = None
    rows: list[WhyNotRow]


class Comparison(BaseModel):
    run_a: str
    run_b: str
    bars: int
    identical: bool
    summary: str
    differences: list[Difference] = Field(description="the first bars where the runs differ (at most `limit`)")
    total_differences: int
