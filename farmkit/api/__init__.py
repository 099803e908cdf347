"""The REST shim over The Farm: agents, paper trading, brokers, leaderboards and FMEL over HTTP.

    farm serve                      # local: a random token, printed with the URL
    farm serve --cloud --port 8080  # Firebase ID tokens (FARM_API_PROJECT), e.g. in a Kubernetes Deployment

``create_app(settings, api_settings)`` builds the app (see :mod:`farmkit.api.app`); :func:`register`
adds the ``serve`` subcommand to the ``farm`` command; :mod:`farmkit.api.function` is the Cloud
Functions entry point.
"""

from farmkit.api.serve import register, serve
from farmkit.api.settings import ApiSettings

__all__ = ["ApiSettings", "create_app", "register", "serve"]


def __getattr__(name: str):
    # FastAPI is the `api` extra: importing this package (as the `farm` command does, for `farm serve`'s
    # help) must not need it; create_app does.
    if name == "create_app":
        from farmkit.api.app import create_app
        return create_app
    raise AttributeError(f"module 'farmkit.api' has no attribute {name!r}")
