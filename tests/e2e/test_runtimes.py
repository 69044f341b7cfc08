"""Runtimes on the real node, each in its own image and each what it says it is:
- a nodejs20.x zip uploaded with `kambda deploy` runs in the Node.js runtime image under AWS's unmodified
  aws-lambda-ric; it answers, times out with Sandbox.Timedout and reports a crash as Runtime.ExitError;
- python3.11 and python3.13 run on those Pythons, with awslambdaric and boto3 and nothing of the platform;
- a pod's sandbox is frozen between invocations (SIGSTOP: a pod's cgroups are not the agent's to write);
- a runtime the installation has no image for is refused on the Function's status."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.conftest import Platform
from tests.integration.test_freeze import TICKER, cpu_seconds, runtime_pids
from tests.integration.test_runtime_environment import PLATFORM, PROBE
from tests.kube import eventually
from tests.workdir import function_manifest

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
        capture_output=True, text=True, env=platform.cli_env, timeout=300,
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
    assert "python3.12 is not offered" in message and "nodejs20.x" in message, message
    assert "python3.11" in message and "python3.13" in message, message
    assert not platform.pods("py312")
    listed = subprocess.run([sys.executable, "-m", "kambda", "runtimes", "--endpoint", platform.url],
                            capture_output=True, text=True, timeout=60, env=platform.cli_env)  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    runtimes = [line.split("\t")[0] for line in listed.stdout.splitlines()]
    assert {"python3.11", "python3.13", "nodejs20.x", "provided"} <= set(runtimes) and "python3.12" not in runtimes


def test_each_python_runtime_is_that_python_with_lambdas_libraries_only(platform: Platform) -> None:
    for name, runtime in (("py311", "python3.11"), ("py313", "python3.13")):
        platform.apply(function_manifest(name, PROBE, runtime=runtime))
    for name, runtime in (("py311", "python3.11"), ("py313", "python3.13")):
        assert eventually(lambda n=name: platform.ready(n, "1"), timeout=60), platform.operator_logs()  # type: ignore[misc]
        platform.wait_served(name)
        response, seen = call(platform, name, {"names": [*PLATFORM, "awslambdaric", "botocore"]})
        assert "FunctionError" not in response, seen
        assert seen["version"] == runtime.removeprefix("python") and seen["execution_env"] == f"AWS_Lambda_{runtime}"
        imports = seen["imports"]
        assert isinstance(imports, dict)
        assert {n: imports[n] for n in PLATFORM} == dict.fromkeys(PLATFORM, "ModuleNotFoundError"), seen
        assert imports["awslambdaric"] == imports["botocore"] == "imported" and seen["boto3"], seen
        assert seen["runtime_dir"] == "/var/runtime", seen


def test_a_pods_sandbox_is_frozen_between_invocations(platform: Platform) -> None:
    platform.apply(function_manifest("ticker", TICKER, scaling={"idleSeconds": 120}))
    assert eventually(lambda: platform.ready("ticker", "1"), timeout=60), platform.operator_logs()
    platform.wait_served("ticker")
    _, running = call(platform, "ticker", {"sleep": 1})
    assert int(running["count"]) - len(running["ticks"]) >= 5, running  # type: ignore[arg-type]  # it ticks when running
    pids = runtime_pids("ticker")  # the pod's processes, as this host sees them
    assert pids
    idle_from = cpu_seconds(pids)
    answered = time.monotonic()
    time.sleep(3)  # the idle gap under test
    asked = time.monotonic()
    assert cpu_seconds(pids) - idle_from <= 0.02, "an idle pod's runtime used CPU"
    _, after = call(platform, "ticker", {"sleep": 0.3})
    ticks = after["ticks"]
    assert isinstance(ticks, list)
    assert len([t for t in ticks if answered + 0.05 < t < asked]) <= 1, "it ticked while idle"
