"""kambda installed the way a user installs it: the two images built without Docker (hack/images-local.sh) and
the chart installed with `helm install`, the gateway reached through its Service's NodePort on this node's address.

Shared by the end-to-end suite and bench/k8s_coldstart_bench.py. The gateway's data directory is a static hostPath
PersistentVolume (the test cluster has no volume provisioner), so the queue and the code store outlive its pod.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.kube import K8S_BIN, ROOT, SIGNING_KEY, Kube, eventually

CHART = ROOT / "charts" / "kambda"
VOLUMES = Path("/var/lib/kambda-test-volumes")
GATEWAY_UID = 1000  # the chart's pod securityContext


@dataclass(frozen=True)
class Images:
    runtime: str
    nodejs: str
    python313: str
    platform: str
    sizes: dict[str, int]  # image -> bytes of its uncompressed tarball


def build_images() -> Images:
    result = subprocess.run(
        ["bash", str(ROOT / "hack" / "images-local.sh")], capture_output=True, text=True, timeout=1800
    )
    assert result.returncode == 0, result.stderr[-4000:]
    found: dict[str, tuple[str, int]] = {}
    for line in result.stdout.splitlines():
        kind, image, size = line.split()
        found[kind] = (image, int(size))
    return Images(
        runtime=found["kambda-runtime"][0],
        nodejs=found["kambda-runtime-nodejs"][0],
        python313=found["kambda-runtime-python3.13"][0],
        platform=found["kambda"][0],
        sizes={image: size for image, size in found.values()},
    )


def node_ip(kube: Kube) -> str:
    node = json.loads(kube.kubectl("get", "nodes", "-o", "json").stdout)["items"][0]
    return next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")


@dataclass
class Release:
    """One `helm install` of charts/kambda: a system namespace of its own, functions in `functions`."""

    kube: Kube
    images: Images
    functions: str
    gateway_args: list[str] = field(default_factory=list)
    name: str = field(default_factory=lambda: f"k{uuid.uuid4().hex[:6]}")
    replicas: int = 1  # more than one: the NATS queue, on a NATS JetStream this installs first (`_install_nats`)
    warm_pool: int = 0  # warm-pool pods per runtime in use: none unless a suite is about them (they are pods)

    @property
    def system(self) -> str:
        return f"{self.name}-system"

    @property
    def volume(self) -> Path:
        return VOLUMES / self.name

    def helm(self, *args: str, values: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(K8S_BIN / "helm"), *args], input=values, capture_output=True, text=True, env=self.kube.env,
            timeout=300,
        )  # fmt: skip

    def install(self) -> None:
        self.kube.kubectl("create", "namespace", self.system)
        if self.replicas == 1:  # several replicas keep nothing on disk: the queue and the packages are in NATS
            self._create_volume()
        queue = {"backend": "nats", "natsUrl": self._install_nats()} if self.replicas > 1 else {}
        repo, _, tag = self.images.platform.rpartition(":")
        runtime_repo, _, runtime_tag = self.images.runtime.rpartition(":")
        values = {
            "image": {"repository": repo, "tag": tag, "pullPolicy": "Never"},
            "runtimeImage": {"repository": runtime_repo, "tag": runtime_tag, "pullPolicy": "Never"},
            "runtimeImages": {
                runtime: dict(zip(("repository", "tag"), image.rpartition(":")[::2], strict=True))
                for runtime, image in (("nodejs20.x", self.images.nodejs), ("python3.13", self.images.python313))
            },
            "functionsNamespace": self.functions,
            "signingKey": SIGNING_KEY,
            "warmPool": {"size": self.warm_pool},
            "gateway": {
                "service": {"type": "NodePort"},
                "persistence": {"storageClass": "-", "size": "1Gi"},
                "extraArgs": self.gateway_args,
                "replicas": self.replicas,
                **({"queue": queue} if queue else {}),
            },
        }
        result = self.helm(
            "install", self.name, str(CHART), "--namespace", self.system, "--values", "-", "--wait",
            "--timeout", "240s", values=json.dumps(values),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr + self.logs("gateway") + self.logs("operator")

    def _install_nats(self) -> str:
        """A one-pod NATS JetStream in the system namespace (the platform image carries Debian's nats-server), as a
        user would run NATS next to the chart; its URL by ClusterIP, since the test cluster has no DNS."""
        labels = {"app": "nats"}
        objects = [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "nats"},
             "spec": {"selector": labels, "ports": [{"name": "client", "port": 4222, "targetPort": 4222}]}},
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "nats"},
             "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
                 "metadata": {"labels": labels},
                 "spec": {"securityContext": {"runAsUser": GATEWAY_UID, "runAsGroup": GATEWAY_UID},
                          "containers": [{"name": "nats", "image": self.images.platform, "imagePullPolicy": "Never",
                                          "command": ["nats-server", "--jetstream", "--store_dir", "/data",
                                                      "--port", "4222"],
                                          "readinessProbe": {"tcpSocket": {"port": 4222}, "periodSeconds": 1},
                                          "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                          "volumes": [{"name": "data", "emptyDir": {}}]}}}},
        ]  # fmt: skip
        for obj in objects:
            self.kube.kubectl("apply", "-n", self.system, "-f", "-", input=json.dumps(obj))
        self.kube.kubectl("rollout", "status", "deployment/nats", "-n", self.system, "--timeout=120s")
        service = self.kube.get("service", "nats", self.system)
        assert service is not None
        return f"nats://{service['spec']['clusterIP']}:4222"

    def admin_key(self) -> tuple[str, str]:
        """The access key the chart made (AccessKeyId, SecretAccessKey)."""
        secret = json.loads(self.kube.kubectl("get", "secret", f"{self.name}-admin-key", "-n", self.system,
                                              "-o", "json").stdout)  # fmt: skip
        data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        return data["accessKeyId"], data["secretAccessKey"]

    def _create_volume(self) -> None:
        """A hostPath PersistentVolume bound in advance to the chart's claim (owned by the gateway's uid)."""
        self.volume.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.volume, GATEWAY_UID, GATEWAY_UID)
        pv = {
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": f"{self.name}-gateway-data", "labels": {"kambda.dev/test-release": self.name}},
            "spec": {
                "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
                "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(self.volume)},
                "claimRef": {"namespace": self.system, "name": f"{self.name}-gateway-data"},
            },
        }  # fmt: skip
        self.kube.kubectl("apply", "-f", "-", input=json.dumps(pv))

    def uninstall(self) -> None:
        self.helm("uninstall", self.name, "--namespace", self.system, "--wait")
        self.kube.kubectl("delete", "namespace", self.system, "--wait=false", check=False)
        self.kube.kubectl("delete", "pv", f"{self.name}-gateway-data", "--wait=false", check=False)
        shutil.rmtree(self.volume, ignore_errors=True)

    # ---- reaching it -------------------------------------------------------------------------------------------

    def node_ports(self) -> dict[str, int]:
        svc = json.loads(self.kube.kubectl("get", "service", f"{self.name}-gateway", "-n", self.system,
                                           "-o", "json").stdout)  # fmt: skip
        return {p["name"]: int(p["nodePort"]) for p in svc["spec"]["ports"]}

    def url(self) -> str:
        return f"http://{node_ip(self.kube)}:{self.node_ports()['http']}"

    def grpc_target(self) -> str:
        return f"{node_ip(self.kube)}:{self.node_ports()['grpc']}"

    def pods(self, component: str) -> list[dict[str, object]]:
        selector = f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component={component}"
        return [p for p in self.kube.list("pods", self.system, selector) if not p["metadata"].get("deletionTimestamp")]

    def logs(self, component: str) -> str:
        """The component's log (and its previous container's, after a restart), for assertion messages."""
        out = []
        for pod in self.pods(component):
            name = pod["metadata"]["name"]  # type: ignore[index]
            for previous in ("--previous", None):
                args = ["logs", name, "-n", self.system, "--tail=300", *([previous] if previous else [])]
                result = self.kube.kubectl(*args, check=False)
                if result.returncode == 0 and result.stdout:
                    out.append(f"--- {name}{' (previous)' if previous else ''}\n{result.stdout}")
        return "\n".join(out) or f"(no {component} logs)"

    def ready(self, url: str | None = None, timeout: float = 120) -> bool:
        target = (url or self.url()) + "/readyz"

        def answers() -> bool:
            try:
                with urllib.request.urlopen(target, timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        return bool(eventually(answers, timeout=timeout))


CACHE = Path("/var/cache/k8s-test-cluster/images")
CTR = ["ctr", "--address", "/run/lc-containerd/containerd.sock", "-n", "k8s.io"]
PYTHON_ENTRYPOINT = """\
#!/bin/sh
# As AWS's base images do: the runtime interface client when a Runtime API is given (Lambda, or kambda's agent).
if [ -z "${AWS_LAMBDA_RUNTIME_API:-}" ]; then echo "AWS_LAMBDA_RUNTIME_API is not set" >&2; exit 64; fi
exec python3 -m awslambdaric "$@"
"""
NODE_ENTRYPOINT = """\
#!/bin/sh
if [ -z "${AWS_LAMBDA_RUNTIME_API:-}" ]; then echo "AWS_LAMBDA_RUNTIME_API is not set" >&2; exit 64; fi
exec node /usr/local/lib/node_modules/aws-lambda-ric/bin/index.mjs "$@"
"""


def function_image(name: str, language: str, files: dict[str, str], tmp: Path) -> str:
    """A Lambda-style container image, laid out as a user's Dockerfile on an AWS base image would lay it out
    (FROM a Debian rootfs with the language, the runtime interface client installed, /lambda-entrypoint.sh as
    ENTRYPOINT, the handler as CMD, the code in WORKDIR /var/task), built without Docker and imported."""
    import hashlib
    import tarfile

    base = CACHE / ("kambda-runtime-base.tar" if language == "python" else "kambda-runtime-nodejs-base.tar")
    root = tmp / f"{name}-rootfs"
    root.mkdir()
    with tarfile.open(base) as archive:
        archive.extractall(root, filter="fully_trusted")  # our own debootstrap tarball (device nodes, links)
    task = root / "var" / "task"
    task.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        (task / path).write_text(text)
    entry = root / "lambda-entrypoint.sh"
    if language == "python":
        entry.write_text(PYTHON_ENTRYPOINT)
        site = root / "usr/local/lib/python3.11/dist-packages"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(site), "awslambdaric"],
                       check=True, capture_output=True, timeout=600)  # fmt: skip
        cmd = '["app.handler"]'
    else:
        entry.write_text(NODE_ENTRYPOINT)
        ric = subprocess.run(["bash", str(ROOT / "hack" / "build-node-ric.sh")], capture_output=True, text=True,
                             check=True, timeout=900).stdout.strip()  # fmt: skip
        shutil.copytree(ric, root / "usr/local/lib/node_modules/aws-lambda-ric", symlinks=True)
        cmd = '["index.handler"]'
    entry.chmod(0o755)
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:12]
    image = f"localhost/{name}:{digest}"
    out = tmp / f"{name}.tar"
    pack = ["bash", str(ROOT / "hack" / "test-cluster.sh"), "pack-rootfs", str(root), image, str(out)]
    subprocess.run([*pack, '["/lambda-entrypoint.sh"]', cmd, "/var/task"], check=True, capture_output=True, timeout=600)
    subprocess.run([*CTR, "images", "import", str(out)], check=True, capture_output=True, timeout=600)
    shutil.rmtree(root)
    out.unlink()
    return image
