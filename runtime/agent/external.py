"""A runtime the agent did not start: a container-image function's own entry point, in another container of the
same pod (`shareProcessNamespace: true`), talking to the agent's Runtime API on 127.0.0.1:9001.

The agent cannot wait() for a process that is not its child, so it finds the runtime's processes by their cgroup
(every container has its own; the pod's pause process is pid 1) and polls for them: they appear when the kubelet
starts the container, they are gone when it exits. A life of the runtime is one container's: its cgroup, which a
restarted container does not share (the cgroup names the container), so a restart the kubelet makes between two
polls is never taken for the same life going on. A deadline kills them all (the same uid: no capability needed)
and the kubelet starts the container again. The exit status is the kubelet's to know: an exit is reported as
Lambda reports a runtime that gave no reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path

POLL_SECONDS = 0.05
STABLE_SECONDS = 0.15  # a process seen this long is the runtime, not a runc helper passing through
PAUSE_PID = 1  # the pod's sandbox (pause) process when the pod shares one process namespace


def cgroup_of(pid: int | str, proc: Path = Path("/proc")) -> str | None:
    try:
        return (proc / str(pid) / "cgroup").read_text()
    except OSError:
        return None


def foreign_processes(proc: Path = Path("/proc"), own: str | None = None) -> dict[int, str]:
    """Processes in another container than this one (pid -> cgroup), the pod's pause process excepted."""
    mine = own if own is not None else cgroup_of("self", proc)
    found = {}
    for entry in proc.iterdir():
        if entry.name.isdigit() and int(entry.name) != PAUSE_PID:
            group = cgroup_of(entry.name, proc)
            if group is not None and group != mine:
                found[int(entry.name)] = group
    return found


class ExternalRuntime:
    """The other container's processes, with the part of asyncio.subprocess.Process's interface the sandbox uses."""

    def __init__(self, processes: Callable[[], dict[int, str]] = foreign_processes) -> None:
        self._processes = processes
        self._known: set[int] = set()
        self._container: str | None = None  # the cgroup of this life's container
        self.returncode: int | None = None
        self.pid = 0

    async def started(self, asked: asyncio.Event | None = None) -> None:
        """Wait until the container's processes run (the kubelet starts, or restarts, the container) and have
        for STABLE_SECONDS: a container's start (and an exec into the pod) passes through short-lived runc helper
        processes, which are not the runtime. Or until the runtime has `asked` for work (it called /next): then it
        runs for certain, and may be given an invocation at once, so this life must be watched from now on; if
        its processes are already gone by then, this life is over (`wait` returns at once)."""
        since: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            processes = await asyncio.to_thread(self._processes)
            found = set(processes)
            if asked is not None and asked.is_set():
                self._known = found
                break
            if found and found & self._known:
                if since is not None and loop.time() - since >= STABLE_SECONDS:
                    break
            else:
                since = loop.time() if found else None
            self._known = found
            await asyncio.sleep(POLL_SECONDS)
        if not self._known:
            return  # asked, and gone already: a life with no container left
        self.pid = min(self._known)
        self._container = processes[self.pid]
        self._known = {pid for pid, group in processes.items() if group == self._container}

    async def wait(self) -> int:
        """Wait until every process of this life's container is gone. The status is not ours to see: 0 stands for
        "unknown"."""
        while True:
            processes = await asyncio.to_thread(self._processes)
            # What it started since counts too (the deadline kills them all); a new container's do not.
            alive = {pid for pid, group in processes.items() if group == self._container}
            self._known = alive
            if not alive:
                self.returncode = 0
                return 0
            await asyncio.sleep(POLL_SECONDS)

    def kill(self) -> None:
        for pid in self._known:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
