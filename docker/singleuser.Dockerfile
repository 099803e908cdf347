# syntax=docker/dockerfile:1.7
# The JupyterHub single-user image (jupyterhub/values.yaml): JupyterLab with farmkit, its cloud
# backends and the bundled notebooks, which are copied into each user's home on first start.
# Build from the repository root:  docker build -f docker/singleuser.Dockerfile -t farm-singleuser:0.1.0 .

# -- build: the project's wheel, JupyterLab and the hub's single-user server, pinned -----------------
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md LICENSE ./
COPY farmkit ./farmkit
COPY ingester ./ingester
COPY runner ./runner
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c constraints.txt ".[cloud,alpaca]" jupyterhub jupyterlab

# -- final: no compilers; the user Z2JH expects (jovyan, uid 1000), never root ------------------------
FROM python:3.11.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SHELL=/bin/bash
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index /wheels/*.whl \
    && groupadd --gid 100 --force users \
    && useradd --uid 1000 --gid 100 --create-home --home-dir /home/jovyan --shell /bin/bash jovyan
COPY notebooks /opt/farm/notebooks
COPY agents /opt/farm/agents
WORKDIR /home/jovyan
EXPOSE 8888
# The hub checks the server itself (its /api through the proxy); a container HEALTHCHECK would need
# the per-user base URL, which only the spawner knows.
HEALTHCHECK NONE
USER 1000
CMD ["jupyterhub-singleuser"]
