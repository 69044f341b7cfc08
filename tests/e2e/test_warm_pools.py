"""Warm pools on the real node: a function scaled to zero answers its first request from a pool pod the gateway
specialises (no pod starts for it), the pool refills, the specialised pod keeps the settings a dedicated pod has,
and a function a pool pod cannot serve exactly (a service account) gets a dedicated pod while the pool waits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Platform, host_pids, installed
from tests.install import Images
from tests.kube import Kube, eventually
from tests.workdir import function_manifest

POOL = "kambda-pool-python3-11"
WHO = """\
import os, socket


def handler(event, context):
    return {"host": socket.gethostname(), "uid": os.getuid(), "type": os.environ["AWS_LAMBDA_INITIALIZATION_TYPE"],
            "task": sorted(os.listdir(os.environ["LAMBDA_TASK_ROOT"])), "fn": context.function_name}
"""


@pytest.fixture(scope="module")
def platform(kube: Kube, namespace: str, images: Images) -> Iterator[Platform]:
    with installed(kube, namespace, images, warm_pool=1) as platform:
        yield platform


def pool_pods(platform: Platform, pool: str = POOL) -> list[dict[str, Any]]:
    """The pool's pods that are running and not on their way out."""
    return [
        p for p in platform.kube.list("pods", platform.namespace, f"kambda.dev/pool={pool}")
        if not p["metadata"].get("deletionTimestamp") and (p.get("status") or {}).get("phase") == "Running"
    ]  # fmt: skip


def waiting(platform: Platform, runtime: str = "python3.11") -> float:
    """Pool pods waiting on the gateway to be specialised (its kambda_warm_pool_pods gauge)."""
    with urllib.request.urlopen(f"{platform.url}/metrics", timeout=10) as r:
        text = r.read().decode()
    wanted = f'namespace="{platform.namespace}",runtime="{runtime}"'
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
        if line.startswith("kambda_warm_pool_pods{") and wanted in line
    )  # fmt: skip


def connected(platform: Platform, function: str) -> float:
    """The function's instances connected to the gateway (kambda_instances, idle or busy)."""
    with urllib.request.urlopen(f"{platform.url}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
        if line.startswith("kambda_instances{") and f'function="{function}"' in line
        and ('state="idle"' in line or 'state="busy"' in line)
    )  # fmt: skip


def invoke(platform: Platform, name: str) -> dict[str, Any]:
    response = platform.client.invoke(FunctionName=name, Payload=b"{}")
    payload: dict[str, Any] = json.loads(response["Payload"].read())
    assert "FunctionError" not in response, payload
    return payload


