"""Memory limits for runtime processes: a cgroup per sandbox where the OS allows it, else an rlimit.

Max Memory Used is always measured: from the cgroup's peak when there is one, else from the process's VmHWM.
The runtime joins its cgroup itself through a one-line shell wrapper before exec, so no allocation escapes the
limit and no Python runs between fork and exec (the agent has gRPC threads; preexec_fn would be unsafe).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
MIB = 1024 * 1024
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass
class MemoryLimit:
    """How one sandbox's memory is limited and measured."""

    limit_mb: int
    cgroup: Path | None = None
    cgroup_v2: bool = False

    def wrap(self, argv: list[str]) -> list[str]:
        """The command that starts `argv` inside this limit."""
        if self.cgroup is not None:
            procs = self.cgroup / "cgroup.procs"
            return ["/bin/sh", "-c", f'echo $$ > "{procs}" && exec "$@"', "kambda-runtime", *argv]
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

    def release(self) -> None:
        if self.cgroup is not None:
            with contextlib.suppress(OSError):
                self.cgroup.rmdir()


def create(instance_id: str, limit_mb: int, *, use_cgroups: bool = True) -> MemoryLimit:
    if use_cgroups:
        for candidate, v2 in _cgroup_parents():
            path = candidate / f"kambda-{instance_id}"
            try:
                path.mkdir(exist_ok=True)
                limit = str(limit_mb * MIB)
                if v2:
                    (path / "memory.max").write_text(limit)
                    (path / "memory.swap.max").write_text("0")
                else:
                    (path / "memory.limit_in_bytes").write_text(limit)
                return MemoryLimit(limit_mb, cgroup=path, cgroup_v2=v2)
            except OSError as exc:
                log.debug("cgroup %s not usable: %s", path, exc)
                with contextlib.suppress(OSError):
                    path.rmdir()
    return MemoryLimit(limit_mb)


def _cgroup_parents() -> list[tuple[Path, bool]]:
    """Where this process may create child memory cgroups: its own cgroup (v2 or v1 memory hierarchy)."""
    parents: list[tuple[Path, bool]] = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return parents
    for line in lines:
        hier, controllers, path = line.split(":", 2)
        if hier == "0" and (CGROUP_ROOT / "cgroup.controllers").exists():
            parents.append((CGROUP_ROOT / path.lstrip("/"), True))
        elif "memory" in controllers.split(","):
            parents.append((CGROUP_ROOT / "memory" / path.lstrip("/"), False))
    return parents


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
