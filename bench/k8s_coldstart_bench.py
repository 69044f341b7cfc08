"""Cold starts on Kubernetes, side by side in one run: zero -> Ready for a bare Deployment of the runtime image;
zero -> first response through the gateway for a dedicated pod (inline code, a 2.5 MB package, a container image)
and for a warm-pool pod specialised on demand; a new sandbox in a running packed pod (the spill-over beside a
busy one), and the same for a SnapStart function whose init takes 300 ms (restored from the pod's template); and
the local backend's cold start for reference. Targets are on each row.

    python bench/k8s_coldstart_bench.py [--trials 10]

Needs the real node (`make cluster-up`); builds and imports the images (hack/images-local.sh) and installs the
chart with helm (a warm pool of 1), as the end-to-end tests do (tests/install.py). Dedicated-pod functions are kept
off the pool by a 1 GB /tmp (more than a pool pod has), which changes nothing else of their pods.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
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


async def invoke(url: str, function: str, event: dict[str, object] | None = None) -> str:
    """Invoke synchronously (signed); the response must be 'warm'. Returns the log tail (its REPORT line)."""
    target = f"{url}/2015-03-31/functions/{function}/invocations"
    data = json.dumps(event or {}).encode()
    headers = signing.headers("POST", target, {"X-Amz-Log-Type": "Tail"}, data)
    request = urllib.request.Request(target, data=data, method="POST", headers=headers)

    def call() -> str:
        with urllib.request.urlopen(request, timeout=120) as r:
            body, log = r.read(), r.headers.get("X-Amz-Log-Result", "")
        assert json.loads(body) == "warm", body
        return base64.b64decode(log).decode(errors="replace")

    return await asyncio.to_thread(call)


def metric(url: str, name: str, *wanted: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and all(w in line for w in wanted))  # fmt: skip


async def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 120
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            raise TimeoutError("the benchmark's precondition never held")
        await asyncio.sleep(0.1)


async def kambda_trial(core: client.CoreV1Api, namespace: str, url: str, function: str) -> float:
    await until_gone(core, namespace, f"kambda.dev/function={function}")
    start = time.perf_counter()
    await invoke(url, function)
    return time.perf_counter() - start


async def pool_trial(core: client.CoreV1Api, namespace: str, url: str, function: str) -> float:
    """Zero -> first response with a pool pod waiting on the gateway (it was started before the request)."""
    await until_gone(core, namespace, f"kambda.dev/function={function}")
    await until(lambda: metric(url, "kambda_warm_pool_pods", f'namespace="{namespace}"') >= 1)
    start = time.perf_counter()
    await invoke(url, function)
    return time.perf_counter() - start


async def spill_trial(core: client.CoreV1Api, namespace: str, url: str, function: str) -> tuple[float, float]:
    """A request while the function's one sandbox is busy: a new sandbox in the same (running) pod. Returns its
    latency and the Restore Duration its REPORT shows (0 if none)."""
    await until_gone(core, namespace, f"kambda.dev/function={function}")
    busy = asyncio.create_task(invoke(url, function, {"sleep": 2.5}))  # starts the pod; not timed
    # Running on its sandbox (an instance connected but still initialising counts as busy in kambda_instances, and a
    # request then would wait for that init, not for a new sandbox).
    await until(lambda: metric(url, "kambda_concurrent_executions", f'function="{function}"') >= 1)
    start = time.perf_counter()
    log = await invoke(url, function)
    elapsed = time.perf_counter() - start
    await busy
    restore = re.search(r"Restore Duration: ([\d.]+) ms", log)
    return elapsed, float(restore.group(1)) / 1000 if restore else 0.0


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


HANDLER = "import time\n\n\ndef handler(event, context):\n    time.sleep(event.get('sleep', 0))\n    return 'warm'\n"
# An init of 300 ms (imports, then the rest of a heavy module's set-up), which SnapStart pays once per pod.
SNAP_HANDLER = (
    "import asyncio, decimal, email.parser, http.client, json, time, xml.dom.minidom\n"
    "time.sleep(0.3)\n\n\n"
    "def handler(event, context):\n    time.sleep(event.get('sleep', 0))\n    return 'warm'\n"
)
DEDICATED = {"ephemeralStorage": {"size": 1024}}  # more /tmp than a pool pod has: dedicated pods only


def function(name: str, code: str, **spec: object) -> str:
    return json.dumps({
        "apiVersion": "kambda.dev/v1alpha1", "kind": "Function", "metadata": {"name": name},
        "spec": {"runtime": "python3.11", "handler": "app.handler", "code": {"files": {"app.py": code}}, **spec},
    })  # fmt: skip


async def local_cold_starts(count: int) -> list[float]:
    """The local backend's zero -> first response (bench/invoke_bench.py's measurement), in this run."""
    sys.path.insert(0, str(ROOT / "bench"))
    import invoke_bench

    with tempfile.TemporaryDirectory() as tmp:
        functions = Path(tmp) / "functions"
        functions.mkdir()
        names = [f"cold-{i}" for i in range(count)]
        for name in names:
            (functions / f"{name}.yaml").write_text(invoke_bench.FUNCTION.format(name=name))
        port = free_port()
        gateway = subprocess.Popen(
            [sys.executable, "-m", "kambda", "run", str(functions), "--port", str(port), "--grpc-port", "0",
             "--data-dir", str(Path(tmp) / "data")],
            env={**os.environ, "AWS_EC2_METADATA_DISABLED": "true"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            await invoke_bench.wait_up(f"http://127.0.0.1:{port}/readyz")
            await asyncio.sleep(1)  # the local agents finish starting, as invoke_bench does
            return await invoke_bench.cold_starts(f"http://127.0.0.1:{port}", names)
        finally:
            gateway.terminate()
            gateway.wait(15)


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
    release = Release(kube, images, namespace, warm_pool=1)
    release.install()
    url = release.url()
    # The chart requires SigV4: every request below (and `kambda deploy`) signs with the administrator's key.
    key_id, secret = release.admin_key()
    for env in (os.environ, ENV):
        env.update(AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret, AWS_DEFAULT_REGION="us-east-1")
    # The slim function image next to the platform's (every dependency, as function pods carried before).
    for name, image in (("bare-slim", images.runtime), ("bare-platform", images.platform)):
        kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(bare_deployment(name, image)))
    manifests = [
        function("cold", HANDLER, scaling={"idleSeconds": 1}, **DEDICATED),
        function("pooled", HANDLER, scaling={"idleSeconds": 1}),
        function("packed", HANDLER, scaling={"idleSeconds": 1, "sandboxesPerPod": 8}, **DEDICATED),
        function("snap", SNAP_HANDLER, scaling={"idleSeconds": 1, "sandboxesPerPod": 8},
                 snapStart={"applyOn": "PublishedVersions"}, **DEDICATED),
    ]  # fmt: skip
    for manifest in manifests:
        kubectl("apply", "-n", namespace, "-f", "-", stdin=manifest)
    subprocess.run(
        [sys.executable, "-m", "kambda", "deploy", str(package(Path(f"/tmp/{namespace}/pkg"))), "--name", "coldpkg",
         "--runtime", "python3.11", "--handler", "app.handler", "--endpoint", url, "--namespace", namespace],
        env=ENV, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    kubectl("patch", "function", "coldpkg", "-n", namespace, "--type=merge", "-p",
            json.dumps({"spec": {"scaling": {"idleSeconds": 1}, **DEDICATED}}))  # fmt: skip
    image = function_image("cold-image", "python", {"app.py": "def handler(event, context):\n    return 'warm'\n"},
                           Path(f"/tmp/{namespace}"))  # fmt: skip
    image_fn = {"apiVersion": "kambda.dev/v1alpha1", "kind": "Function", "metadata": {"name": "coldimg"},
                "spec": {"runtime": "provided", "code": {"image": image}, "scaling": {"idleSeconds": 1}}}  # fmt: skip
    kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(image_fn))
    await config.load_kube_config(config_file=KUBECONFIG)
    dedicated = ("cold", "coldpkg", "coldimg")
    restores: list[float] = []
    try:
        async with client.ApiClient() as api:
            apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
            for name in (*dedicated, "pooled", "packed", "snap"):
                await _until_served(url, name)
            times: dict[str, list[float]] = {
                name: [] for name in ("bare-slim", "bare-platform", *dedicated, "pooled", "packed", "snap")
            }
            for _ in range(trials + 1):  # the first round warms the node's caches and is dropped
                for name in ("bare-slim", "bare-platform"):
                    times[name].append(await bare_trial(apps, core, namespace, name))
                for name in dedicated:
                    times[name].append(await kambda_trial(core, namespace, url, name))
                times["pooled"].append(await pool_trial(core, namespace, url, "pooled"))
                times["packed"].append((await spill_trial(core, namespace, url, "packed"))[0])
                elapsed, restore = await spill_trial(core, namespace, url, "snap")
                times["snap"].append(elapsed)
                restores.append(restore)
    finally:
        release.uninstall()
        kubectl("delete", "namespace", namespace, "--wait=false")
    times["local"] = [0.0, *await local_cold_starts(trials)]
    p50 = {name: statistics.median(values[1:]) for name, values in times.items()}
    labels = {
        "bare-slim": "bare pod, slim runtime image: scale 0->1 -> Ready",
        "bare-platform": "bare pod, platform image:     scale 0->1 -> Ready",
        "cold": "dedicated pod, inline code: zero -> response",
        "coldpkg": "dedicated pod, 2.5 MB package: zero -> response",
        "coldimg": "dedicated pod, container image: zero -> response",
        "pooled": "warm-pool pod specialised: zero -> response",
        "packed": "new sandbox in a running packed pod: response",
        "snap": "SnapStart sandbox (300 ms init) in a packed pod",
        "local": "local backend: zero -> response",
    }
    for name, label in labels.items():
        values = times[name][1:]
        print(f"{label:52} p50 of {len(values)}: {p50[name] * 1000:6.0f} ms "
              f"(min {min(values) * 1000:.0f}, max {max(values) * 1000:.0f})")  # fmt: skip
    restore_p50 = statistics.median(restores[1:]) * 1000
    print(f"SnapStart Restore Duration (REPORT) p50: {restore_p50:.1f} ms")
    print(f"ratios to the bare slim pod: inline {p50['cold'] / p50['bare-slim']:.2f}x, "
          f"package {p50['coldpkg'] / p50['bare-slim']:.2f}x, image {p50['coldimg'] / p50['bare-slim']:.2f}x, "
          f"warm pool {p50['pooled'] / p50['bare-slim']:.2f}x, packed {p50['packed'] / p50['bare-slim']:.2f}x, "
          f"platform-image pod {p50['bare-platform'] / p50['bare-slim']:.2f}x")  # fmt: skip
    print(
        f"targets: warm pool p50 <= 100 ms ({p50['pooled'] * 1000:.0f}), packed sandbox <= 60 ms "
        f"({p50['packed'] * 1000:.0f}), SnapStart <= 50 ms ({p50['snap'] * 1000:.0f}; restore {restore_p50:.0f})"
    )


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
