"""Cold start on Kubernetes, next to the bare pod: zero -> first response for a Python function through the
gateway, and zero -> Ready for a plain Deployment of the same runtime image, alternating, in one run.

    python bench/k8s_coldstart_bench.py [--trials 10]

Needs the real node (`make cluster-up`); builds and imports both images (hack/images-local.sh) and installs the
chart with helm, as the end-to-end tests do (tests/install.py). Also prints the images' sizes, and times a bare pod
of the platform image (every dependency, as function pods carried before the slim runtime image) next to the slim
one, and a 2.5 MB package uploaded with `kambda deploy` next to inline code.
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

from kambda import signing

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


async def bare_trial(apps: client.AppsV1Api, core: client.CoreV1Api, namespace: str, name: str) -> float:
    await until_gone(core, namespace, f"app={name}")
    start = time.perf_counter()
    await apps.patch_namespaced_deployment_scale(name, namespace, {"spec": {"replicas": 1}})
    while True:
        for pod in await pods(core, namespace, f"app={name}"):
            conditions = {c.type: c.status for c in (pod.status.conditions or [])}
            if conditions.get("Ready") == "True":
                elapsed = time.perf_counter() - start
                await apps.patch_namespaced_deployment_scale(name, namespace, {"spec": {"replicas": 0}})
                return elapsed
        await asyncio.sleep(0.02)


async def kambda_trial(core: client.CoreV1Api, namespace: str, url: str, function: str) -> float:
    await until_gone(core, namespace, f"kambda.dev/function={function}")
    start = time.perf_counter()
    target = f"{url}/2015-03-31/functions/{function}/invocations"
    request = urllib.request.Request(
        target, data=b"{}", method="POST", headers=signing.headers("POST", target, {}, b"{}")
    )
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


def bare_deployment(name: str, image: str) -> dict[str, object]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}}, "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                "name": "bare", "image": image, "imagePullPolicy": "Never",
                "command": ["python3", "-c", "import time; time.sleep(10**6)"]}]}}},
    }  # fmt: skip


def package(directory: Path) -> Path:
    """A zip function as users ship one: a handler next to 2.5 MB of vendored bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "app.py").write_text("def handler(event, context):\n    return 'warm'\n")
    (directory / "vendored.bin").write_bytes(os.urandom(2_500_000))
    return directory


async def _measure(trials: int) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.install import Release, build_images, function_image
    from tests.kube import Kube

    images = build_images()
    for image, size in images.sizes.items():
        print(f"image {image}: {size / 1e6:.1f} MB (uncompressed layer tarball)")
    namespace = f"cold-{uuid.uuid4().hex[:6]}"
    kube = Kube(KUBECONFIG)
    kubectl("apply", "-f", str(ROOT / "crds"))
    kubectl("create", "namespace", namespace)
    release = Release(kube, images, namespace)
    release.install()
    url = release.url()
    # The chart requires SigV4: every request below (and `kambda deploy`) signs with the administrator's key.
    key_id, secret = release.admin_key()
    for env in (os.environ, ENV):
        env.update(AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret, AWS_DEFAULT_REGION="us-east-1")
    # The slim function image next to the platform's (every dependency, as function pods carried before).
    for name, image in (("bare-slim", images.runtime), ("bare-platform", images.platform)):
        kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(bare_deployment(name, image)))
    inline = {
        "apiVersion": "kambda.dev/v1alpha1", "kind": "Function", "metadata": {"name": "cold"},
        "spec": {"runtime": "python3.11", "handler": "app.handler", "scaling": {"idleSeconds": 1},
                 "code": {"files": {"app.py": "def handler(event, context):\n    return 'warm'\n"}}},
    }  # fmt: skip
    kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(inline))
    subprocess.run(
        [sys.executable, "-m", "kambda", "deploy", str(package(Path(f"/tmp/{namespace}/pkg"))), "--name", "coldpkg",
         "--runtime", "python3.11", "--handler", "app.handler", "--endpoint", url, "--namespace", namespace],
        env=ENV, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    kubectl("patch", "function", "coldpkg", "-n", namespace, "--type=merge", "-p",
            json.dumps({"spec": {"scaling": {"idleSeconds": 1}}}))  # fmt: skip
    image = function_image("cold-image", "python", {"app.py": "def handler(event, context):\n    return 'warm'\n"},
                           Path(f"/tmp/{namespace}"))  # fmt: skip
    image_fn = {"apiVersion": "kambda.dev/v1alpha1", "kind": "Function", "metadata": {"name": "coldimg"},
                "spec": {"runtime": "provided", "code": {"image": image}, "scaling": {"idleSeconds": 1}}}  # fmt: skip
    kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(image_fn))
    await config.load_kube_config(config_file=KUBECONFIG)
    try:
        async with client.ApiClient() as api:
            apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
            functions = ("cold", "coldpkg", "coldimg")
            for function in functions:
                await _until_served(url, function)
            times: dict[str, list[float]] = {name: [] for name in ("bare-slim", "bare-platform", *functions)}
            for _ in range(trials + 1):  # the first round warms the node's caches and is dropped
                for name in ("bare-slim", "bare-platform"):
                    times[name].append(await bare_trial(apps, core, namespace, name))
                for function in functions:
                    times[function].append(await kambda_trial(core, namespace, url, function))
    finally:
        release.uninstall()
        kubectl("delete", "namespace", namespace, "--wait=false")
    p50 = {name: statistics.median(values[1:]) for name, values in times.items()}
    labels = {
        "bare-slim": "bare pod, slim runtime image: scale 0->1 -> Ready",
        "bare-platform": "bare pod, platform image:     scale 0->1 -> Ready",
        "cold": "kambda inline code: zero -> first response",
        "coldpkg": "kambda 2.5 MB package: zero -> first response",
        "coldimg": "kambda container image: zero -> first response",
    }
    for name, label in labels.items():
        values = times[name][1:]
        print(f"{label:50} p50 of {trials}: {p50[name] * 1000:6.0f} ms "
              f"(min {min(values) * 1000:.0f}, max {max(values) * 1000:.0f})")  # fmt: skip
    print(f"ratios to the bare slim pod: inline {p50['cold'] / p50['bare-slim']:.2f}x, "
          f"package {p50['coldpkg'] / p50['bare-slim']:.2f}x, image {p50['coldimg'] / p50['bare-slim']:.2f}x, "
          f"platform-image pod "
          f"{p50['bare-platform'] / p50['bare-slim']:.2f}x")  # fmt: skip


async def _until_served(url: str, function: str) -> None:
    """The gateway serves the function once the operator has published version 1."""
    while True:
        target = f"{url}/2015-03-31/functions/{function}/invocations"
        headers = signing.headers("POST", target, {"X-Amz-Invocation-Type": "DryRun"}, b"{}")
        try:
            urllib.request.urlopen(
                urllib.request.Request(target, data=b"{}", method="POST", headers=headers), timeout=2
            )
            return
        except OSError:
            await asyncio.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=10)
    asyncio.run(run(parser.parse_args().trials))


if __name__ == "__main__":
    main()
