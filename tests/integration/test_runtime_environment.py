"""A Python function's environment on the local backend is Lambda's, not the platform's: the interpreter of its
runtime's version, its code, awslambdaric and boto3 — and none of the packages kambda itself runs on, which would
make a function work here and fail on Lambda. A runtime this host does not have is refused with what it offers."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from kambda import hostruntimes
from kambda.specs import PYTHON_RUNTIMES
from tests.conftest import Gateway
from tests.integration.test_async import lambda_client
from tests.workdir import function_manifest

# Every third-party package the gateway, the operator, the agent or the tests import.
PLATFORM = ("aiohttp", "kopf", "kambda", "grpc", "google.protobuf", "httptools", "yaml", "nats", "kubernetes_asyncio",
            "prometheus_client", "pytest", "hypothesis", "multidict")  # fmt: skip

PROBE = """\
import importlib, os, sys


def handler(event, context):
    imports = {}
    for name in event["names"]:
        try:
            importlib.import_module(name)
            imports[name] = "imported"
        except ImportError as exc:
            imports[name] = type(exc).__name__
    import boto3
    return {"imports": imports, "boto3": boto3.__version__, "version": "%d.%d" % sys.version_info[:2],
            "execution_env": os.environ["AWS_EXECUTION_ENV"], "runtime_dir": os.environ["LAMBDA_RUNTIME_DIR"],
            "path": sys.path}
"""

OWN = f"python{sys.version_info.major}.{sys.version_info.minor}"
ABSENT = next((r for r in PYTHON_RUNTIMES if hostruntimes.python_runtime(r) is None), None)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("runtime-env")
    (root / "functions").mkdir()
    (root / "functions" / "functions.yaml").write_text(function_manifest("probe", PROBE, runtime=OWN))
    gw = Gateway(root / "functions", root / "data")
    yield gw
    gw.stop()


def invoke(client: Any, name: str, event: dict[str, Any]) -> Any:
    response = client.invoke(FunctionName=name, Payload=json.dumps(event))
    assert "FunctionError" not in response, response["Payload"].read()
    return json.loads(response["Payload"].read())


def test_a_handler_sees_lambdas_libraries_and_none_of_the_platforms(gateway: Gateway) -> None:
    # The test's own process imports them all: each could have been importable.
    for name in PLATFORM:
        __import__(name)
    seen = invoke(lambda_client(gateway.url), "probe", {"names": [*PLATFORM, "awslambdaric", "botocore", "json"]})
    assert {n: seen["imports"][n] for n in PLATFORM} == dict.fromkeys(PLATFORM, "ModuleNotFoundError"), seen
    assert seen["imports"]["awslambdaric"] == seen["imports"]["botocore"] == seen["imports"]["json"] == "imported"
    assert seen["boto3"]
    assert seen["version"] == OWN.removeprefix("python") and seen["execution_env"] == f"AWS_Lambda_{OWN}"
    assert seen["path"][-1] == seen["runtime_dir"]  # Lambda's provided libraries come last
    assert not any("site-packages" in p or "dist-packages" in p for p in seen["path"]), seen["path"]


@pytest.mark.skipif(ABSENT is None, reason="this host has every Python version, so none can be refused")
def test_a_python_version_this_host_lacks_is_refused_with_what_it_offers(gateway: Gateway, tmp_path: Any) -> None:
    import subprocess

    (tmp_path / "f.yaml").write_text(function_manifest("absent", PROBE, runtime=str(ABSENT)))
    result = subprocess.run(
        [sys.executable, "-m", "kambda", "run", str(tmp_path), "--port", "0", "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert f"{ABSENT} needs a Python {str(ABSENT).removeprefix('python')} with awslambdaric and boto3" in result.stderr
    assert f"This host offers: {OWN}" in result.stderr, result.stderr


def test_kambda_runtimes_lists_this_hosts_and_a_gateways(gateway: Gateway) -> None:
    import subprocess

    def kambda(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "kambda", "runtimes", *args], capture_output=True, text=True,
                              timeout=60)  # fmt: skip

    local = kambda()
    assert local.returncode == 0, local.stderr
    rows = dict(line.split("\t") for line in local.stdout.splitlines())
    assert list(rows) == hostruntimes.offered()
    assert rows[OWN] == os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    asked = kambda("--endpoint", gateway.url)
    assert asked.returncode == 0, asked.stderr
    assert [line.split("\t") for line in asked.stdout.splitlines()] == [[r, "local"] for r in hostruntimes.offered()]
    refused = kambda("--endpoint", "http://127.0.0.1:9")  # nothing listens there
    assert refused.returncode == 2 and "kambda runtimes: http://127.0.0.1:9" in refused.stderr


@pytest.mark.skipif(ABSENT is None, reason="this host has every Python version, so none can be refused")
def test_kambda_deploy_refuses_a_runtime_the_gateway_lacks_before_uploading(gateway: Gateway, tmp_path: Any) -> None:
    import subprocess

    (tmp_path / "app.py").write_text("def handler(event, context):\n    return 1\n")

    def deploy(runtime: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kambda", "deploy", str(tmp_path), "--name", "fresh", "--runtime", runtime,
             "--endpoint", gateway.url], capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    refused = deploy(str(ABSENT))
    assert refused.returncode == 2
    assert f"kambda deploy: {ABSENT} is not offered by this installation; it offers {OWN}" in refused.stderr
    import tempfile
    import urllib.error
    import urllib.request

    from kambda import deploying, packages

    with tempfile.TemporaryFile() as scratch:
        sha = packages.sha256_hex(deploying.package(tmp_path, scratch))
    head = urllib.request.Request(f"{gateway.url}/kambda/v1/code/{sha}", method="HEAD")
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(head, timeout=10)
    assert missing.value.code == 404  # nothing was uploaded
    deployed = deploy(OWN)  # the same package with a runtime it has: deployed and answering
    assert deployed.returncode == 0, deployed.stderr
    assert invoke(lambda_client(gateway.url), "fresh", {}) == 1
