"""Node.js on the real node: a nodejs20.x zip uploaded with `kambda deploy` runs in the Node.js runtime image
under AWS's unmodified aws-lambda-ric; it answers, times out with Sandbox.Timedout and reports a crash as
Runtime.ExitError. A runtime the installation has no image for is refused on the Function's status."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.conftest import Platform
from tests.kube import eventually

APP = """\
exports.handler = async (event, context) => {
  if (event.crash) process.exit(7);
  if (event.sleep) await new Promise((r) => setTimeout(r, event.sleep));
  return {hello: event.name, node: process.version, env: process.env.AWS_EXECUTION_ENV, fn: context.functionName};
};
"""


def condition(platform: Platform, name: str) -> dict[str, str]:
    status = (platform.kube.get("function", name, platform.namespace) or {}).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})


def call(platform: Platform, name: str, event: object) -> tuple[dict[str, object], dict[str, object]]:
    response = platform.client.invoke(FunctionName=name, Payload=json.dumps(event).encode())
    return response, json.loads(response["Payload"].read())


def test_a_nodejs_zip_answers_times_out_and_reports_a_crash(platform: Platform, tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "index.js").write_text(APP)
    result = subprocess.run(
        [sys.executable, "-m", "kambda", "deploy", str(app), "--name", "node", "--runtime", "nodejs20.x",
         "--handler", "index.handler", "--timeout", "2", "--endpoint", platform.url, "--namespace", platform.namespace],
        capture_output=True, text=True, env=platform.kube.env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert eventually(lambda: platform.ready("node", "1"), timeout=60), platform.operator_logs()
    platform.wait_served("node")

    response, body = call(platform, "node", {"name": "pod"})
    assert "FunctionError" not in response, body
    assert body["hello"] == "pod" and body["fn"] == "node" and body["env"] == "AWS_Lambda_nodejs20.x"
    assert str(body["node"]).startswith("v20."), body

    started = time.monotonic()
    response, body = call(platform, "node", {"sleep": 60_000})
    assert response.get("FunctionError") == "Unhandled" and body["errorType"] == "Sandbox.Timedout", body
    assert time.monotonic() - started < 10

    response, body = call(platform, "node", {"crash": True})
    assert response.get("FunctionError") == "Unhandled" and body["errorType"] == "Runtime.ExitError", body
    assert str(body["errorMessage"]).endswith("exit status 7"), body
    assert call(platform, "node", {"name": "again"})[1]["hello"] == "again"  # the sandbox came back


def test_a_runtime_without_an_image_is_refused_clearly(platform: Platform) -> None:
    manifest = {"apiVersion": "kambda.dev/v1alpha1", "kind": "Function", "metadata": {"name": "py312"},
                "spec": {"runtime": "python3.12", "handler": "app.handler",
                         "code": {"files": {"app.py": "def handler(e, c):\n    return 1\n"}}}}  # fmt: skip
    platform.apply(json.dumps(manifest))
    assert eventually(lambda: condition(platform, "py312").get("reason") == "UnsupportedRuntime", timeout=60)
    message = condition(platform, "py312")["message"]
    assert "python3.12 is not offered" in message and "python3.11" in message and "nodejs20.x" in message, message
    assert not platform.pods("py312")
