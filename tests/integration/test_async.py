"""Asynchronous invocations through real gateways, agents and runtimes, on both queue backends (SQLite and a real
NATS JetStream server): delivery, retries, dead letters, destinations, redrive, status, and bad input."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Gateway, NatsServer, wait_until
from tests.workdir import WORK_PY, WorkDir, code_file

FUNCTIONS = """
apiVersion: kambda.dev/v1alpha1
kind: Function
metadata: {{name: recorder}}
spec:
  runtime: python3.11
  handler: app.handler
  concurrency: {{reserved: 8}}
  environment: {{WORK: "{url}"}}
  code:
    files:
      work.py: |
{work_py}
      app.py: |
        import work

        def handler(event, context):
            work.append("recorder.log", context.aws_request_id + "\\n")
            return {{"recorded": context.aws_request_id}}
---
apiVersion: kambda.dev/v1alpha1
kind: Function
metadata: {{name: flaky}}
spec:
  runtime: python3.11
  handler: app.handler
  environment: {{WORK: "{url}"}}
  async: {{onSuccess: success-sink}}
  code:
    files:
      work.py: |
{work_py}
      app.py: |
        import work

        def handler(event, context):
            name = "flaky-" + context.aws_request_id
            tries = int(work.read(name) or 0) + 1
            work.write(name, str(tries))
            if tries < 3:
                raise RuntimeError(f"attempt {{tries}} fails")
            return {{"attempts": tries}}
---
apiVersion: kambda.dev/v1alpha1
kind: Function
metadata: {{name: always-fails}}
spec:
  runtime: python3.11
  handler: app.handler
  async: {{maxRetryAttempts: 2, onFailure: failure-sink}}
  code:
    files:
      app.py: |
        def handler(event, context):
            raise ValueError("never works")
---
apiVersion: kambda.dev/v1alpha1
kind: Function
metadata: {{name: fixable}}
spec:
  runtime: python3.11
  handler: app.handler
  environment: {{WORK: "{url}"}}
  async: {{maxRetryAttempts: 0}}
  code:
    files:
      work.py: |
{work_py}
      app.py: |
        import work

        def handler(event, context):
            if work.read("broken") is not None:
                raise RuntimeError("still broken")
            work.append("fixable.log", context.aws_request_id + "\\n")
            return "fixed"
---
apiVersion: kambda.dev/v1alpha1
kind: Function
metadata: {{name: disabled}}
spec:
  runtime: python3.11
  handler: app.handler
  concurrency: {{reserved: 0}}
  async: {{onFailure: failure-sink}}
  code:
    files: {{app.py: "def handler(event, context):\\n    return 1\\n"}}
---
apiVersion: kambda.dev/v1alpha1
kind: Function
metadata: {{name: hog}}
spec:
  runtime: python3.11
  handler: app.handler
  timeoutSeconds: 120
  concurrency: {{reserved: 1}}
  async: {{maxEventAgeSeconds: 60, onFailure: failure-sink}}
  code:
    files:
      app.py: |
        import time

        def handler(event, context):
            time.sleep(event.get("sleep", 0))
            return "done"
---
apiVersion: kambda.dev/v1alpha1
kind: Function
metadata: {{name: success-sink}}
spec:
  runtime: python3.11
  handler: app.handler
  environment: {{WORK: "{url}"}}
  code:
    files:
      work.py: |
{work_py}
      app.py: |
        import json, work

        def handler(event, context):
            work.append("success-sink.log", json.dumps(event) + "\\n")
---
apiVersion: kambda.dev/v1alpha1
kind: Function
metadata: {{name: failure-sink}}
spec:
  runtime: python3.11
  handler: app.handler
  environment: {{WORK: "{url}"}}
  code:
    files:
      work.py: |
{work_py}
      app.py: |
        import json, work

        def handler(event, context):
            work.append("failure-sink.log", json.dumps(event) + "\\n")
