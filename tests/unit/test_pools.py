"""The gateway's warm-pool waiters (pure state): the longest-waiting pod is taken first, a taken pod is out for good
unless it is given back unspecialised, and a reconnecting pod is one pod, not two."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kambda.gateway.pools import WarmPools
from kambda.gateway.registry import FunctionVersion
from kambda.runtime.rpc import runtime_pb2 as pb


async def no_reissue(version: FunctionVersion, pod: str) -> pb.Specialise | None:
    return None


async def test_the_longest_waiting_pod_of_the_namespace_and_runtime_is_taken() -> None:
    pools = WarmPools(no_reissue)
    a, b = pools.join("ns", "python3.11", "a"), pools.join("ns", "python3.11", "b")
    pools.join("ns", "nodejs20.x", "n")
    pools.join("other", "python3.11", "o")
    assert pools.idle() == {("ns", "python3.11"): 2, ("ns", "nodejs20.x"): 1, ("other", "python3.11"): 1}
    assert pools.take("ns", "python3.11") is a
    assert pools.take("ns", "python3.11") is b
    assert pools.take("ns", "python3.11") is None
    assert pools.take("ns", "python3.12") is None
    assert pools.idle()[("ns", "python3.11")] == 0


async def test_a_taken_pod_gets_its_order_and_one_given_back_is_first_in_line() -> None:
    pools = WarmPools(no_reissue)
    a, b = pools.join("ns", "rt", "a"), pools.join("ns", "rt", "b")
    taken = pools.take("ns", "rt")
    assert taken is a
    pools.give_back(a)
    assert pools.take("ns", "rt") is a  # before b, which joined later
    order = pb.Specialise(sandbox="{}", credential="c", slots=2)
    waiting = asyncio.ensure_future(a.order())
    a.specialise(order)
    assert await waiting is order and a.specialised
    pools.give_back(a)  # specialised: it is a function's pod now, never a pool's again
    assert pools.take("ns", "rt") is b and pools.take("ns", "rt") is None


async def test_a_reconnecting_pod_replaces_its_earlier_wait_and_an_ended_wait_leaves() -> None:
    pools = WarmPools(no_reissue)
    first = pools.join("ns", "rt", "a")
    second = pools.join("ns", "rt", "a")
    assert pools.idle() == {("ns", "rt"): 1}
    pools.leave(first)  # the old stream's end must not remove the new one
    assert pools.idle() == {("ns", "rt"): 1}
    pools.leave(second)
    assert pools.take("ns", "rt") is None


def test_an_orders_inline_code_is_written_read_only_and_only_inside_the_code_directory(tmp_path: Path) -> None:
    import os
    import stat

    import pytest

    from kambda.runtime.agent.pool import UnsafeFiles, write_files

    write_files(str(tmp_path), {"app.py": "x = 1\n", "lib/util.py": "y = 2\n"})
    assert (tmp_path / "lib" / "util.py").read_text() == "y = 2\n"
    assert stat.S_IMODE(os.stat(tmp_path / "app.py").st_mode) == 0o555  # as a ConfigMap volume mounts it
    for bad in ("../escape.py", "/etc/passwd", "a/../../b", ""):
        with pytest.raises(UnsafeFiles):
            write_files(str(tmp_path / "task"), {bad: "z"})
    assert not (tmp_path / "escape.py").exists() and not (tmp_path / "b").exists()


def test_a_versions_pool_settings_come_from_its_deployment() -> None:
    from kubernetes_asyncio.client import models as m

    from kambda.gateway.backends.kubernetes import pool_target

    def deployment(annotations: dict[str, str]) -> m.V1Deployment:
        env = [
            m.V1EnvVar(name="KAMBDA_SANDBOX", value='{"function": "ns/f"}'),
            m.V1EnvVar(name="KAMBDA_SLOTS", value="4"),
            m.V1EnvVar(name="KAMBDA_CREDENTIAL", value_from=m.V1EnvVarSource()),
        ]
        container = m.V1Container(name="function", env=env)
        template = m.V1PodTemplateSpec(spec=m.V1PodSpec(containers=[container]))
        return m.V1Deployment(
            metadata=m.V1ObjectMeta(name="f-v1", uid="u1", annotations=annotations),
            spec=m.V1DeploymentSpec(selector=m.V1LabelSelector(), template=template),
        )

    target = pool_target(deployment({"kambda.dev/warm-pool": "python3.11"}))
    assert target is not None
    assert target.sandbox == '{"function": "ns/f"}' and target.slots == 4
    assert target.owner["name"] == "f-v1" and target.owner["uid"] == "u1" and target.owner["controller"] is False
    assert pool_target(deployment({"kambda.dev/warm-pool-refusal": "serviceAccountName: ..."})) is None
    assert pool_target(deployment({})) is None  # made before warm pools: dedicated pods only


def test_a_pods_specialisation_is_marked_before_its_code_is_written_and_survives_the_agent(tmp_path: Path) -> None:
    from kambda.runtime.agent.pool import mark_specialised, specialised

    assert specialised(str(tmp_path)) is None  # a fresh pool pod
    mark_specialised(str(tmp_path), "ns/f", "3")
    assert specialised(str(tmp_path)) == ("ns/f", "3")  # what a restarted agent reads: it asks for that order only
    (tmp_path / "specialised").write_text("{not json")
    assert specialised(str(tmp_path)) is None


def test_a_pool_pod_is_specialised_at_most_once_by_a_patch_that_tests_its_pool_label() -> None:
    from kambda.gateway.backends.kubernetes import specialisation_patch

    owner = {"kind": "Deployment", "name": "f-v2", "uid": "u"}
    patch = specialisation_patch("f", "2", "python3.11", owner)
    assert patch[0] == {"op": "test", "path": "/metadata/labels/kambda.dev~1pool", "value": "kambda-pool-python3-11"}
    assert patch[1] == {"op": "remove", "path": "/metadata/labels/kambda.dev~1pool"}
    added = {op["path"]: op["value"] for op in patch if op["op"] == "add"}
    assert added == {
        "/metadata/labels/kambda.dev~1function": "f",
        "/metadata/labels/kambda.dev~1specialised-version": "2",
        "/metadata/labels/app.kubernetes.io~1component": "function",
        "/metadata/ownerReferences": [owner],
    }
    assert "/metadata/labels/kambda.dev~1version" not in added  # the version's ReplicaSet must not adopt it
