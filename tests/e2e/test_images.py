"""Container-image functions on the real node: unmodified Lambda-style images (a Python one with awslambdaric, a
Node.js one with aws-lambda-ric, built without Docker as a Dockerfile on AWS's base images lays them out) run their
own entry point beside the agent, which serves the Runtime API on 127.0.0.1:9001, ends them at the deadline and
reports their exit. ImageConfig's command overrides the image's."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Platform
from tests.install import function_image
from tests.kube import eventually

PYTHON_APP = """\
import os, time

def handler(event, context):
    if event.get("crash"):
        os._exit(5)
    time.sleep(event.get("sleep", 0))
    return {"hello": event.get("name"), "fn": context.function_name, "task": os.getcwd(), "image": "python"}

def other(event, context):
    return "the command was overridden"
"""
NODE_APP = """\
exports.handler = async (event, context) => {
  if (event.crash) process.exit(5);
  if (event.sleep) await new Promise((r) => setTimeout(r, event.sleep * 1000));
  return {hello: event.name, fn: context.functionName, task: process.cwd(), image: "nodejs"};
};
"""


def call(platform: Platform, name: str, event: object) -> tuple[dict[str, Any], Any]:
    response = platform.client.invoke(FunctionName=name, Payload=json.dumps(event).encode())
    return response, json.loads(response["Payload"].read())


def image_function(platform: Platform, name: str, image: str, **spec: Any) -> None:
    spec = {
        "runtime": "provided",
        "code": {"image": image},
        "timeoutSeconds": 2,
        "scaling": {"idleSeconds": 120},
        **spec,
    }
    manifest = {"apiVersion": "kambda.dev/v1alpha1", "kind": "Function", "metadata": {"name": name}, "spec": spec}
    platform.apply(json.dumps(manifest))
    assert eventually(lambda: platform.ready(name, "1"), timeout=60), platform.operator_logs()
    platform.wait_served(name)


@pytest.mark.parametrize("language", ["python", "nodejs"])
def test_an_image_answers_times_out_and_reports_a_crash(platform: Platform, tmp_path: Path, language: str) -> None:
    files = {"app.py": PYTHON_APP} if language == "python" else {"index.js": NODE_APP}
    image = function_image(f"fn-{language}", language, files, tmp_path)
    name = f"image-{language}"
    image_function(platform, name, image)

    response, body = call(platform, name, {"name": "container"})
    assert "FunctionError" not in response, body
    assert body == {"hello": "container", "fn": name, "task": "/var/task", "image": language}
    pod = platform.pods(name)[0]
    assert [c["name"] for c in pod["spec"]["containers"]] == ["agent", "function"]
    assert pod["spec"]["containers"][1]["image"] == image  # the user's image itself, unmodified
    restarts = {c["name"]: c["restartCount"] for c in pod["status"]["containerStatuses"]}
    assert restarts["function"] == 0, "the runtime started only once the agent's Runtime API listened"

    started = time.monotonic()
    response, body = call(platform, name, {"sleep": 60})
    assert response.get("FunctionError") == "Unhandled" and body["errorType"] == "Sandbox.Timedout", body
    assert time.monotonic() - started < 10

    def answers() -> bool:
        try:
            return call(platform, name, {"name": "back"})[1].get("hello") == "back"
        except Exception:
            return False

    assert eventually(answers, timeout=90), "the runtime did not come back after the timeout"
    response, body = call(platform, name, {"crash": True})
    agent_log = platform.kube.kubectl("logs", pod["metadata"]["name"], "-c", "agent", "-n", platform.namespace,
                                      check=False).stdout  # fmt: skip
    assert response.get("FunctionError") == "Unhandled" and body["errorType"] == "Runtime.ExitError", (body, agent_log)
    assert eventually(answers, timeout=90), "the runtime did not come back after the crash"
    assert platform.pods(name)[0]["metadata"]["name"] == pod["metadata"]["name"]  # the same pod throughout


def test_image_config_overrides_the_command(platform: Platform, tmp_path: Path) -> None:
    image = function_image("fn-override", "python", {"app.py": PYTHON_APP}, tmp_path)
    image_function(platform, "overridden", image, imageConfig={"command": ["app.other"]})
    response, body = call(platform, "overridden", {})
    assert "FunctionError" not in response and body == "the command was overridden", body
