"""SnapStart for Python on a real `kambda run`: sandboxes restored from their version's initialised template.

Lambda's contract, checked through boto3 and the functions' own observations: the init code and the
before-snapshot hooks run once, in the template (a marker they write is what every restored sandbox sees); the
after-restore hooks run in every restored sandbox; `AWS_LAMBDA_INITIALIZATION_TYPE` is `snap-start` and the log
stream variables are absent; REPORT shows `Restore Duration` instead of `Init Duration`; and an import-heavy handler
(≥ 300 ms of init, measured on its on-demand twin) is restored in ≤ 50 ms. A restored sandbox is a sandbox like any
other: its own process group (a timeout or a crash ends it, not the template), memory cgroup, freezer and uid
checks; a template whose init fails leaves the version initialising on demand, with the error Lambda would give.
"""

from __future__ import annotations

import base64
import json
import os
import re
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Gateway, wait_until
from tests.integration.test_async import lambda_client as client_for
from tests.workdir import function_manifest

# ≥ 300 ms of init: real imports of the standard library, and a vendored module that takes its time to import.
HEAVY = """\
import time
time.sleep(0.35)
"""

HANDLER = """\
import os, random, sys, threading, time

import asyncio, decimal, email.mime.multipart, json, sqlite3, xml.dom.minidom  # noqa: F401
import heavy  # noqa: F401
from snapshot_restore_py import register_after_restore, register_before_snapshot

INIT_PID = os.getpid()
RESTORED = []  # (pid, random value) appended by the after-restore hook, in the sandbox it ran in
TICKS = []


@register_before_snapshot
def before_snapshot():
    with open("/tmp/snapshot-marker", "w") as f:
        f.write(f"written before the snapshot by {INIT_PID}")


@register_after_restore
def after_restore():
    RESTORED.append([os.getpid(), random.random()])


def tick():
    while True:
        time.sleep(0.1)
        TICKS.append(time.monotonic())


def handler(event, context):
    action = event.get("action")
    if action == "sleep":
        time.sleep(event["seconds"])
    elif action == "exit":
        os._exit(event["code"])
    elif action == "allocate":
        hoard = bytearray(event["mb"] * 1024 * 1024)
        hoard[::4096] = b"x" * len(hoard[::4096])
    elif action == "tick":
        if not any(t.name == "ticker" for t in threading.enumerate()):
            threading.Thread(target=tick, name="ticker", daemon=True).start()
        time.sleep(0.35)
    with open("/tmp/snapshot-marker") as f:
        marker = f.read()
    return {
        "pid": os.getpid(), "init_pid": INIT_PID, "restored": RESTORED, "marker": marker, "uid": os.getuid(),
        "initialization_type": os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE"),
        "log_stream": os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME"), "ticks": list(TICKS),
        "random": random.random(),
    }
"""

BROKEN_INIT = "raise RuntimeError('init refuses')\n\ndef handler(event, context):\n    return 1\n"
FAILING_RESTORE = """\
from snapshot_restore_py import register_after_restore


@register_after_restore
def after_restore():
    raise ValueError("restore refuses")


def handler(event, context):
    return "unreachable"
"""
SNAP = {"snapStart": {"applyOn": "PublishedVersions"}}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("snapstart")
    functions = root / "functions"
    functions.mkdir()

    def heavy(name: str, idle: float = 1, **spec: Any) -> str:
        manifest = json.loads(function_manifest(name, HANDLER, timeoutSeconds=3, scaling={"idleSeconds": idle}, **spec))
        manifest["spec"]["code"]["files"]["heavy.py"] = HEAVY
        return json.dumps(manifest)

    manifests = {
        "snap": heavy("snap", **SNAP),
        "snap-kept": heavy("snap-kept", idle=120, **SNAP),  # idle for long, and still the same sandbox after
        "ondemand": heavy("ondemand"),
        "snap-broken": function_manifest("snap-broken", BROKEN_INIT, **SNAP),
        "snap-restore-fails": function_manifest("snap-restore-fails", FAILING_RESTORE, **SNAP),
    }
    for name, manifest in manifests.items():
        (functions / f"{name}.yaml").write_text(manifest)
    gw = Gateway(functions, root / "data")
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> Any:
    return client_for(gateway.url)


def invoke(client: Any, name: str, event: dict[str, Any] | None = None) -> tuple[dict[str, Any], str]:
    response = client.invoke(FunctionName=name, Payload=json.dumps(event or {}), LogType="Tail")
    log = base64.b64decode(response["LogResult"]).decode()
    payload = json.loads(response["Payload"].read())
    if "FunctionError" in response:
        return {"error": payload}, log
    return payload, log


def duration(log: str, field: str) -> float | None:
    match = re.search(rf"\t{field}: ([0-9.]+) ms", log)
    return float(match.group(1)) if match else None


