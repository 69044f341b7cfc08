"""spec.logging and spec.ephemeralStorage on the local backend: a real gateway, agent and awslambdaric.

With `format: JSON`, awslambdaric writes Python's logging records as JSON and the agent writes platform.start and
platform.report records; at `applicationLogLevel: WARN` the INFO record and the handler's plain prints (INFO to
Lambda) are dropped, so every line of the tail parses as JSON. A plain print at INFO stays plain text, as Lambda
leaves it. The sandbox's /tmp has the size of `ephemeralStorage`.
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Gateway
from tests.integration.test_async import lambda_client
from tests.workdir import function_manifest

HANDLER = """\
import json, logging, os

logger = logging.getLogger()


def handler(event, context):
    print("a plain print")
    print(json.dumps({"level": "ERROR", "message": "a printed JSON error"}))
    logger.info("an info record")
    logger.warning("a warning record")
    tmp = os.statvfs("/tmp")
    return {
        "format": os.environ.get("AWS_LAMBDA_LOG_FORMAT"),
        "level": os.environ.get("AWS_LAMBDA_LOG_LEVEL"),
        "tmp_mb": tmp.f_blocks * tmp.f_frsize // (1024 * 1024),
    }
"""


FUNCTIONS: dict[str, dict[str, Any]] = {
    "json-warn": {"logging": {"format": "JSON", "applicationLogLevel": "WARN"}},
    "json-quiet": {"logging": {"format": "JSON", "systemLogLevel": "WARN"}, "ephemeralStorage": {"size": 1024}},
    "text": {},
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("logging")
    (root / "functions").mkdir()
    for name, spec in FUNCTIONS.items():
        (root / "functions" / f"{name}.yaml").write_text(function_manifest(name, HANDLER, **spec))
    gw = Gateway(root / "functions", root / "data")
    yield gw
    gw.stop()


def invoke(gateway: Gateway, name: str) -> tuple[str, dict[str, Any], list[str]]:
    response = lambda_client(gateway.url).invoke(FunctionName=name, Payload=b"{}", LogType="Tail")
    assert "FunctionError" not in response
    body = json.loads(response["Payload"].read())
    lines = base64.b64decode(response["LogResult"]).decode().splitlines()
    return response["ResponseMetadata"]["RequestId"], body, lines


def records(lines: list[str]) -> list[dict[str, Any]]:
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            pytest.fail(f"a line of the tail is not JSON: {line!r}\n" + "\n".join(lines))
    return parsed


def test_json_at_warn_every_line_is_a_json_record_and_info_is_dropped(gateway: Gateway) -> None:
    for cold in (True, False):
        request_id, body, lines = invoke(gateway, "json-warn")
        assert (body["format"], body["level"]) == ("JSON", "WARN")
        logged = records(lines)
        messages = [r.get("message") for r in logged]
        assert "an info record" not in messages
        assert "a plain print" not in "\n".join(lines), "a line without a level is INFO to Lambda"
        warning = next(r for r in logged if r.get("message") == "a warning record")
        assert warning["level"] == "WARNING" and warning["requestId"] == request_id and warning["timestamp"]
        assert "a printed JSON error" in messages, "a printed JSON object's level counts"

        start = [r for r in logged if r.get("type") == "platform.start"]
        report = [r for r in logged if r.get("type") == "platform.report"]
        assert len(start) == 1 and len(report) == 1 and logged[-1] is report[0]
        assert start[0]["record"]["requestId"] == request_id and start[0]["record"]["version"] == "$LATEST"
        assert start[0]["time"].endswith("Z")
        record = report[0]["record"]
        assert record["requestId"] == request_id and record["status"] == "success"
        metrics = record["metrics"]
        assert {"durationMs", "billedDurationMs", "memorySizeMB", "maxMemoryUsedMB"} <= set(metrics)
        assert metrics["memorySizeMB"] == 128 and metrics["billedDurationMs"] >= metrics["durationMs"]
        assert ("initDurationMs" in metrics) is cold
        assert not any(line.startswith(("START", "END", "REPORT")) for line in lines)


def test_json_at_the_default_info_keeps_info_and_leaves_a_plain_print_as_text(gateway: Gateway) -> None:
    request_id, body, lines = invoke(gateway, "json-quiet")
    assert (body["format"], body["level"]) == ("JSON", "INFO")
    assert "a plain print" in lines, "Lambda does not wrap a print in JSON"
    logged = [json.loads(line) for line in lines if line != "a plain print"]
    info = next(r for r in logged if r.get("message") == "an info record")
    assert info["level"] == "INFO" and info["requestId"] == request_id
    assert not any(str(r.get("type", "")).startswith("platform.") for r in logged), "systemLogLevel WARN drops them"


def test_text_is_unchanged(gateway: Gateway) -> None:
    request_id, body, lines = invoke(gateway, "text")
    assert (body["format"], body["level"]) == ("Text", None)
    assert f"START RequestId: {request_id} Version: $LATEST" in lines
    assert "a plain print" in lines and lines[-2] == f"END RequestId: {request_id}"
    assert lines[-1].startswith(f"REPORT RequestId: {request_id}\tDuration: ")


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="the private /tmp is bubblewrap's")
def test_tmp_has_the_ephemeral_storage_size(gateway: Gateway) -> None:
    assert invoke(gateway, "text")[1]["tmp_mb"] == 512
    assert invoke(gateway, "json-quiet")[1]["tmp_mb"] == 1024
