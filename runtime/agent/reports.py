"""Log lines and error payloads the agent produces itself, in Lambda's exact formats (pure).

The platform lines come in the function's log format (its LoggingConfig, `kambda/logconfig.py`). Text: START, END
and REPORT, as always. JSON: what Lambda writes to CloudWatch Logs, one compact object a line, `platform.start` and
`platform.report` (the Telemetry API's event shape: `time`, `type`, `record`); END has no JSON form there (its
telemetry twins, platform.end and platform.runtimeDone, go to extensions only). Both are INFO system logs, so a
systemLogLevel of WARN drops them.
"""

from __future__ import annotations

import json
import math
import re
import signal
import time
from dataclasses import dataclass

from kambda import logconfig

LOG_TAIL_BYTES = 4096
# Lambda accepts a runtime-reported error type only in this form; anything else becomes Runtime.Unknown.
_ERROR_TYPE = re.compile(r"^(Runtime|Function)\.[A-Z][a-zA-Z]+$")


@dataclass(frozen=True)
class Measurement:
    duration_ms: float
    memory_size_mb: int
    max_memory_used_mb: int
    init_duration_ms: float = 0.0  # > 0 only for the first invocation after a cold start
    # > 0 instead of init for the first invocation of a sandbox restored from a SnapStart template: from the fork
    # to the runtime's first /next (loading the runtime client, the after-restore hooks). Lambda bills it apart.
    restore_duration_ms: float = 0.0


# platform.report's status: how the invocation ended. Lambda's REPORT line shows it (`Status: timeout`,
# `Status: error  Error Type: Runtime.ExitError`) only when the runtime did not answer; a handler's exception is
# an answer (the runtime posted it), so it is a success here as in Lambda.
SUCCESS, ERROR, TIMEOUT = "success", "error", "timeout"
PLATFORM_LEVEL = "INFO"  # the system log level of platform.start and platform.report


def start_line(
    request_id: str,
    version: str,
    *,
    log_format: str = logconfig.TEXT,
    system_log_level: str | None = None,
    function_arn: str | None = None,
    now: float | None = None,
) -> str:
    """START, or platform.start (with the function's ARN when given, as Lambda now writes it); "" when the system
    log level drops it."""
    if log_format != logconfig.JSON:
        return f"START RequestId: {request_id} Version: {version}\n"
    record: dict[str, object] = {"requestId": request_id}
    if function_arn:
        record["functionArn"] = function_arn
    record["version"] = version
    return _platform("platform.start", record, system_log_level, now)


def end_line(request_id: str, *, log_format: str = logconfig.TEXT) -> str:
    """END; nothing in JSON format (CloudWatch gets no platform.end)."""
    return "" if log_format == logconfig.JSON else f"END RequestId: {request_id}\n"


def billed_duration_ms(duration_ms: float) -> int:
    """Lambda bills in 1 ms increments, rounding up, never less than 1 ms."""
    return max(1, math.ceil(duration_ms))


def report_line(
    request_id: str,
    m: Measurement,
    *,
    log_format: str = logconfig.TEXT,
    system_log_level: str | None = None,
    failure: str | None = None,
    now: float | None = None,
) -> str:
    """REPORT, or platform.report with the status `failure` gives (`report_status`); "" when the system log level
    drops it. The Text line stays as it always was, without the status."""
    if log_format == logconfig.JSON:
        record = _report_record(request_id, m, *report_status(failure))
        return _platform("platform.report", record, system_log_level, now)
    fields = [
        f"REPORT RequestId: {request_id}",
        f"Duration: {m.duration_ms:.2f} ms",
        f"Billed Duration: {billed_duration_ms(m.duration_ms + m.init_duration_ms)} ms",
        f"Memory Size: {m.memory_size_mb} MB",
        f"Max Memory Used: {m.max_memory_used_mb} MB",
    ]
    if m.init_duration_ms > 0:
        fields.append(f"Init Duration: {m.init_duration_ms:.2f} ms")
    if m.restore_duration_ms > 0:
        fields.append(f"Restore Duration: {m.restore_duration_ms:.2f} ms")
        fields.append(f"Billed Restore Duration: {billed_duration_ms(m.restore_duration_ms)} ms")
    return "\t".join(fields) + "\t\n"