"""
FAST_RETRIES = ("--retry-base-delay", "0.2", "--throttle-base-delay", "0.2", "--lease-seconds", "2")


@dataclass
class AsyncEnv:
    backend: str
    gateway: Gateway
    work: Path
    client: Any

    def lines(self, name: str) -> list[str]:
        path = self.work / name
        return path.read_text().splitlines() if path.exists() else []

    def records(self, name: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines(name)]

    def send(self, function: str, payload: object) -> str:
        response = self.client.invoke(FunctionName=function, InvocationType="Event", Payload=json.dumps(payload))
        assert response["StatusCode"] == 202
        request_id: str = response["ResponseMetadata"]["RequestId"]
        return request_id

    def get(self, path: str) -> tuple[int, Any]:
        return http(self.gateway.url + path)

    def status(self, request_id: str) -> dict[str, Any]:
        code, body = self.get(f"/v1/invocations/{request_id}")
        assert code == 200, body
        result: dict[str, Any] = body
        return result


def http(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        return err.code, json.loads(raw) if raw else None


def lambda_client(url: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "lambda", endpoint_url=url, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t",
        config=Config(retries={"total_max_attempts": 1}, read_timeout=300, max_pool_connections=32),
    )  # fmt: skip


def write_functions(directory: Path, work: WorkDir) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "functions.yaml").write_text(FUNCTIONS.format(url=work.url, work_py=code_file(WORK_PY, 8)))
    return directory


@pytest.fixture(scope="module", params=["sqlite", "nats"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AsyncEnv]:
    root = tmp_path_factory.mktemp(f"async-{request.param}")
    work = WorkDir(root / "work")
    functions = write_functions(root / "functions", work)
    nats = NatsServer(root / "nats") if request.param == "nats" else None
    extra = ("--queue", "nats", "--nats-url", nats.url) if nats else ()
    gateway = Gateway(functions, root / "data", *FAST_RETRIES, *extra)
    try:
        yield AsyncEnv(request.param, gateway, work.directory, lambda_client(gateway.url))
    finally:
        gateway.stop()
        work.stop()
        if nats:
            nats.stop()
    assert gateway.proc.returncode == 0, gateway.logs()


def test_thousand_events_are_all_delivered(env: AsyncEnv) -> None:
    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(lambda i: env.send("recorder", {"n": i}), range(1000)))
    assert len(set(ids)) == 1000
    assert wait_until(lambda: set(ids) <= set(env.lines("recorder.log")), timeout=120), (
        f"{len(set(ids) - set(env.lines('recorder.log')))} events not delivered"
    )
    # Every one of them: succeeded, per the status API (a status is written just after the handler returns).
    assert wait_until(lambda: env.status(ids[-1])["State"] == "succeeded", timeout=10)
    states = {env.status(i)["State"] for i in ids}
    assert states == {"succeeded"}
    assert json.loads(env.status(ids[0])["Result"]) == {"recorded": ids[0]}


def test_fails_twice_then_succeeds_on_the_third_attempt(env: AsyncEnv) -> None:
    request_id = env.send("flaky", {"x": 1})
    assert wait_until(lambda: env.status(request_id)["State"] == "succeeded", timeout=30)
    status = env.status(request_id)
    assert status["Attempts"] == 3
    assert json.loads(status["Result"]) == {"attempts": 3}
    assert wait_until(
        lambda: any(r["requestContext"]["requestId"] == request_id for r in env.records("success-sink.log"))
    )
    record = next(r for r in env.records("success-sink.log") if r["requestContext"]["requestId"] == request_id)
    assert record["requestContext"]["condition"] == "Success"
    assert record["requestContext"]["approximateInvokeCount"] == 3
    assert record["requestContext"]["functionArn"].endswith(":function:flaky:$LATEST")
    assert record["requestPayload"] == {"x": 1}
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST"}
    assert record["responsePayload"] == {"attempts": 3}


def test_always_failing_event_is_dead_lettered_after_all_attempts(env: AsyncEnv) -> None:
    request_id = env.send("always-fails", {"doomed": True})
    assert wait_until(lambda: env.status(request_id)["State"] == "dead-lettered", timeout=30)
    status = env.status(request_id)
    assert status["Attempts"] == 3  # 1 + maxRetryAttempts
    assert status["Condition"] == "RetriesExhausted"
    code, dead = env.get(f"/v1/dead-letters/{request_id}")
    assert code == 200
    assert dead["Condition"] == "RetriesExhausted" and dead["Attempts"] == 3
    assert json.loads(dead["Payload"]) == {"doomed": True}
    assert dead["ErrorType"] == "ValueError" and "never works" in dead["Error"]
    assert wait_until(
        lambda: any(r["requestContext"]["requestId"] == request_id for r in env.records("failure-sink.log"))
    )
    record = next(r for r in env.records("failure-sink.log") if r["requestContext"]["requestId"] == request_id)
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 3
    assert record["requestPayload"] == {"doomed": True}
    assert record["responseContext"]["functionError"] == "Unhandled"
    assert record["responsePayload"]["errorMessage"] == "never works"


def test_redrive_delivers_once_the_handler_is_fixed(env: AsyncEnv) -> None:
    flag = env.work / "broken"
    flag.write_text("yes")
    request_id = env.send("fixable", {"redrive": "me"})
    assert wait_until(lambda: env.status(request_id)["State"] == "dead-lettered", timeout=30)
    assert env.status(request_id)["Attempts"] == 1  # maxRetryAttempts 0
    flag.unlink()
    code, body = http(f"{env.gateway.url}/v1/dead-letters/{request_id}/redrive", "POST")
    assert code == 200 and body == {"Redriven": 1}
    assert wait_until(lambda: request_id in env.lines("fixable.log"), timeout=30)
    assert wait_until(lambda: env.status(request_id)["State"] == "succeeded", timeout=10)
    assert env.get(f"/v1/dead-letters/{request_id}")[0] == 404


def test_zero_reserved_concurrency_fails_at_once(env: AsyncEnv) -> None:
    request_id = env.send("disabled", {"z": 0})
    assert wait_until(lambda: env.status(request_id)["State"] == "dead-lettered", timeout=30)
    assert env.status(request_id)["Condition"] == "ZeroReservedConcurrency"
    assert env.status(request_id)["Attempts"] == 0
    assert wait_until(
        lambda: any(r["requestContext"]["requestId"] == request_id for r in env.records("failure-sink.log"))
    )
    record = next(r for r in env.records("failure-sink.log") if r["requestContext"]["requestId"] == request_id)
    assert record["requestContext"]["condition"] == "ZeroReservedConcurrency"
    assert record["requestContext"]["approximateInvokeCount"] == 0
    assert "responseContext" not in record and "responsePayload" not in record


def test_dead_letter_queue_operations(env: AsyncEnv) -> None:
    ids = [env.send("always-fails", {"i": i}) for i in range(5)]
    assert wait_until(lambda: all(env.status(i)["State"] == "dead-lettered" for i in ids), timeout=60)
    # Paginated, filtered by function.
    seen: list[str] = []
    marker = ""
    while True:
        code, page = env.get(f"/v1/dead-letters?FunctionName=always-fails&MaxItems=2&Marker={marker}")
        assert code == 200 and len(page["DeadLetters"]) <= 2
        assert {d["FunctionName"] for d in page["DeadLetters"]} <= {"always-fails"}
        seen += [d["RequestId"] for d in page["DeadLetters"]]
        if not page["NextMarker"]:
            break
        marker = page["NextMarker"]
    assert set(ids) <= set(seen) and len(seen) == len(set(seen))
    assert env.get("/v1/dead-letters?FunctionName=recorder")[1]["DeadLetters"] == []
    # Delete: gone from the DLQ, the status says failed.
    assert http(f"{env.gateway.url}/v1/dead-letters/{ids[0]}", "DELETE")[0] == 204
    assert env.get(f"/v1/dead-letters/{ids[0]}")[0] == 404
    assert env.status(ids[0])["State"] == "failed"
    assert http(f"{env.gateway.url}/v1/dead-letters/{ids[0]}", "DELETE")[0] == 404
    # Redrive all of a function's dead letters: they go round again and come back.
    code, body = http(f"{env.gateway.url}/v1/dead-letters/redrive?FunctionName=always-fails", "POST")
    assert code == 200 and body["Redriven"] >= 4
    assert wait_until(lambda: all(env.status(i)["State"] == "dead-lettered" for i in ids[1:]), timeout=60)
    # Unknown ids.
    assert env.get("/v1/dead-letters/nope")[0] == 404
    assert http(f"{env.gateway.url}/v1/dead-letters/nope/redrive", "POST")[0] == 404
    assert env.get("/v1/invocations/nope")[0] == 404
    assert env.get("/v1/dead-letters?MaxItems=0")[0] == 400


def test_bad_async_input_is_refused_and_nothing_is_queued(env: AsyncEnv) -> None:
    client = env.client
    with pytest.raises(client.exceptions.ClientError) as info:
        client.invoke(FunctionName="recorder", InvocationType="Event", Payload=json.dumps({"b": "x" * 1_100_000}))
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413
    assert "too large for the Event invocation type (limit 1048576 bytes)" in info.value.response["Error"]["Message"]
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.invoke(FunctionName="no-such-function", InvocationType="Event", Payload=b"{}")
    with pytest.raises(client.exceptions.InvalidRequestContentException):
        client.invoke(FunctionName="recorder", InvocationType="Event", Payload=b"{broken")


def test_event_invoke_config_validation_and_round_trip(env: AsyncEnv) -> None:
    client = env.client
    for bad in ({"MaximumRetryAttempts": 3}, {"MaximumEventAgeInSeconds": 99999}):
        with pytest.raises(client.exceptions.InvalidParameterValueException):
            client.put_function_event_invoke_config(FunctionName="recorder", **bad)
    # botocore refuses an age below 60 itself; the server must too when a client does not.
    code, body = http(
        f"{env.gateway.url}/2019-09-25/functions/recorder/event-invoke-config", "PUT",
        json.dumps({"MaximumEventAgeInSeconds": 30}).encode(),
    )  # fmt: skip
    assert code == 400 and "between 60 and 21600" in body["message"]
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.put_function_event_invoke_config(FunctionName="nope", MaximumRetryAttempts=1)
    put = client.put_function_event_invoke_config(FunctionName="recorder", MaximumRetryAttempts=1)
    assert put["MaximumRetryAttempts"] == 1 and put["FunctionArn"].endswith(":function:recorder:$LATEST")
    updated = client.update_function_event_invoke_config(FunctionName="recorder", MaximumEventAgeInSeconds=600)
    assert updated["MaximumRetryAttempts"] == 1 and updated["MaximumEventAgeInSeconds"] == 600
    assert client.get_function_event_invoke_config(FunctionName="recorder")["MaximumEventAgeInSeconds"] == 600
    client.delete_function_event_invoke_config(FunctionName="recorder")
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_function_event_invoke_config(FunctionName="recorder")


def test_queue_metrics(env: AsyncEnv) -> None:
    gw = env.gateway
    assert wait_until(lambda: gw.metric("kambda_dead_letters") >= 1, timeout=10)
    assert gw.metric("kambda_async_events_enqueued_total", function="recorder") >= 1000
    assert gw.metric("kambda_async_retries_total", function="flaky", cause="function-error") >= 2
    assert gw.metric("kambda_async_dead_lettered_total", function="always-fails", condition="RetriesExhausted") >= 1
    assert gw.metric("kambda_destination_deliveries_total", destination="failure-sink", kind="failure") >= 1
    text = gw.metrics()
    assert "kambda_async_queue_depth" in text and "kambda_async_oldest_event_age_seconds" in text


@pytest.mark.slow
def test_event_that_keeps_being_throttled_expires(env: AsyncEnv) -> None:
    """hog has reserved concurrency 1: a long sync call holds it, so the async event is throttled, backed off and
    retried until its 60 s maximum age passes, then dead-lettered as EventAgeExceeded."""
    holder = threading.Thread(
        target=lambda: env.client.invoke(FunctionName="hog", Payload=json.dumps({"sleep": 66}).encode())
    )
    holder.start()
    try:
        assert wait_until(lambda: env.gateway.metric("kambda_concurrent_executions", function="hog") == 1, timeout=20)
        request_id = env.send("hog", {"sleep": 0})
        started = time.monotonic()
        assert wait_until(lambda: env.status(request_id)["State"] == "dead-lettered", timeout=90)
        assert time.monotonic() - started >= 55  # it was retried, not failed at once
        status = env.status(request_id)
        assert status["Condition"] == "EventAgeExceeded" and status["Attempts"] == 0
        assert env.gateway.metric("kambda_async_retries_total", function="hog", cause="throttled") >= 3
    finally:
        holder.join()


def test_cli_dead_letters_and_status(env: AsyncEnv) -> None:
    import subprocess
    import sys

    def kambda(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kambda", *args, "--endpoint", env.gateway.url],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    flag = env.work / "broken"
    flag.write_text("yes")
    request_id = env.send("fixable", {"cli": True})
    assert wait_until(lambda: env.status(request_id)["State"] == "dead-lettered", timeout=30)
    listing = kambda("dlq", "ls", "--function", "fixable")
    assert listing.returncode == 0 and request_id in listing.stdout and "RetriesExhausted" in listing.stdout
    shown = kambda("dlq", "show", request_id)
    assert shown.returncode == 0 and json.loads(json.loads(shown.stdout)["Payload"]) == {"cli": True}
    assert json.loads(kambda("status", request_id).stdout)["State"] == "dead-lettered"
    flag.unlink()
    assert kambda("dlq", "redrive", "--all", "--function", "fixable").returncode == 0
    assert wait_until(lambda: env.status(request_id)["State"] == "succeeded", timeout=30)
    assert kambda("dlq", "show", request_id).returncode == 2
    assert kambda("dlq", "rm", "no-such-id").returncode == 2
    assert kambda("status", "no-such-id").returncode == 2
