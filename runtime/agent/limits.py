"""Memory and process limits for runtime processes: cgroups per sandbox where the OS allows it, else an rlimit.

Max Memory Used is always measured: from the cgroup's peak when there is one, else from the process's VmHWM.
The runtime joins its cgroups itself through a one-line shell wrapper before exec, so no allocation escapes the
limit and no Python runs between fork and exec (the agent has gRPC threads; preexec_fn would be unsafe).

Every sandbox's cgroups sit under one `kambda-agent-<pid>` parent per agent. An agent killed without cleaning up
(SIGKILL, OOM) leaves that parent behind; the next agent to start sweeps the parents of agents that are gone,
killing whatever still runs in them, so neither cgroups nor processes leak across agent deaths.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)
MIB = 1024 * 1024
CGROUP_ROOT = Path("/sys/fs/cgroup")
MAX_PROCESSES = 1024  # Lambda's limit of processes and threads per execution environment
AGENT_PREFIX = "kambda-agent-"


@dataclass
class MemoryLimit:
    """How one sandbox's memory is limited and measured."""

    limit_mb: int
    cgroup: Path | None = None  # the memory cgroup
    cgroup_v2: bool = False
    others: tuple[Path, ...] = field(default=())  # further cgroups the runtime joins (pids, on cgroup v1)

    def wrap(self, argv: list[str]) -> list[str]:
        """The command that starts `argv` inside this limit."""
        if self.cgroup is not None:
            joins = " && ".join(f'echo $$ > "{group / "cgroup.procs"}"' for group in (self.cgroup, *self.others))
            return ["/bin/sh", "-c", f'{joins} && exec "$@"', "kambda-runtime", *argv]
        # RLIMIT_DATA bounds heap and private mappings without counting Python's large virtual reservations.
        kib = self.limit_mb * 1024
        return ["/bin/sh", "-c", f'ulimit -d {kib} 2>/dev/null; exec "$@"', "kambda-runtime", *argv]

    def max_used_mb(self, pid: int | None) -> int:
        peak = 0
        if self.cgroup is not None:
            name = "memory.peak" if self.cgroup_v2 else "memory.max_usage_in_bytes"
            with contextlib.suppress(OSError, ValueError):
                peak = int(_read(str(self.cgroup / name)))
        if pid is not None:
            # Pages the runtime maps from the page cache are charged to whoever read them first, so a cgroup's
            # peak can be below the process's own resident high-water mark; report the larger, as Lambda would.
            peak = max(peak, _vm_hwm_bytes(pid))
        return max(1, round(peak / MIB))

    def reset_peak(self) -> None:
        """Forget the previous runtime's peak when a sandbox re-initialises (cgroup v1; v2 has no reset)."""
        if self.cgroup is not None and not self.cgroup_v2:
            with contextlib.suppress(OSError):
                (self.cgroup / "memory.max_usage_in_bytes").write_text("0")

    def release(self, *, wait: float = 2.0) -> None:
        """Remove the sandbox's cgroups, first killing anything of the sandbox still in them (a cgroup with members
        cannot be removed; a runtime's last processes may still be exiting). Blocks for up to `wait`."""
        for group in (self.cgroup, *self.others):
            if group is not None:
                _empty(group, wait)
                _remove(group)


def create(instance_id: str, limit_mb: int, *, use_cgroups: bool = True) -> MemoryLimit:
    if use_cgroups:
        for candidate, v2 in _cgroup_parents("memory"):
            path = candidate / f"{AGENT_PREFIX}{os.getpid()}" / f"sandbox-{instance_id}"
            try:
                path.mkdir(parents=True, exist_ok=True)
                limit = str(limit_mb * MIB)
                if v2:
                    # cgroup v2 gives a new level no controllers: delegate memory and pids to the sandboxes.
                    (path.parent / "cgroup.subtree_control").write_text("+memory +pids")
                    (path / "memory.max").write_text(limit)
                    (path / "memory.swap.max").write_text("0")
                    (path / "pids.max").write_text(str(MAX_PROCESSES))
                    return MemoryLimit(limit_mb, cgroup=path, cgroup_v2=True)
                (path / "memory.limit_in_bytes").write_text(limit)
                return MemoryLimit(limit_mb, cgroup=path, others=_pids_cgroup_v1(instance_id))
            except OSError as exc:
                log.debug("cgroup %s not usable: %s", path, exc)
                _remove(path)
        log.warning("no memory cgroup for sandbox %s: memory limited by ulimit -d only", instance_id)
    return MemoryLimit(limit_mb)


def _pids_cgroup_v1(instance_id: str) -> tuple[Path, ...]:
    for candidate, _ in _cgroup_parents("pids"):
        path = candidate / f"{AGENT_PREFIX}{os.getpid()}" / f"sandbox-{instance_id}"
        try:
            path.mkdir(parents=True, exist_ok=True)
            (path / "pids.max").write_text(str(MAX_PROCESSES))
            return (path,)
        except OSError as exc:
            log.debug("pids cgroup %s not usable: %s", path, exc)
            _remove(path)
    return ()


def _cgroup_parents(controller: str) -> list[tuple[Path, bool]]:
    """Where this process may create child cgroups of `controller`: its own cgroup (v2, or the v1 hierarchy)."""
    parents: list[tuple[Path, bool]] = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return parents
    for line in lines:
        hier, controllers, path = line.split(":", 2)
        if hier == "0" and (CGROUP_ROOT / "cgroup.controllers").exists():
            parents.append((CGROUP_ROOT / path.lstrip("/"), True))
        elif controller in controllers.split(","):
            parents.append((CGROUP_ROOT / controller / path.lstrip("/"), False))
    return parents


def _remove(group: Path) -> None:
    with contextlib.suppress(OSError):
        group.rmdir()


def release_agent() -> None:
    """Remove this agent's (now empty) cgroup parents, at a clean exit."""
    for controller in ("memory", "pids"):
        for candidate, _ in _cgroup_parents(controller):
            _remove(candidate / f"{AGENT_PREFIX}{os.getpid()}")


def sweep_dead_agents(*, wait: float = 2.0) -> int:
    """Kill what still runs in the cgroups of agents that are gone, and remove those cgroups. Returns how many."""
    swept = 0
    for controller in ("memory", "pids"):
        for candidate, _ in _cgroup_parents(controller):
            with contextlib.suppress(OSError):
                for parent in candidate.glob(f"{AGENT_PREFIX}*"):
                    pid = parent.name.removeprefix(AGENT_PREFIX)
                    if not pid.isdigit() or _alive(int(pid)):
                        continue
                    for group in [p for p in parent.iterdir() if p.is_dir()]:
                        _empty(group, wait)
                        _remove(group)
                    _remove(parent)
                    swept += 1
    return swept


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _empty(group: Path, wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            members = [int(p) for p in (group / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return
        if not members or time.monotonic() > deadline:
            return
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, 9)
        time.sleep(0.01)


def _read(path: str) -> bytes:
    # Read on every invocation's END: plain os calls, no text decoding layers.
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 8192)
    finally:
        os.close(fd)


def _vm_hwm_bytes(pid: int) -> int:
    try:
        status = _read(f"/proc/{pid}/status")
        start = status.index(b"VmHWM:") + 6
        return int(status[start : status.index(b"kB", start)]) * 1024
    except (OSError, ValueError):
        return 0


def kill_group(pid: int) -> None:
    """Kill the runtime and everything it started (it runs in its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, 9)
