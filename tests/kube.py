"""A real Kubernetes API server for the control-plane tests: etcd + kube-apiserver + kube-controller-manager (+
scheduler), built from Debian's kubernetes source by hack/build-k8s.sh and started by hack/test-cluster.sh.

A cluster already running (KAMBDA_TEST_KUBECONFIG, or the script's default location) is used as it is; otherwise
one is started for the session and stopped after it. Each test module gets its own namespace."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
K8S_BIN = Path(os.environ.get("K8S_BIN", "/var/cache/k8s-test-cluster/bin"))
SCRIPT = ROOT / "hack" / "test-cluster.sh"
SIGNING_KEY = "kambda-test-signing-key"


class Kube:
    def __init__(self, kubeconfig: str) -> None:
        self.kubeconfig = kubeconfig
        self.env = {**os.environ, "KUBECONFIG": kubeconfig, "AWS_EC2_METADATA_DISABLED": "true"}

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(K8S_BIN / "kubectl"), *args], input=input, capture_output=True, text=True, env=self.env,
            timeout=timeout,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        result = self.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
        if result.returncode != 0:
            return None
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    def list(self, kind: str, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        args = ["get", kind, "-n", namespace, "-o", "json"] + (["-l", selector] if selector else [])
        items: list[dict[str, Any]] = json.loads(self.kubectl(*args).stdout)["items"]
        return items

    def scale_writes(self, namespace: str, deployment: str) -> list[dict[str, Any]]:
        """The API server's audit records of writes to `deployment`'s scale subresource (hack/test-cluster.sh
        records only those), oldest first."""
        log = Path(self.kubeconfig).parent / "logs" / "audit.log"
        assert log.exists(), f"{log}: the test cluster records no audit log (restart it: hack/test-cluster.sh down)"
        records = []
        for line in log.read_text().splitlines():
            record = json.loads(line)
            ref = record.get("objectRef") or {}
            if (ref.get("namespace"), ref.get("name"), ref.get("subresource")) == (namespace, deployment, "scale"):
                records.append(record)
        return records

    def apply(self, manifest: str, namespace: str) -> subprocess.CompletedProcess[str]:
        # --validate=false: the API server itself must refuse what is invalid, not kubectl's client-side check.
        return self.kubectl("apply", "--validate=false", "-n", namespace, "-f", "-", input=manifest, check=False)


def _reachable(kubeconfig: str) -> bool:
    if not Path(kubeconfig).exists():
        return False
    probe = subprocess.run(
        [str(K8S_BIN / "kubectl"), "--kubeconfig", kubeconfig, "get", "--raw", "/readyz"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    return probe.returncode == 0


@pytest.fixture(scope="session")
def kube() -> Iterator[Kube]:
    assert (K8S_BIN / "kube-apiserver").exists(), f"no Kubernetes binaries in {K8S_BIN}: run hack/build-k8s.sh"
    kubeconfig = os.environ.get("KAMBDA_TEST_KUBECONFIG", "/tmp/kambda-test-cluster/admin.kubeconfig")
    started = False
    if not _reachable(kubeconfig):
        # The full node (kubelet, containerd, kube-proxy) whenever the end-to-end suite runs in the same session.
        env = {**os.environ, "WITH_NODE": os.environ.get("KAMBDA_TEST_WITH_NODE", "1")}
        subprocess.run(["bash", str(SCRIPT), "up"], check=True, env=env, timeout=900)
        started = True
    kube = Kube(kubeconfig)
    kube.kubectl("apply", "-f", str(ROOT / "crds"))
    kube.kubectl("wait", "--for=condition=Established", "crd/functions.kambda.dev", "crd/aliases.kambda.dev")
    yield kube
    if started and not os.environ.get("KAMBDA_KEEP_CLUSTER"):
        subprocess.run(["bash", str(SCRIPT), "down"], check=False, timeout=300)


@pytest.fixture(scope="module")
def namespace(kube: Kube) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", name)
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


class Process:
    """A kambda process on the host (operator, gateway) that a test can stop, kill and start again."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args, self.env, self.log_path = args, env, log_path
        self.start()

    def start(self) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


Operator = Process


@pytest.fixture(scope="module")
def operator(kube: Kube, namespace: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """`kambda operator` watching the module's namespace (pods would reach a gateway on the pod bridge)."""
    op = Process(
        [sys.executable, "-m", "kambda", "operator", "--namespace", namespace,
         "--gateway-address", "10.244.0.1:9090", "--runtime-image", "localhost/kambda-runtime:test"],
        {**kube.env, "KAMBDA_SIGNING_KEY": SIGNING_KEY}, tmp_path_factory.mktemp("operator") / "operator.log",
    )  # fmt: skip
    yield op
    op.stop()


def eventually(predicate, timeout: float = 60, interval: float = 0.25):  # type: ignore[no-untyped-def]
    """The predicate's first truthy value within the timeout (else its last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
