"""The gateway's Kubernetes backend against the real API server: it learns functions by watching, and scales a
version's Deployment from 0 to N and back to 0 through the scale subresource while the operator leaves replicas
alone. (No kubelet runs here, so pods stay Pending: requests time out in the queue, which is what lets the demand
fall back to zero. Pods that really run are the real-node end-to-end suite's business.)"""

from __future__ import annotations

import json
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.k8s.test_operator import manifest, ready
from tests.kube import SIGNING_KEY, Kube, Operator, Process, eventually


class KubeGateway(Process):
    """`kambda gateway --backend kubernetes` on the host, serving the test namespace."""

    def __init__(self, kube: Kube, namespace: str, data: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        data.mkdir(parents=True, exist_ok=True)
        super().__init__(
            [sys.executable, "-m", "kambda", "gateway", "--backend", "kubernetes", "--namespace", namespace,
             "--port", str(self.port), "--grpc-port", "0", "--data-dir", str(data), "--queue-timeout", "3"],
            {**kube.env, "KAMBDA_SIGNING_KEY": SIGNING_KEY}, data / "gateway.log",
        )  # fmt: skip
        assert eventually(self._ready, timeout=60), self.logs()

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def invoke(self, name: str, invocation_type: str = "RequestResponse") -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(
            f"{self.url}/2015-03-31/functions/{name}/invocations", data=b"{}", method="POST",
            headers={"X-Amz-Invocation-Type": invocation_type},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()


@pytest.fixture(scope="module")
def gateway(
    kube: Kube, namespace: str, operator: Operator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KubeGateway]:
    gw = KubeGateway(kube, namespace, tmp_path_factory.mktemp("kube-gateway"))
    yield gw
    gw.stop()


def replicas(kube: Kube, name: str, namespace: str) -> int:
    scale = kube.kubectl("get", "--raw", f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale")
    return int(json.loads(scale.stdout)["spec"].get("replicas", 0))


def test_the_gateway_sees_functions_as_they_are_applied(
    kube: Kube, namespace: str, operator: Operator, gateway: KubeGateway
) -> None:
    assert gateway.invoke("watched", "DryRun")[0] == 404
    assert kube.apply(manifest("watched"), namespace).returncode == 0
    assert eventually(lambda: ready(kube, "watched", namespace, "1"))
    assert eventually(lambda: gateway.invoke("watched", "DryRun")[0] == 204, timeout=30)
    assert gateway.invoke("watched:1", "DryRun")[0] == 204
    assert gateway.invoke("watched:2", "DryRun")[0] == 404
    kube.kubectl("delete", "function", "watched", "-n", namespace)
    assert eventually(lambda: gateway.invoke("watched", "DryRun")[0] == 404, timeout=30)


def test_scales_from_zero_to_n_and_back_to_zero(
    kube: Kube, namespace: str, operator: Operator, gateway: KubeGateway
) -> None:
    # One sandbox per pod, so that N concurrent requests ask for N pods (packing is the next test's business).
    scaling = "scaling: {idleSeconds: 1, sandboxesPerPod: 1}"
    assert kube.apply(manifest("scaled", extra=f", {scaling}"), namespace).returncode == 0
    assert eventually(lambda: ready(kube, "scaled", namespace, "1"))
    assert eventually(lambda: gateway.invoke("scaled", "DryRun")[0] == 204, timeout=30)
    assert replicas(kube, "scaled-v1", namespace) == 0

    results: list[int] = []
    callers = [threading.Thread(target=lambda: results.append(gateway.invoke("scaled")[0])) for _ in range(3)]
    for caller in callers:
        caller.start()
    assert eventually(lambda: replicas(kube, "scaled-v1", namespace) == 3, timeout=10), gateway.logs()

    # The operator reconciles (a function-level change) and leaves the gateway's replicas alone.
    changed = scaling.replace("idleSeconds: 1,", "idleSeconds: 1.5,")
    assert kube.apply(manifest("scaled", extra=f", {changed}"), namespace).returncode == 0
    for caller in callers:
        caller.join()
    assert results == [502, 502, 502]  # no pod can start here: the wait for an instance times out, clearly
    assert eventually(lambda: replicas(kube, "scaled-v1", namespace) == 0, timeout=20), gateway.logs()


def test_concurrent_requests_ask_for_pods_by_the_slots_they_have(
    kube: Kube, namespace: str, operator: Operator, gateway: KubeGateway
) -> None:
    """256 MB gives 4 sandboxes a pod: 5 concurrent requests from zero ask for ceil(5 / 4) = 2 pods, not 5."""
    assert kube.apply(manifest("packed", extra=", scaling: {idleSeconds: 1}"), namespace).returncode == 0
    assert eventually(lambda: ready(kube, "packed", namespace, "1"))
    assert eventually(lambda: gateway.invoke("packed", "DryRun")[0] == 204, timeout=30)

    results: list[int] = []
    callers = [threading.Thread(target=lambda: results.append(gateway.invoke("packed")[0])) for _ in range(5)]
    for caller in callers:
        caller.start()
    seen: list[int] = []

    def two_pods() -> bool:
        seen.append(replicas(kube, "packed-v1", namespace))
        return seen[-1] == 2

    assert eventually(two_pods, timeout=10), gateway.logs()
    while any(caller.is_alive() for caller in callers):  # watch the scale for as long as the demand lasts
        seen.append(replicas(kube, "packed-v1", namespace))
    assert max(seen) == 2, seen  # it could have grown (one sandbox a pod asks for 5): it did not
    assert results == [502] * 5
    assert eventually(lambda: replicas(kube, "packed-v1", namespace) == 0, timeout=20), gateway.logs()
