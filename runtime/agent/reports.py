"""Log lines and error payloads the agent produces itself, in Lambda's exact formats (pure)."""

from __future__ import annotations

import json
import math
import re
import signal
from dataclasses import dataclass

LOG_TAIL_BYTES = 4096
# Lambda accepts a runtime-reported error type only in this form; anything else becomes Runtime.Unknown.
_ERROR_TYPE = re.compile(r"^(Runtime|Function)\.[A-Z][a-zA-Z]+$")


@dataclass(frozen=True)
class Measurement:
    duration_ms: float
    memory_size_mb: int
    max_memory_used_mb: int
    init_duration_ms: float = 0.0  # > 0 only for the first invocation after a cold start


def start_line(request_id: str, version: str) -> str:
    return f"START RequestId: {request_id} Version: {version}\n"


def end_line(request_id: str) -> str:
    return f"END RequestId: {request_id}\n"


def billed_duration_ms(duration_ms: float) -> int:
    """Lambda bills in 1 ms increments, rounding up, never less than 1 ms."""
    return max(1, math.ceil(duration_ms))


def report_line(request_id: str, m: Measurement) -> str:
    fields = [
        f"REPORT RequestId: {request_id}",
        f"Duration: {m.duration_ms:.2f} ms",
        f"Billed Duration: {billed_duration_ms(m.duration_ms + m.init_duration_ms)} ms",
        f"Memory Size: {m.memory_size_mb} MB",
        f"Max Memory Used: {m.max_memory_used_mb} MB",
    ]
    if m.init_duration_ms > 0:
        fields.append(f"Init Duration: {m.init_duration_ms:.2f} ms")
    return "\t".join(fields) + "\t\n"


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
