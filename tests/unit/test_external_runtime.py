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
    assert external.foreign_pids(proc) == {20, 21}


async def test_it_waits_for_the_runtime_to_appear_and_to_go_and_kills_what_it_saw() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    alive = {"pids": set[int]()}
    looks = [0]

    def pids() -> set[int]:
        looks[0] += 1
        return set(alive["pids"])

    async def looked(times: int) -> None:
        """Until the runtime has looked for processes `times` more times (each look could have ended the wait)."""
        until = looks[0] + times
        async with asyncio.timeout(5):
            while looks[0] < until:
                await asyncio.sleep(0.01)

    runtime = external.ExternalRuntime(pids=pids)
    started = asyncio.ensure_future(runtime.started())
    await looked(3)
    assert not started.done()  # nothing runs yet: the container has not started
    alive["pids"] = {child.pid}
    await asyncio.wait_for(started, 5)
    assert runtime.pid == child.pid
    waiting = asyncio.ensure_future(runtime.wait())
    await looked(3)
    assert not waiting.done()
    runtime.kill()
    assert child.wait(5) == -9
    alive["pids"] = set()
    assert await asyncio.wait_for(waiting, 5) == 0 and runtime.returncode == 0
    runtime.kill()  # gone already: no error
    assert os.getpid() not in alive["pids"]


async def test_a_runc_helper_passing_through_is_not_taken_for_the_runtime() -> None:
    sightings = iter([{99}, set(), {5}])
    last = {"pids": set[int]()}

    def pids() -> set[int]:
        last["pids"] = next(sightings, last["pids"])
        return set(last["pids"])

    runtime = external.ExternalRuntime(pids=pids)
    await asyncio.wait_for(runtime.started(), 5)
    assert runtime.pid == 5  # 99 was gone before it had been seen for STABLE_SECONDS
