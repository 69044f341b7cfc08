"""Memory and process limits for runtime processes, and the freezer: cgroups per sandbox where the OS allows it,
else an rlimit (and SIGSTOP, freezer.py).

Max Memory Used is always measured: from the cgroup's peak when there is one, else from the process's VmHWM.
The runtime joins its cgroups itself through a one-line shell wrapper before exec, so no allocation escapes the
limit and no Python runs between fork and exec (the agent has gRPC threads; preexec_fn would be unsafe).

Every sandbox's cgroups sit under one `kambda-agent-<pid>` parent per agent. An agent killed without cleaning up
(SIGKILL, OOM) leaves that parent behind; the next agent to start sweeps the parents of agents that are gone,
killing whatever still runs in them, so neither cgroups nor processes leak across agent deaths. A v1 freezer holds
back even SIGKILL, so a frozen sandbox would not die with its agent (bwrap's --die-with-parent): a watchdog per
agent (`ThawWatchdog`) thaws its sandboxes the moment the agent is gone, however it died.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)
MIB = 1024 * 1024
CGROUP_ROOT = Path("/sys/fs/cgroup")
MAX_PROCESSES = 1024  # Lambda's limit of processes and threads per execution environment
AGENT_PREFIX = "kambda-agent-"
V1_CONTROLLERS = ("memory", "pids", "freezer")  # the v1 hierarchies a sandbox has a group in


@dataclass
class SandboxCgroups:
    """How one sandbox's memory is limited and measured, and the cgroup that freezes it (if any)."""

    limit_mb: int
    cgroup: Path | None = None  # the memory cgroup
    cgroup_v2: bool = False
    others: tuple[Path, ...] = field(default=())  # further cgroups the runtime joins (pids, freezer on cgroup v1)
    freezer: Path | None = None  # the cgroup whose freezer stops the sandbox (v2: the same as `cgroup`)

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

    def adopt(self, pid: int) -> None:
        """Move a running process into this sandbox's cgroups (a runtime forked from a SnapStart template: it did
        not start inside them). Only what it allocates from now on is charged here; its template keeps the rest."""
        for group in (self.cgroup, *self.others):
            if group is not None:
                (group / "cgroup.procs").write_text(str(pid))

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


def create(instance_id: str, limit_mb: int, *, use_cgroups: bool = True) -> SandboxCgroups:
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
                    # Every non-root v2 cgroup has cgroup.freeze; no controller to enable.
                    return SandboxCgroups(limit_mb, cgroup=path, cgroup_v2=True, freezer=path)
                (path / "memory.limit_in_bytes").write_text(limit)
                pids = _v1_group("pids", instance_id, {"pids.max": str(MAX_PROCESSES)})
                freezer = _v1_group("freezer", instance_id, {})
                others = tuple(g for g in (pids, freezer) if g is not None)
                return SandboxCgroups(limit_mb, cgroup=path, others=others, freezer=freezer)
            except OSError as exc:
                log.debug("cgroup %s not usable: %s", path, exc)
                _remove(path)
    log.warning("no memory cgroup for sandbox %s: memory limited by ulimit -d only", instance_id)
    return SandboxCgroups(limit_mb)


def _v1_group(controller: str, instance_id: str, settings: dict[str, str]) -> Path | None:
    for candidate, _ in _cgroup_parents(controller):
        path = candidate / f"{AGENT_PREFIX}{os.getpid()}" / f"sandbox-{instance_id}"
        try:
            path.mkdir(parents=True, exist_ok=True)
            for name, value in settings.items():
                (path / name).write_text(value)
            return path
        except OSError as exc:
            log.debug("%s cgroup %s not usable: %s", controller, path, exc)
            _remove(path)
    return None


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
    for controller in V1_CONTROLLERS:
        for candidate, _ in _cgroup_parents(controller):
            _remove(candidate / f"{AGENT_PREFIX}{os.getpid()}")


def sweep_dead_agents(*, wait: float = 2.0) -> int:
    """Kill what still runs in the cgroups of agents that are gone, and remove those cgroups. Returns how many."""
    swept = 0
    for controller in V1_CONTROLLERS:
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
    _thaw(group)  # a frozen process does not act on SIGKILL until thawed (v1)
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


def _thaw(group: Path) -> None:
    for name, value in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
        if (group / name).exists():
            with contextlib.suppress(OSError):
                (group / name).write_text(value)


class ThawWatchdog:
    """Thaws this agent's frozen sandboxes when the agent dies, so that they die with it.

    A shell waits on a pipe whose only writer is the agent (close-on-exec: no runtime inherits it); the kernel
    closes it when the agent exits, by any means, and the shell then thaws every sandbox's v1 freezer group. The
    pending SIGKILL of bwrap's --die-with-parent then takes effect. In its own session: Ctrl-C in the terminal that
    ran `kambda run` must not end it first.
    """

    SCRIPT = (
        'read -r _; for p in "$@"; do for s in "$p"/*/freezer.state; do [ -f "$s" ] && echo THAWED > "$s"; done; done'
    )

    def __init__(self) -> None:
        self._writer: int | None = None
        parents = [str(c / f"{AGENT_PREFIX}{os.getpid()}") for c, v2 in _cgroup_parents("freezer") if not v2]
        if not parents or os.geteuid() != 0:
            return  # no v1 freezer of ours: frozen sandboxes are stopped by signals, and SIGKILL ends those
        reader, self._writer = os.pipe()
        try:
            subprocess.Popen(
                ["/bin/sh", "-c", self.SCRIPT, "kambda-thaw", *parents],
                stdin=reader, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        finally:
            os.close(reader)

    def close(self) -> None:
        """At a clean exit (the sandboxes are gone): the watchdog wakes, finds nothing, exits."""
        if self._writer is not None:
            os.close(self._writer)
            self._writer = None


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
