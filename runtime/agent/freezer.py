"""Freezing a sandbox between invocations, as Lambda does: once a runtime has answered and is back in /next, nothing
of it runs until its next event is handed over. A background thread cannot tick, steal CPU or write logs while the
sandbox is idle; when it is thawed it carries on where it stopped, inside the next invocation.

Two ways, chosen per sandbox:
- the cgroup freezer (v2 `cgroup.freeze`, v1 `freezer.state`) where the agent owns a cgroup for the sandbox: it is
  atomic and nothing can leave it (an unprivileged process cannot move itself out of its cgroup);
- else (a pod, where /sys/fs/cgroup is read-only) SIGSTOP/SIGCONT to the runtime's process group. (An image
  function's runtime, another container's, is not frozen: `NoFreezer`.)

Freezing and thawing are one write (or one signal per group) each, on the agent's event loop: no waiting for the
v1 freezer's FREEZING -> FROZEN transition, since nothing the agent does next depends on it.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol


class Freezer(Protocol):
    @property
    def frozen(self) -> bool: ...

    def freeze(self) -> None: ...

    def thaw(self) -> None: ...


class NoFreezer:
    """A sandbox that is not frozen: before its runtime starts, and a container-image function's (see sandbox.py)."""

    frozen = False

    def freeze(self) -> None:
        pass

    def thaw(self) -> None:
        pass


class CgroupFreezer:
    """The sandbox's own freezer cgroup: every process the runtime started is in it."""

    def __init__(self, group: Path, *, v2: bool) -> None:
        self._file = group / ("cgroup.freeze" if v2 else "freezer.state")
        self._values = (b"1", b"0") if v2 else (b"FROZEN", b"THAWED")
        self._frozen = False

    @property
    def frozen(self) -> bool:
        return self._frozen

    def freeze(self) -> None:
        if not self._frozen and self._write(self._values[0]):
            self._frozen = True

    def thaw(self) -> None:
        if self._frozen:
            self._write(self._values[1])
            self._frozen = False

    def _write(self, value: bytes) -> bool:
        try:
            fd = os.open(self._file, os.O_WRONLY)
        except OSError:
            return False  # the cgroup is gone with its sandbox
        try:
            os.write(fd, value)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)


class SignalFreezer:
    """SIGSTOP and SIGCONT. `targets` are process-group ids when `groups`, else single pids (asked each time: an
    image function's processes are whatever its container runs now)."""

    def __init__(self, targets: Callable[[], Iterable[int]], *, groups: bool) -> None:
        self._targets = targets
        self._send = os.killpg if groups else os.kill
        self._frozen = False

    @property
    def frozen(self) -> bool:
        return self._frozen

    def freeze(self) -> None:
        if not self._frozen:
            self._signal(signal.SIGSTOP)
            self._frozen = True

    def thaw(self) -> None:
        if self._frozen:
            self._signal(signal.SIGCONT)
            self._frozen = False

    def _signal(self, sig: signal.Signals) -> None:
        for target in self._targets():
            if target > 1:  # never 0 (our own group) or 1 (a pod's pause process, or init)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    self._send(target, sig)
