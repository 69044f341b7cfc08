"""The agent's view of a runtime in another container: found by cgroup, waited for by polling, killed by pid."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from kambda.runtime.agent import external


def fake_proc(root: Path, groups: dict[str, str]) -> Path:
    for pid, group in groups.items():
        (root / pid).mkdir(parents=True)
        (root / pid / "cgroup").write_text(group)
    (root / "self").mkdir()
    (root / "self" / "cgroup").write_text("agent")
    (root / "meminfo").write_text("not a process")
    return root


def test_foreign_processes_are_the_other_containers_not_pause_not_ours(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {"1": "pause", "7": "agent", "8": "agent", "20": "function", "21": "function"})
    assert external.foreign_processes(proc) == {20: "function", 21: "function"}


class Sightings:
    """What the runtime sees of the pod's processes (`now`: pid -> cgroup), and how often it has looked."""

    def __init__(self, now: dict[int, str]) -> None:
        self.now = now
        self.looks = 0

    def __call__(self) -> dict[int, str]:
        self.looks += 1
        return dict(self.now)

    async def looked(self, times: int) -> None:
        """Until the runtime has looked `times` more times (each look could have ended what it waits for)."""
        until = self.looks + times
        async with asyncio.timeout(5):
            while self.looks < until:
                await asyncio.sleep(0.01)


async def test_it_waits_for_the_runtime_to_appear_and_to_go_and_kills_what_it_saw() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    sightings = Sightings({})
    looked = sightings.looked
    runtime = external.ExternalRuntime(processes=sightings)
    started = asyncio.ensure_future(runtime.started())
    await looked(3)
    assert not started.done()  # nothing runs yet: the container has not started
    sightings.now = {child.pid: "function-a"}
    await asyncio.wait_for(started, 5)
    assert runtime.pid == child.pid
    waiting = asyncio.ensure_future(runtime.wait())
    await looked(3)
    assert not waiting.done()
    runtime.kill()
    assert child.wait(5) == -9
    sightings.now = {}
    assert await asyncio.wait_for(waiting, 5) == 0 and runtime.returncode == 0
    runtime.kill()  # gone already: no error
    assert os.getpid() not in sightings.now


async def test_a_runc_helper_passing_through_is_not_taken_for_the_runtime() -> None:
    sightings = iter([{99}, set(), {5}])
    last = {"pids": set[int]()}

    def pids() -> dict[int, str]:
        last["pids"] = next(sightings, last["pids"])
        return dict.fromkeys(last["pids"], "function-a")

    runtime = external.ExternalRuntime(processes=pids)
    await asyncio.wait_for(runtime.started(), 5)
    assert runtime.pid == 5  # 99 was gone before it had been seen for STABLE_SECONDS


async def test_a_container_restarted_between_two_looks_is_a_new_life() -> None:
    # The kubelet can restart a crashed container faster than the agent looks: the old container's processes are
    # gone, a new container's are there. That is an exit, not the same runtime going on (it was: an e2e crash
    # check then timed out instead of reporting Runtime.ExitError).
    sightings = Sightings({10: "container-1", 11: "container-1"})
    runtime = external.ExternalRuntime(processes=sightings)
    await asyncio.wait_for(runtime.started(), 5)
    waiting = asyncio.ensure_future(runtime.wait())
    sightings.now = {12: "container-1", 20: "container-2"}  # a child it started since is still this life
    await sightings.looked(3)
    assert not waiting.done()
    sightings.now = {20: "container-2", 21: "container-2"}  # restarted: only the new container's processes remain
    assert await asyncio.wait_for(waiting, 5) == 0


async def test_a_runtime_that_asked_for_work_is_watched_at_once_even_if_it_dies_young() -> None:
    # A runtime can call /next, take an invocation and exit before its processes were seen for STABLE_SECONDS:
    # that life must still end in an exit (Runtime.ExitError), not wait for the next container.
    seen = {"now": {30: "container-1"}}
    asked = asyncio.Event()
    runtime = external.ExternalRuntime(processes=lambda: dict(seen["now"]))
    starting = asyncio.ensure_future(runtime.started(asked))
    asked.set()
    await asyncio.wait_for(starting, 5)
    assert runtime.pid == 30
    seen["now"] = {}
    assert await asyncio.wait_for(runtime.wait(), 5) == 0

    gone = external.ExternalRuntime(processes=dict)  # asked, and already gone when it is first looked at
    await asyncio.wait_for(gone.started(asked), 5)
    assert await asyncio.wait_for(gone.wait(), 5) == 0
