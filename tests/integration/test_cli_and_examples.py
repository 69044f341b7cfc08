"""The CLI and the shipped examples, as a newcomer uses them after `make run`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, Gateway


@pytest.fixture(scope="module")
def examples_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(ROOT / "examples", tmp_path_factory.mktemp("examples"))
    yield gw
    gw.stop()


def kambda(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kambda", *args], capture_output=True, text=True, timeout=60)


def test_examples_answer(examples_gateway: Gateway) -> None:
    hello = kambda("invoke", "hello", "--payload", '{"name": "you"}', "--endpoint", examples_gateway.url)
    assert hello.returncode == 0, hello.stderr
    assert json.loads(hello.stdout)["message"] == "Hello, you!"
    echo = kambda("invoke", "echo", "--payload", '{"a": [1, 2]}', "--endpoint", examples_gateway.url)
    assert json.loads(echo.stdout) == {"a": [1, 2]}
    shell = kambda("invoke", "shell-echo", "--payload", '{"b": 2}', "--endpoint", examples_gateway.url)
    assert json.loads(shell.stdout) == {"runtime": "provided", "handler": "function.handler", "event": {"b": 2}}


def test_invoke_payload_from_file_with_log_tail(examples_gateway: Gateway, tmp_path: Path) -> None:
    payload = tmp_path / "event.json"
    payload.write_text('{"name": "file"}')
    result = kambda("invoke", "hello", "--payload", f"@{payload}", "--log-tail", "--endpoint", examples_gateway.url)
    assert result.returncode == 0
    assert json.loads(result.stdout)["message"] == "Hello, file!"
    assert "REPORT RequestId:" in result.stderr


def test_invoke_errors_have_exit_codes(examples_gateway: Gateway) -> None:
    missing = kambda("invoke", "nope", "--endpoint", examples_gateway.url)
    assert missing.returncode == 2 and "ResourceNotFoundException" in missing.stderr
    unreachable = kambda("invoke", "hello", "--endpoint", "http://127.0.0.1:9")
    assert unreachable.returncode == 2 and "cannot reach the gateway" in unreachable.stderr


def test_bad_manifest_directory_is_refused_with_the_field(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "apiVersion: kambda.dev/v1alpha1\nkind: Function\nmetadata: {name: bad}\n"
        "spec: {runtime: python3.11, handler: app.handler, memoryMB: 64, code: {files: {app.py: ''}}}\n"
    )
    result = kambda("run", str(tmp_path), "--port", "0", "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 2
    assert "spec.memoryMB: must be between 128 and 10240" in result.stderr
