"""The real operator (Kopf, as a subprocess) against the real API server: versions, Deployments, Secrets, aliases,
idempotence across restarts, ownership of replicas, and clean-up by owner references."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from kambda import credentials
from tests.kube import SIGNING_KEY, Kube, Operator, eventually


def manifest(name: str, code: str = "def handler(e, c):\n    return 1\n", extra: str = "") -> str:
    body = json.dumps({"app.py": code})
    return (
        f"apiVersion: kambda.dev/v1alpha1\nkind: Function\nmetadata: {{name: {name}}}\n"
        f"spec: {{runtime: python3.11, handler: app.handler, memoryMB: 256, timeoutSeconds: 10,"
        f" environment: {{GREETING: hi}}, code: {{files: {body}}}{extra}}}\n"
    )


def ready(kube: Kube, name: str, namespace: str, version: str) -> dict[str, Any] | None:
    fn = kube.get("function", name, namespace)
    status = (fn or {}).get("status") or {}
    conditions = {c["type"]: c for c in status.get("conditions") or []}
    if status.get("latestVersion") == version and conditions.get("Ready", {}).get("status") == "True":
        return fn
    return None


def revisions(kube: Kube, name: str, namespace: str) -> dict[str, str]:
    """version -> resourceVersion of its ControllerRevision."""
    items = kube.list("controllerrevisions", namespace, f"kambda.dev/function={name}")
    return {str(r["revision"]): r["metadata"]["resourceVersion"] for r in items}


def test_function_gets_secret_version_and_a_zero_replica_deployment(
    kube: Kube, namespace: str, operator: Operator
) -> None:
    assert kube.apply(manifest("alpha"), namespace).returncode == 0
    assert eventually(lambda: ready(kube, "alpha", namespace, "1")), operator.logs()

    secret = kube.get("secret", "alpha-credential", namespace)
    assert secret is not None
    expected = credentials.credential_for(SIGNING_KEY.encode(), f"{namespace}/alpha")
    assert base64.b64decode(secret["data"]["credential"]).decode() == expected
    assert revisions(kube, "alpha", namespace).keys() == {"1"}

    deployment = kube.get("deployment", "alpha-v1", namespace)
    assert deployment is not None and deployment["spec"]["replicas"] == 0
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "localhost/kambda-runtime:test"
    # Packed sandboxes: 256 MB gives 1024 // 256 = 4 slots; the limit holds them all + the agent's share, the
    # request one (the scheduler reserves what the first sandbox needs; more are spawned while memory is free).
    assert container["resources"]["limits"] == {"memory": "1088Mi"}
    assert container["resources"]["requests"] == {"memory": "320Mi", "cpu": "145m"}  # 256/1769 vCPU
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }  # fmt: skip
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod
    env = {e["name"]: e for e in container["env"]}
    sandbox = json.loads(env["KAMBDA_SANDBOX"]["value"])
    assert sandbox["function"] == f"{namespace}/alpha" and sandbox["version"] == "1"
    assert sandbox["memory_mb"] == 256 and sandbox["timeout_seconds"] == 10
    assert sandbox["environment"] == {"GREETING": "hi"} and sandbox["handler"] == "app.handler"
    assert env["KAMBDA_GATEWAY"]["value"] == "10.244.0.1:9090"
    assert env["KAMBDA_SLOTS"]["value"] == "4"
    assert env["KAMBDA_CREDENTIAL"]["valueFrom"]["secretKeyRef"] == {"name": "alpha-credential", "key": "credential"}
    code = kube.get("configmap", "alpha-v1-code", namespace)
    assert code is not None and code["immutable"] is True and "def handler" in code["data"]["f0"]
    policy = kube.get("networkpolicy", "alpha", namespace)
    assert policy is not None and policy["spec"]["policyTypes"] == ["Ingress"]


def test_service_account_and_egress(kube: Kube, namespace: str, operator: Operator) -> None:
    extra = ", serviceAccountName: worker, network: {egress: none}"
    assert kube.apply(manifest("beta", extra=extra), namespace).returncode == 0
    assert eventually(lambda: ready(kube, "beta", namespace, "1")), operator.logs()
    pod = kube.get("deployment", "beta-v1", namespace)["spec"]["template"]["spec"]  # type: ignore[index]
    assert pod["serviceAccountName"] == "worker" and pod["automountServiceAccountToken"] is True
    policy = kube.get("networkpolicy", "beta", namespace)
    assert policy is not None and policy["spec"]["policyTypes"] == ["Ingress", "Egress"]


def test_code_change_publishes_version_two_beside_one(kube: Kube, namespace: str, operator: Operator) -> None:
    assert kube.apply(manifest("alpha", code="def handler(e, c):\n    return 2\n"), namespace).returncode == 0
    assert eventually(lambda: ready(kube, "alpha", namespace, "2")), operator.logs()
    assert revisions(kube, "alpha", namespace).keys() == {"1", "2"}
    assert kube.get("deployment", "alpha-v1", namespace) is not None
    assert kube.get("deployment", "alpha-v2", namespace) is not None
    status = kube.get("function", "alpha", namespace)["status"]  # type: ignore[index]
    assert [v["version"] for v in status["versions"]] == ["1", "2"]


def test_function_level_settings_do_not_publish_a_version(kube: Kube, namespace: str, operator: Operator) -> None:
    extra = ", scaling: {idleSeconds: 7}, concurrency: {reserved: 3}"
    code = "def handler(e, c):\n    return 2\n"
    before = revisions(kube, "alpha", namespace)
    assert kube.apply(manifest("alpha", code=code, extra=extra), namespace).returncode == 0
    assert eventually(lambda: (kube.get("function", "alpha", namespace) or {}).get("status", {}).get(
        "observedGeneration") == kube.get("function", "alpha", namespace)["metadata"]["generation"])  # type: ignore[index]  # fmt: skip
    assert revisions(kube, "alpha", namespace) == before


def test_alias_routing_in_status(kube: Kube, namespace: str, operator: Operator) -> None:
    alias = (
        "apiVersion: kambda.dev/v1alpha1\nkind: Alias\nmetadata: {name: live}\n"
        "spec: {function: alpha, version: '1', additionalVersionWeights: {'2': 0.1}}\n"
    )
    assert kube.apply(alias, namespace).returncode == 0

    def routing() -> dict[str, float] | None:
        status = (kube.get("alias", "live", namespace) or {}).get("status") or {}
        return status.get("routing")  # type: ignore[no-any-return]

    assert eventually(routing) == {"1": 0.9, "2": 0.1}, operator.logs()
    too_much = alias.replace("{'2': 0.1}", "{'2': 0.7, '1': 0.6}").replace("name: live", "name: greedy")
    assert kube.apply(too_much, namespace).returncode == 0

    def refused() -> bool:
        status = (kube.get("alias", "greedy", namespace) or {}).get("status") or {}
        return any(c["status"] == "False" and c["reason"] == "InvalidRouting" for c in status.get("conditions") or [])

    assert eventually(refused), operator.logs()
    events = kube.kubectl("get", "events", "-n", namespace, "--field-selector", "involvedObject.name=greedy").stdout
    assert "InvalidRouting" in events


def test_invalid_spec_is_reported_in_status_and_events(kube: Kube, namespace: str, operator: Operator) -> None:
    bad = manifest("gamma").replace("GREETING: hi", "AWS_REGION: mars-1")  # the schema allows it; Lambda does not
    assert kube.apply(bad, namespace).returncode == 0

    def refused() -> str | None:
        status = (kube.get("function", "gamma", namespace) or {}).get("status") or {}
        for c in status.get("conditions") or []:
            if c["status"] == "False":
                return str(c["message"])
        return None

    message = eventually(refused)
    assert message and "spec.environment.AWS_REGION: is reserved" in message


def test_the_gateway_owns_replicas_and_a_restart_changes_nothing(
    kube: Kube, namespace: str, operator: Operator
) -> None:
    kube.kubectl("scale", "deployment/alpha-v1", "--replicas=3", "-n", namespace)  # as the gateway would
    before_revisions = revisions(kube, "alpha", namespace)
    deployments = {d["metadata"]["name"]: d["metadata"]["resourceVersion"]
                   for d in kube.list("deployments", namespace, "kambda.dev/function=alpha")}  # fmt: skip
    operator.stop()
    operator.start()
    time.sleep(8)  # resume handlers run at start
    assert revisions(kube, "alpha", namespace) == before_revisions
    after = {d["metadata"]["name"]: d["metadata"]["resourceVersion"]
             for d in kube.list("deployments", namespace, "kambda.dev/function=alpha")}  # fmt: skip
    assert after == deployments
    assert kube.get("deployment", "alpha-v1", namespace)["spec"]["replicas"] == 3  # type: ignore[index]
    assert "Traceback" not in operator.logs()


def test_old_versions_are_collected_unless_an_alias_routes_to_them(
    kube: Kube, namespace: str, operator: Operator
) -> None:
    extra = ", retainVersions: 1"
    for i in range(3, 5):
        assert kube.apply(manifest("alpha", code=f"def handler(e, c):\n    return {i}\n", extra=extra), namespace)
        assert eventually(lambda i=i: ready(kube, "alpha", namespace, str(i))), operator.logs()  # type: ignore[misc]
    # `live` routes to 1 and 2; 3 is neither newest nor routed.
    assert eventually(lambda: revisions(kube, "alpha", namespace).keys() == {"1", "2", "4"})
    assert kube.get("deployment", "alpha-v3", namespace) is None
    assert kube.get("configmap", "alpha-v3-code", namespace) is None


def test_deleting_the_function_removes_what_it_owned(kube: Kube, namespace: str, operator: Operator) -> None:
    kube.kubectl("delete", "function", "beta", "-n", namespace)

    def gone() -> bool:
        return all(
            not kube.list(kind, namespace, "kambda.dev/function=beta")
            for kind in ("deployments", "controllerrevisions", "configmaps", "secrets", "networkpolicies")
        )

    assert eventually(gone, timeout=90)


def test_functions_that_may_use_the_warm_pool_own_it_and_a_namespace_label_sizes_it(
    kube: Kube, namespace: str, operator: Operator
) -> None:
    assert kube.apply(manifest("pool-a"), namespace).returncode == 0
    assert kube.apply(manifest("pool-b"), namespace).returncode == 0
    assert kube.apply(manifest("pool-sa", extra=", serviceAccountName: reader"), namespace).returncode == 0
    names = ("pool-a", "pool-b", "pool-sa")
    assert eventually(lambda: all(ready(kube, name, namespace, "1") for name in names)), operator.logs()

    def owners() -> set[str]:
        pool = kube.get("deployment", "kambda-pool-python3-11", namespace) or {"metadata": {}}
        return {o["name"] for o in pool["metadata"].get("ownerReferences") or []}

    # Among the owners (with the module's other functions that may use the pool), not pool-sa: it may not use it.
    assert eventually(lambda: {"pool-a", "pool-b"} <= owners()), operator.logs()
    assert "pool-sa" not in owners()
    pool = kube.get("deployment", "kambda-pool-python3-11", namespace)
    assert pool is not None and pool["spec"]["replicas"] == 1  # the operator's default (--warm-pool-size)
    assert all(o["controller"] is False for o in pool["metadata"]["ownerReferences"])
    for kind, name in (("secret", "kambda-pool-python3-11-credential"), ("networkpolicy", "kambda-pool-python3-11")):
        obj = kube.get(kind, name, namespace)
        assert obj is not None, (kind, name)
        assert [o["name"] for o in obj["metadata"]["ownerReferences"]] == ["kambda-pool-python3-11"]
    annotations = {n: (kube.get("deployment", f"{n}-v1", namespace) or {})["metadata"]["annotations"]
                   for n in ("pool-a", "pool-sa")}  # fmt: skip
    assert annotations["pool-a"]["kambda.dev/warm-pool"] == "python3.11"
    assert annotations["pool-sa"]["kambda.dev/warm-pool-refusal"].startswith("serviceAccountName")

    # The namespace's label sizes its pool at the next reconcile (here: a change of a non-versioned field).
    assert kube.kubectl("label", "namespace", namespace, "kambda.dev/warm-pool-size=3").returncode == 0
    assert kube.apply(manifest("pool-a", extra=", scaling: {idleSeconds: 7}"), namespace).returncode == 0

    def size() -> int:
        return int((kube.get("deployment", "kambda-pool-python3-11", namespace) or {})["spec"]["replicas"])

    assert eventually(lambda: size() == 3), operator.logs()
    assert kube.kubectl("label", "namespace", namespace, "kambda.dev/warm-pool-size=0", "--overwrite").returncode == 0
    assert kube.apply(manifest("pool-b", extra=", scaling: {idleSeconds: 7}"), namespace).returncode == 0
    assert eventually(lambda: size() == 0), operator.logs()
    kube.kubectl("label", "namespace", namespace, "kambda.dev/warm-pool-size-")
