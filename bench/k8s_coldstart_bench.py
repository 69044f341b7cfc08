"""Cold start on Kubernetes, next to the bare pod: zero -> first response for a Python function through the
gateway, and zero -> Ready for a plain Deployment of the same runtime image, alternating, in one run.

    python bench/k8s_coldstart_bench.py [--trials 10]

Needs the real node (`make cluster-up`); builds/imports the runtime image (hack/images-local.sh); runs the
operator and gateway on the host, as the end-to-end tests do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from kubernetes_asyncio import client, config

ROOT = Path(__file__).resolve().parents[1]
KUBECONFIG = "/tmp/kambda-test-cluster/admin.kubeconfig"
KUBECTL = "/var/cache/k8s-test-cluster/bin/kubectl"
ENV = {**os.environ, "KUBECONFIG": KUBECONFIG, "AWS_EC2_METADATA_DISABLED": "true", "KAMBDA_SIGNING_KEY": "bench"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kubectl(*args: str, stdin: str | None = None) -> str:
    return subprocess.run([KUBECTL, *args], input=stdin, capture_output=True, text=True, env=ENV, check=True).stdout


async def pods(core: client.CoreV1Api, namespace: str, selector: str) -> list[client.V1Pod]:
    return list((await core.list_namespaced_pod(namespace, label_selector=selector)).items)


async def until_gone(core: client.CoreV1Api, namespace: str, selector: str) -> None:
    while await pods(core, namespace, selector):
        await asyncio.sleep(0.2)


async def bare_trial(apps: client.AppsV1Api, core: client.CoreV1Api, namespace: str) -> float:
    await until_gone(core, namespace, "app=bare")
    start = time.perf_counter()
    await apps.patch_namespaced_deployment_scale("bare", namespace, {"spec": {"replicas": 1}})
    while True:
        for pod in await pods(core, namespace, "app=bare"):
            conditions = {c.type: c.status for c in (pod.status.conditions or [])}
            if conditions.get("Ready") == "True":
                elapsed = time.perf_counter() - start
                await apps.patch_namespaced_deployment_scale("bare", namespace, {"spec": {"replicas": 0}})
                return elapsed
        await asyncio.sleep(0.02)


async def kambda_trial(core: client.CoreV1Api, namespace: str, url: str) -> float:
    await until_gone(core, namespace, "kambda.dev/function=cold")
    start = time.perf_counter()
    request = urllib.request.Request(f"{url}/2015-03-31/functions/cold/invocations", data=b"{}", method="POST")
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=120).read())
    assert json.loads(body) == "warm", body
    return time.perf_counter() - start


async def run(trials: int) -> None:
    was_up = subprocess.run([KUBECTL, "get", "--raw", "/readyz"], env=ENV, capture_output=True).returncode == 0
    # Idempotent: adds the node (kubelet, containerd, kube-proxy) to a control plane that runs without one.
    subprocess.run(["bash", str(ROOT / "hack/test-cluster.sh"), "up"], env={**ENV, "WITH_NODE": "1"}, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        await _measure(trials)
    finally:
        if not was_up:
            subprocess.run(["bash", str(ROOT / "hack/test-cluster.sh"), "down"], env=ENV, stdout=subprocess.DEVNULL)


async def _measure(trials: int) -> None:
    image = subprocess.run(["bash", str(ROOT / "hack/images-local.sh")], capture_output=True, text=True,
                           check=True).stdout.strip().splitlines()[-1]  # fmt: skip
    namespace = f"cold-{uuid.uuid4().hex[:6]}"
    kubectl("apply", "-f", str(ROOT / "crds"))
    kubectl("create", "namespace", namespace)
    http, grpc_port = free_port(), free_port()
    procs = [
        subprocess.Popen([sys.executable, "-m", "kambda", "gateway", "--backend", "kubernetes", "--namespace",
                          namespace, "--port", str(http), "--grpc-host", "0.0.0.0", "--grpc-port", str(grpc_port),
                          "--data-dir", f"/tmp/{namespace}"], env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, "-m", "kambda", "operator", "--namespace", namespace, "--gateway-address",
                          f"10.244.0.1:{grpc_port}", "--runtime-image", image, "--image-pull-policy", "Never"],
                         env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]  # fmt: skip
    bare = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bare"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "bare"}}, "template": {
            "metadata": {"labels": {"app": "bare"}},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                "name": "bare", "image": image, "imagePullPolicy": "Never",
                "command": ["python3", "-c", "import time; time.sleep(10**6)"]}]}}},
    }  # fmt: skip
    function = {
        "apiVersion": "kambda.dev/v1alpha1", "kind": "Function", "metadata": {"name": "cold"},
        "spec": {"runtime": "python3.11", "handler": "app.handler", "scaling": {"idleSeconds": 1},
                 "code": {"files": {"app.py": "def handler(event, context):\n    return 'warm'\n"}}},
    }  # fmt: skip
    kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(bare))
    kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(function))
    await config.load_kube_config(config_file=KUBECONFIG)
    try:
        async with client.ApiClient() as api:
            apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
            url = f"http://127.0.0.1:{http}"
            while True:  # the gateway serves the function once the operator has published version 1
                try:
                    urllib.request.urlopen(urllib.request.Request(
                        f"{url}/2015-03-31/functions/cold/invocations", data=b"{}", method="POST",
                        headers={"X-Amz-Invocation-Type": "DryRun"}), timeout=2)  # fmt: skip
                    break
                except OSError:
                    await asyncio.sleep(0.5)
            bare_times, kambda_times = [], []
            for _ in range(trials + 1):  # the first pair warms the node's caches and is dropped
                bare_times.append(await bare_trial(apps, core, namespace))
                kambda_times.append(await kambda_trial(core, namespace, url))
            bare_times, kambda_times = bare_times[1:], kambda_times[1:]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        kubectl("delete", "namespace", namespace, "--wait=false")
    b, k = statistics.median(bare_times), statistics.median(kambda_times)
    print(f"bare Deployment, scale 0->1 -> pod Ready, p50 of {trials}: {b * 1000:7.0f} ms "
          f"(min {min(bare_times) * 1000:.0f}, max {max(bare_times) * 1000:.0f})")  # fmt: skip
    print(f"kambda, zero -> first response,  p50 of {trials}: {k * 1000:7.0f} ms "
          f"(min {min(kambda_times) * 1000:.0f}, max {max(kambda_times) * 1000:.0f})")  # fmt: skip
    print(f"ratio: {k / b:.2f}x   (goal: within 1.5x of the bare pod-ready time)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=10)
    asyncio.run(run(parser.parse_args().trials))


if __name__ == "__main__":
    main()
