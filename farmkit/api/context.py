"""What every route shares: the :class:`Context` built by ``create_app``, the caller's identity and
rate limit (:func:`current_user`), and error answers (:class:`ApiError`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from farmkit.api.auth import AuthError, KeyFetchError, User, bearer
from farmkit.api.cache import RunRecords, TtlCache
from farmkit.api.models import ErrorBody
from farmkit.api.ratelimit import TokenBucket
from farmkit.api.settings import ApiSettings
from farmkit.settings import Settings

log = logging.getLogger("farmkit.api")
LEADERBOARD_SECONDS = 1.0   # how old a leaderboard answer may be (all readers share it)


class ApiError(Exception):
    """An error answer: HTTP status, a short code, a message a person can act on."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


ERRORS = {status: {"model": ErrorBody, "description": text} for status, text in (
    (400, "bad request"), (401, "no valid credentials"), (403, "not yours"), (404, "not found"),
    (409, "conflict with the current state"), (413, "request body too large"),
    (422, "invalid input"), (429, "rate limit reached (see Retry-After)"), (503, "a backend is unavailable"))}


@dataclass
class Context:
    """What the routes use; built once by :func:`create_app`."""

    settings: Settings
    api: ApiSettings
    store: object
    agents: object
    orchestrator: object
    auth: object
    redis: object | None
    limiter: TokenBucket | None
    broker: object
    metrics: dict = field(default_factory=dict)
    caches: dict = field(default_factory=lambda: {
        "top": TtlCache(256, ttl=LEADERBOARD_SECONDS), "runs": TtlCache(4096), "explain": TtlCache(4096)})
    pending: dict = field(default_factory=dict)     # in-flight leaderboard computations by key
    records: RunRecords = field(default_factory=RunRecords)   # finished runs' FMEL, for explain


def context(request: Request) -> Context:
    return request.app.state.farm


async def current_user(request: Request) -> User:
    """Authenticate the caller, then take a token from their rate-limit bucket. It runs on the event
    loop: verifying a token and one Redis script call take well under a millisecond. Fetching the
    signing keys (when they expire, or an unknown key id shows up) goes to a worker thread, so other
    requests go on meanwhile."""
    ctx: Context = request.app.state.farm
    try:
        token = bearer(request.headers.get("authorization"))
        if ctx.auth.verifies_offline(token):
            user = ctx.auth.authenticate(token)
        else:
            user = await run_in_threadpool(ctx.auth.authenticate, token)
    except AuthError as exc:
        raise ApiError(401, exc.code, exc.message, {"WWW-Authenticate": "Bearer"}) from None
    except KeyFetchError as exc:
        raise ApiError(503, "auth_unavailable", f"{exc}; try again shortly") from None
    if ctx.limiter is not None:
        try:
            verdict = ctx.limiter.check(user.uid)
        except Exception as exc:    # noqa: BLE001 - a Redis outage must not take the API down: fail open, counted
            ctx.metrics["ratelimit_errors"].inc()
            log.warning("rate limit not checked (Redis: %s: %s); request allowed", type(exc).__name__, exc)
        else:
            if not verdict.allowed:
                raise ApiError(429, "rate_limited",
                               f"too many requests: at most {ctx.limiter.rate:g} per second "
                               f"(bursts of {ctx.limiter.burst:g}); retry after {verdict.retry_after:.2f} s",
                               {"Retry-After": TokenBucket.retry_after_header(verdict)})
    return user
