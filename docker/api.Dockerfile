# syntax=docker/dockerfile:1.7
# The REST API: `farm serve` (FastAPI on :8000). It deploys agents with farmkit.ops.deploy, which
# reads the agent templates from k8s/base/agent under its working directory.
# Build from the repository root:  docker build -f docker/api.Dockerfile -t farm-api:0.1.0 .

# -- build: the project's wheel and every dependency's, at the versions in constraints.txt ------------
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md LICENSE ./
COPY farmkit ./farmkit
COPY ingester ./ingester
COPY runner ./runner
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c constraints.txt ".[cloud,api]"

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
COPY k8s/base/agent ./k8s/base/agent
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
USER 10001
ENTRYPOINT ["farm"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
