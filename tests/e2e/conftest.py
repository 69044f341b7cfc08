"""End to end on a real node: kubelet + containerd + runc + CNI + kube-proxy from hack/test-cluster.sh, the runtime
image built from a debootstrap rootfs with this working tree installed (hack/images-local.sh), and the operator and
gateway running on the host with the cluster's kubeconfig. Pods reach the gateway's runtime interface on the pod
bridge address (10.244.0.1): nothing leaves this machine, and no image registry is needed."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import free_port
from tests.kube import ROOT, SIGNING_KEY, Kube, Process, eventually

BRIDGE = "10.244.0.1"


@pytest.fixture(scope="session")
def runtime_image(kube: Kube) -> str:
    result = subprocess.run(
        ["bash", str(ROOT / "hack" / "images-local.sh")], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


@dataclass
class Platform:
    kube: Kube
    namespace: str
    gateway: Process
    operator: Process
    url: str
    grpc_port: int
    client: Any

    def apply(self, manifest: str) -> None:
        result = self.kube.apply(manifest, self.namespace)
        assert result.returncode == 0, result.stderr

    def ready(self, name: str, version: str) -> bool:
        fn = self.kube.get("function", name, self.namespace) or {}
        status = fn.get("status") or {}
        ok = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
        return ok and status.get("latestVersion") == version

    def wait_served(self, name: str) -> None:
        def served() -> bool:
            request = urllib.request.Request(
                f"{self.url}/2015-03-31/functions/{name}/invocations", data=b"{}", method="POST",
                headers={"X-Amz-Invocation-Type": "DryRun"},
            )  # fmt: skip
            try:
                with urllib.request.urlopen(request, timeout=5) as r:
                    return r.status == 204
            except OSError:
                return False

        assert eventually(served, timeout=30), self.gateway.logs()

    def pods(self, function: str, version: str | None = None) -> list[dict[str, Any]]:
        selector = f"kambda.dev/function={function}" + (f",kambda.dev/version={version}" if version else "")
        return [
            p for p in self.kube.list("pods", self.namespace, selector) if not p["metadata"].get("deletionTimestamp")
        ]

    def replicas(self, function: str, version: str) -> int:
        raw = self.kube.kubectl(
            "get", "--raw", f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{function}-v{version}/scale"
        ).stdout
        return int(json.loads(raw)["spec"].get("replicas", 0))


def function_manifest(name: str, code: str, **spec: Any) -> str:
    body: dict[str, Any] = {
        "apiVersion": "kambda.dev/v1alpha1",
        "kind": "Function",
        "metadata": {"name": name},
        "spec": {"runtime": "python3.11", "handler": "app.handler", "code": {"files": {"app.py": code}}, **spec},
    }
    return json.dumps(body)


@pytest.fixture(scope="module")
def platform(
    kube: Kube, namespace: str, runtime_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    import boto3
    from botocore.config import Config

    logs = tmp_path_factory.mktemp("e2e")
    env = {**kube.env, "KAMBDA_SIGNING_KEY": SIGNING_KEY}
    http_port, grpc_port = free_port(), free_port()
    gateway = Process(
        [sys.executable, "-m", "kambda", "gateway", "--backend", "kubernetes", "--namespace", namespace,
         "--port", str(http_port), "--grpc-host", "0.0.0.0", "--grpc-port", str(grpc_port),
         "--data-dir", str(logs / "data"), "--queue-timeout", "60", "--retry-base-delay", "0.5",
         "--throttle-base-delay", "0.2"],
        env, logs / "gateway.log",
    )  # fmt: skip
    operator = Process(
        [sys.executable, "-m", "kambda", "operator", "--namespace", namespace,
         "--gateway-address", f"{BRIDGE}:{grpc_port}", "--runtime-image", runtime_image,
         "--image-pull-policy", "Never"],
        env, logs / "operator.log",
    )  # fmt: skip
    url = f"http://127.0.0.1:{http_port}"
    client = boto3.client(
        "lambda", endpoint_url=url, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t",
        config=Config(retries={"total_max_attempts": 1}, read_timeout=120, max_pool_connections=64),
    )  # fmt: skip

    def gateway_ready() -> bool:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        assert eventually(gateway_ready, timeout=60), gateway.logs()
        yield Platform(kube, namespace, gateway, operator, url, grpc_port, client)
    finally:
        operator.stop()
        gateway.stop()
