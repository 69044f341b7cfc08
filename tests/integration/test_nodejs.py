"""Node.js as a managed runtime on the local backend: `runtime: nodejs20.x` runs this host's Node.js under AWS's
unmodified aws-lambda-ric (built by hack/build-node-ric.sh), with handlers written for Lambda: async, callback
style, errors with their errorType, the context object; and the sandbox's deadline and crash reporting."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Gateway
from tests.integration.test_async import lambda_client

NODE_MAJOR = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True).stdout[1:].split(".")[0]
RUNTIME = f"nodejs{NODE_MAJOR}.x"

APP = """\
exports.handler = async (event, context) => ({
  hello: event.name, fn: context.functionName, left: context.getRemainingTimeInMillis() > 0,
  env: process.env.AWS_EXECUTION_ENV, node: process.version, cwd: process.cwd(),
});
exports.callback = (event, context, callback) => { setTimeout(() => callback(null, {via: "callback"}), 10); };
exports.fails = async () => { class OrderError extends Error { constructor(m) { super(m); this.name = "OrderError"; } }
  throw new OrderError("no such order"); };
exports.sleeps = async (event) => { await new Promise((r) => setTimeout(r, event.ms)); return "woke"; };
exports.crashes = async () => { process.exit(3); };
"""


def manifest(name: str, handler: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "kambda.dev/v1alpha1", "kind": "Function", "metadata": {"name": name},
            "spec": {"runtime": RUNTIME, "handler": handler, "code": {"files": {"app.js": APP}}, **spec}}  # fmt: skip


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("nodejs")
    (root / "manifests").mkdir()
    docs = [manifest("node-async", "app.handler"), manifest("node-callback", "app.callback"),
            manifest("node-fails", "app.fails"), manifest("node-sleeps", "app.sleeps", timeoutSeconds=1),
            manifest("node-crashes", "app.crashes")]  # fmt: skip
    (root / "manifests" / "node.yaml").write_text("\n---\n".join(json.dumps(d) for d in docs))
    gw = Gateway(root / "manifests", root / "data")
    yield lambda_client(gw.url)
    gw.stop()


def call(client: Any, name: str, event: object = None) -> tuple[dict[str, Any], Any]:
    response = client.invoke(FunctionName=name, Payload=json.dumps(event or {}).encode())
    return response, json.loads(response["Payload"].read())


def test_an_async_handler_with_the_lambda_context(client: Any) -> None:
    response, body = call(client, "node-async", {"name": "node"})
    assert "FunctionError" not in response, body
    assert body["hello"] == "node" and body["fn"] == "node-async" and body["left"] is True
    assert body["env"] == f"AWS_Lambda_{RUNTIME}" and body["node"].startswith(f"v{NODE_MAJOR}.")
    assert body["cwd"] in ("/var/task", str(Path(body["cwd"])))  # the code directory, /var/task when isolated


def test_a_callback_handler(client: Any) -> None:
    assert call(client, "node-callback")[1] == {"via": "callback"}


def test_a_thrown_error_keeps_its_type(client: Any) -> None:
    response, body = call(client, "node-fails")
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "OrderError" and body["errorMessage"] == "no such order"
    assert isinstance(body.get("trace"), list)


def test_the_deadline_ends_a_slow_handler_and_the_next_call_works(client: Any) -> None:
    started = time.monotonic()
    response, body = call(client, "node-sleeps", {"ms": 30_000})
    assert response["FunctionError"] == "Unhandled" and body["errorType"] == "Sandbox.Timedout", body
    assert time.monotonic() - started < 5
    assert call(client, "node-sleeps", {"ms": 1})[1] == "woke"


def test_a_crash_is_a_runtime_exit_error(client: Any) -> None:
    response, body = call(client, "node-crashes")
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.ExitError" and body["errorMessage"].endswith("exit status 3"), body
