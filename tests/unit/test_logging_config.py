"""spec.logging (Lambda's LoggingConfig) and spec.ephemeralStorage: parsed and validated, versioned, carried into
both backends' sandbox config and the pod, and the runtime's variables and the agent's platform lines they give."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kambda import logconfig
from kambda.operator import resources
from kambda.runtime.agent import reports
from kambda.runtime.agent.main import config_from_json
from kambda.specs import FunctionSpec, LoggingConfig, SpecError, parse_function

SETTINGS = resources.Settings(runtime_image="img:1", gateway_address="gw:9090", signing_key=b"k")
OWNER = {"apiVersion": "kambda.dev/v1alpha1", "kind": "Function", "name": "f", "uid": "u", "controller": True}


def spec(**extra: Any) -> dict[str, Any]:
    return {"runtime": "python3.11", "handler": "app.handler", "code": {"files": {"app.py": "x"}}, **extra}


def fn(**extra: Any) -> FunctionSpec:
    return parse_function({"metadata": {"name": "f", "namespace": "ns"}, "spec": spec(**extra)})


def errors_of(**extra: Any) -> list[str]:
    with pytest.raises(SpecError) as info:
        fn(**extra)
    return info.value.errors


# ---- parsing ---------------------------------------------------------------------------------------------------


def test_defaults_are_lambdas_text_logs_and_512_mb_of_tmp() -> None:
    function = fn()
    assert function.logging == LoggingConfig("Text", None, None)
    assert function.ephemeral_storage_mb == 512


def test_json_without_levels_gets_lambdas_info_for_both() -> None:
    assert fn(logging={"format": "JSON"}).logging == LoggingConfig("JSON", "INFO", "INFO")


def test_json_with_levels_and_a_larger_tmp() -> None:
    function = fn(
        logging={"format": "JSON", "applicationLogLevel": "WARN", "systemLogLevel": "DEBUG"},
        ephemeralStorage={"size": 10240},
    )
    assert function.logging == LoggingConfig("JSON", "WARN", "DEBUG")
    assert function.ephemeral_storage_mb == 10240


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"logging": {"format": "json"}}, "spec.logging.format: must be one of Text, JSON"),
        ({"logging": {"format": 1}}, "spec.logging.format: must be a string"),
        ({"logging": "JSON"}, "spec.logging: must be an object"),
        (
            {"logging": {"format": "JSON", "applicationLogLevel": "WARNING"}},
            "spec.logging.applicationLogLevel: must be one of TRACE, DEBUG, INFO, WARN, ERROR, FATAL",
        ),
        (
            {"logging": {"format": "JSON", "systemLogLevel": "ERROR"}},
            "spec.logging.systemLogLevel: must be one of DEBUG, INFO, WARN",
        ),
        (
            {"logging": {"applicationLogLevel": "WARN"}},
            "spec.logging.applicationLogLevel: is not supported when format is Text: remove it or set format: JSON",
        ),
        (
            {"logging": {"format": "Text", "systemLogLevel": "WARN"}},
            "spec.logging.systemLogLevel: is not supported when format is Text: remove it or set format: JSON",
        ),
        ({"ephemeralStorage": {"size": 511}}, "spec.ephemeralStorage.size: must be between 512 and 10240"),
        ({"ephemeralStorage": {"size": 10241}}, "spec.ephemeralStorage.size: must be between 512 and 10240"),
        ({"ephemeralStorage": {"size": "1G"}}, "spec.ephemeralStorage.size: must be an integer"),
        ({"ephemeralStorage": 1024}, "spec.ephemeralStorage: must be an object"),
    ],
)
def test_bad_values_name_the_field_and_the_rule(extra: dict[str, Any], expected: str) -> None:
    assert expected in errors_of(**extra)


def test_both_levels_with_text_are_both_reported() -> None:
    errors = errors_of(logging={"applicationLogLevel": "ERROR", "systemLogLevel": "WARN"}, ephemeralStorage={"size": 1})
    assert [e.split(":")[0] for e in errors] == [
        "spec.logging.applicationLogLevel",
        "spec.logging.systemLogLevel",
        "spec.ephemeralStorage.size",
    ]


def test_both_fields_are_versioned() -> None:
    base = resources.version_hash(spec())
    assert resources.version_hash(spec(logging={"format": "JSON"})) != base
    assert resources.version_hash(spec(ephemeralStorage={"size": 1024})) != base
    snapshot = resources.controller_revision(fn(logging={"format": "JSON"}), spec(logging={"format": "JSON"}), 2, OWNER)
    assert snapshot["data"]["spec"]["logging"] == {"format": "JSON"}


# ---- Kubernetes: the pod and the sandbox config ---------------------------------------------------------------


def sandbox_of(deployment: dict[str, Any]) -> dict[str, Any]:
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    config: dict[str, Any] = json.loads(next(e["value"] for e in env if e["name"] == "KAMBDA_SANDBOX"))
    return config


def tmp_volume(deployment: dict[str, Any]) -> dict[str, Any]:
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    volume: dict[str, Any] = next(v for v in volumes if v["name"] == "tmp")
    return volume


def test_the_pods_tmp_is_the_ephemeral_storage_and_the_agent_is_told_its_size() -> None:
    default = resources.deployment(fn(), "1", OWNER, SETTINGS)
    assert tmp_volume(default) == {"name": "tmp", "emptyDir": {"sizeLimit": "512Mi"}}
    large = resources.deployment(fn(ephemeralStorage={"size": 4096}), "1", OWNER, SETTINGS)
    assert tmp_volume(large) == {"name": "tmp", "emptyDir": {"sizeLimit": "4096Mi"}}
    assert sandbox_of(large)["tmp_mb"] == 4096


def test_the_sandbox_config_carries_the_logging_config_into_the_agent() -> None:
    function = fn(logging={"format": "JSON", "applicationLogLevel": "ERROR"}, ephemeralStorage={"size": 2048})
    sandbox = sandbox_of(resources.deployment(function, "1", OWNER, SETTINGS))
    assert (sandbox["log_format"], sandbox["application_log_level"], sandbox["system_log_level"]) == (
        "JSON",
        "ERROR",
        "INFO",
    )
    # The agent reads exactly these fields: they land in its SandboxConfig.
    config = config_from_json(sandbox)
    assert (config.log_format, config.application_log_level, config.system_log_level, config.tmp_mb) == (
        "JSON",
        "ERROR",
        "INFO",
        2048,
    )
    text = sandbox_of(resources.deployment(fn(), "1", OWNER, SETTINGS))
    assert (text["log_format"], text["application_log_level"], text["system_log_level"]) == ("Text", None, None)


def test_an_image_functions_tmp_and_runtime_variables() -> None:
    function = fn(
        runtime="provided",
        handler=None,
        code={"image": "registry.example/fn:1"},
        logging={"format": "JSON", "applicationLogLevel": "DEBUG"},
        ephemeralStorage={"size": 1024},
    )
    pod = resources.deployment(function, "1", OWNER, SETTINGS)["spec"]["template"]["spec"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "1024Mi"}} in pod["volumes"]
    runtime = next(c for c in pod["containers"] if c["name"] == "function")
    env = {e["name"]: e.get("value") for e in runtime["env"]}
    assert env["AWS_LAMBDA_LOG_FORMAT"] == "JSON" and env["AWS_LAMBDA_LOG_LEVEL"] == "DEBUG"


# ---- what the runtime is given --------------------------------------------------------------------------------


def test_the_runtime_gets_the_format_and_with_json_the_application_level() -> None:
    assert logconfig.runtime_env("Text", None) == {"AWS_LAMBDA_LOG_FORMAT": "Text"}
    assert logconfig.runtime_env("JSON", "WARN") == {"AWS_LAMBDA_LOG_FORMAT": "JSON", "AWS_LAMBDA_LOG_LEVEL": "WARN"}
    assert logconfig.runtime_env("JSON", None)["AWS_LAMBDA_LOG_LEVEL"] == "INFO"


@pytest.mark.parametrize(
    ("threshold", "kept"),
    [
        ("TRACE", ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"]),
        (None, ["INFO", "WARN", "ERROR", "FATAL"]),
        ("WARN", ["WARN", "ERROR", "FATAL"]),
        ("FATAL", ["FATAL"]),
    ],
)
def test_a_level_keeps_itself_and_everything_more_severe(threshold: str | None, kept: list[str]) -> None:
    assert [level for level in logconfig.APPLICATION_LEVELS if logconfig.keeps(threshold, level)] == kept


# ---- the agent's own lines ------------------------------------------------------------------------------------

NOW = 1_700_000_000.123  # 2023-11-14T22:13:20.123Z
COLD = reports.Measurement(1233.96, 256, 123, init_duration_ms=463.5124)
WARM = reports.Measurement(1072.1454, 256, 125)


def test_text_lines_are_as_they_always_were_whatever_else_is_passed() -> None:
    assert reports.start_line("r", "$LATEST") == "START RequestId: r Version: $LATEST\n"
    assert reports.start_line("r", "3", log_format="Text", system_log_level="WARN", now=NOW) == (
        "START RequestId: r Version: 3\n"
    )
    assert reports.end_line("r") == reports.end_line("r", log_format="Text") == "END RequestId: r\n"
    assert reports.report_line("r", COLD, log_format="Text", failure="Sandbox.Timedout") == (
        reports.report_line("r", COLD)
    )
    assert reports.report_line("r", COLD) == (
        "REPORT RequestId: r\tDuration: 1233.96 ms\tBilled Duration: 1698 ms\tMemory Size: 256 MB\t"
        "Max Memory Used: 123 MB\tInit Duration: 463.51 ms\t\n"
    )


def test_platform_start_is_one_json_line_as_cloudwatch_shows_it() -> None:
    line = reports.start_line("req-1", "$LATEST", log_format="JSON", now=NOW)
    assert line.endswith("}\n") and line.count("\n") == 1
    assert json.loads(line) == {
        "time": "2023-11-14T22:13:20.123Z",
        "type": "platform.start",
        "record": {"requestId": "req-1", "version": "$LATEST"},
    }
    assert line == (
        '{"time":"2023-11-14T22:13:20.123Z","type":"platform.start","record":{"requestId":"req-1","version":"$LATEST"}}\n'
    )
    arn = "arn:aws:lambda:us-east-1:000000000000:function:f"
    with_arn = json.loads(reports.start_line("req-1", "2", log_format="JSON", function_arn=arn, now=NOW))
    assert (
        list(with_arn["record"]) == ["requestId", "functionArn", "version"] and with_arn["record"]["functionArn"] == arn
    )


def test_platform_report_has_lambdas_metrics_and_status() -> None:
    cold = json.loads(reports.report_line("req-1", COLD, log_format="JSON", now=NOW))
    assert cold == {
        "time": "2023-11-14T22:13:20.123Z",
        "type": "platform.report",
        "record": {
            "requestId": "req-1",
            "metrics": {
                "durationMs": 1233.96,
                "billedDurationMs": 1698,  # duration and init, rounded up (Lambda bills the init of a cold start)
                "memorySizeMB": 256,
                "maxMemoryUsedMB": 123,
                "initDurationMs": 463.512,
            },
            "status": "success",
        },
    }
    warm = json.loads(reports.report_line("req-2", WARM, log_format="JSON", now=NOW))
    assert warm["record"]["metrics"] == {
        "durationMs": 1072.145,
        "billedDurationMs": 1073,
        "memorySizeMB": 256,
        "maxMemoryUsedMB": 125,
    }


@pytest.mark.parametrize(
    ("failure", "status", "error_type"),
    [
        (None, "success", None),  # a result, or a handler's exception: the runtime answered
        ("Sandbox.Timedout", "timeout", None),
        ("Runtime.ExitError", "error", "Runtime.ExitError"),
        ("Runtime.ImportModuleError", "error", "Runtime.ImportModuleError"),
    ],
)
def test_platform_report_status_says_how_the_invocation_ended(
    failure: str | None, status: str, error_type: str | None
) -> None:
    record = json.loads(reports.report_line("r", WARM, log_format="JSON", failure=failure, now=NOW))["record"]
    assert record["status"] == status
    assert record.get("errorType") == error_type


def test_json_has_no_end_line() -> None:
    assert reports.end_line("r", log_format="JSON") == ""


@pytest.mark.parametrize(("level", "written"), [("DEBUG", True), ("INFO", True), (None, True), ("WARN", False)])
def test_the_system_log_level_filters_the_platform_lines(level: str | None, written: bool) -> None:
    start = reports.start_line("r", "1", log_format="JSON", system_log_level=level)
    report = reports.report_line("r", WARM, log_format="JSON", system_log_level=level)
    assert bool(start) is written and bool(report) is written


def test_event_times_are_utc_to_the_millisecond() -> None:
    assert reports.timestamp(0) == "1970-01-01T00:00:00.000Z"
    assert reports.timestamp(1_700_000_000.9999) == "2023-11-14T22:13:20.999Z"
