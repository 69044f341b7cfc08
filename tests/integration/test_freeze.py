"""The sandbox is frozen between invocations, as Lambda's is, on a real `kambda run`: a background thread does not
tick while the function is idle, what it prints when thawed belongs to the next invocation, and an idle sandbox
whose thread spins uses no CPU.

Times are compared on CLOCK_MONOTONIC, which the test and the sandbox share (bwrap does not unshare time)."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Gateway, wait_until
from tests.integration.test_async import lambda_client
from tests.workdir import function_manifest

TICKER = """\
import threading, time

TICKS = []  # monotonic time of every tick


def tick():
    while True:
        time.sleep(0.1)
        TICKS.append(time.monotonic())
        print(f"tick {len(TICKS)}", flush=True)


threading.Thread(target=tick, daemon=True).start()


def handler(event, context):
    seen = list(TICKS)
    time.sleep(event.get("sleep", 0))
    return {"ticks": seen, "count": len(TICKS)}
"""

SPINNER = """\
import threading, time

SPUN = [0]


def spin():
    while True:
        SPUN[0] += 1


threading.Thread(target=spin, daemon=True).start()


def handler(event, context):
    time.sleep(event.get("sleep", 0))
    return SPUN[0]
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("freeze")
    (root / "functions").mkdir()
    for name, code in (("ticker", TICKER), ("spinner", SPINNER)):
        manifest = function_manifest(name, code, timeoutSeconds=30, scaling={"idleSeconds": 120})
        (root / "functions" / f"{name}.yaml").write_text(manifest)
    gw = Gateway(root / "functions", root / "data")
    yield gw
    gw.stop()


def invoke(client: Any, name: str, event: dict[str, Any], *, tail: bool = False) -> tuple[Any, str]:
    response = client.invoke(FunctionName=name, Payload=json.dumps(event), LogType="Tail" if tail else "None")
    assert "FunctionError" not in response, response
    log = base64.b64decode(response["LogResult"]).decode() if tail else ""
    return json.loads(response["Payload"].read()), log


def runtime_pids(function: str) -> list[int]:
    """The host pids of the function's runtime processes (found by the environment the agent gave them)."""
    marker = f"AWS_LAMBDA_FUNCTION_NAME={function}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def frozen(pids: list[int]) -> bool:
    """Whether each process is frozen: its freezer cgroup says so (v1 freezer.state, v2 cgroup.events), or,
    without one of the agent's, it is stopped (SIGSTOP)."""

    def one(pid: int) -> bool:
        groups = dict(line.split(":", 2)[1:] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines())
        if groups.get("freezer", "/") != "/":
            return (Path("/sys/fs/cgroup/freezer") / groups["freezer"].lstrip("/") / "freezer.state").read_text() == (
                "FROZEN\n"
            )
        events = Path("/sys/fs/cgroup") / groups.get("", "/").lstrip("/") / "cgroup.events"
        if groups.get("", "/") != "/" and events.exists():
            return "frozen 1" in events.read_text().splitlines()
        state = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("State"))
        return state.split()[1] == "T"

    return all(one(pid) for pid in pids)


def cpu_seconds(pids: list[int]) -> float:
    """User + system time of the processes, all their threads included."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return total / os.sysconf("SC_CLK_TCK")


def test_a_background_thread_does_not_tick_while_the_sandbox_is_idle(gateway: Gateway) -> None:
    client = lambda_client(gateway.url)
    # While an invocation runs, the thread ticks: the check below could fail.
    running, _ = invoke(client, "ticker", {"sleep": 1})
    assert running["count"] - len(running["ticks"]) >= 5, running
    answered = time.monotonic()
    time.sleep(3)  # the idle gap under test
    asked = time.monotonic()
    after, log = invoke(client, "ticker", {"sleep": 0.3}, tail=True)
    # Lambda's bound: at most one tick across the gap. The 50 ms after the answer are excluded: the sandbox is
    # frozen once its runtime is back in /next, which may be a moment after the caller has the answer.
    in_gap = [t for t in after["ticks"] if answered + 0.05 < t < asked]
    assert len(in_gap) <= 1, (len(in_gap), "ticks while idle")
    # The first tick after the thaw is printed inside the next invocation's log, between its START and END.
    first_after = next(i for i, t in enumerate(after["ticks"] + [float("inf")]) if t > asked) + 1
    start, end = log.index("START RequestId"), log.index("END RequestId")
    assert f"tick {first_after}\n" in log[start:end], log


def test_an_idle_frozen_sandbox_uses_no_cpu(gateway: Gateway) -> None:
    client = lambda_client(gateway.url)
    invoke(client, "spinner", {})
    pids = runtime_pids("spinner")
    assert pids, "the spinner's runtime was not found"
    # Running, the spinning thread burns CPU: the idle check below could fail.
    before = cpu_seconds(pids)
    spun_before, _ = invoke(client, "spinner", {"sleep": 1})
    spun, _ = invoke(client, "spinner", {})
    assert spun > spun_before and cpu_seconds(pids) - before >= 0.5
    assert wait_until(lambda: frozen(pids), timeout=10), "not frozen after its answer"
    idle_from = cpu_seconds(pids)
    time.sleep(10)  # the idle period under test
    assert cpu_seconds(pids) - idle_from <= 0.02, "an idle sandbox used CPU"
    # Thawed, it spins again from where it stopped.
    again, _ = invoke(client, "spinner", {"sleep": 0.2})
    assert again > spun
