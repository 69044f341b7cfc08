"""Cold starts on the real node, through the helm-installed platform: SnapStart (a pod's sandboxes restored from the
version's template, made when the pod starts) and provisioned concurrency (pods initialised before any request,
through the Lambda API, their status READY)."""

from __future__ import annotations

import base64
import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.e2e.conftest import Platform
from tests.integration.test_control_plane import ROLE
from tests.integration.test_provisioned import package
from tests.kube import eventually
from tests.workdir import function_manifest

SNAP = """\
import os, time
from snapshot_restore_py import register_after_restore, register_before_snapshot

time.sleep(0.3)  # a slow init, paid once per pod by its template
RESTORED = []


@register_before_snapshot
def before():
    with open("/tmp/marker", "w") as f:
        f.write(str(os.getpid()))


@register_after_restore
def after():
    RESTORED.append(os.getpid())


def handler(event, context):
    if event.get("sleep"):
        time.sleep(event["sleep"])
    return {"pid": os.getpid(), "marker": open("/tmp/marker").read(), "restored": RESTORED,
            "type": os.environ["AWS_LAMBDA_INITIALIZATION_TYPE"], "host": os.environ.get("HOSTNAME")}
"""


def invoke(platform: Platform, name: str, event: dict[str, Any], qualifier: str | None = None) -> tuple[Any, str]:
    extra = {"Qualifier": qualifier} if qualifier else {}
    response = platform.client.invoke(FunctionName=name, Payload=json.dumps(event), LogType="Tail", **extra)
    log = base64.b64decode(response["LogResult"]).decode()
    payload = json.loads(response["Payload"].read())
    return ({"error": payload} if "FunctionError" in response else payload), log


def test_snapstart_pods_restore_their_sandboxes_from_the_template(platform: Platform) -> None:
    spec = {"snapStart": {"applyOn": "PublishedVersions"}, "timeoutSeconds": 2, "scaling": {"idleSeconds": 60}}
    platform.apply(function_manifest("snappy", SNAP, **spec))
    assert eventually(lambda: platform.ready("snappy", "1"), timeout=60), platform.operator_logs()
    platform.wait_served("snappy")
    first, log = invoke(platform, "snappy", {})
    assert first["type"] == "snap-start"
    assert first["marker"] != str(first["pid"])  # written by the template, before the snapshot
    assert first["restored"] == [first["pid"]]  # the after-restore hook ran in this sandbox
    assert re.search(r"\tRestore Duration: [\d.]+ ms\tBilled Restore Duration: \d+ ms", log), log
    assert "Init Duration" not in log
    # A timeout ends the sandbox; the next is restored in the same pod from the same template: no init again.
    timed_out, _ = invoke(platform, "snappy", {"sleep": 5})
    assert timed_out["error"]["errorType"] == "Sandbox.Timedout", timed_out
    again, log = invoke(platform, "snappy", {})
    assert again["host"] == first["host"] and again["pid"] != first["pid"]
    assert again["marker"] == first["marker"] and again["restored"] == [again["pid"]]
    restore = re.search(r"\tRestore Duration: ([\d.]+) ms", log)
    assert restore is not None, log
    assert float(restore.group(1)) < 300, log  # a fork, not the 300 ms init the template paid
    fn = platform.kube.get("function", "snappy", platform.namespace) or {}
    assert fn["spec"]["snapStart"] == {"applyOn": "PublishedVersions"}
    config = platform.client.get_function_configuration(FunctionName="snappy", Qualifier="1")
    assert config["SnapStart"] == {"ApplyOn": "PublishedVersions", "OptimizationStatus": "On"}


def test_provisioned_concurrency_through_the_api(platform: Platform) -> None:
    lam = platform.client
    lam.create_function(FunctionName="warm", Runtime="python3.11", Role=ROLE, Handler="app.handler",
                        Code={"ZipFile": package()}, Publish=True, Timeout=10)  # fmt: skip
    lam.get_waiter("function_active_v2").wait(FunctionName="warm", WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    assert platform.replicas("warm", "1") == 0  # nothing runs before the config: there is something to see
    lam.put_provisioned_concurrency_config(FunctionName="warm", Qualifier="1", ProvisionedConcurrentExecutions=2)
    fn = platform.kube.get("function", "warm", platform.namespace) or {}
    assert fn["spec"]["concurrency"]["provisionedConfigs"] == {"1": 2}  # kubectl sees what the API set

    def status() -> dict[str, Any]:
        return dict(lam.get_provisioned_concurrency_config(FunctionName="warm", Qualifier="1"))

    assert eventually(lambda: status()["Status"] == "READY", timeout=120), (status(), platform.gateway_logs())
    ready = status()
    assert (
        ready["AllocatedProvisionedConcurrentExecutions"] == 2
        and ready["RequestedProvisionedConcurrentExecutions"] == 2
    )
    assert len(platform.pods("warm", "1")) == 2 and platform.replicas("warm", "1") == 2
    # Two concurrent requests find initialised environments; the pods ran before any request.
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: invoke(platform, "warm", {}, "1"), range(2)))
    for result, log in results:
        assert result["type"] == "provisioned-concurrency", result
        assert "Init Duration" not in log, log
    # Deleted: the pods are no longer kept (they are on-demand now, retired after the idle window).
    lam.delete_provisioned_concurrency_config(FunctionName="warm", Qualifier="1")
    fn = platform.kube.get("function", "warm", platform.namespace) or {}
    assert "provisionedConfigs" not in (fn["spec"].get("concurrency") or {})
