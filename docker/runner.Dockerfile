# syntax=docker/dockerfile:1.7
# The paper-trading pod: `python -m runner AGENT_DIR` runs an agent notebook through papermill.
# Also runs sweep shards (`python -m farmkit.ops.deploy shard`, k8s/base/sweep/job.yaml) on the bundled notebooks.
# Build from the repository root:  docker build -f docker/runner.Dockerfile -t farm-runner:0.1.0 .

# -- build: the project's wheel and every dependency's, at the versions in constraints.txt ------------
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md LICENSE ./
COPY farmkit ./farmkit
COPY ingester ./ingester
COPY runner ./runner
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c constraints.txt ".[cloud,alpaca]"

# -- final: the slim base, the wheels installed from the build stage, no compilers, a non-root user ---
FROM python:3.11.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/tmp \
    FARM_HOME=/var/lib/farm
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index /wheels/*.whl \
    && groupadd --gid 10001 farm \
    && useradd --uid 10001 --gid farm --no-create-home --home-dir /tmp --shell /usr/sbin/nologin farm \
    && mkdir -p /var/lib/farm && chown farm:farm /var/lib/farm
WORKDIR /app
COPY notebooks ./notebooks
COPY agents ./agents
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('FARM_HEALTH_PORT', '8080'), timeout=4)"]
USER 10001
ENTRYPOINT ["python", "-m", "runner"]
CMD ["/app/agents/sma-crossover"]
