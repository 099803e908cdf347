"""The REST API as a Google Cloud Function (2nd gen / Cloud Run functions), through functions-framework.

functions-framework serves an ``@functions_framework.aio.http`` function on Starlette; :func:`farm_api`
hands each request to the FastAPI app unchanged (same scope, same body stream), so every route, the
auth and the rate limits behave as under ``farm serve``. The app is built on the first request from
the environment (``FARM_*``, ``FARM_API_*``; set ``FARM_API_AUTH=firebase`` and ``FARM_API_PROJECT``).

Deploy: a ``main.py`` next to ``requirements.txt`` (``thefarm[api,cloud]``) with one line,
``from farmkit.api.function import farm_api``, then
``gcloud functions deploy farm-api --gen2 --runtime=python312 --entry-point=farm_api --trigger-http``.
Locally: ``functions-framework --source farmkit/api/function.py --target farm_api --port 8081``.
"""

from __future__ import annotations

import threading

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response

_app = None
_lock = threading.Lock()


def application():
    """The FastAPI app of this process (built once, from the environment)."""
    global _app
    with _lock:
        if _app is None:
            from farmkit.api.app import create_app
            _app = create_app()
        return _app


async def forward(app, request: Request) -> Response:
    """Run one request through an ASGI ``app`` and return its response as a Starlette ``Response``."""
    status, headers, chunks = 500, [], []

    async def send(message):
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status, headers = message["status"], message.get("headers", [])
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    scope = dict(request.scope)
    scope.pop("route", None)    # the function framework's own matched route, not the app's
    scope.pop("router", None)
    scope.pop("endpoint", None)
    scope["path_params"] = {}
    await app(scope, request.receive, send)
    response = Response(b"".join(chunks), status_code=status)
    response.raw_headers = list(headers)
    return response


@functions_framework.aio.http
async def farm_api(request: Request) -> Response:
    """The Cloud Functions entry point: ``--entry-point=farm_api``."""
    return await forward(application(), request)
