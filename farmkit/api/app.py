"""The FastAPI application: wiring, errors, health, metrics, body limits, auth and rate limits, the
checks of uploaded notebooks (in a sandbox), and credentials kept out of every answer and log line.

    app = create_app(Settings.from_env(), ApiSettings.from_env())
    # uvicorn.run(app) -- or `farm serve`
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid

from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from farmkit.api.auth import FirebaseAuth, LocalTokenAuth, SigningKeys
from farmkit.api.context import ERRORS, ApiError, Context, current_user, error_response
from farmkit.api.models import Health
from farmkit.redact import Redactor, RedactingFilter
from farmkit.api.ratelimit import TokenBucket
from farmkit.api.settings import ApiSettings
from farmkit.settings import Settings
from farmkit.version import __version__

log = logging.getLogger("farmkit.api")


# --- ASGI middleware (plain ASGI: no per-request task or buffering beyond what each needs) -------------

class CatchAll:
    """An unexpected exception becomes a JSON 500 with a request id; the traceback goes to the log."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def sending(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            incident = uuid.uuid4().hex[:12]
            log.exception("unhandled error (incident %s) in %s %s", incident, scope.get("method"), scope.get("path"))
            if not started:
                await error_response(500, "internal_error", f"the server failed on this request (incident "
                                     f"{incident}); its log has the details. Report it with the incident id"
                                     )(scope, receive, send)


class Redacting:
    """No answer carries a known secret: each one in a response body becomes as many ``*`` (lengths,
    and so Content-Length, stay as they were). The error handlers redact what they render already;
    this is the last line, for text that reaches an answer some other way (a runner's log lines)."""

    def __init__(self, app, redactor: Redactor):
        self.app, self.redactor = app, redactor

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.redactor.secrets:
            return await self.app(scope, receive, send)

        async def sending(message):
            if message["type"] == "http.response.body" and message.get("body"):
                message = {**message, "body": self.redactor.known(message["body"])}
            await send(message)

        await self.app(scope, receive, sending)


def _redact_logs(redactor: Redactor, names=("farmkit.api", "uvicorn.error")) -> None:
    # One filter per logger, holding the secrets of every app made in this process.
    for name in names:
        logger = logging.getLogger(name)
        present = next((f for f in logger.filters if isinstance(f, RedactingFilter)), None)
        if present is None:
            logger.addFilter(RedactingFilter(redactor))
        else:
            present.redactor = present.redactor.union(redactor)


