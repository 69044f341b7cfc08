# The function-pod image: the agent (kambda.runtime.agent), awslambdaric and Python; `provided` runtimes need curl
# only if their bootstrap does. The operator's Deployments run `python3 -m kambda.runtime.agent` as uid 1000 with
# a read-only root filesystem, the code at /var/task and a writable /tmp.
# Build from the repo root: docker build -f images/runtime.Dockerfile -t localhost/kambda-runtime:0.1.0 .
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kambda ./kambda
COPY gateway ./gateway
COPY runtime ./runtime
COPY operator ./operator
RUN pip wheel --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/* \
    && ln -sf /usr/local/bin/python3 /usr/bin/python3
RUN --mount=from=build,source=/wheels,target=/wheels pip install --no-cache-dir --no-index --find-links=/wheels kambda \
    && useradd --uid 1000 --no-create-home sandbox && mkdir -p /var/task
ENV PYTHONDONTWRITEBYTECODE=1
USER 1000:1000
WORKDIR /var/task
ENTRYPOINT ["python3", "-m", "kambda.runtime.agent"]
