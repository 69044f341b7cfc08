"""The Helm chart against the real API server: lint, server-side dry run, install, and least-privilege RBAC."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tests.kube import K8S_BIN, ROOT, Kube

CHART = str(ROOT / "charts" / "kambda")


def helm(kube: Kube, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(K8S_BIN / "helm"), *args], capture_output=True, text=True, env=kube.env, timeout=180)


@pytest.fixture(scope="module")
def release(kube: Kube) -> Iterator[tuple[str, str, str]]:
    """(release, system namespace, functions namespace), installed for the module and uninstalled after it."""
    suffix = uuid.uuid4().hex[:6]
    name, system, functions = f"kambda-{suffix}", f"kambda-system-{suffix}", f"fns-{suffix}"
    for ns in (system, functions):
        kube.kubectl("create", "namespace", ns)
    result = helm(kube, "install", name, CHART, "--namespace", system, "--set", f"functionsNamespace={functions}")
    assert result.returncode == 0, result.stderr
    yield name, system, functions
    helm(kube, "uninstall", name, "--namespace", system)
    kube.kubectl("delete", "namespace", system, functions, "--wait=false", check=False)


def test_helm_lint_is_clean(kube: Kube) -> None:
    result = helm(kube, "lint", "--strict", CHART)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[ERROR]" not in result.stdout and "[WARNING]" not in result.stdout


def test_values_schema_refuses_bad_values(kube: Kube) -> None:
    result = helm(kube, "template", "x", CHART, "--set", "gateway.queue.backend=kafka")
    assert result.returncode != 0 and "backend" in result.stderr


def test_template_applies_with_server_side_dry_run(kube: Kube, namespace: str) -> None:
    rendered = helm(
        kube, "template", "dry", CHART, "--namespace", namespace, "--set", f"functionsNamespace={namespace}"
    )
    assert rendered.returncode == 0, rendered.stderr
    applied = kube.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered.stdout, check=False)
    assert applied.returncode == 0, applied.stderr


def test_install_creates_every_object(kube: Kube, release: tuple[str, str, str]) -> None:
    name, system, functions = release
    for kind, obj, ns in [
        ("deployment", f"{name}-operator", system), ("deployment", f"{name}-gateway", system),
        ("service", f"{name}-gateway", system), ("serviceaccount", f"{name}-operator", system),
        ("serviceaccount", f"{name}-gateway", system), ("secret", f"{name}-signing-key", system),
        ("networkpolicy", f"{name}-gateway", system), ("networkpolicy", f"{name}-operator", system),
        ("role", f"{name}-gateway", functions), ("rolebinding", f"{name}-gateway", functions),
    ]:  # fmt: skip
        assert kube.get(kind, obj, ns) is not None, f"{kind}/{obj} missing in {ns}"
    for kind in ("clusterrole", "clusterrolebinding"):
        assert kube.kubectl("get", kind, f"{name}-operator", check=False).returncode == 0
    args = kube.get("deployment", f"{name}-gateway", system)["spec"]["template"]["spec"]["containers"][0]["args"]  # type: ignore[index]
    assert f"--namespace={functions}" in args and "--backend=kubernetes" in args
    key = kube.get("secret", f"{name}-signing-key", system)["data"]["key"]  # type: ignore[index]
    assert len(key) > 40


def can(kube: Kube, account: str, verb: str, resource: str, namespace: str) -> bool:
    resource, _, subresource = resource.partition("/")
    extra = [f"--subresource={subresource}"] if subresource else []
    result = kube.kubectl("auth", "can-i", verb, resource, *extra, "-n", namespace, f"--as={account}", check=False)
    return result.stdout.strip() == "yes"


def test_rbac_allows_what_each_needs_and_nothing_else(kube: Kube, release: tuple[str, str, str]) -> None:
    name, system, functions = release
    operator = f"system:serviceaccount:{system}:{name}-operator"
    gateway = f"system:serviceaccount:{system}:{name}-gateway"
    allowed = [
        (operator, "create", "deployments.apps", functions),
        (operator, "create", "controllerrevisions.apps", functions),
        (operator, "patch", "functions.kambda.dev/status", functions),
        (operator, "watch", "aliases.kambda.dev", "any"),
        (operator, "create", "secrets", functions),
        (operator, "create", "networkpolicies.networking.k8s.io", functions),
        (operator, "create", "events", functions),
        (gateway, "patch", "deployments.apps/scale", functions), (gateway, "watch", "functions.kambda.dev", functions),
        (gateway, "get", "controllerrevisions.apps", functions), (gateway, "delete", "pods", functions),
        # the Lambda control-plane API: Functions and Aliases are its source of truth
        (gateway, "create", "functions.kambda.dev", functions), (gateway, "update", "functions.kambda.dev", functions),
        (gateway, "delete", "aliases.kambda.dev", functions),
    ]  # fmt: skip
    refused = [
        (operator, "patch", "deployments.apps/scale", functions),  # replicas belong to the gateway
        (operator, "list", "secrets", functions),
        (operator, "delete", "nodes", ""),
        (operator, "create", "pods", functions),
        (operator, "update", "deployments.apps", functions), (operator, "create", "clusterrolebindings", ""),
        (gateway, "get", "secrets", functions), (gateway, "create", "deployments.apps", functions),
        (gateway, "patch", "deployments.apps/scale", system), (gateway, "delete", "pods", system),
        (gateway, "patch", "functions.kambda.dev/status", functions), (gateway, "list", "pods", functions),
        (gateway, "create", "functions.kambda.dev", system), (gateway, "delete", "controllerrevisions.apps", functions),
    ]  # fmt: skip
    for account, verb, resource, ns in allowed:
        assert can(kube, account, verb, resource, ns or "default"), f"{account} cannot {verb} {resource} in {ns}"
    # The access keys: exactly one Secret (the chart's), never another one of the release's namespace.
    for verb, secret, expected in (("watch", f"{name}-access-keys", "yes"), ("get", f"{name}-access-keys", "yes"),
                                   ("get", f"{name}-signing-key", "no"), ("list", "", "no")):  # fmt: skip
        target = f"secrets/{secret}" if secret else "secrets"
        answer = kube.kubectl("auth", "can-i", verb, target, "-n", system, f"--as={gateway}", check=False)
        assert answer.stdout.strip() == expected, (verb, target, answer.stdout)
    for account, verb, resource, ns in refused:
        assert not can(kube, account, verb, resource, ns or "default"), f"{account} may {verb} {resource} in {ns}"


def test_the_gateways_data_outlives_its_pod_with_sqlite_and_is_shared_through_nats_otherwise(kube: Kube) -> None:
    import yaml

    def objects(*sets: str) -> list[dict[str, object]]:
        result = helm(kube, "template", "x", CHART, *[a for s in sets for a in ("--set", s)])
        assert result.returncode == 0, result.stderr
        return [d for d in yaml.safe_load_all(result.stdout) if d]

    def gateway(docs: list[dict[str, object]]) -> dict[str, object]:
        return next(d for d in docs if d["kind"] == "Deployment" and str(d["metadata"]["name"]).endswith("-gateway"))  # type: ignore[index]

    sqlite = objects()
    claim = next(d for d in sqlite if d["kind"] == "PersistentVolumeClaim")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"  # type: ignore[index]
    spec = gateway(sqlite)["spec"]
    assert spec["strategy"] == {"type": "Recreate"}  # type: ignore[index]
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}  # type: ignore[index]
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]  # type: ignore[index]

    shared = objects("gateway.queue.backend=nats", "gateway.replicas=3")
    assert not [d for d in shared if d["kind"] == "PersistentVolumeClaim"]
    spec = gateway(shared)["spec"]
    assert spec["replicas"] == 3  # type: ignore[index]
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}  # type: ignore[index]
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}  # type: ignore[index]
    assert volumes["data"] == {"name": "data", "emptyDir": {}}


def test_replicas_come_with_leases_a_disruption_budget_and_a_clear_refusal_on_sqlite(kube: Kube) -> None:
    import yaml

    def render(*values: str) -> subprocess.CompletedProcess[str]:
        return helm(kube, "template", "r", CHART, "--namespace", "sys", *(a for v in values for a in ("--set", v)))

    def docs(*values: str) -> list[dict]:  # type: ignore[type-arg]
        result = render(*values)
        assert result.returncode == 0, result.stderr
        return [d for d in yaml.safe_load_all(result.stdout) if d]

    refused = render("gateway.replicas=3")  # the SQLite queue: one file, one writer
    assert refused.returncode != 0
    assert "gateway.replicas=3 needs gateway.queue.backend=nats" in refused.stderr, refused.stderr
    alone = docs()
    assert not [d for d in alone if d["kind"] == "PodDisruptionBudget"]
    assert not [d for d in alone if d["kind"] == "Role" and d["metadata"]["name"].endswith("-leases")]

    shared = docs("gateway.queue.backend=nats")
    gateway = next(d for d in shared if d["kind"] == "Deployment" and d["metadata"]["name"] == "r-gateway")
    assert gateway["spec"]["replicas"] == 2  # the default with NATS
    pod = gateway["spec"]["template"]["spec"]
    assert pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    container = pod["containers"][0]
    assert "--replica-leases=sys/r-gateway" in container["args"] and "--advertise-host=$(POD_IP)" in container["args"]
    assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    budget = next(d for d in shared if d["kind"] == "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    role = next(d for d in shared if d["kind"] == "Role" and d["metadata"]["name"] == "r-gateway-leases")
    assert role["metadata"]["namespace"] == "sys"
    assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                              "verbs": ["get", "list", "watch", "create", "update", "delete"]}]  # fmt: skip
