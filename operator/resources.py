"""Pure builders: a Function's spec in, the Kubernetes objects that run it out (no I/O, unit-tested dict to dict).

Per Function: a credential Secret and a NetworkPolicy. Per version: an immutable ControllerRevision (the snapshot),
an immutable ConfigMap with the code, and a Deployment created at 0 replicas, whose replicas only the gateway
changes afterwards (through the scale subresource).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kambda import credentials, logconfig, naming
from kambda.specs import (
    DEFAULT_IMAGE_RUNTIMES,
    EPHEMERAL_STORAGE_MB,
    POD_MEMORY_BUDGET_MB,
    VERSIONED_FIELDS,
    FunctionSpec,
    image_runtimes,
    slots_per_pod,
)

LABEL_FUNCTION = naming.FUNCTION_LABEL
LABEL_VERSION = "kambda.dev/version"
LABEL_COMPONENT = "app.kubernetes.io/component"
ANNOTATION_HASH = "kambda.dev/version-hash"
TASK_ROOT = "/var/task"
LAYERS_ROOT = "/opt"  # where Lambda unpacks a function's layers
NODE_RIC_IN_IMAGE = "/usr/local/lib/kambda-node/node_modules/aws-lambda-ric"  # the Node.js runtime image's client
IMAGE_RUNTIME_API_PORT = 9001  # where a container image's client finds the Runtime API (Lambda's)
MILLICPU_PER_MB = 1000 / 1769  # Lambda: 1,769 MB of memory = 1 vCPU
AGENT_MEMORY_MB = 64  # the agent's own share of the pod's memory limit, on top of the function's
# Every function pod's (and pool pod's) security settings: a fixed non-root uid, no privilege, a read-only root.
POD_SECURITY: Mapping[str, Any] = {
    "runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}  # fmt: skip
CONTAINER_SECURITY: Mapping[str, Any] = {
    "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}  # fmt: skip
POOL_TMP_MB = EPHEMERAL_STORAGE_MB[0]  # a pool pod's /tmp: Lambda's default ephemeral storage
POOL_STATE_DIR = "/run/kambda"  # a pool pod's agent's own emptyDir, outside the function's directories
POOL_CODE_WRITE_DIR, POOL_OPT_WRITE_DIR = "/run/kambda-task", "/run/kambda-opt"  # the agent's view of code, layers
POOL_GRACE_SECONDS = 905  # Lambda's longest timeout + 5: a specialised pod keeps the grace it was created with


@dataclass(frozen=True)
class Settings:
    runtime_image: str
    gateway_address: str  # host:port of the gateway's runtime interface, as pods reach it
    signing_key: bytes
    image_pull_policy: str = "IfNotPresent"
    region: str = "us-east-1"
    gateway_selector: Mapping[str, str] | None = None  # labels of gateway pods (NetworkPolicy egress)
    code_store: str | None = None  # base URL of the gateway's code store as pods reach it (packages by sha256)
    runtime_images: Mapping[str, str] = field(default_factory=dict)  # runtime -> image, beyond runtime_image's
    warm_pool_size: int = 0  # pool pods per runtime in use, per namespace (a Namespace's label overrides it)

    def image_for(self, runtime: str) -> str | None:
        """The function-pod image that runs `runtime`, or None: this installation does not offer it."""
        if runtime in self.runtime_images:
            return self.runtime_images[runtime]
        return self.runtime_image if runtime in DEFAULT_IMAGE_RUNTIMES else None

    def offered(self) -> list[str]:
        return image_runtimes(self.runtime_images)


def gateway_endpoints(cluster_ip: str, ports: Mapping[str, int]) -> tuple[str, str]:
    """(runtime interface host:port, code store URL) of a gateway Service with ports named `grpc` and `http`."""
    missing = {"grpc", "http"} - set(ports)
    if not cluster_ip or cluster_ip == "None" or missing:
        raise ValueError(f"the gateway Service needs a ClusterIP and ports named grpc and http (missing: {missing})")
    return f"{cluster_ip}:{ports['grpc']}", f"http://{cluster_ip}:{ports['http']}"


def version_hash(raw_spec: Mapping[str, Any]) -> str:
    snapshot = {k: raw_spec[k] for k in VERSIONED_FIELDS if k in raw_spec}
    return hashlib.sha256(json.dumps(snapshot, sort_keys=True).encode()).hexdigest()[:16]


def owner(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(name: str, fn: FunctionSpec, owner_ref: Mapping[str, Any], version: str | None = None) -> dict[str, Any]:
    labels = {LABEL_FUNCTION: fn.name, "app.kubernetes.io/managed-by": "kambda"}
    if version is not None:
        labels[LABEL_VERSION] = version
    return {"name": name, "namespace": fn.namespace, "labels": labels, "ownerReferences": [dict(owner_ref)]}


def deployment_name(function: str, version: str) -> str:
    return f"{function}-v{version}"


def _credential(metadata: dict[str, Any], credential: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "type": "Opaque",
            "stringData": {"credential": credential}}  # fmt: skip


def credential_secret(fn: FunctionSpec, owner_ref: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    credential = credentials.credential_for(settings.signing_key, f"{fn.namespace}/{fn.name}")
    return _credential(_meta(f"{fn.name}-credential", fn, owner_ref), credential)


def controller_revision(
    fn: FunctionSpec, raw_spec: Mapping[str, Any], version: int, owner_ref: Mapping[str, Any]
) -> dict[str, Any]:
    meta = _meta(f"{fn.name}-v{version}", fn, owner_ref, str(version))
    meta["annotations"] = {ANNOTATION_HASH: version_hash(raw_spec)}
    return {
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": meta,
        "revision": version,
        "data": {"spec": {k: raw_spec[k] for k in VERSIONED_FIELDS if k in raw_spec}},
    }


def _code_keys(files: Mapping[str, str]) -> list[tuple[str, str]]:
    # ConfigMap keys cannot contain "/", so files get neutral keys and are placed by the volume's items.
    return [(f"f{i}", path) for i, path in enumerate(sorted(files))]


def code_config_map(fn: FunctionSpec, version: str, owner_ref: Mapping[str, Any]) -> dict[str, Any] | None:
    if fn.code.files is None:
        return None
    files = fn.code.files
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(f"{fn.name}-v{version}-code", fn, owner_ref, version),
        "immutable": True,
        "data": {key: files[path] for key, path in _code_keys(files)},
    }


def _code_volume(fn: FunctionSpec, version: str) -> dict[str, Any]:
    if fn.code.files is not None:
        items = [{"key": key, "path": path} for key, path in _code_keys(fn.code.files)]
        source = {"name": f"{fn.name}-v{version}-code", "items": items, "defaultMode": 0o555}
        return {"name": "code", "configMap": source}
    if fn.code.config_map is not None:
        return {"name": "code", "configMap": {"name": fn.code.config_map, "defaultMode": 0o555}}
    # code.url or a package: the agent downloads and verifies it here (a zip unpacks to at most 250 MB)
    return {"name": "code", "emptyDir": {"sizeLimit": "300Mi"}}


def sandbox_config(fn: FunctionSpec, version: str, settings: Settings) -> dict[str, Any]:
    """What the agent reads from KAMBDA_SANDBOX (its instance id is the pod's name)."""
    return {
        "function": f"{fn.namespace}/{fn.name}",
        "version": version,
        "runtime": fn.runtime,
        "handler": fn.handler,
        "code_dir": TASK_ROOT,
        "memory_mb": fn.memory_mb,
        "timeout_seconds": fn.timeout_seconds,
        "environment": dict(fn.environment),
        "passthrough_env": [e.name for e in fn.secret_environment],
        "region": settings.region,
        "python": "/usr/bin/python3",
        "use_cgroups": False,  # the pod's own memory limit is the sandbox's
        "code_url": fn.code.url,
        "code_sha256": fn.code.sha256,
        # A package (a sha256 without a URL) and layers come from the code store, with the function's credential.
        "code_store": settings.code_store if needs_code_store(fn) else None,
        "external_runtime": fn.code.image is not None,
        "runtime_api_port": IMAGE_RUNTIME_API_PORT if fn.code.image is not None else 0,
        "node": "/usr/bin/node",
        "node_ric": NODE_RIC_IN_IMAGE,
        "layers": list(fn.layers),
        "opt_dir": LAYERS_ROOT if fn.layers else None,
        "tmp_mb": fn.ephemeral_storage_mb,
        "snap_start": fn.snap_start,
        "log_format": fn.logging.log_format,
        "application_log_level": fn.logging.application_log_level,
        "system_log_level": fn.logging.system_log_level,
    }


def _tmp_volume(fn: FunctionSpec) -> dict[str, Any]:
    """The function's /tmp: Lambda's ephemeral storage, on the node's disk (not memory), evicted past its size."""
    return {"name": "tmp", "emptyDir": {"sizeLimit": f"{fn.ephemeral_storage_mb}Mi"}}


def needs_code_store(fn: FunctionSpec) -> bool:
    """A package (a sha256 without a URL) or layers: fetched from the gateway's code store."""
    return fn.code.package is not None or bool(fn.layers)


def deployment(fn: FunctionSpec, version: str, owner_ref: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    labels = {LABEL_FUNCTION: fn.name, LABEL_VERSION: version, LABEL_COMPONENT: "function"}
    slots = slots_per_pod(fn)
    memory = f"{fn.memory_mb + AGENT_MEMORY_MB}Mi"
    # Packed sandboxes: the limit holds every slot; the request is what the pod needs with its first sandbox, so a
    # pod of 8 slots does not reserve 8 sandboxes' memory on the node before the gateway has spawned them.
    memory_limit = f"{fn.memory_mb * slots + AGENT_MEMORY_MB}Mi"
    cpu = f"{max(50, round(fn.memory_mb * MILLICPU_PER_MB))}m"
    env: list[dict[str, Any]] = [
        {"name": "KAMBDA_GATEWAY", "value": settings.gateway_address},
        {"name": "KAMBDA_SLOTS", "value": str(slots)},
        {"name": "KAMBDA_SANDBOX", "value": json.dumps(sandbox_config(fn, version, settings), sort_keys=True)},
        {
            "name": "KAMBDA_CREDENTIAL",
            "valueFrom": {"secretKeyRef": {"name": f"{fn.name}-credential", "key": "credential"}},
        },
        *(
            {"name": e.name, "valueFrom": {"secretKeyRef": {"name": e.secret_name, "key": e.key}}}
            for e in fn.secret_environment
        ),
    ]
    pod_spec: dict[str, Any] = {
        # No service-account token unless the Function names an account (its "execution role").
        "automountServiceAccountToken": fn.service_account_name is not None,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": fn.timeout_seconds + 5,
        "securityContext": dict(POD_SECURITY),
        "containers": [
            {
                "name": "function",
                "image": settings.image_for(fn.runtime) or settings.runtime_image,
                "imagePullPolicy": settings.image_pull_policy,
                "command": ["python3", "-m", "kambda.runtime.agent"],
                "env": env,
                # CPU is requested in proportion to memory (Lambda's 1,769 MB = 1 vCPU), so under contention shares
                # follow memory, but it is not capped: a 128 MB function capped at 72 millicores would spend
                # seconds importing its runtime and the agent (Lambda itself does not throttle INIT either).
                "resources": {"requests": {"memory": memory, "cpu": cpu}, "limits": {"memory": memory_limit}},
                "securityContext": dict(CONTAINER_SECURITY),
                "volumeMounts": [
                    {"name": "code", "mountPath": TASK_ROOT, "readOnly": fn.code.sha256 is None},
                    {"name": "tmp", "mountPath": "/tmp"},
                    *([{"name": "layers", "mountPath": LAYERS_ROOT}] if fn.layers else []),
                ],
            }
        ],
        "volumes": [
            _code_volume(fn, version),
            _tmp_volume(fn),
            # The agent unpacks the layers here, in order (at most 250 MB with the code, checked by the agent).
            *([{"name": "layers", "emptyDir": {"sizeLimit": "300Mi"}}] if fn.layers else []),
        ],
    }
    if fn.code.image is not None:
        pod_spec = _image_pod(pod_spec, fn, version, settings, cpu)
    if fn.service_account_name is not None:
        pod_spec["serviceAccountName"] = fn.service_account_name
    meta = _meta(deployment_name(fn.name, version), fn, owner_ref, version)
    refusal = pool_refusal(fn)
    meta["annotations"] = (
        {naming.WARM_POOL_ANNOTATION: fn.runtime} if refusal is None else {naming.WARM_POOL_REFUSAL: refusal}
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": 0,  # set once at creation; from then on only the gateway scales it
            "revisionHistoryLimit": 0,
            "selector": {"matchLabels": {LABEL_FUNCTION: fn.name, LABEL_VERSION: version}},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def _image_pod(
    pod_spec: dict[str, Any], fn: FunctionSpec, version: str, settings: Settings, cpu: str
) -> dict[str, Any]:
    """A container-image function's pod: the user's image, unmodified, runs its own entry point (which starts its
    runtime interface client because AWS_LAMBDA_RUNTIME_API is set); the agent beside it serves that Runtime API
    on 127.0.0.1:9001. One process namespace, so the agent sees the runtime's processes: it ends them at the
    deadline and notices when they exit (external.py)."""
    agent = {**pod_spec["containers"][0], "name": "agent"}
    agent_memory = f"{AGENT_MEMORY_MB}Mi"
    agent["resources"] = {"requests": {"memory": agent_memory, "cpu": "50m"}, "limits": {"memory": agent_memory}}
    agent["volumeMounts"] = [{"name": "agent-tmp", "mountPath": "/tmp"}]
    # The kubelet starts a pod's containers in order and starts the next only when the previous one's postStart
    # hook has returned: so the image's client never dials a Runtime API that is not listening yet.
    agent["lifecycle"] = {"postStart": {"exec": {"command": ["python3", "-c", _AWAIT_RUNTIME_API]}}}
    config = fn.image_config
    memory = f"{fn.memory_mb}Mi"
    function: dict[str, Any] = {
        "name": "function",
        "image": fn.code.image,
        "imagePullPolicy": settings.image_pull_policy,
        "env": [
            *({"name": k, "value": v} for k, v in lambda_environment(fn, version, settings).items()),
            *(
                {"name": e.name, "valueFrom": {"secretKeyRef": {"name": e.secret_name, "key": e.key}}}
                for e in fn.secret_environment
            ),
        ],
        "resources": {"requests": {"memory": memory, "cpu": cpu}, "limits": {"memory": memory}},
        "securityContext": agent["securityContext"],
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if config.entry_point is not None:
        function["command"] = list(config.entry_point)
    if config.command is not None:
        function["args"] = list(config.command)
    if config.working_directory is not None:
        function["workingDir"] = config.working_directory
    return {
        **pod_spec,
        "shareProcessNamespace": True,
        "containers": [agent, function],
        "volumes": [
            _tmp_volume(fn),
            {"name": "agent-tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        ],
    }


_AWAIT_RUNTIME_API = f"""\
import socket, time
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        socket.create_connection(("127.0.0.1", {IMAGE_RUNTIME_API_PORT}), timeout=1).close()
        break
    except OSError:
        time.sleep(0.02)
"""


def lambda_environment(fn: FunctionSpec, version: str, settings: Settings) -> dict[str, str]:
    """The reserved variables Lambda gives a container-image function's runtime, and the function's own (the
    agent builds the same per process for the runtimes it starts itself)."""
    return {
        "LANG": "en_US.UTF-8",
        "TZ": ":UTC",
        # Not among Lambda's reserved variables: a function's own setting of them is kept.
        **logconfig.runtime_env(fn.logging.log_format, fn.logging.application_log_level),
        **fn.environment,
        "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{IMAGE_RUNTIME_API_PORT}",
        "LAMBDA_TASK_ROOT": TASK_ROOT,
        "AWS_REGION": settings.region,
        "AWS_DEFAULT_REGION": settings.region,
        "AWS_LAMBDA_FUNCTION_NAME": fn.name,
        "AWS_LAMBDA_FUNCTION_VERSION": version,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(fn.memory_mb),
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{fn.name}",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
    }


def _gateway_and_dns(settings: Settings) -> list[dict[str, Any]]:
    """Egress rules: the gateway's pods, and the cluster's DNS."""
    gateway = {"namespaceSelector": {}, "podSelector": {"matchLabels": dict(settings.gateway_selector or {})}}
    dns = {"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}
    return [
        {"to": [gateway]},
        {"to": [dns], "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
    ]


def network_policy(fn: FunctionSpec, owner_ref: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """Nothing may connect to a function's pods; egress per `spec.network.egress` (the gateway is always allowed)."""
    policy: dict[str, Any] = {
        "podSelector": {"matchLabels": {LABEL_FUNCTION: fn.name}},
        "policyTypes": ["Ingress"],
        "ingress": [],
    }
    if fn.egress != "all":
        rules = _gateway_and_dns(settings)
        if fn.egress == "cluster":
            rules.append({"to": [{"namespaceSelector": {}}]})
        policy["policyTypes"].append("Egress")
        policy["egress"] = rules
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(fn.name, fn, owner_ref),
        "spec": policy,
    }


def code_refusal(pod: Mapping[str, Any]) -> str | None:
    """Why a function pod's agent refused its code (its container's termination message), if it did."""
    prefix = f"{naming.CODE_REFUSED}: "
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        for state in (status.get("state"), status.get("lastState")):
            message = ((state or {}).get("terminated") or {}).get("message") or ""
            if message.startswith(prefix):
                return str(message[len(prefix) :].strip())
    return None


def pool_refusal(fn: FunctionSpec) -> str | None:
    """Why a pod of the function's warm pool could not become its pod exactly as a dedicated one would be, or None.

    What a pod is created with and cannot change later (its image, service account, environment, volumes, memory
    limit) must match; what is chosen by labels (the NetworkPolicy, so every `network` setting) is applied when the
    pod is relabelled, and the uid, the read-only root and the dropped capabilities are the same for every pod."""
    if fn.code.image is not None:
        return "a container-image function runs its own image"
    if fn.service_account_name is not None:
        return "serviceAccountName: a pod's service account is fixed when the pod is created"
    if fn.secret_environment:
        return "environment from Secrets: a pod's environment is fixed when the pod is created"
    if fn.code.config_map is not None:
        return "code from a ConfigMap: a pod's volumes are fixed when the pod is created"
    if slots_per_pod(fn) * fn.memory_mb > POD_MEMORY_BUDGET_MB:
        return f"{slots_per_pod(fn)} sandboxes of {fn.memory_mb} MB exceed a pool pod's {POD_MEMORY_BUDGET_MB} MB"
    if fn.ephemeral_storage_mb > POOL_TMP_MB:
        return f"ephemeral storage of {fn.ephemeral_storage_mb} MB exceeds a pool pod's {POOL_TMP_MB} MB"
    return None


def _pool_meta(name: str, namespace: str, runtime: str) -> dict[str, Any]:
    labels = {naming.POOL_LABEL: naming.pool_deployment(runtime), "app.kubernetes.io/managed-by": "kambda"}
    return {"name": name, "namespace": namespace, "labels": labels}


def pool_deployment(namespace: str, runtime: str, size: int, settings: Settings) -> dict[str, Any]:
    """A namespace's warm pool for a runtime: generic pods whose agent waits for the gateway to specialise it
    (runtime.proto `Wait`). Sized for the largest function a pool may take (POD_MEMORY_BUDGET_MB of sandboxes);
    it requests what the smallest function's first sandbox needs, as a dedicated pod of 128 MB does."""
    name = naming.pool_deployment(runtime)
    labels = {naming.POOL_LABEL: name, LABEL_COMPONENT: "pool"}
    image = settings.image_for(runtime) or settings.runtime_image
    pool = json.dumps(
        {"namespace": namespace, "runtime": runtime, "state_dir": POOL_STATE_DIR,
         "code_write_dir": POOL_CODE_WRITE_DIR, "opt_write_dir": POOL_OPT_WRITE_DIR}, sort_keys=True,
    )  # fmt: skip
    smallest = 128
    container = {
        "name": "function",  # the name a dedicated pod's container has: `kubectl logs` finds it the same way
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python3", "-m", "kambda.runtime.agent", "--pool"],
        "env": [
            {"name": "KAMBDA_GATEWAY", "value": settings.gateway_address},
            {"name": "KAMBDA_POOL", "value": pool},
            {"name": "KAMBDA_POOL_CREDENTIAL",
             "valueFrom": {"secretKeyRef": {"name": f"{name}-credential", "key": "credential"}}},
        ],
        "resources": {
            "requests": {"memory": f"{smallest + AGENT_MEMORY_MB}Mi",
                         "cpu": f"{max(50, round(smallest * MILLICPU_PER_MB))}m"},
            "limits": {"memory": f"{POD_MEMORY_BUDGET_MB + AGENT_MEMORY_MB}Mi"},
        },
        "securityContext": dict(CONTAINER_SECURITY),
        # The code and the layers are where the runtime looks, read-only (as a dedicated pod's inline code is),
        # and writable elsewhere for the agent, which writes or fetches them once the pod is specialised.
        "volumeMounts": [
            {"name": "code", "mountPath": TASK_ROOT, "readOnly": True},
            {"name": "code", "mountPath": POOL_CODE_WRITE_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "layers", "mountPath": LAYERS_ROOT, "readOnly": True},
            {"name": "layers", "mountPath": POOL_OPT_WRITE_DIR},
            {"name": "state", "mountPath": POOL_STATE_DIR},
        ],
    }  # fmt: skip
    pod_spec = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": POOL_GRACE_SECONDS,
        "securityContext": dict(POD_SECURITY),
        "containers": [container],
        "volumes": [
            {"name": "code", "emptyDir": {"sizeLimit": "300Mi"}},
            {"name": "tmp", "emptyDir": {"sizeLimit": f"{POOL_TMP_MB}Mi"}},
            {"name": "layers", "emptyDir": {"sizeLimit": "300Mi"}},
            # What the pod was specialised for (no secret): an agent that restarts asks for that order again.
            {"name": "state", "emptyDir": {"sizeLimit": "1Mi"}},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _pool_meta(name, namespace, runtime),
        "spec": {
            "replicas": size,
            "revisionHistoryLimit": 0,
            "selector": {"matchLabels": {naming.POOL_LABEL: name}},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def pool_owned(obj: dict[str, Any], pool_owner: Mapping[str, Any]) -> dict[str, Any]:
    """`obj` owned by its pool's Deployment: it goes when the pool does."""
    return {**obj, "metadata": {**obj["metadata"], "ownerReferences": [dict(pool_owner)]}}


def pool_credential_secret(namespace: str, runtime: str, settings: Settings) -> dict[str, Any]:
    """A pool's credential: it lets a pool pod wait to be specialised, and pull no function's work."""
    name = naming.pool_deployment(runtime)
    credential = credentials.credential_for(settings.signing_key, naming.pool_key(namespace, runtime))
    return _credential(_pool_meta(f"{name}-credential", namespace, runtime), credential)


def pool_network_policy(namespace: str, runtime: str, settings: Settings) -> dict[str, Any]:
    """A pool pod talks to the gateway (and DNS) only, and nothing connects to it; once specialised it carries the
    function's label instead of the pool's, and the function's policy is the one that applies."""
    name = naming.pool_deployment(runtime)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _pool_meta(name, namespace, runtime),
        "spec": {
            "podSelector": {"matchLabels": {naming.POOL_LABEL: name}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": _gateway_and_dns(settings),
        },
    }


def pool_size(default: int, namespace_labels: Mapping[str, str]) -> int:
    """The pool size in a namespace: its label's if it is a whole number >= 0, else the operator's default."""
    value = namespace_labels.get(naming.WARM_POOL_SIZE_LABEL, "")
    return int(value) if value.isdigit() else default
