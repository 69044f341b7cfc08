"""boto3 against a real gateway: results, function errors, log tails, context, warm reuse and scale to zero."""

from __future__ import annotations

import base64
import json
import re

import pytest

from tests.conftest import Gateway, wait_until


def invoke(client, name: str, payload: object = None, **kwargs):  # type: ignore[no-untyped-def]
    body = b"" if payload is None else json.dumps(payload).encode()
    response = client.invoke(FunctionName=name, Payload=body, **kwargs)
    response["Body"] = response["Payload"].read()
    return response


def test_returns_the_handlers_result(lambda_client) -> None:  # type: ignore[no-untyped-def]
    response = invoke(lambda_client, "echo", {"hello": "world", "n": [1, 2, 3]})
    assert response["StatusCode"] == 200
    assert json.loads(response["Body"]) == {"hello": "world", "n": [1, 2, 3]}
    assert response["ExecutedVersion"] == "$LATEST"
    assert "FunctionError" not in response
    assert response["ResponseMetadata"]["RequestId"]


def test_empty_payload_is_an_empty_object(lambda_client) -> None:  # type: ignore[no-untyped-def]
    assert json.loads(invoke(lambda_client, "echo")["Body"]) == {}


@pytest.mark.parametrize(
    "name",
    ["echo", "echo:$LATEST", "arn:aws:lambda:us-east-1:000000000000:function:echo", "000000000000:function:echo"],
)
def test_names_partial_and_full_arns(lambda_client, name: str) -> None:  # type: ignore[no-untyped-def]
    assert json.loads(invoke(lambda_client, name, {"x": 1})["Body"]) == {"x": 1}


def test_raising_handler_is_an_unhandled_function_error(lambda_client) -> None:  # type: ignore[no-untyped-def]
    response = invoke(lambda_client, "raising", {})
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    error = json.loads(response["Body"])
    assert error["errorType"] == "ValueError"
    assert error["errorMessage"] == "bad value"
    assert any("raise ValueError" in line for line in error["stackTrace"])


def test_tail_returns_the_log_ending_with_report(lambda_client) -> None:  # type: ignore[no-untyped-def]
    response = invoke(lambda_client, "raising", {}, LogType="Tail")
    log = base64.b64decode(response["LogResult"]).decode()
    request_id = response["ResponseMetadata"]["RequestId"]
    lines = log.strip().splitlines()
    assert lines[-1].startswith(f"REPORT RequestId: {request_id}\tDuration: ")
    assert f"END RequestId: {request_id}" in lines[-2]
    assert any(line.startswith(f"START RequestId: {request_id} Version: $LATEST") for line in lines)
    assert "about to fail" in log
    assert re.search(r"Billed Duration: \d+ ms\tMemory Size: 128 MB\tMax Memory Used: \d+ MB", lines[-1])


def test_without_tail_there_is_no_log_result(lambda_client) -> None:  # type: ignore[no-untyped-def]
    assert "LogResult" not in invoke(lambda_client, "echo", {})


def test_unknown_function_is_resource_not_found(lambda_client) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(lambda_client.exceptions.ResourceNotFoundException) as info:
        lambda_client.invoke(FunctionName="no-such-function", Payload=b"{}")
    assert "Function not found: arn:aws:lambda:us-east-1:000000000000:function:no-such-function" in str(info.value)


def test_unknown_version_is_resource_not_found(lambda_client) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(lambda_client.exceptions.ResourceNotFoundException):
        lambda_client.invoke(FunctionName="echo", Qualifier="7", Payload=b"{}")


def test_payload_over_6mb_is_413(lambda_client) -> None:  # type: ignore[no-untyped-def]
    payload = json.dumps({"blob": "x" * (7 * 1024 * 1024)}).encode()
    with pytest.raises(lambda_client.exceptions.ClientError) as info:
        lambda_client.invoke(FunctionName="echo", Payload=payload)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413
    assert info.value.response["Error"]["Code"] == "RequestEntityTooLargeException"
    assert "6291456 bytes" in info.value.response["Error"]["Message"]


def test_payload_just_under_6mb_is_accepted(lambda_client) -> None:  # type: ignore[no-untyped-def]
    blob = "y" * (6 * 1024 * 1024 - 100)
    assert json.loads(invoke(lambda_client, "echo", {"b": blob})["Body"])["b"] == blob


def test_response_over_6mb_is_a_function_error(lambda_client) -> None:  # type: ignore[no-untyped-def]
    response = invoke(lambda_client, "big-response", {})
    assert response["FunctionError"] == "Unhandled"
    error = json.loads(response["Body"])
    assert error["errorType"] == "Function.ResponseSizeTooLarge"
    assert "exceeded maximum allowed payload size" in error["errorMessage"]
    assert json.loads(invoke(lambda_client, "big-response", {"size": 10})["Body"]) == "x" * 10


