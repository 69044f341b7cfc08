from __future__ import annotations

import json

from kambda.runtime.agent import reports


def test_report_line_cold_and_warm() -> None:
    cold = reports.report_line("id", reports.Measurement(1.234, 128, 40, init_duration_ms=90.5))
    assert cold == (
        "REPORT RequestId: id\tDuration: 1.23 ms\tBilled Duration: 92 ms\tMemory Size: 128 MB\t"
        "Max Memory Used: 40 MB\tInit Duration: 90.50 ms\t\n"
    )
    warm = reports.report_line("id", reports.Measurement(0.2, 256, 41))
    assert "Billed Duration: 1 ms" in warm and "Init Duration" not in warm


def test_timeout_and_exit_payloads() -> None:
    assert json.loads(reports.timeout_error("r", 3)) == {
        "errorMessage": "RequestId: r Error: Task timed out after 3.00 seconds",
        "errorType": "Sandbox.Timedout",
    }
    assert json.loads(reports.exit_error("r", 1))["errorMessage"].endswith("exit status 1")
    assert json.loads(reports.exit_error("r", -9))["errorMessage"].endswith("signal: killed")


def test_error_type_comes_from_the_body_first() -> None:
    assert reports.error_type_of(b'{"errorType":"ValueError"}', None) == "ValueError"
    assert reports.error_type_of(b"not json", "Runtime.ImportModuleError") == "Runtime.ImportModuleError"
    assert reports.error_type_of(b"{}", None) == "Runtime.Unknown"
    assert reports.error_type_of(b'{"errorType":"Runtime.lowercase"}', None) == "Runtime.Unknown"


def test_tail_is_the_last_4kb() -> None:
    assert reports.tail(b"a" * 5000 + b"end") == (b"a" * 5000 + b"end")[-4096:]
