"""Lambda's control-plane API on the real node, through the helm-installed gateway: the Function and Alias custom
resources are its store, so every step is also checked with kubectl, and a Function applied with kubectl is changed
through the API."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.e2e.conftest import Platform, lambda_client
from tests.integration.test_control_plane import INVOKER, ROLE, app_zip
from tests.kube import eventually
from tests.workdir import function_manifest

WAIT = {"Delay": 1, "MaxAttempts": 120}


def invoke(platform: Platform, name: str, qualifier: str | None = None) -> Any:
    extra = {"Qualifier": qualifier} if qualifier else {}
    response = platform.client.invoke(FunctionName=name, Payload=b'{"n": 1}', **extra)
    assert "FunctionError" not in response, response["Payload"].read()
    return json.loads(response["Payload"].read())


def test_the_lambda_scenario_against_the_cluster(platform: Platform) -> None:
    lam = platform.client
    created = lam.create_function(FunctionName="api-fn", Runtime="python3.11", Role=ROLE, Handler="app.handler",
                                  Code={"ZipFile": app_zip("one")}, Tags={"team": "a"})  # fmt: skip
    assert created["State"] == "Pending" and created["LastUpdateStatus"] == "InProgress"
    fn = platform.kube.get("function", "api-fn", platform.namespace)
    assert fn is not None and fn["spec"]["runtime"] == "python3.11" and fn["spec"]["tags"] == {"team": "a"}
    assert len(fn["spec"]["code"]["sha256"]) == 64  # the zip went to the code store, not into etcd
    lam.get_waiter("function_active_v2").wait(FunctionName="api-fn", WaiterConfig=WAIT)
    assert invoke(platform, "api-fn")["marker"] == "one"

    lam.update_function_code(FunctionName="api-fn", ZipFile=app_zip("two"))
    lam.get_waiter("function_updated_v2").wait(FunctionName="api-fn", WaiterConfig=WAIT)
    assert invoke(platform, "api-fn")["marker"] == "two"
    published = lam.publish_version(FunctionName="api-fn")
    assert published["Version"] == "2"
    fn = platform.kube.get("function", "api-fn", platform.namespace) or {}
    assert fn["status"]["latestVersion"] == "2"
    assert platform.kube.get("controllerrevision", "api-fn-v2", platform.namespace) is not None

    lam.create_alias(FunctionName="api-fn", Name="live", FunctionVersion="2",
                     RoutingConfig={"AdditionalVersionWeights": {"1": 0.1}})  # fmt: skip
    alias = platform.kube.get("alias", "api-fn.live", platform.namespace)
    assert alias is not None and alias["spec"]["name"] == "live" and alias["spec"]["version"] == "2"
    seen = Counter(invoke(platform, "api-fn", "live")["version"] for _ in range(100))
    # 0.9/0.1 over 100 calls: version 1 in 10 ± 3; 1-30 is beyond 3 standard deviations either way.
    assert set(seen) == {"1", "2"} and 1 <= seen["1"] <= 30, seen

    lam.put_function_concurrency(FunctionName="api-fn", ReservedConcurrentExecutions=3)
    fn = platform.kube.get("function", "api-fn", platform.namespace) or {}
    assert fn["spec"]["concurrency"]["reserved"] == 3
    assert lam.get_function_concurrency(FunctionName="api-fn")["ReservedConcurrentExecutions"] == 3

    lam.create_function(FunctionName="api-fn-b", Runtime="python3.11", Role=ROLE, Handler="app.handler",
                        Code={"ZipFile": app_zip("b")})  # fmt: skip
    pages = list(lam.get_paginator("list_functions").paginate(PaginationConfig={"PageSize": 1}))
    names = [f["FunctionName"] for p in pages for f in p["Functions"]]
    assert {"api-fn", "api-fn-b"} <= set(names) and all(len(p["Functions"]) <= 1 for p in pages)
    kubectl_names = {f["metadata"]["name"] for f in platform.kube.list("functions", platform.namespace)}
    assert set(names) == kubectl_names  # one source of truth
    versions = lam.list_versions_by_function(FunctionName="api-fn", MaxItems=2)
    assert [v["Version"] for v in versions["Versions"]] == ["$LATEST", "1"] and versions["NextMarker"]

    # Any Lambda alias name, though Kubernetes names are lower-case: the object's name is derived, spec.name exact.
    lam.create_alias(FunctionName="api-fn", Name="Canary_1", FunctionVersion="1")
    assert lam.get_alias(FunctionName="api-fn", Name="Canary_1")["FunctionVersion"] == "1"
    assert invoke(platform, "api-fn", "Canary_1")["version"] == "1"
    lam.delete_alias(FunctionName="api-fn", Name="Canary_1")
    lam.delete_alias(FunctionName="api-fn", Name="live")
    assert eventually(lambda: platform.kube.get("alias", "api-fn.live", platform.namespace) is None, timeout=30)
    # A version no alias routes to can go: the operator deletes it when asked.
    lam.delete_function(FunctionName="api-fn", Qualifier="1")
    assert [v["Version"] for v in lam.list_versions_by_function(FunctionName="api-fn")["Versions"]] == ["$LATEST", "2"]
    assert platform.kube.get("controllerrevision", "api-fn-v1", platform.namespace) is None
    for name in ("api-fn", "api-fn-b"):
        lam.delete_function(FunctionName=name)
    assert eventually(lambda: platform.kube.get("function", "api-fn", platform.namespace) is None, timeout=60)


def test_a_function_applied_with_kubectl_is_changed_through_the_api(platform: Platform) -> None:
    lam = platform.client
    code = "def handler(event, context):\n    return context.get_remaining_time_in_millis() > 5000\n"
    platform.apply(function_manifest("kubectl-fn", code))
    assert eventually(lambda: platform.ready("kubectl-fn", "1"), timeout=60)
    config = lam.get_function_configuration(FunctionName="kubectl-fn")
    assert config["Timeout"] == 3 and config["Runtime"] == "python3.11"
    updated = lam.update_function_configuration(FunctionName="kubectl-fn", Timeout=9, RevisionId=config["RevisionId"])
    assert updated["Timeout"] == 9
    fn = platform.kube.get("function", "kubectl-fn", platform.namespace) or {}
    assert fn["spec"]["timeoutSeconds"] == 9
    lam.get_waiter("function_updated_v2").wait(FunctionName="kubectl-fn", WaiterConfig=WAIT)
    assert invoke(platform, "kubectl-fn") is True  # version 2 runs with the 9 s timeout
    with pytest.raises(lam.exceptions.PreconditionFailedException):
        lam.update_function_configuration(FunctionName="kubectl-fn", Timeout=10, RevisionId=config["RevisionId"])
    lam.delete_function(FunctionName="kubectl-fn")
    assert eventually(lambda: platform.kube.get("function", "kubectl-fn", platform.namespace) is None, timeout=60)


def test_the_chart_requires_sigv4_and_keys_are_secrets(platform: Platform, tmp_path: Path) -> None:
    lam = platform.client
    lam.create_function(FunctionName="hello-k", Runtime="python3.11", Role=ROLE, Handler="app.handler",
                        Code={"ZipFile": app_zip("k")})  # fmt: skip
    lam.get_waiter("function_active_v2").wait(FunctionName="hello-k", WaiterConfig=WAIT)
    anonymous = urllib.request.Request(f"{platform.url}/2015-03-31/functions/hello-k/invocations", data=b"{}")
    with pytest.raises(urllib.error.HTTPError) as unsigned:
        urllib.request.urlopen(anonymous, timeout=10)
    assert unsigned.value.code == 403

    (tmp_path / "invoker.json").write_text(json.dumps(INVOKER))
    made = subprocess.run(
        [sys.executable, "-m", "kambda", "keys", "create", "--name", "ci", "--kubernetes", platform.release.system,
         "--policy", str(tmp_path / "invoker.json")], capture_output=True, text=True, env=platform.cli_env, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)["AccessKey"]
    invoker = lambda_client(platform.url, (key["AccessKeyId"], key["SecretAccessKey"]))

    def invokes() -> bool:
        try:
            return bool(invoker.invoke(FunctionName="hello-k", Payload=b"{}")["StatusCode"] == 200)
        except ClientError:
            return False

    assert eventually(invokes, timeout=30)  # the gateway's watch of the Secrets
    with pytest.raises(ClientError) as denied:
        invoker.create_function(FunctionName="hello-evil", Runtime="python3.11", Role=ROLE, Handler="app.handler",
                                Code={"ZipFile": app_zip("evil")})  # fmt: skip
    assert denied.value.response["Error"]["Code"] == "AccessDeniedException"
    assert platform.kube.get("function", "hello-evil", platform.namespace) is None

    removed = subprocess.run(
        [sys.executable, "-m", "kambda", "keys", "rm", key["AccessKeyId"], "--kubernetes", platform.release.system],
        capture_output=True, text=True, env=platform.cli_env, timeout=60,
    )  # fmt: skip
    assert removed.returncode == 0, removed.stderr
    assert eventually(lambda: not invokes(), timeout=30)
    lam.delete_function(FunctionName="hello-k")


def test_the_lambda_scenario_with_the_aws_cli_against_the_cluster(platform: Platform, tmp_path: Path) -> None:
    env = {k: v for k, v in platform.cli_env.items() if k != "AWS_PROFILE"} | {"AWS_PAGER": ""}
    aws_cli = Path(sys.executable).with_name("aws")

    def aws(*args: str) -> Any:
        done = subprocess.run([str(aws_cli), "lambda", *args, "--endpoint-url", platform.url, "--output", "json"],
                              capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
        assert done.returncode == 0, (args, done.stderr, platform.gateway_logs()[-3000:])
        return json.loads(done.stdout) if done.stdout.strip() else None

    (tmp_path / "one.zip").write_bytes(app_zip("one"))
    (tmp_path / "two.zip").write_bytes(app_zip("two"))
    aws("create-function", "--function-name", "cli-fn", "--runtime", "python3.11", "--role", ROLE,
        "--handler", "app.handler", "--zip-file", f"fileb://{tmp_path / 'one.zip'}")  # fmt: skip
    aws("wait", "function-active-v2", "--function-name", "cli-fn")
    aws("invoke", "--function-name", "cli-fn", "--payload", "{}", str(tmp_path / "out.json"))
    assert json.loads((tmp_path / "out.json").read_text())["marker"] == "one"
    aws("update-function-code", "--function-name", "cli-fn", "--zip-file", f"fileb://{tmp_path / 'two.zip'}")
    aws("wait", "function-updated-v2", "--function-name", "cli-fn")
    assert aws("publish-version", "--function-name", "cli-fn")["Version"] == "2"
    aws("create-alias", "--function-name", "cli-fn", "--name", "live", "--function-version", "2",
        "--routing-config", '{"AdditionalVersionWeights": {"1": 0.1}}')  # fmt: skip
    aws("put-function-concurrency", "--function-name", "cli-fn", "--reserved-concurrent-executions", "2")
    fn = platform.kube.get("function", "cli-fn", platform.namespace) or {}
    assert fn["spec"]["concurrency"]["reserved"] == 2 and fn["status"]["latestVersion"] == "2"
    alias = platform.kube.get("alias", "cli-fn.live", platform.namespace) or {}
    assert alias["spec"]["additionalVersionWeights"] == {"1": 0.1}
    listed = aws("list-functions", "--page-size", "1")
    assert "cli-fn" in {f["FunctionName"] for f in listed["Functions"]}
    versions = aws("list-versions-by-function", "--function-name", "cli-fn", "--page-size", "1")
    assert [v["Version"] for v in versions["Versions"]] == ["$LATEST", "1", "2"]
    aws("delete-function", "--function-name", "cli-fn")
    assert eventually(lambda: platform.kube.get("function", "cli-fn", platform.namespace) is None, timeout=60)
    assert platform.kube.get("alias", "cli-fn.live", platform.namespace) is None
