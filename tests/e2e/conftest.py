"""End to end on a real node: kubelet + containerd + runc + CNI + kube-proxy from hack/test-cluster.sh, and kambda
installed as a user installs it: both images built from debootstrap rootfs tarballs (hack/images-local.sh) and
`helm install charts/kambda`. Tests reach the gateway through its Service's NodePort on this node's address and
pods reach it through its ClusterIP: nothing leaves this machine, and no image registry is needed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.install import Images, Release, build_images
from tests.kube import Kube, eventually


@pytest.fixture(scope="session")
def images(kube: Kube) -> Images:
    return build_images()


def host_pids(*needles: str) -> list[int]:
    """Processes on this host (containers' included) whose command line contains every needle."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if all(n in cmdline for n in needles):
                pids.append(int(proc.name))
    return pids


@dataclass
class Platform:
    kube: Kube
    namespace: str
    release: Release
    url: str
    key: tuple[str, str]  # the chart's administrator key: every request is signed, as the chart requires
    client: Any

    @property
    def cli_env(self) -> dict[str, str]:
        """The environment of a `kambda` command run against the platform: the kubeconfig and the access key."""
        return {**self.kube.env, "AWS_ACCESS_KEY_ID": self.key[0], "AWS_SECRET_ACCESS_KEY": self.key[1],
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip

    def api_get(self, path: str, timeout: float = 10) -> Any:
        """GET one of kambda's own APIs (`/v1/invocations/...`), signed with the platform's key."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        request = AWSRequest(method="GET", url=f"{self.url}{path}")
        SigV4Auth(Credentials(*self.key), "lambda", "us-east-1").add_auth(request)
        signed = urllib.request.Request(request.url, headers=dict(request.headers.items()))
        with urllib.request.urlopen(signed, timeout=timeout) as r:
            return json.loads(r.read())

    def gateway_logs(self) -> str:
        return self.release.logs("gateway")

    def operator_logs(self) -> str:
        return self.release.logs("operator")

    def kill_gateway(self) -> int:
        """SIGKILL the gateway's process in its pod (from the host, which sees every container's processes); the
        kubelet restarts the container in the same pod. Returns the killed pid.

        The client is replaced: its pooled connections led to the killed process, and the NodePort's NAT may drop
        (not reset) a request sent on one, which then hangs for the whole read timeout."""
        pids = host_pids("kambda", "gateway", f"--namespace={self.namespace}")
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)
        self.client = lambda_client(self.url, self.key)
        return pids[0]

    def restart_operator(self) -> None:
        before = {p["metadata"]["name"] for p in self.release.pods("operator")}  # type: ignore[index]
        deployment = f"deployment/{self.release.name}-operator"
        self.kube.kubectl("rollout", "restart", deployment, "-n", self.release.system)
        self.kube.kubectl("rollout", "status", deployment, "-n", self.release.system, "--timeout=120s")

        def replaced() -> bool:
            pods = self.release.pods("operator")
            names = {p["metadata"]["name"] for p in pods}  # type: ignore[index]
            return len(pods) == 1 and not names & before

        assert eventually(replaced, timeout=60), self.operator_logs()

    def apply(self, manifest: str) -> None:
        result = self.kube.apply(manifest, self.namespace)
        assert result.returncode == 0, result.stderr

    def ready(self, name: str, version: str) -> bool:
        fn = self.kube.get("function", name, self.namespace) or {}
        status = fn.get("status") or {}
        ok = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
        return ok and status.get("latestVersion") == version

    def wait_served(self, name: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        probe = lambda_client(self.url, self.key, read_timeout=5)

        def served() -> bool:
            try:
                return bool(probe.invoke(FunctionName=name, InvocationType="DryRun")["StatusCode"] == 204)
            except (BotoCoreError, ClientError):
                return False

        assert eventually(served, timeout=30), self.gateway_logs()

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


def lambda_client(url: str, key: tuple[str, str], *, attempts: int = 1, read_timeout: int = 120) -> Any:
    """A boto3 Lambda client for the platform, signing with `key`. One attempt by default, so a test sees each
    failure as it is."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"total_max_attempts": attempts}, read_timeout=read_timeout, connect_timeout=5,
                    max_pool_connections=64)  # fmt: skip
    return boto3.client("lambda", endpoint_url=url, region_name="us-east-1", aws_access_key_id=key[0],
                        aws_secret_access_key=key[1], config=config)  # fmt: skip


@contextlib.contextmanager
def installed(
    kube: Kube, namespace: str, images: Images, *, replicas: int = 1, warm_pool: int = 0
) -> Iterator[Platform]:
    """The chart installed (and uninstalled after), its gateway ready, with the test suites' gateway settings."""
    release = Release(kube, images, namespace, replicas=replicas, warm_pool=warm_pool, gateway_args=[
        "--queue-timeout=60", "--retry-base-delay=0.5", "--throttle-base-delay=0.2",
    ])  # fmt: skip
    try:
        release.install()
        url = release.url()
        assert release.ready(url), release.logs("gateway")
        key = release.admin_key()
        yield Platform(kube, namespace, release, url, key, lambda_client(url, key))
    finally:
        release.uninstall()


T = TypeVar("T")


def peak_during(measure: Callable[[], int], work: Callable[[], T]) -> tuple[T, int]:
    """`work()`'s result, and the largest `measure()` seen (every 0.2 s) while it ran: pods, replicas."""
    peak = [0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], measure())
            done.wait(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = work()
    finally:
        done.set()
        watcher.join()
    return result, peak[0]


@pytest.fixture(scope="module")
def platform(kube: Kube, namespace: str, images: Images) -> Iterator[Platform]:
    with installed(kube, namespace, images) as platform:
        yield platform
