"""Isolation of one sandbox on the local backend: what its runtime can see, touch and signal.

On Lambda each execution environment is its own micro-VM. On the local backend one agent hosts many functions'
sandboxes, so a runtime must not be able to read the agent's memory (where every function's credential is), take
another sandbox's invocations, change another function's code, raise its own limits, signal the platform, or fill
the platform's disks. Each runtime therefore starts under bubblewrap (Debian's `bubblewrap`, what Flatpak uses):

- its own mount namespace: /usr and /etc read-only, its code read-only at /var/task, the Python that runs
  awslambdaric read-only, a private size-limited /tmp and /dev/shm; no /sys, /home, /root, /var, data directory;
- its own PID namespace: it sees only its own processes, and `--die-with-parent` ends all of them with the agent
  (nothing survives an agent killed with SIGKILL);
- when the agent runs as root, a uid of its own (leased host-wide from a pool, so two agents never share one) with
  no capabilities and no-new-privs (via util-linux's `setpriv`), so the kernel's own permission checks keep it away
  from root's files, processes and cgroups; the Runtime API serves only sockets owned by that uid (`peers.py`).

A pod needs none of this: the pod is the sandbox (Kubernetes gives it its own namespaces, uid and limits).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

TASK_ROOT = "/var/task"  # where Lambda puts a function's code, and so where the runtime sees it
OPT_ROOT = "/opt"  # where Lambda unpacks layers
TMP_BYTES = 512 * 1024 * 1024  # Lambda's default ephemeral storage
SHM_BYTES = 64 * 1024 * 1024
UID_BASE = 1_900_000_000  # far above any account's uid and the usual subordinate-uid ranges (100000+)
UID_COUNT = 65_536
UID_LOCKS = Path("/run/kambda/uids")
MODES = ("auto", "bwrap", "none")


class IsolationUnavailable(RuntimeError):
    """`--isolation bwrap` was asked for and bubblewrap cannot run here."""


@dataclass(frozen=True)
class Isolation:
    """How sandboxes are isolated on this host (decided once, at the agent's start)."""

    bwrap: str | None  # the bubblewrap binary; None: no isolation
    setpriv: str | None = None  # set when the agent is root: each sandbox then runs as its own uid

    @property
    def enabled(self) -> bool:
        return self.bwrap is not None

    @property
    def own_uid(self) -> bool:
        return self.setpriv is not None


@functools.cache
def detect(mode: str) -> Isolation:
    """The isolation `mode` (auto, bwrap, none) gives on this host. Decided once per process (it looks for binaries
    and may warn): the supervisor checks it at start, and every sandbox gets the same answer."""
    if mode not in MODES:
        raise ValueError(f"isolation must be one of {', '.join(MODES)}")
    if mode == "none":
        return Isolation(None)
    bwrap = shutil.which("bwrap")
    setpriv = shutil.which("setpriv") if os.geteuid() == 0 else None
    if bwrap is None:
        if mode == "bwrap":
            raise IsolationUnavailable("bubblewrap (bwrap) is not installed: apt-get install bubblewrap")
        log.warning(
            "bubblewrap (bwrap) is not installed: sandboxes are NOT isolated from each other or from the platform "
            "(apt-get install bubblewrap)"
        )
        return Isolation(None)
    if os.geteuid() == 0 and setpriv is None:
        raise IsolationUnavailable("setpriv (util-linux) is missing: sandboxes cannot get a uid of their own")
    if os.geteuid() != 0:
        log.warning("not running as root: sandboxes are isolated by namespaces but share this user's uid")
    return Isolation(bwrap, setpriv)


class UidLease:
    """A uid held for one sandbox; the lock file is what makes it ours host-wide, for as long as we hold it."""

    def __init__(self, uid: int, fd: int) -> None:
        self.uid = uid
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; a dead agent's leases go the same way
            self._fd = None


def lease_uid(*, locks: Path = UID_LOCKS, base: int = UID_BASE, count: int = UID_COUNT) -> UidLease:
    """A uid no other sandbox on this host holds (flock on one file per uid, so agents need not coordinate)."""
    locks.mkdir(parents=True, exist_ok=True, mode=0o700)
    start = int.from_bytes(os.urandom(4), "little") % count  # spread agents over the range; fewer collisions
    for offset in range(count):
        uid = base + (start + offset) % count
        fd = os.open(locks / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return UidLease(uid, fd)
    raise RuntimeError(f"all {count} sandbox uids are in use")


def python_roots(executable: str = sys.executable) -> tuple[str, ...]:
    """The directory a Python interpreter needs: its installation (the prefix its standard library is under). Not
    a virtualenv: runtimes run the base interpreter with `-S`, and Lambda's libraries come in as binds."""
    root = os.path.dirname(os.path.dirname(os.path.realpath(executable)))
    # /usr is bound anyway; "/" (an interpreter in /bin without merged /usr) would expose the whole host.
    return () if root == "/" or root.startswith("/usr") else (root,)


def _ancestors(paths: Iterable[str]) -> list[str]:
    """Every parent directory of `paths` below /, outermost first (bwrap would create them 0700)."""
    seen: list[str] = []
    for path in paths:
        parts = Path(path).parts[1:-1]
        for i in range(1, len(parts) + 1):
            directory = "/" + "/".join(parts[:i])
            if directory not in seen:
                seen.append(directory)
    return seen


def sandbox_argv(
    argv: list[str],
    isolation: Isolation,
    *,
    code_dir: str,
    uid: int | None,
    opt_dir: str | None = None,
    read_only: tuple[str, ...] = (),
    binds: tuple[tuple[str, str], ...] = (),
    tmp_bytes: int = TMP_BYTES,
    shm_bytes: int = SHM_BYTES,
) -> list[str]:
    """The command that runs `argv` (which names paths as the sandbox sees them) inside the sandbox (pure)."""
    if isolation.bwrap is None:
        return argv
    command = [isolation.bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--hostname", "sandbox"]
    command += ["--die-with-parent", "--ro-bind", "/usr", "/usr"]
    for link in ("bin", "lib", "lib64", "sbin"):
        if os.path.islink(f"/{link}"):
            command += ["--symlink", os.readlink(f"/{link}"), f"/{link}"]
        elif os.path.isdir(f"/{link}"):
            command += ["--ro-bind", f"/{link}", f"/{link}"]
    command += ["--ro-bind", "/etc", "/etc", "--proc", "/proc", "--dev", "/dev"]
    # The private /tmp first: what is bound below it (an interpreter installed under /tmp, say) must stay visible.
    command += ["--size", str(tmp_bytes), "--perms", "1777", "--tmpfs", "/tmp"]
    command += ["--size", str(shm_bytes), "--perms", "1777", "--tmpfs", "/dev/shm"]
    extra = [path for path in read_only if os.path.exists(path)]
    binds = tuple((source, dest) for source, dest in binds if os.path.exists(source))
    for directory in _ancestors([*extra, TASK_ROOT, *(dest for _, dest in binds)]):
        if directory not in ("/tmp", "/dev", "/dev/shm"):  # mounted above, with their own modes
            command += ["--perms", "0755", "--dir", directory]
    for path in extra:
        command += ["--ro-bind", path, path]
    for source, dest in binds:
        command += ["--ro-bind", source, dest]
    command += ["--ro-bind", code_dir, TASK_ROOT]
    if opt_dir is not None:
        command += ["--ro-bind", opt_dir, OPT_ROOT]  # the function's layers, merged
    command += ["--chdir", TASK_ROOT, "--"]
    if uid is not None and isolation.setpriv is not None:
        command += [isolation.setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        command += ["--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
    return command + argv


def exit_status(returncode: int, isolation: Isolation) -> int:
    """bwrap exits 128+N when its child dies of signal N; report that as the signal, as an unwrapped runtime would."""
    if isolation.enabled and returncode > 128:
        return -(returncode - 128)
    return returncode


def harden_agent() -> None:
    """Make the agent's memory unreadable through /proc/<pid>/mem and ptrace, even by processes of its own uid."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_dumpable = 4
        libc.prctl(pr_set_dumpable, 0, 0, 0, 0)
