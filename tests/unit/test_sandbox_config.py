"""A sandbox's configuration: which sandboxes share a SnapStart template, and where the agent writes the code."""

from __future__ import annotations

import dataclasses

from kambda.runtime.agent.sandbox import SandboxConfig, template_key

BASE = SandboxConfig(
    instance_id="pod", function="ns/f", version="1", runtime="python3.11", handler="app.handler",
    code_dir="/var/task", memory_mb=128, timeout_seconds=3, code_sha256="ab" * 32, code_store="http://gw:8080",
    snap_start=True,
)  # fmt: skip


def test_a_pods_spawned_sandboxes_share_its_template() -> None:
    # What Pod spawns: the code is already fetched and verified, so it names no source; the template is the same.
    spawned = dataclasses.replace(BASE, instance_id="pod.3", code_url=None, code_store=None)
    assert template_key(spawned) == template_key(BASE)
    assert template_key(dataclasses.replace(BASE, code_write_dir="/run/kambda-task")) == template_key(BASE)


def test_what_the_code_is_or_how_it_runs_makes_another_template() -> None:
    for change in ({"code_sha256": "cd" * 32}, {"memory_mb": 256}, {"handler": "app.other"},
                   {"environment": {"A": "1"}}, {"version": "2"}):  # fmt: skip
        assert template_key(dataclasses.replace(BASE, **change)) != template_key(BASE), change  # type: ignore[arg-type]


def test_the_agent_writes_where_the_runtime_reads_unless_told_otherwise() -> None:
    assert BASE.code_target == "/var/task" and BASE.opt_target is None
    pool = dataclasses.replace(BASE, opt_dir="/opt", code_write_dir="/run/kambda-task", opt_write_dir="/run/kambda-opt")
    assert pool.code_target == "/run/kambda-task" and pool.opt_target == "/run/kambda-opt"
    assert dataclasses.replace(pool, opt_dir=None).opt_target is None  # no layers: nothing to unpack