def _report_record(request_id: str, m: Measurement, status: str, error_type: str | None) -> dict[str, object]:
    # Lambda's precision: durations to the microsecond (3 decimals), billed time and memory as integers.
    metrics: dict[str, object] = {
        "durationMs": round(m.duration_ms, 3),
        "billedDurationMs": billed_duration_ms(m.duration_ms + m.init_duration_ms),
        "memorySizeMB": m.memory_size_mb,
        "maxMemoryUsedMB": m.max_memory_used_mb,
    }
    if m.init_duration_ms > 0:
        metrics["initDurationMs"] = round(m.init_duration_ms, 3)
    if m.restore_duration_ms > 0:
        metrics["restoreDurationMs"] = round(m.restore_duration_ms, 3)
        metrics["billedRestoreDurationMs"] = billed_duration_ms(m.restore_duration_ms)
    record: dict[str, object] = {"requestId": request_id, "metrics": metrics, "status": status}
    if status == ERROR and error_type:
        record["errorType"] = error_type
    return record


def _platform(event_type: str, record: dict[str, object], system_log_level: str | None, now: float | None) -> str:
    if not logconfig.keeps(system_log_level, PLATFORM_LEVEL):
        return ""
    event = {"time": timestamp(time.time() if now is None else now), "type": event_type, "record": record}
    return json.dumps(event, separators=(",", ":")) + "\n"


def timestamp(epoch: float) -> str:
    """Lambda's event time: UTC, ISO 8601 to the millisecond (`2024-07-01T08:54:54.108Z`)."""
    millis = int(epoch * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis // 1000)) + f".{millis % 1000:03d}Z"


def report_status(failure: str | None) -> tuple[str, str | None]:
    """platform.report's (status, errorType) for an invocation the runtime did not answer, ended by the agent with
    the error type `failure`: the deadline passed (timeout), or the runtime died or failed its init (error, with
    the type). None: the runtime answered, with a result or a function error (success)."""
    if failure is None:
        return SUCCESS, None
    if failure == "Sandbox.Timedout":
        return TIMEOUT, None
    return ERROR, failure


def error_payload(error_type: str, message: str) -> bytes:
    return json.dumps({"errorMessage": message, "errorType": error_type}).encode()


def timeout_error(request_id: str, timeout_seconds: float) -> bytes:
    return error_payload(
        "Sandbox.Timedout", f"RequestId: {request_id} Error: Task timed out after {timeout_seconds:.2f} seconds"
    )


def exit_reason(returncode: int | None) -> str:
    """Go's os/exec wording, which Lambda's own messages use; None: a status the agent cannot see."""
    if returncode is None:
        return "Runtime exited without providing a reason"
    status = f"signal: {_signal_name(-returncode)}" if returncode < 0 else f"exit status {returncode}"
    return f"Runtime exited with error: {status}"


def exit_error(request_id: str, returncode: int | None) -> bytes:
    return error_payload("Runtime.ExitError", f"RequestId: {request_id} Error: {exit_reason(returncode)}")


def _signal_name(signum: int) -> str:
    try:
        name = signal.Signals(signum).name
    except ValueError:
        return str(signum)
    return {"SIGKILL": "killed", "SIGSEGV": "segmentation fault", "SIGABRT": "aborted", "SIGTERM": "terminated"}.get(
        name, name.lower()
    )


def error_type_of(body: bytes, header: str | None) -> str:
    """The error type a runtime reported: from the JSON body (awslambdaric sends no header), else the header."""
    reported: object = None
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict):
            reported = parsed.get("errorType")
    except ValueError:
        pass
    if not isinstance(reported, str) or not reported:
        reported = header
    if not reported:
        return "Runtime.Unknown"
    # Function errors (a handler's own exception class names) are passed through; platform-looking ones must
    # match Lambda's pattern.
    if "." in reported and not _ERROR_TYPE.match(reported):
        return "Runtime.Unknown"
    return reported


def tail(log: bytes | bytearray) -> bytes:
    return bytes(log[-LOG_TAIL_BYTES:])
