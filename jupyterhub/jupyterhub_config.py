"""A JupyterHub on one machine, for a team without Kubernetes.

    npm ci --prefix jupyterhub                            # the proxy, into jupyterhub/node_modules
    HUB_PASSWORD=... .venv/bin/jupyterhub -f jupyterhub/jupyterhub_config.py

Anyone can log in with any name (and HUB_PASSWORD, if set): DummyAuthenticator, meant for a trusted
network. Each user gets a JupyterLab server as a process of the hub's own OS user
(SimpleLocalProcessSpawner), with a home under HUB_STATE_DIR/users/NAME holding a copy of the bundled
notebooks and its own FARM_HOME (.farm). FARM_STORE, FARM_BUS, FARM_REDIS and FARM_BROKER set in the
hub's environment are passed on, so a team can share BigQuery, Pub/Sub and Redis. On Kubernetes use
values.yaml (Zero to JupyterHub) instead.

Environment: HUB_STATE_DIR (default jupyterhub/.state: database, cookie secret, users' homes),
HUB_PASSWORD (optional shared password), HUB_SERVICE_TOKEN (optional: an API token with the rights to
start, stop and use users' servers, for scripts).
"""

import importlib.util
import os
import shutil
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
repo = here.parent
state = Path(os.environ.get("HUB_STATE_DIR") or here / ".state").absolute()
state.mkdir(parents=True, exist_ok=True)
c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file

c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = os.environ.get("HUB_PASSWORD") or ""
c.Authenticator.allow_all = True          # JupyterHub 5+ lets nobody in unless told

c.JupyterHub.spawner_class = "simple"     # SimpleLocalProcessSpawner
c.SimpleLocalProcessSpawner.home_dir_template = str(state / "users" / "{username}")
# The single-user server of the environment the hub runs in, so kernels import this farmkit.
c.Spawner.cmd = [str(Path(sys.executable).parent / "jupyterhub-singleuser")]
c.Spawner.default_url = "/lab"
c.Spawner.args = ["--allow-root"] if os.geteuid() == 0 else []
c.Spawner.env_keep = ["PATH", "PYTHONPATH", "VIRTUAL_ENV", "LANG", "LC_ALL", "JUPYTERHUB_SINGLEUSER_APP",
                      "FARM_STORE", "FARM_BUS", "FARM_REDIS", "FARM_BROKER", "APCA_API_KEY_ID", "APCA_API_SECRET_KEY",
                      "PUBSUB_EMULATOR_HOST"]
c.Spawner.environment = {"FARM_HOME": ".farm", "FARM_PROGRESS": "auto"}
c.Spawner.start_timeout = 60
c.Spawner.http_timeout = 60


def copy_notebooks(spawner):
    """First start of a user: their home, with the bundled notebooks and agents to begin from."""
    home = Path(spawner.home_dir_template.format(username=spawner.user.name))
    home.mkdir(parents=True, exist_ok=True)
    for folder in ("notebooks", "agents"):
        if not (home / folder).exists() and (repo / folder).is_dir():
            shutil.copytree(repo / folder, home / folder)


c.Spawner.pre_spawn_hook = copy_notebooks

c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(state / "jupyterhub.pid")
c.ConfigurableHTTPProxy.pid_file = str(state / "proxy.pid")
proxy = here / "node_modules" / ".bin" / "configurable-http-proxy"
c.ConfigurableHTTPProxy.command = [str(proxy) if proxy.exists() else "configurable-http-proxy"]

services, roles = [], []
# Idle servers are stopped after an hour, as on Kubernetes (values.yaml: cull), when the culler is installed.
if importlib.util.find_spec("jupyterhub_idle_culler"):
    services.append({"name": "idle-culler",
                     "command": [sys.executable, "-m", "jupyterhub_idle_culler", "--timeout=3600"]})
    roles.append({"name": "idle-culler", "services": ["idle-culler"],
                  "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"]})
if os.environ.get("HUB_SERVICE_TOKEN"):
    services.append({"name": "farm-admin", "api_token": os.environ["HUB_SERVICE_TOKEN"]})
    roles.append({"name": "farm-admin", "services": ["farm-admin"],
                  "scopes": ["admin:users", "admin:servers", "access:servers"]})
c.JupyterHub.services = services
c.JupyterHub.load_roles = roles
