"""What the soak watches, read from /proc and the file system: memory and open files of the gateway, of its local
agent (`kambda.runtime.agent --supervise`) and of the runtimes under it, and the size of the data directories."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since the load started
    gateway_rss: int  # bytes
    gateway_fds: int
    agent_rss: int
    agent_fds: int
    runtimes: int  # processes under the agent (runtimes and their sandbox wrappers)
    runtimes_rss: int
    data_bytes: int


def rss(pid: int) -> int:
    """Resident set size in bytes (0 once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself contain spaces and parentheses.
    return int(stat.rsplit(")", 1)[1].split()[1])


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _parent(int(entry)) == pid:
            found.append(int(entry))
    return found


def descendants(pid: int) -> list[int]:
    # One pass over /proc, then the tree from the parent map (children() per level would rescan /proc each time).
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _parent(int(entry))
            if parent is not None:
                parents.setdefault(parent, []).append(int(entry))
    found, todo = [], list(parents.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(parents.get(child, []))
    return found


def find_agent(gateway_pid: int) -> int | None:
    """The gateway's local agent: its child running `kambda.runtime.agent --supervise`."""
    for child in children(gateway_pid):
        argv = _cmdline(child)
        if "kambda.runtime.agent" in argv and "--supervise" in argv:
            return child
    return None


def dir_bytes(*paths: Path) -> int:
    total = 0
    for path in paths:
        for root, _, files in os.walk(path):
            for name in files:
                # A file may go while we walk (a WAL reset, a JetStream block deleted).
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(root, name)).st_size
    return total


def largest_files(*paths: Path, count: int = 6) -> list[tuple[str, int]]:
    """The biggest files (64 KiB and more) under `paths`, to show what the data directory's size is made of."""
    found = []
    for path in paths:
        for root, _, files in os.walk(path):
            for name in files:
                full = Path(root, name)
                with contextlib.suppress(OSError):
                    found.append((str(full.relative_to(path.parent)), full.lstat().st_size))
    return sorted((f for f in found if f[1] >= 64 * 1024), key=lambda item: -item[1])[:count]


def sample(at: float, gateway_pid: int, data: list[Path]) -> Sample:
    agent = find_agent(gateway_pid)
    under = descendants(agent) if agent is not None else []
    return Sample(
        at=at,
        gateway_rss=rss(gateway_pid),
        gateway_fds=fds(gateway_pid),
        agent_rss=rss(agent) if agent else 0,
        agent_fds=fds(agent) if agent else 0,
        runtimes=len(under),
        runtimes_rss=sum(rss(pid) for pid in under),
        data_bytes=dir_bytes(*data),
    )
