"""Operator throughput on a real API server: 200 Functions applied at once until every one is Ready (secret,
version, code ConfigMap, Deployment, NetworkPolicy, status), next to the same API server storing 200 bare
ConfigMaps from one apply in the same run.

    python bench/operator_bench.py [--functions 200]

Uses a running test cluster (hack/test-cluster.sh) or starts a control-plane-only one and stops it afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KUBECTL = "/var/cache/k8s-test-cluster/bin/kubectl"
KUBECONFIG = "/tmp/kambda-test-cluster/admin.kubeconfig"
ENV = {**os.environ, "KUBECONFIG": KUBECONFIG, "AWS_EC2_METADATA_DISABLED": "true", "KAMBDA_SIGNING_KEY": "bench"}


def kubectl(*args: str, stdin: str | None = None) -> str:
    return subprocess.run([KUBECTL, *args], input=stdin, capture_output=True, text=True, env=ENV, check=True).stdout


def wait_all(kind: str, namespace: str, count: int, done: object) -> float:
    start = time.perf_counter()
    while True:
        items = json.loads(kubectl("get", kind, "-n", namespace, "-o", "json"))["items"]
        if sum(1 for item in items if done(item)) >= count:  # type: ignore[operator]
            return time.perf_counter() - start
        time.sleep(0.25)


def is_ready(fn: dict) -> bool:  # type: ignore[type-arg]
    return any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in (fn.get("status") or {}).get("conditions") or []
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--functions", type=int, default=200)
    n = parser.parse_args().functions
    started_cluster = subprocess.run([KUBECTL, "get", "--raw", "/readyz"], env=ENV, capture_output=True).returncode != 0
    if started_cluster:
        subprocess.run(["bash", str(ROOT / "hack/test-cluster.sh"), "up"], env={**ENV, "WITH_NODE": "0"}, check=True)
    kubectl("apply", "-f", str(ROOT / "crds"))
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    operator = subprocess.Popen(
        [sys.executable, "-m", "kambda", "operator", "--namespace", namespace, "--gateway-address", "10.244.0.1:9090"],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(3)  # the operator starts watching
        config_maps = "\n---\n".join(
            f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: bare-{i}}}\ndata: {{app.py: 'x'}}" for i in range(n)
        )
        t0 = time.perf_counter()
        kubectl("apply", "-n", namespace, "-f", "-", stdin=config_maps)
        bare = time.perf_counter() - t0 + wait_all("configmaps", namespace, n + 1, lambda item: True)  # + kube-root-ca
        functions = "\n---\n".join(
            f"apiVersion: kambda.dev/v1alpha1\nkind: Function\nmetadata: {{name: fn-{i}}}\n"
            "spec: {runtime: python3.11, handler: app.handler, "
            f"code: {{files: {{app.py: 'def handler(e, c): return {i}'}}}}}}"
            for i in range(n)
        )
        t0 = time.perf_counter()
        kubectl("apply", "-n", namespace, "-f", "-", stdin=functions)
        ready = time.perf_counter() - t0 + wait_all("functions", namespace, n, is_ready)
    finally:
        operator.terminate()
        operator.wait(30)
        kubectl("delete", "namespace", namespace, "--wait=false")
        if started_cluster:
            subprocess.run(["bash", str(ROOT / "hack/test-cluster.sh"), "down"], env=ENV, check=False)
    print(f"{n} bare ConfigMaps stored:            {bare:6.2f} s  ({n / bare:6.1f} objects/s)")
    print(f"{n} Functions applied -> all Ready:    {ready:6.2f} s  ({n / ready:6.1f} Functions/s)")
    print(f"ratio (Functions/s vs bare objects/s): {bare / ready:.3f}x  (each Function is 6 objects + a status)")


if __name__ == "__main__":
    main()
