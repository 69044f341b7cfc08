# A function-pod image for python3.X and provided* runtimes: the agent (kambda.runtime.agent) on that Python and,
# apart from it in /var/runtime, what Lambda provides Python functions (pyproject's `python-runtime` extra:
# awslambdaric, boto3), the only packages a function's `python -S` sees. `provided` runtimes need curl only if their
# bootstrap does. The operator's Deployments run `python3 -m kambda.runtime.agent` as uid 1000 with a read-only root
# filesystem, the code at /var/task and a writable /tmp.
# Build from the repo root: docker build -f images/runtime.Dockerfile -t localhost/kambda-runtime:0.1.0 .
#   python3.13: --build-arg PYTHON=3.13 -t localhost/kambda-runtime-python3.13:0.1.0
ARG PYTHON=3.11
FROM python:${PYTHON}-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kambda ./kambda
COPY gateway ./gateway
COPY runtime ./runtime
COPY operator ./operator
RUN pip wheel --wheel-dir /wheels . \
    && python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["python-runtime"]))' > /wheels/provided.txt \
    && pip install --no-cache-dir --target /var/runtime -r /wheels/provided.txt

FROM python:${PYTHON}-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/* \
    && ln -sf /usr/local/bin/python3 /usr/bin/python3
RUN --mount=from=build,source=/wheels,target=/wheels pip install --no-cache-dir --no-index --find-links=/wheels kambda \
    && useradd --uid 1000 --no-create-home sandbox && mkdir -p /var/task
COPY --from=build /var/runtime /var/runtime
ENV PYTHONDONTWRITEBYTECODE=1
USER 1000:1000
WORKDIR /var/task
ENTRYPOINT ["python3", "-m", "kambda.runtime.agent"]
