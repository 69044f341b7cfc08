"""Cold starts on the real node, through the helm-installed platform: SnapStart (a pod's sandboxes restored from the
version's template, made when the pod starts), provisioned concurrency (pods initialised before any request,
through the Lambda API, their status READY) and packed sandboxes (a burst is served by a few pods of many
sandboxes, each pod started once, and scale-in retires the sandboxes, then the empty pods)."""

from __future__ import annotations

import base64
import itertools
import json
import math
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from tests.e2e.conftest import Platform, peak_during
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
    # Packed: the two sandboxes (128 MB, 8 to a pod) are one pod's.
    assert len(platform.pods("warm", "1")) == 1 and platform.replicas("warm", "1") == 1
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


PACKED = """\
import os, socket, time

def handler(event, context):
    started = time.time()
    time.sleep(event["sleep"])
    return {"pod": socket.gethostname(), "pid": os.getpid(), "started": started, "ended": time.time()}
"""


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_a_burst_from_zero_is_served_by_packed_pods_each_started_once(platform: Platform) -> None:
    # 128 MB: 8 sandboxes to a pod. Reserved 40, so all 40 are admitted at once.
    spec = {"concurrency": {"reserved": 40}, "scaling": {"idleSeconds": 15}, "timeoutSeconds": 60}
    platform.apply(function_manifest("packed", PACKED, **spec))
    assert eventually(lambda: platform.ready("packed", "1"), timeout=60), platform.operator_logs()
    platform.wait_served("packed")
    assert platform.replicas("packed", "1") == 0 and not platform.pods("packed")  # from zero
    deployment = platform.kube.get("deployment", "packed-v1", platform.namespace) or {}
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    slots = int(next(e["value"] for e in container["env"] if e["name"] == "KAMBDA_SLOTS"))
    assert slots == 8 and container["resources"]["limits"]["memory"] == f"{8 * 128 + 64}Mi"
    seen: dict[str, dict[str, Any]] = {}

    def watch() -> int:
        for pod in platform.pods("packed", "1"):
            seen[pod["metadata"]["name"]] = pod
        return len(seen)

    def burst() -> list[tuple[Any, str]]:
        with ThreadPoolExecutor(40) as pool:
            return list(pool.map(lambda _: invoke(platform, "packed", {"sleep": 3}), range(40)))

    results, _ = peak_during(watch, burst)
    watch()
    answers = [result for result, _ in results]
    assert all("error" not in a for a in answers), answers
    assert len(answers) == 40
    pods = {a["pod"] for a in answers}
    assert len(seen) <= math.ceil(40 / slots), (sorted(seen), platform.gateway_logs()[-6000:])  # not one per sandbox
    assert pods <= set(seen)
    # Lambda's rule holds in a packed pod: a sandbox runs one invocation at a time.
    by_sandbox: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for a in answers:
        by_sandbox.setdefault((a["pod"], a["pid"]), []).append((a["started"], a["ended"]))
    for runs in by_sandbox.values():
        runs.sort()
        assert all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(runs)), runs
    assert all(len({pid for pod, pid in by_sandbox if pod == name}) <= slots for name in pods)
    assert len(by_sandbox) > len(pods)  # several sandboxes to a pod: spawned, not started as pods
    # No request waited for two pod starts in a row: every pod was created before the first one was running.
    first_running = min(
        _time(c["lastTransitionTime"])
        for p in seen.values()
        for c in (platform.kube.get("pod", p["metadata"]["name"], platform.namespace) or p)["status"]["conditions"]
        if c["type"] == "Ready" and c["status"] == "True"
    )
    assert all(_time(p["metadata"]["creationTimestamp"]) <= first_running for p in seen.values()), seen.keys()
    # Scale-in: after the idle window the sandboxes are retired, then their emptied pods deleted.
    assert eventually(lambda: platform.replicas("packed", "1") == 0 and not platform.pods("packed"), timeout=90), (
        platform.gateway_logs()
    )
