"""The operator's pure parts: version numbering, garbage collection, alias routing, and the objects it builds."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kambda.operator import resources, versioning
from kambda.operator.versioning import Revision
from kambda.specs import SpecError, parse_function

SETTINGS = resources.Settings(runtime_image="img:1", gateway_address="gw:9090", signing_key=b"k",
                              gateway_selector={"app": "gw"})  # fmt: skip
OWNER = {"apiVersion": "kambda.dev/v1alpha1", "kind": "Function", "name": "f", "uid": "u", "controller": True}


def spec(**extra: Any) -> dict[str, Any]:
    return {"runtime": "python3.11", "handler": "app.handler", "code": {"files": {"app.py": "x"}}, **extra}


def fn(**extra: Any):  # type: ignore[no-untyped-def]
    return parse_function({"metadata": {"name": "f", "namespace": "ns"}, "spec": spec(**extra)})


def test_first_version_is_one_and_an_unchanged_spec_keeps_it() -> None:
    assert versioning.current_version([], "h1") == (1, True)
    assert versioning.current_version([Revision(1, "h1")], "h1") == (1, False)
    assert versioning.current_version([Revision(1, "h1"), Revision(2, "h2")], "h1") == (3, True)


def test_only_versioned_fields_change_the_hash() -> None:
    base = resources.version_hash(spec())
    assert resources.version_hash(spec(scaling={"idleSeconds": 5}, concurrency={"reserved": 2})) == base
    assert resources.version_hash(spec(memoryMB=256)) != base
    assert resources.version_hash(spec(environment={"A": "1"})) != base


def test_garbage_collection_keeps_newest_and_routed() -> None:
    assert versioning.versions_to_delete([1, 2, 3, 4, 5], routed=[1], retain=2) == [2, 3]
    assert versioning.versions_to_delete([1, 2], routed=[], retain=5) == []
    assert versioning.versions_to_delete([1, 2, 3], routed=[], retain=0) == [1, 2]  # the newest always stays


def test_versions_asked_to_go_go_unless_newest_or_routed() -> None:
    assert versioning.versions_to_delete([1, 2, 3], routed=[], retain=5, requested=[1]) == [1]
    assert versioning.versions_to_delete([1, 2, 3], routed=[1], retain=5, requested=[1, 2]) == [2]
    assert versioning.versions_to_delete([1, 2, 3], routed=[], retain=5, requested=[3]) == []  # $LATEST runs it
    assert versioning.requested_deletions("1,x,, 3") == [1, 3]
    assert versioning.requested_deletions(None) == []


def test_alias_routing_and_problems() -> None:
    assert versioning.alias_routing("1", {"2": 0.1}) == {"2": 0.1, "1": 0.9}
    assert versioning.alias_routing("1", {"2": 0}) == {"1": 1.0}
    assert versioning.alias_problems("1", {"2": 0.5}, ["1", "2"]) == []
    assert any("does not exist" in p for p in versioning.alias_problems("3", None, ["1"]))
    assert any("at most 1" in p for p in versioning.alias_problems("1", {"2": 0.7, "3": 0.6}, ["1", "2", "3"]))


def test_deployment_is_locked_down_and_starts_at_zero() -> None:
    deployment = resources.deployment(fn(memoryMB=1769), "3", OWNER, SETTINGS)
    assert deployment["metadata"]["name"] == "f-v3" and deployment["spec"]["replicas"] == 0
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"] == {"requests": {"memory": "1833Mi", "cpu": "1000m"}, "limits": {"memory": "1833Mi"}}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["automountServiceAccountToken"] is False
    sandbox = json.loads(next(e["value"] for e in container["env"] if e["name"] == "KAMBDA_SANDBOX"))
    assert sandbox["function"] == "ns/f" and sandbox["version"] == "3" and sandbox["use_cgroups"] is False


@pytest.mark.parametrize(("egress", "types", "rules"), [("all", ["Ingress"], 0), ("none", ["Ingress", "Egress"], 2),
                                                         ("cluster", ["Ingress", "Egress"], 3)])  # fmt: skip
def test_network_policy_follows_egress(egress: str, types: list[str], rules: int) -> None:
    policy = resources.network_policy(fn(network={"egress": egress}), OWNER, SETTINGS)["spec"]
    assert policy["policyTypes"] == types and policy["ingress"] == []
    assert len(policy.get("egress", [])) == rules


def test_code_files_in_subdirectories_are_placed_by_the_volume() -> None:
    function = parse_function({"metadata": {"name": "f"}, "spec": spec(code={"files": {"a.py": "1", "pkg/b.py": "2"}})})
    config_map = resources.code_config_map(function, "1", OWNER)
    assert config_map is not None and config_map["data"] == {"f0": "1", "f1": "2"}
    volume = resources.deployment(function, "1", OWNER, SETTINGS)["spec"]["template"]["spec"]["volumes"][0]
    assert volume["configMap"]["items"] == [{"key": "f0", "path": "a.py"}, {"key": "f1", "path": "pkg/b.py"}]


SHA = "a" * 64


def test_layers_are_versioned_and_unpacked_by_the_agent_under_opt() -> None:
    base = resources.version_hash(spec())
    assert resources.version_hash(spec(layers=[{"sha256": SHA}])) != base
    store = resources.Settings(**{**SETTINGS.__dict__, "code_store": "http://10.96.0.9:8080"})
    layered = fn(layers=[{"sha256": SHA}, {"sha256": "b" * 64}])
    config = resources.sandbox_config(layered, "1", store)
    assert config["layers"] == [SHA, "b" * 64] and config["opt_dir"] == "/opt"
    assert config["code_store"] == "http://10.96.0.9:8080"  # inline code, but the layers come from the store
    pod = resources.deployment(layered, "1", OWNER, store)["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["layers"]["mountPath"] == "/opt" and "readOnly" not in mounts["layers"]
    assert {"name": "layers", "emptyDir": {"sizeLimit": "300Mi"}} in pod["volumes"]
    plain = resources.deployment(fn(), "1", OWNER, store)["spec"]["template"]["spec"]
    assert all(v["name"] != "layers" for v in plain["volumes"])
    assert resources.sandbox_config(fn(), "1", store)["code_store"] is None


def test_a_refused_code_is_read_from_the_pods_termination_message() -> None:
    refused = {
        "status": {
            "containerStatuses": [
                {
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"message": "CodeRefused: x.zip: sha256 is 1, the Function says 2"}},
                }
            ]
        }
    }
    assert resources.code_refusal(refused) == "x.zip: sha256 is 1, the Function says 2"
    crashed = {"status": {"containerStatuses": [{"lastState": {"terminated": {"message": "Traceback ..."}}}]}}
    assert resources.code_refusal(crashed) is None
    assert resources.code_refusal({"status": {}}) is None


def test_the_gateway_service_gives_both_addresses() -> None:
    assert resources.gateway_endpoints("10.96.0.9", {"grpc": 9090, "http": 8080}) == (
        "10.96.0.9:9090", "http://10.96.0.9:8080")  # fmt: skip
    with pytest.raises(ValueError, match="grpc"):
        resources.gateway_endpoints("10.96.0.9", {"http": 8080})
    with pytest.raises(ValueError):
        resources.gateway_endpoints("None", {"grpc": 9090, "http": 8080})  # a headless Service


def test_an_image_function_runs_the_users_image_beside_the_agent() -> None:
    image = parse_function({"metadata": {"name": "img", "namespace": "ns"}, "spec": {
        "runtime": "provided", "code": {"image": "registry.local/app:1"}, "memoryMB": 256, "environment": {"MINE": "1"},
        "imageConfig": {"entryPoint": ["/entry"], "command": ["app.other"], "workingDirectory": "/srv"}}})  # fmt: skip
    assert image.runtime == "provided" and image.image_config.command == ("app.other",)
    pod = resources.deployment(image, "3", OWNER, SETTINGS)["spec"]["template"]["spec"]
    assert pod["shareProcessNamespace"] is True
    agent, function = pod["containers"]
    assert agent["name"] == "agent" and "postStart" in agent["lifecycle"]  # the Runtime API listens first
    assert function["image"] == "registry.local/app:1"
    assert function["command"] == ["/entry"] and function["args"] == ["app.other"] and function["workingDir"] == "/srv"
    env = {e["name"]: e.get("value") for e in function["env"]}
    assert env["AWS_LAMBDA_RUNTIME_API"] == "127.0.0.1:9001" and env["MINE"] == "1"
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "3" and env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"
    assert function["resources"]["limits"]["memory"] == "256Mi"
    config = json.loads(next(e["value"] for e in agent["env"] if e["name"] == "KAMBDA_SANDBOX"))
    assert config["external_runtime"] is True and config["runtime_api_port"] == 9001
    assert function["securityContext"]["readOnlyRootFilesystem"] is True
    # Without overrides the image's own ENTRYPOINT/CMD/WORKDIR apply.
    plain = parse_function(
        {"metadata": {"name": "p", "namespace": "ns"}, "spec": {"runtime": "provided", "code": {"image": "a:1"}}}
    )
    with pytest.raises(SpecError, match="brings its own runtime"):
        parse_function({"metadata": {"name": "p"}, "spec": {"runtime": "python3.11", "code": {"image": "a:1"}}})
    function = resources.deployment(plain, "1", OWNER, SETTINGS)["spec"]["template"]["spec"]["containers"][1]
    assert not {"command", "args", "workingDir"} & set(function)


@pytest.mark.parametrize(
    "extra, reason",
    [
        ({}, None),
        ({"memoryMB": 256}, None),  # 4 slots of 256 MB fill a pool pod exactly
        ({"network": {"egress": "none"}}, None),  # chosen by labels: the relabelled pod takes the function's policy
        ({"serviceAccountName": "reader"}, "serviceAccountName"),
        ({"secretEnvironment": [{"name": "TOKEN", "secretName": "s", "key": "k"}]}, "environment from Secrets"),
        ({"code": {"configMap": {"name": "cm"}}}, "code from a ConfigMap"),
        ({"runtime": "provided", "handler": "x", "code": {"image": "registry/app:1"}}, "a container-image function"),
        ({"memoryMB": 512, "scaling": {"sandboxesPerPod": 3}}, "3 sandboxes of 512 MB"),
        ({"ephemeralStorage": {"size": 1024}}, "ephemeral storage of 1024 MB"),
    ],
)
def test_a_function_uses_the_warm_pool_only_if_a_pool_pod_can_take_every_setting(
    extra: dict[str, Any], reason: str | None
) -> None:
    function = fn(**extra)
    refusal = resources.pool_refusal(function)
    assert (refusal is None) if reason is None else (refusal or "").startswith(reason), refusal
    annotations = resources.deployment(function, "1", OWNER, SETTINGS)["metadata"]["annotations"]
    if reason is None:
        assert annotations == {"kambda.dev/warm-pool": "python3.11"}
    else:
        assert annotations == {"kambda.dev/warm-pool-refusal": refusal}


def test_a_pool_pod_has_a_dedicated_pods_security_and_room_for_any_function_the_pool_takes() -> None:
    pool = resources.pool_deployment("ns", "python3.11", 2, SETTINGS)
    dedicated = resources.deployment(fn(), "1", OWNER, SETTINGS)["spec"]["template"]["spec"]
    assert pool["metadata"]["name"] == "kambda-pool-python3-11" and "." not in pool["metadata"]["name"]
    assert pool["spec"]["replicas"] == 2
    assert pool["spec"]["selector"] == {"matchLabels": {"kambda.dev/pool": "kambda-pool-python3-11"}}
    spec = pool["spec"]["template"]["spec"]
    assert spec["securityContext"] == dedicated["securityContext"]
    assert spec["automountServiceAccountToken"] is False and "serviceAccountName" not in spec
    [container] = spec["containers"]
    assert container["securityContext"] == dedicated["containers"][0]["securityContext"]
    assert container["command"] == ["python3", "-m", "kambda.runtime.agent", "--pool"]
    assert container["resources"]["limits"] == {"memory": "1088Mi"}  # POD_MEMORY_BUDGET_MB + the agent's share
    env = {e["name"]: e for e in container["env"]}
    assert json.loads(env["KAMBDA_POOL"]["value"]) == {
        "namespace": "ns", "runtime": "python3.11", "state_dir": "/run/kambda",
        "code_write_dir": "/run/kambda-task", "opt_write_dir": "/run/kambda-opt",
    }  # fmt: skip
    mounts = {(m["mountPath"], m.get("readOnly", False)): m["name"] for m in container["volumeMounts"]}
    # Where the runtime looks, read-only; the agent writes through the second mount of the same volume.
    assert mounts[("/var/task", True)] == mounts[("/run/kambda-task", False)] == "code"
    assert mounts[("/opt", True)] == mounts[("/run/kambda-opt", False)] == "layers"
    assert env["KAMBDA_POOL_CREDENTIAL"]["valueFrom"]["secretKeyRef"]["name"] == "kambda-pool-python3-11-credential"
    assert {v["name"] for v in spec["volumes"]} == {"code", "tmp", "layers", "state"}
    assert all("emptyDir" in v for v in spec["volumes"])  # nothing a function brings is mounted in advance


def test_a_pools_credential_is_not_any_functions_and_its_policy_lets_it_reach_only_the_gateway() -> None:
    from kambda import credentials, naming

    secret = resources.pool_credential_secret("ns", "python3.11", SETTINGS)
    credential = secret["stringData"]["credential"]
    assert credentials.verify(b"k", naming.pool_key("ns", "python3.11"), credential)
    assert not credentials.verify(b"k", "ns/kambda-pool-python3-11", credential)
    policy = resources.pool_network_policy("ns", "python3.11", SETTINGS)["spec"]
    assert policy["podSelector"] == {"matchLabels": {"kambda.dev/pool": "kambda-pool-python3-11"}}
    assert policy["ingress"] == [] and policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["egress"][0] == {"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "gw"}}}]}


@pytest.mark.parametrize(
    "labels, size", [({}, 1), ({"kambda.dev/warm-pool-size": "3"}, 3), ({"kambda.dev/warm-pool-size": "0"}, 0),
                     ({"kambda.dev/warm-pool-size": "lots"}, 1), ({"kambda.dev/warm-pool-size": "-2"}, 1)],
)  # fmt: skip
def test_a_namespaces_label_sets_its_pool_size(labels: dict[str, str], size: int) -> None:
    assert resources.pool_size(1, labels) == size
