"""The ways a runtime fails — deadline, crash, broken init — each reach the caller as Lambda's error, and the
function (and every other function) keeps working afterwards."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.integration.test_invoke import invoke


def test_timeout_kills_the_handler_and_the_next_invocation_succeeds(lambda_client) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    response = invoke(lambda_client, "sleeper", {"seconds": 30})
    elapsed = time.monotonic() - started
    assert response["FunctionError"] == "Unhandled"
    error = json.loads(response["Body"])
    assert error["errorType"] == "Sandbox.Timedout"
    assert re.fullmatch(r"RequestId: [\w-]+ Error: Task timed out after 1\.00 seconds", error["errorMessage"])
    assert elapsed < 1 + 1  # the bound: timeout + 1 s (the handler alone would sleep 30 s)
    assert json.loads(invoke(lambda_client, "sleeper", {"seconds": 0})["Body"]) == {"slept": 0}


def test_runtime_exit_is_reported_and_the_next_invocation_succeeds(lambda_client) -> None:  # type: ignore[no-untyped-def]
    response = invoke(lambda_client, "crasher", {"crash": True})
    assert response["FunctionError"] == "Unhandled"
    error = json.loads(response["Body"])
    assert error["errorType"] == "Runtime.ExitError"
    assert error["errorMessage"].endswith("Error: Runtime exited with error: exit status 1")
    assert json.loads(invoke(lambda_client, "crasher", {})["Body"]) == {"ok": True}


@pytest.mark.parametrize(
    ("name", "error_type", "message"),
    [
        ("syntax-error", "Runtime.UserCodeSyntaxError", "Syntax error in module 'app'"),
        ("import-error", "Runtime.ImportModuleError", "No module named 'module_that_does_not_exist'"),
        ("missing-handler", "Runtime.HandlerNotFound", "Handler 'nope' missing on module 'app'"),
    ],
)
def test_init_errors_reach_the_caller_every_time(lambda_client, name: str, error_type: str, message: str) -> None:  # type: ignore[no-untyped-def]
    for _ in range(2):  # each invocation retries init, as Lambda does
        response = invoke(lambda_client, name, {})
        assert response["FunctionError"] == "Unhandled"
        error = json.loads(response["Body"])
        assert error["errorType"] == error_type
        assert message in error["errorMessage"]
    assert json.loads(invoke(lambda_client, "echo", {"still": "working"})["Body"]) == {"still": "working"}


def test_init_error_tail_has_a_report(lambda_client) -> None:  # type: ignore[no-untyped-def]
    import base64

    response = invoke(lambda_client, "import-error", {}, LogType="Tail")
    log = base64.b64decode(response["LogResult"]).decode()
    assert log.strip().splitlines()[-1].startswith("REPORT RequestId:")


def test_an_error_with_a_huge_xray_cause_header_reaches_the_caller(lambda_client) -> None:  # type: ignore[no-untyped-def]
    response = invoke(lambda_client, "huge-error", {})
    assert response["FunctionError"] == "Unhandled"
    assert json.loads(response["Body"])["errorMessage"] == "x" * 30000
    assert json.loads(invoke(lambda_client, "huge-error", {})["Body"])["errorType"] == "ValueError"  # runtime alive


def test_chunked_responses_from_a_custom_runtime(lambda_client) -> None:  # type: ignore[no-untyped-def]
    for i in range(3):  # keep-alive across several invocations
        assert json.loads(invoke(lambda_client, "shell-chunked", {"i": i})["Body"]) == {"chunked": {"i": i}}