def instances(gateway: Gateway, name: str) -> float:
    return sum(gateway.metric("kambda_instances", function=name, state=s) for s in ("idle", "busy", "starting"))


def cold(gateway: Gateway, client: Any, name: str, event: dict[str, Any] | None = None) -> tuple[dict[str, Any], str]:
    """An invocation of `name` once it has no instance left (its idle window is 1 s): a new sandbox serves it."""
    assert wait_until(lambda: instances(gateway, name) == 0, timeout=30), f"{name} kept its instances"
    return invoke(client, name, event)


def test_hooks_marker_and_environment_of_restored_sandboxes(gateway: Gateway, client: Any) -> None:
    first, log = cold(gateway, client, "snap")
    second, _ = cold(gateway, client, "snap")
    for result in (first, second):
        # Init ran once, in the template: its before-snapshot hook's marker is in every restored sandbox's /tmp.
        assert result["marker"] == f"written before the snapshot by {result['init_pid']}"
        assert result["pid"] != result["init_pid"]
        # The after-restore hook ran in this very sandbox (its pid), once.
        assert [pid for pid, _ in result["restored"]] == [result["pid"]]
        assert result["initialization_type"] == "snap-start"
        assert result["log_stream"] is None  # Lambda's SnapStart functions have no AWS_LAMBDA_LOG_STREAM_NAME
    assert first["init_pid"] == second["init_pid"]  # one template for the version
    assert first["pid"] != second["pid"]  # two sandboxes
    assert "Restore Duration: " in log and "Billed Restore Duration: " in log
    assert "Init Duration" not in log


def test_import_heavy_handler_restores_in_50_ms(gateway: Gateway, client: Any) -> None:
    # The on-demand twin shows what its init costs: at least 300 ms.
    inits = [duration(cold(gateway, client, "ondemand")[1], "Init Duration") for _ in range(2)]
    assert all(i is not None and i >= 300 for i in inits), inits
    restores = []
    for _ in range(5):
        result, log = cold(gateway, client, "snap")
        assert "error" not in result, result
        restores.append(duration(log, "Restore Duration"))
    assert all(r is not None for r in restores), restores
    median = statistics.median(r for r in restores if r is not None)
    print(f"on-demand init {inits} ms; SnapStart restores {restores} ms (median {median:.1f})")
    assert median <= 50, restores


def test_every_concurrent_sandbox_is_restored_with_its_own_hooks_and_random(gateway: Gateway, client: Any) -> None:
    assert wait_until(lambda: instances(gateway, "snap") == 0, timeout=30)
    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(lambda _: invoke(client, "snap", {"action": "sleep", "seconds": 1}), range(5)))
    pids = {r["pid"] for r, _ in results}
    assert len(pids) == 5, results
    for result, log in results:
        assert [pid for pid, _ in result["restored"]] == [result["pid"]]
        assert duration(log, "Restore Duration") is not None
    # `random` re-seeded in each restored sandbox: the snapshot's state is not replayed in all of them.
    assert len({r["restored"][0][1] for r, _ in results}) == 5


def test_timeout_and_crash_end_the_sandbox_not_the_template(gateway: Gateway, client: Any) -> None:
    before, _ = cold(gateway, client, "snap")
    timed_out, log = invoke(client, "snap", {"action": "sleep", "seconds": 10})
    assert timed_out["error"]["errorType"] == "Sandbox.Timedout", timed_out
    assert "Task timed out after 3.00 seconds" in timed_out["error"]["errorMessage"]
    after, log = invoke(client, "snap")  # a new sandbox, restored from the same template
    assert after["init_pid"] == before["init_pid"] and after["pid"] != before["pid"]
    assert duration(log, "Restore Duration") is not None
    crashed, _ = invoke(client, "snap", {"action": "exit", "code": 3})
    assert crashed["error"]["errorType"] == "Runtime.ExitError", crashed
    assert "exit status 3" in crashed["error"]["errorMessage"]
    again, _ = invoke(client, "snap")
    assert again["init_pid"] == before["init_pid"] and again["pid"] not in (before["pid"], after["pid"])


def test_restored_sandbox_has_its_own_memory_limit(gateway: Gateway, client: Any) -> None:
    within, log = cold(gateway, client, "snap", {"action": "allocate", "mb": 40})
    assert "error" not in within, within
    used = re.search(r"Max Memory Used: (\d+) MB", log)
    assert used is not None and int(used.group(1)) >= 40, log
    beyond, _ = invoke(client, "snap", {"action": "allocate", "mb": 400})  # the function has 128 MB
    assert beyond["error"]["errorType"] == "Runtime.ExitError", beyond
    assert "signal: killed" in beyond["error"]["errorMessage"]
    after, _ = invoke(client, "snap")
    assert after["init_pid"] == within["init_pid"]  # the template was not charged, nor killed