def created(obj: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(obj["metadata"]["creationTimestamp"].replace("Z", "+00:00"))


def a_pod_waits(platform: Platform) -> dict[str, Any]:
    """The pool's one pod, once it waits on the gateway. A pool is made for the runtimes a namespace's Functions
    use that a pool pod can serve: this one's is never invoked, so that the pool exists whatever ran before."""
    platform.apply(function_manifest("anchor", WHO))
    assert eventually(lambda: platform.ready("anchor", "1"), timeout=60), platform.operator_logs()
    assert eventually(lambda: waiting(platform) == 1 and len(pool_pods(platform)) == 1, timeout=120), (
        platform.gateway_logs()
    )
    [pod] = pool_pods(platform)
    return pod


def test_a_cold_start_specialises_a_pool_pod_and_the_pool_refills(platform: Platform) -> None:
    platform.apply(function_manifest("pooled", WHO, memoryMB=256, network={"egress": "none"}))
    assert eventually(lambda: platform.ready("pooled", "1"), timeout=60), platform.operator_logs()
    platform.wait_served("pooled")
    pool_pod = a_pod_waits(platform)
    name = pool_pod["metadata"]["name"]
    assert platform.replicas("pooled", "1") == 0
    before = datetime.now(created(pool_pod).tzinfo)

    answer = invoke(platform, "pooled")
    assert answer["host"] == name, (answer, name)  # served by the pool pod, specialised
    assert answer["fn"] == "pooled" and answer["type"] == "on-demand" and answer["uid"] == 1000
    assert answer["task"] == ["app.py"]  # its inline code, written by its agent
    assert platform.replicas("pooled", "1") == 0  # no pod of the version's Deployment was asked for
    deployment_pods = platform.kube.list("pods", platform.namespace, "kambda.dev/function=pooled,kambda.dev/version=1")
    assert deployment_pods == []

    pod = platform.kube.get("pod", name, platform.namespace)
    assert pod is not None
    labels = pod["metadata"]["labels"]
    assert "kambda.dev/pool" not in labels  # out of the pool ...
    assert labels["kambda.dev/function"] == "pooled" and labels["kambda.dev/specialised-version"] == "1"
    assert created(pod) < before  # it was there before the request: no pod started for it
    # ... and under the function's NetworkPolicy (egress none), which selects it by the label it now has.
    policy = platform.kube.get("networkpolicy", "pooled", platform.namespace) or {}
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert all(labels.get(k) == v for k, v in selector.items()), (selector, labels)
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    owners = {(o["kind"], o["name"]) for o in pod["metadata"].get("ownerReferences") or []}
    assert ("Deployment", "pooled-v1") in owners  # it goes with its version
    # The settings of a dedicated pod: no service-account token, the same uid, a read-only root, no capabilities.
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsUser"] == 1000 and spec["securityContext"]["runAsNonRoot"] is True
    security = spec["containers"][0]["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["capabilities"] == {"drop": ["ALL"]}

    # The pool refills: another pod, waiting on the gateway.
    assert eventually(lambda: [p["metadata"]["name"] for p in pool_pods(platform)] not in ([], [name]), timeout=120)
    assert eventually(lambda: waiting(platform) == 1, timeout=120), platform.gateway_logs()
    assert invoke(platform, "pooled")["host"] == name  # warm now: the specialised pod serves it again


def test_a_function_with_a_service_account_gets_a_dedicated_pod(platform: Platform) -> None:
    waiter = a_pod_waits(platform)
    platform.apply(function_manifest("entitled", WHO, serviceAccountName="default"))
    assert eventually(lambda: platform.ready("entitled", "1"), timeout=60), platform.operator_logs()
    deployment = platform.kube.get("deployment", "entitled-v1", platform.namespace) or {}
    refusal = deployment["metadata"]["annotations"]["kambda.dev/warm-pool-refusal"]
    assert refusal.startswith("serviceAccountName"), refusal
    platform.wait_served("entitled")

    answer = invoke(platform, "entitled")
    assert answer["host"].startswith("entitled-v1-"), answer  # a pod of its own Deployment
    assert platform.replicas("entitled", "1") == 1
    [pod] = platform.pods("entitled", "1")
    assert pod["spec"]["serviceAccountName"] == "default"
    # The pool pod that could have been taken (it waited the whole time) is still there, still waiting.
    assert [p["metadata"]["name"] for p in pool_pods(platform)] == [waiter["metadata"]["name"]]
    assert waiting(platform) == 1


NODE = """\
const os = require("os");
exports.handler = async () => ({ host: os.hostname(), fn: process.env.AWS_LAMBDA_FUNCTION_NAME,
                                 node: process.version });
"""


def test_a_nodejs_function_is_served_by_its_runtimes_pool(platform: Platform) -> None:
    manifest = json.loads(function_manifest("nodepool", "", runtime="nodejs20.x", handler="index.handler"))
    manifest["spec"]["code"] = {"files": {"index.js": NODE}}
    platform.apply(json.dumps(manifest))
    assert eventually(lambda: platform.ready("nodepool", "1"), timeout=60), platform.operator_logs()
    platform.wait_served("nodepool")
    pool = "kambda-pool-nodejs20-x"
    assert eventually(lambda: waiting(platform, "nodejs20.x") == 1 and len(pool_pods(platform, pool)) == 1,
                      timeout=120), platform.gateway_logs()  # fmt: skip
    [pod] = pool_pods(platform, pool)
    assert pod["spec"]["containers"][0]["image"] != a_pod_waits(platform)["spec"]["containers"][0]["image"]
    answer = invoke(platform, "nodepool")
    assert answer["host"] == pod["metadata"]["name"] and answer["fn"] == "nodepool", answer
    assert str(answer["node"]).startswith("v20."), answer
    assert platform.replicas("nodepool", "1") == 0


def agent_of(pod: str) -> int:
    """The host pid of a pool pod's agent (every pool pod's command line is the same: its HOSTNAME tells)."""
    pids = [pid for pid in host_pids("kambda.runtime.agent", "--pool")
            if f"HOSTNAME={pod}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")]  # fmt: skip
    assert len(pids) == 1, pids
    return pids[0]


def test_a_specialised_pod_whose_agent_dies_comes_back_as_its_function_and_never_joins_the_pool(
    platform: Platform,
) -> None:
    platform.apply(function_manifest("phoenix", WHO, scaling={"idleSeconds": 120}))
    assert eventually(lambda: platform.ready("phoenix", "1"), timeout=60), platform.operator_logs()
    platform.wait_served("phoenix")
    name = a_pod_waits(platform)["metadata"]["name"]
    assert invoke(platform, "phoenix")["host"] == name
    assert eventually(
        lambda: waiting(platform) == 1 and name not in [p["metadata"]["name"] for p in pool_pods(platform)], timeout=120
    )  # fmt: skip  (refilled by another pod)

    os.kill(agent_of(name), signal.SIGKILL)  # the kubelet restarts the container in the same pod

    def restarted() -> bool:
        pod = platform.kube.get("pod", name, platform.namespace) or {}
        statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
        return bool(statuses[0].get("restartCount", 0) >= 1 and statuses[0].get("ready"))

    assert eventually(restarted, timeout=120)
    # Its agent asked for its own order again (its marker), not for a pool's wait: it serves its function ...
    assert eventually(lambda: connected(platform, "phoenix") == 1, timeout=60), platform.gateway_logs()
    assert invoke(platform, "phoenix")["host"] == name
    # ... and the pool counts only the pod that refilled it.
    assert waiting(platform) == 1
    assert "kambda.dev/pool" not in (platform.kube.get("pod", name, platform.namespace) or {})["metadata"]["labels"]


def test_a_package_is_fetched_and_verified_by_the_specialised_pod_into_its_read_only_code(
    platform: Platform, tmp_path: Path
) -> None:
    app = tmp_path / "app"
    (app / "lib").mkdir(parents=True)
    (app / "app.py").write_text(WHO.replace("def handler", "from lib import helper\n\n\ndef handler"))
    (app / "lib" / "__init__.py").write_text("")
    (app / "lib" / "helper.py").write_text("VALUE = 42\n")
    result = subprocess.run(
        [sys.executable, "-m", "kambda", "deploy", str(app), "--name", "packaged", "--runtime", "python3.11",
         "--handler", "app.handler", "--endpoint", platform.url, "--namespace", platform.namespace],
        capture_output=True, text=True, env=platform.cli_env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert eventually(lambda: platform.ready("packaged", "1"), timeout=60), platform.operator_logs()
    platform.wait_served("packaged")
    name = a_pod_waits(platform)["metadata"]["name"]
    answer = invoke(platform, "packaged")
    assert answer["host"] == name, answer  # the package came from the code store into the specialised pool pod
    assert answer["task"] == ["app.py", "lib"]  # read-only where the runtime looks: no __pycache__ written
