"""``farm serve``: the API under uvicorn, locally with a printed token or in the cloud with Firebase auth."""

from __future__ import annotations

import argparse
import sys

from farmkit.api.settings import ApiSettings
from farmkit.settings import Settings


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``serve`` to the ``farm`` command's subparsers; its handler is :func:`serve`."""
    parser = subparsers.add_parser(
        "serve", help="the REST API (agents, paper trading, broker, leaderboard, FMEL)",
        description="Serve the REST API. Locally (the default) a random token is generated and printed with "
        "the URL; send it as 'Authorization: Bearer TOKEN'. With --cloud, callers send Firebase ID tokens of "
        "project FARM_API_PROJECT. OpenAPI at /openapi.json, interactive docs at /docs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  farm serve\n  FARM_API_PROJECT=my-farm farm serve --cloud --host 0.0.0.0 --port 8080")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--cloud", dest="cloud", action="store_true", default=None,
                      help="Firebase ID tokens (FARM_API_AUTH=firebase)")
    mode.add_argument("--local", dest="cloud", action="store_false", help="a token printed at start (default)")
    parser.set_defaults(handler=serve)
    return parser


def serve(args, environ=None, out=sys.stdout) -> int:
    """Run the API until Ctrl-C or SIGTERM."""
    try:
        import uvicorn

        from farmkit.api.app import create_app
    except ImportError as exc:
        from farmkit.errors import FarmError
        raise FarmError(f"the REST API needs the api extra ({exc.name} is missing): "
                        "pip install -e '.[api]' (or 'thefarm[api]')") from None

    settings = Settings.from_env(environ)
    api = ApiSettings.from_env(environ)
    if args.cloud is not None:
        api = api.replace(auth="firebase" if args.cloud else "local")
    app = create_app(settings, api)
    auth = app.state.farm.auth
    host = "localhost" if args.host in ("127.0.0.1", "0.0.0.0", "::") else args.host
    if api.auth == "local":
        print(f"The Farm API on http://{host}:{args.port}/docs\n"
              f"    token: {auth.token}\n"
              f"    e.g. curl -H 'Authorization: Bearer {auth.token}' http://{host}:{args.port}/api/agents",
              file=out, flush=True)
    else:
        print(f"The Farm API on http://{host}:{args.port}/docs (Firebase ID tokens of project {api.project})",
              file=out, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False)
    return 0
