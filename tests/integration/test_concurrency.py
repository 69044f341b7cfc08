"""Concurrency limits: never more instances than reserved, every request answered (result or 429), none lost."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

from tests.conftest import Gateway


def test_forty_parallel_with_reserved_four(lambda_client, gateway: Gateway) -> None:  # type: ignore[no-untyped-def]
    peak = {"instances": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak["instances"] = max(peak["instances"], gateway.metric("kambda_instances", function="slow"))
            done.wait(0.02)

    def call(_: int) -> tuple[str, object]:
        try:
            response = lambda_client.invoke(FunctionName="slow", Payload=b"{}")
            return "ok", json.loads(response["Payload"].read())["process"]
        except lambda_client.exceptions.TooManyRequestsException as exc:
            return "throttled", exc.response["Reason"]

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with ThreadPoolExecutor(40) as pool:
            results = list(pool.map(call, range(40)))
    finally:
        done.set()
        sampler.join()

    assert len(results) == 40  # every request got an answer: none hung, none lost
    ok = [r for kind, r in results if kind == "ok"]
    throttled = [r for kind, r in results if kind == "throttled"]
    assert len(ok) + len(throttled) == 40
    assert ok, "below the cap requests wait for a cold start instead of being throttled"
    assert set(throttled) <= {"ReservedFunctionConcurrentInvocationLimitExceeded"}
    assert len(set(ok)) <= 4  # distinct runtime processes
    assert peak["instances"] <= 4
    assert gateway.metric("kambda_instances_started_total", function="slow") <= 4
    assert gateway.metric("kambda_throttles_total", function="slow") == len(throttled)


def test_gateway_wide_limit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import boto3
    from botocore.config import Config

    from tests.conftest import FUNCTIONS

    gw = Gateway(FUNCTIONS, tmp_path / "gw", "--max-concurrency", "2")
    try:
        client = boto3.client(
            "lambda",
            endpoint_url=gw.url,
            region_name="us-east-1",
            aws_access_key_id="t",
            aws_secret_access_key="t",
            config=Config(retries={"total_max_attempts": 1}, max_pool_connections=16),
        )

        def call(_: int) -> str:
            try:
                client.invoke(FunctionName="sleeper", Payload=json.dumps({"seconds": 0.5}).encode())
                return "ok"
            except client.exceptions.TooManyRequestsException as exc:
                return str(exc.response["Reason"])

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(call, range(8)))
        assert results.count("ok") >= 2
        assert set(results) - {"ok"} <= {"ConcurrentInvocationLimitExceeded"}
        assert "ConcurrentInvocationLimitExceeded" in results
    finally:
        gw.stop()