class BodyLimit:
    """Reject request bodies over ``limit`` bytes with 413, whether or not they say their length."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        too_big = error_response(413, "body_too_large", f"the request body is larger than {self.limit} bytes "
                                 "(FARM_API_MAX_BODY); send a smaller notebook (clear its outputs)")
        length = headers.get(b"content-length")
        if length is not None:
            try:
                if int(length) > self.limit:
                    return await too_big(scope, receive, send)
            except ValueError:
                return await error_response(400, "bad_request", "Content-Length is not a number")(scope, receive, send)
            return await self.app(scope, receive, send)
        if b"chunked" not in headers.get(b"transfer-encoding", b""):
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await too_big(scope, receive, send)
            if not message.get("more_body"):
                break
        body, done = b"".join(chunks), False

        async def replay():
            nonlocal done
            if done:
                return await receive()
            done = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


class Metrics:
    """Requests, latency and errors by route template (not by raw path: ids would explode the series)."""

    def __init__(self, app, requests: Counter, latency: Histogram, errors: Counter):
        self.app, self.requests, self.latency, self.errors = app, requests, latency, errors

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        began, status = time.perf_counter(), 500

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.requests.labels(path, method, str(status)).inc()
            self.latency.labels(path, method).observe(time.perf_counter() - began)
            if status >= 400:
                self.errors.labels(path, method, str(status)).inc()


# --- the app ---------------------------------------------------------------------------------------

def _auth(api: ApiSettings):
    if api.auth == "firebase":
        return FirebaseAuth(api.project, SigningKeys(api.certs_url), providers=api.sign_in_providers,
                            email_domains=api.email_domains)
    return LocalTokenAuth(api.token)


def _redis(settings: Settings):
    if settings.redis == "off":
        return None
    from farmkit import leaderboard
    return leaderboard.connect(settings)


def create_app(settings: Settings | None = None, api: ApiSettings | None = None, *, store=None, agents=None,
               orchestrator=None, auth=None, redis=None, broker=None, sandbox=None) -> FastAPI:
    """The REST API over these settings. Every part can be passed in (tests do); by default each is
    built from the settings: the FMEL store (FARM_STORE), agents (FARM_API_AGENTS), the orchestrator
    (FARM_API_ORCHESTRATOR), auth (FARM_API_AUTH), Redis (FARM_REDIS), the broker (FARM_BROKER) and the
    sandbox uploaded notebooks are checked in (FARM_API_SANDBOX).

    >>> app = create_app(Settings.from_env(), ApiSettings(token="s3cret"))
    """
    from farmkit.ops.agents import open_agent_store
    from farmkit.api.broker import BrokerView
    from farmkit.api.checks import Checks, FolderRecords, RedisRecords
    from farmkit.api.routes import _agent_json, router
    from farmkit.api.sandbox import open_sandbox
    from farmkit.fmel.stores import open_store
    from farmkit.ops.orchestrators import open_orchestrator

    settings = settings or Settings.from_env()
    api = api or ApiSettings.from_env()
    store = store if store is not None else open_store(settings.store)
    agents = agents if agents is not None else open_agent_store(api.agents)
    if orchestrator is None:
        orchestrator = open_orchestrator(api.orchestrator, settings, agents, runner_image=api.runner_image)
    redis = redis if redis is not None else _redis(settings)
    registry = CollectorRegistry()
    metrics = {
        "requests": Counter("farm_api_requests", "HTTP requests by route, method and status",
                            ["route", "method", "status"], registry=registry),
        "latency": Histogram("farm_api_request_seconds", "Request latency by route and method", ["route", "method"],
                             registry=registry, buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10)),
        "errors": Counter("farm_api_errors", "Responses with status >= 400 by route, method and status",
                          ["route", "method", "status"], registry=registry),
        "ratelimit_errors": Counter("farm_api_ratelimit_errors", "Requests let through because Redis could "
                                    "not be asked", registry=registry),
    }
    auth = auth or _auth(api)
    ctx = Context(settings=settings, api=api, store=store, agents=agents, orchestrator=orchestrator,
                  auth=auth, redis=redis,
                  limiter=TokenBucket(redis, api.rate, api.burst) if redis is not None else None,
                  broker=broker or BrokerView(settings.broker), metrics=metrics)
    # The secrets of this process's environment, the local token and the Redis URL's password.
    redactor = Redactor.from_env(os.environ, extra=[api.token, getattr(auth, "token", None), settings.redis])
    _redact_logs(redactor)
    sandbox = sandbox if sandbox is not None else open_sandbox(api, settings, agents)
    checks = Checks(sandbox, agents, RedisRecords(redis) if redis is not None else
                    FolderRecords(settings.home / "api" / "checks"), settings.home / "api" / "uploads",
                    redactor=redactor, workers=api.sandbox_workers, timeout=api.sandbox_timeout,
                    describe=_agent_json)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        checks.close()      # no check outlives the API

    app = FastAPI(title="The Farm API", version=__version__, lifespan=lifespan,
                  description="Agents, paper trading, brokers, leaderboards and FMEL of The Farm. Send "
                  "`Authorization: Bearer TOKEN`: a Firebase ID token in the cloud, the token `farm serve` "
                  "printed on a laptop. Lists are paginated with `limit` and `offset`.")
    app.state.farm = ctx
    app.state.checks = checks
    app.state.registry = registry

    def answer(status: int, code: str, message: str, headers: dict | None = None):
        return error_response(status, code, redactor.text(message), headers)

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return answer(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()[:5])
        return answer(422, "invalid_request", f"the request is not valid: {problems}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        hint = {404: f"no such endpoint {request.url.path}; /docs lists them",
                405: f"{request.method} is not allowed on {request.url.path}; /docs lists what is"}
        return answer(exc.status_code, "not_found" if exc.status_code == 404 else "http_error",
                      hint.get(exc.status_code, str(exc.detail)), getattr(exc, "headers", None))

    @app.get("/healthz", response_model=Health, tags=["health"])
    def healthz() -> dict:
        """Liveness: the process answers."""
        return {"status": "ok", "checks": {}}

    @app.get("/readyz", response_model=Health, tags=["health"], responses={503: {"model": Health}})
    def readyz():
        """Readiness: the FMEL store and Redis answer."""
        checks, ok = {}, True
        try:
            ctx.store.runs.get("readyz-probe")
            checks["store"] = "ok"
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            checks["store"], ok = redactor.text(f"{type(exc).__name__}: {exc}")[:300], False
        if ctx.redis is None:
            checks["redis"] = "off (FARM_REDIS=off: no leaderboards, no rate limits)"
        else:
            try:
                ctx.redis.ping()
                checks["redis"] = "ok"
            except Exception as exc:  # noqa: BLE001
                checks["redis"], ok = redactor.text(f"{type(exc).__name__}: {exc}")[:300], False
        return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["health"], response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    def prometheus_metrics():
        """Prometheus metrics: requests, latency and errors by route."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(router, dependencies=[Depends(current_user)], responses=ERRORS)
    app.add_middleware(CatchAll)
    app.add_middleware(Redacting, redactor=redactor)
    app.add_middleware(BodyLimit, limit=api.max_body)
    app.add_middleware(Metrics, requests=metrics["requests"], latency=metrics["latency"], errors=metrics["errors"])
    return app