def test_restored_sandbox_is_frozen_between_invocations(gateway: Gateway, client: Any) -> None:
    first, log = invoke(client, "snap-kept", {"action": "tick"})
    assert duration(log, "Restore Duration") is not None  # a restored sandbox
    assert first["ticks"], "the ticker should tick while invoked"
    last_tick = first["ticks"][-1]
    time.sleep(0.8)  # the idle gap under test (the sandbox is frozen through it), not a wait for a condition
    second, _ = invoke(client, "snap-kept")
    assert second["pid"] == first["pid"], "the same sandbox should serve the next invocation"
    gap = [t for t in second["ticks"] if last_tick < t < last_tick + 0.7]
    assert len(gap) <= 1, f"the ticker ran while frozen: {gap}"


@pytest.mark.skipif(os.geteuid() != 0, reason="sandboxes get uids of their own only when the agent runs as root")
def test_restored_sandbox_runs_as_the_templates_unprivileged_uid(gateway: Gateway, client: Any) -> None:
    result, _ = cold(gateway, client, "snap")
    assert result["uid"] != 0


def test_failed_init_falls_back_to_on_demand_with_lambdas_error(gateway: Gateway, client: Any) -> None:
    result, log = invoke(client, "snap-broken")
    assert result["error"]["errorType"] == "RuntimeError", result
    assert result["error"]["errorMessage"] == "init refuses"
    assert "Restore Duration" not in log  # initialised on demand: no template could be made
    # And again: the version keeps answering with its init error, never a hang.
    again, _ = invoke(client, "snap-broken")
    assert again["error"]["errorType"] == "RuntimeError"


def test_failing_after_restore_hook_fails_the_invocation(gateway: Gateway, client: Any) -> None:
    # As with an init error, the caller gets what the runtime posted (to /runtime/restore/error): the hook's error.
    result, _ = invoke(client, "snap-restore-fails")
    assert result["error"]["errorType"] == "ValueError", result
    assert result["error"]["errorMessage"] == "restore refuses"
    again, _ = invoke(client, "snap-restore-fails")  # restored again, failing again: never a hang
    assert again["error"]["errorMessage"] == "restore refuses"


def test_snapstart_through_the_control_plane(gateway: Gateway, client: Any, tmp_path: Path) -> None:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("app.py", "import os\n\ndef handler(event, context):\n"
                              "    return os.environ['AWS_LAMBDA_INITIALIZATION_TYPE']\n")  # fmt: skip
    common = {"Runtime": "python3.11", "Role": "arn:aws:iam::000000000000:role/r", "Handler": "app.handler",
              "Code": {"ZipFile": buffer.getvalue()}}  # fmt: skip
    created = client.create_function(
        FunctionName="snap-api", SnapStart={"ApplyOn": "PublishedVersions"}, Publish=True, **common
    )
    assert created["SnapStart"] == {"ApplyOn": "PublishedVersions", "OptimizationStatus": "On"}
    config = client.get_function_configuration(FunctionName="snap-api", Qualifier=created["Version"])
    assert config["SnapStart"]["ApplyOn"] == "PublishedVersions"
    result = client.invoke(FunctionName="snap-api", Qualifier=created["Version"])
    assert json.loads(result["Payload"].read()) == "snap-start"
    # Off again: a new version, initialised on demand.
    updated = client.update_function_configuration(FunctionName="snap-api", SnapStart={"ApplyOn": "None"})
    assert updated["SnapStart"] == {"ApplyOn": "None", "OptimizationStatus": "Off"}
    assert wait_until(
        lambda: client.get_function_configuration(FunctionName="snap-api")["LastUpdateStatus"] == "Successful"
    )
    result = client.invoke(FunctionName="snap-api")
    assert json.loads(result["Payload"].read()) == "on-demand"
    # Bad input: a clear InvalidParameterValueException, nothing created.
    with pytest.raises(ClientError) as bad:
        client.create_function(FunctionName="snap-bad", SnapStart={"ApplyOn": "Always"}, **common)
    assert bad.value.response["Error"]["Code"] == "InvalidParameterValueException"
    assert "SnapStart.ApplyOn" in bad.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as custom:
        client.create_function(
            FunctionName="snap-custom", SnapStart={"ApplyOn": "PublishedVersions"},
            **{**common, "Runtime": "provided.al2023", "Handler": "bootstrap"},
        )  # fmt: skip
    assert custom.value.response["Error"]["Code"] == "InvalidParameterValueException"
    assert "python" in custom.value.response["Error"]["Message"]
    names = [f["FunctionName"] for f in client.list_functions()["Functions"]]
    assert "snap-bad" not in names and "snap-custom" not in names
