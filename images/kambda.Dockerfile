# The gateway and operator image: `kambda gateway --backend kubernetes` / `kambda operator`.
# Build from the repo root: docker build -f images/kambda.Dockerfile -t localhost/kambda:0.1.0 .
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kambda ./kambda
COPY gateway ./gateway
COPY runtime ./runtime
COPY operator ./operator
RUN pip wheel --no-deps --wheel-dir /wheels . && pip wheel --wheel-dir /wheels /wheels/kambda-*.whl

FROM python:3.11-slim-bookworm
RUN --mount=from=build,source=/wheels,target=/wheels pip install --no-cache-dir --no-index --find-links=/wheels kambda \
    && useradd --uid 1000 --create-home kambda
USER 1000:1000
ENTRYPOINT ["kambda"]
CMD ["gateway", "--backend", "kubernetes", "--host", "0.0.0.0", "--grpc-host", "0.0.0.0"]