def test_reserved_zero_throttles_with_reason(lambda_client) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(lambda_client.exceptions.TooManyRequestsException) as info:
        lambda_client.invoke(FunctionName="disabled", Payload=b"{}")
    assert info.value.response["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"


def test_dry_run_checks_without_running(lambda_client, gateway: Gateway) -> None:  # type: ignore[no-untyped-def]
    before = gateway.metric("kambda_invocations_total", function="echo")
    response = lambda_client.invoke(FunctionName="echo", InvocationType="DryRun", Payload=b"{}")
    assert response["StatusCode"] == 204
    assert gateway.metric("kambda_invocations_total", function="echo") == before
    with pytest.raises(lambda_client.exceptions.ResourceNotFoundException):
        lambda_client.invoke(FunctionName="nope", InvocationType="DryRun", Payload=b"{}")


def test_context_and_environment_match_lambda(lambda_client) -> None:  # type: ignore[no-untyped-def]
    client_context = base64.b64encode(json.dumps({"custom": {"k": "v"}}).encode()).decode()
    response = invoke(lambda_client, "context", {}, ClientContext=client_context)
    ctx = json.loads(response["Body"])
    request_id = response["ResponseMetadata"]["RequestId"]
    assert ctx["function_name"] == "context"
    assert ctx["function_version"] == "$LATEST"
    assert str(ctx["memory_limit_in_mb"]) == "256"
    assert ctx["aws_request_id"] == request_id
    assert ctx["invoked_function_arn"] == "arn:aws:lambda:us-east-1:000000000000:function:context"
    assert ctx["log_group_name"] == "/aws/lambda/context"
    assert re.match(r"^\d{4}/\d{2}/\d{2}/\[\$LATEST\]\w+$", ctx["log_stream_name"])
    first, second = ctx["remaining"]
    assert 0 < second < first <= 5000
    assert ctx["client_context_custom"] == {"k": "v"}
    env = ctx["env"]
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "context"
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"
    assert env["_HANDLER"] == "app.handler"
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert env["AWS_LAMBDA_LOG_GROUP_NAME"] == "/aws/lambda/context"
    assert env["LAMBDA_TASK_ROOT"] == ctx["cwd"]
    assert env["GREETING"] == "hi"
    assert env["TZ"] == ":UTC"
    assert "AWS_LAMBDA_RUNTIME_API" in env and not env["AWS_LAMBDA_RUNTIME_API"].startswith("http")
    assert "AWS_LAMBDA_MAX_CONCURRENCY" not in env


def test_custom_runtime_bootstrap(lambda_client) -> None:  # type: ignore[no-untyped-def]
    body = json.loads(invoke(lambda_client, "shell-echo", {"a": 1})["Body"])
    assert body == {"handler": "function.handler", "event": {"a": 1}}


def test_warm_reuse_then_scale_to_zero_then_cold_start(lambda_client, gateway: Gateway) -> None:  # type: ignore[no-untyped-def]
    first = invoke(lambda_client, "counter", {}, LogType="Tail")
    second = invoke(lambda_client, "counter", {}, LogType="Tail")
    a, b = json.loads(first["Body"]), json.loads(second["Body"])
    assert b["count"] == a["count"] + 1 and b["process"] == a["process"]  # execution context reused
    assert "Init Duration" not in base64.b64decode(second["LogResult"]).decode()
    cold_before = gateway.metric("kambda_cold_starts_total", function="counter")

    # idleSeconds is 2: the instance is retired and the function is back at zero instances.
    assert wait_until(lambda: gateway.metric("kambda_instances", function="counter") == 0, timeout=20)
    assert gateway.metric("kambda_instances_stopped_total", function="counter") >= 1

    third = invoke(lambda_client, "counter", {}, LogType="Tail")
    c = json.loads(third["Body"])
    assert c["count"] == 1 and c["process"] != b["process"]
    report = base64.b64decode(third["LogResult"]).decode().strip().splitlines()[-1]
    assert re.search(r"Init Duration: [\d.]+ ms", report)
    assert gateway.metric("kambda_cold_starts_total", function="counter") == cold_before + 1


def test_metrics_describe_invocations(lambda_client, gateway: Gateway) -> None:  # type: ignore[no-untyped-def]
    invoke(lambda_client, "echo", {})
    invoke(lambda_client, "raising", {})
    assert gateway.metric("kambda_invocations_total", function="echo", outcome="success") >= 1
    assert gateway.metric("kambda_invocations_total", function="raising", outcome="error") >= 1
    assert gateway.metric("kambda_invocation_duration_seconds_count", function="echo") >= 1
    assert gateway.metric("kambda_init_duration_seconds_count", function="echo") >= 1
    text = gateway.metrics()
    for name in (
        "kambda_concurrent_executions",
        "kambda_queued_invocations",
        "kambda_instances",
        "kambda_throttles_total",
        "kambda_cold_starts_total",
    ):
        assert name in text


def test_health_endpoints(gateway: Gateway) -> None:
    import urllib.request

    for path in ("/healthz", "/readyz"):
        with urllib.request.urlopen(gateway.url + path, timeout=5) as r:
            assert r.status == 200


def test_memory_is_measured_and_enforced(lambda_client) -> None:  # type: ignore[no-untyped-def]
    ok = invoke(lambda_client, "memory-hog", {"mb": 40}, LogType="Tail")
    assert "FunctionError" not in ok
    report = base64.b64decode(ok["LogResult"]).decode().strip().splitlines()[-1]
    used = int(re.search(r"Max Memory Used: (\d+) MB", report).group(1))  # type: ignore[union-attr]
    assert 40 <= used <= 128
    too_much = invoke(lambda_client, "memory-hog", {"mb": 400})
    assert too_much["FunctionError"] == "Unhandled"
    assert json.loads(too_much["Body"])["errorType"] in ("Runtime.ExitError", "MemoryError")
    assert "FunctionError" not in invoke(lambda_client, "memory-hog", {"mb": 10})
