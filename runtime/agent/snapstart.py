"""SnapStart for Python, the agent's side: a template per function version, forked into new sandboxes.

Lambda initialises a SnapStart version once, snapshots the initialised microVM and restores every new execution
environment from it, running the `snapshot_restore_py` hooks around the snapshot. Here the snapshot is a live
process: the version's runtime, initialised once (its handler's module imported, its before-snapshot hooks run:
`zygote.py`), kept as a template and forked for each sandbox, so a new sandbox costs a fork and the runtime client's
import instead of the whole init. Why a fork server and not CRIU: CRIU needs CAP_SYS_ADMIN (or CAP_CHECKPOINT_RESTORE
and a kernel that allows it to a container), which neither a pod nor an unprivileged agent has; a fork shares the
template's memory copy-on-write, and costs about a millisecond.

What a restored sandbox shares with its template, and so with the version's other restored sandboxes (departures
from Lambda, whose restored environments share nothing but the snapshot's contents):
- the template's mount namespace under bubblewrap, hence its `/tmp`, and its uid (one uid per template, not per
  sandbox: the same function's code and credentials, so the same trust);
- what init made unique: connections opened at import, values drawn from `random` before the fork (it re-seeds
  itself in the child, as Lambda re-seeds it), `uuid`s generated at import. Lambda's documentation warns about the
  same for its snapshots: make them in an after-restore hook or in the handler.
Each restored sandbox has its own Runtime API, process group (timeouts kill only it), memory and pids cgroups (the
agent moves it there before any of its code runs) and freezer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import limits, logs

log = logging.getLogger(__name__)
ZYGOTE_SOURCE = (Path(__file__).parent / "zygote.py").read_text()
FD_ENV = "_KAMBDA_ZYGOTE_FD"
SITE_ENV = "_KAMBDA_RUNTIME_SITE"
MAX_MESSAGE = 65536
_UCRED = struct.Struct("3i")


class TemplateUnavailable(Exception):
    """The template could not init (or is gone): the sandbox starts its runtime the ordinary way."""


class ForkedRuntime:
    """A sandbox's runtime forked from a template: not the agent's child, so its exit comes from the template."""

    def __init__(self, pid: int) -> None:
        self.pid = pid  # in the agent's pid namespace
        self.returncode: int | None = None
        self._exited = asyncio.get_running_loop().create_future()

    def exited(self, returncode: int | None) -> None:
        if not self._exited.done():
            self.returncode = returncode
            self._exited.set_result(returncode)

    async def wait(self) -> int | None:
        return await asyncio.shield(self._exited)


async def _readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


def adoption_of(ancillary: Sequence[tuple[int, int, bytes]]) -> int | None:
    """The pid in an SCM_CREDENTIALS message (translated by the kernel into the receiver's pid namespace)."""
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= _UCRED.size:
            pid, _, _ = _UCRED.unpack(payload[: _UCRED.size])
            return int(pid)
    return None


class Template:
    """One version's initialised runtime, serving forks. `launch` starts its process (argv under the sandbox's
    isolation, with `env`) given the environment additions and the descriptor to keep open."""

    def __init__(
        self,
        key: str,
        launch: Callable[[Mapping[str, str], int, int], Any],
        *,
        cgroups: limits.SandboxCgroups,
        uid: Any,
        sink: logs.Sink,
        init_timeout: float,
    ) -> None:
        self.key = key
        self._launch = launch
        self._cgroups = cgroups
        self._uid = uid  # isolation.UidLease | None: the restored sandboxes run as this uid
        self._sink = sink
        self._init_timeout = init_timeout
        self._ctl: socket.socket | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._capture: logs.LogCapture | None = None
        self._ready: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._forks: dict[int, asyncio.Future[int]] = {}  # fork request id -> pid in the template's namespace
        self._children: dict[int, ForkedRuntime] = {}  # pid in the template's namespace -> runtime
        self._next_fork = 0
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        self.init_ms: float | None = None
        self.failure: str | None = None

    @property
    def uid(self) -> int | None:
        return None if self._uid is None else int(self._uid.uid)

    @property
    def alive(self) -> bool:
        return not self._closed and self.failure is None

    async def start(self) -> None:
        started = time.monotonic()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        read_fd, write_fd = os.pipe()
        try:
            self._proc = await self._launch({FD_ENV: str(theirs.fileno())}, theirs.fileno(), write_fd)
        except BaseException:
            ours.close()
            os.close(read_fd)
            raise
        finally:
            theirs.close()
            os.close(write_fd)
        ours.setblocking(False)
        self._ctl = ours
        self._capture = logs.LogCapture(read_fd, self._sink, loop=asyncio.get_running_loop())
        self._reader = asyncio.create_task(self._read(), name=f"template-{self.key[:12]}")
        try:
            self.init_ms = await asyncio.wait_for(asyncio.shield(self._ready), self._init_timeout)
        except (TimeoutError, TemplateUnavailable) as exc:
            self.failure = self.failure or f"init did not finish within {self._init_timeout:g} s"
            log.warning("SnapStart template %s unusable (%s): sandboxes init on demand", self.key[:12], exc)
            await self.close()
            return
        log.info("SnapStart template %s ready: init %.0f ms (%.0f ms with its start)",
                 self.key[:12], self.init_ms, (time.monotonic() - started) * 1000)  # fmt: skip

    async def ready(self) -> bool:
        """Whether forks can be served (waits for init to end)."""
        if self._closed:
            return False
        with contextlib.suppress(TemplateUnavailable):
            await asyncio.shield(self._ready)
            return not self._closed
        return False

    async def _read(self) -> None:
        ctl = self._ctl
        assert ctl is not None
        loop = asyncio.get_running_loop()
        try:
            while data := await loop.sock_recv(ctl, MAX_MESSAGE):
                self._on_message(json.loads(data))
        except (OSError, ValueError) as exc:
            log.warning("SnapStart template %s: control socket failed: %s", self.key[:12], exc)
        finally:
            self._gone("the template exited")

    def _on_message(self, message: Mapping[str, Any]) -> None:
        if "ready" in message and not self._ready.done():
            self._ready.set_result(float(message["ready"]))
        elif "failed" in message:
            self.failure = str(message["failed"])
            log.warning("SnapStart template %s: init failed: %s", self.key[:12], self.failure)
            if not self._ready.done():
                self._ready.set_exception(TemplateUnavailable(self.failure))
        elif "forked" in message:
            pending = self._forks.pop(int(message["forked"]), None)
            if pending is not None and not pending.done():
                pending.set_result(int(message["pid"]))
        elif "refused" in message:
            pending = self._forks.pop(int(message["refused"]), None)
            if pending is not None and not pending.done():
                pending.set_exception(TemplateUnavailable(str(message.get("reason"))))
        elif "exited" in message:
            child = self._children.pop(int(message["exited"]), None)
            if child is not None:
                child.exited(os.waitstatus_to_exitcode(int(message["status"])))

    def _gone(self, reason: str) -> None:
        self._closed = True
        if not self._ready.done():
            self._ready.set_exception(TemplateUnavailable(self.failure or reason))
        for pending in self._forks.values():
            if not pending.done():
                pending.set_exception(TemplateUnavailable(reason))
        self._forks.clear()
        for child in self._children.values():
            limits.kill_group(child.pid)  # outside a pid namespace a child would outlive its template unseen
            child.exited(None)
        self._children.clear()

    async def fork(self, api: str, log_fd: int, cgroups: limits.SandboxCgroups) -> ForkedRuntime:
        """A new sandbox's runtime: forked, in `cgroups` before any of its code runs, talking to `api`, writing to
        `log_fd`. Its Restore Duration counts from here to its first /next."""
        if not await self.ready() or self._ctl is None:
            raise TemplateUnavailable(self.failure or "the template is gone")
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            ours.setblocking(False)
            request_id = self._next_fork
            self._next_fork += 1
            forked: asyncio.Future[int] = loop.create_future()
            self._forks[request_id] = forked
            request = json.dumps({"fork": request_id, "api": api}).encode()
            try:
                socket.send_fds(self._ctl, [request], [log_fd, theirs.fileno()])
            except OSError as exc:
                self._forks.pop(request_id, None)
                raise TemplateUnavailable(f"the template did not take the request: {exc}") from exc
            theirs.close()
            inner_pid = await forked
            data, ancillary = b"", list[tuple[int, int, bytes]]()
            while not data:
                await _readable(ours)
                with contextlib.suppress(BlockingIOError):
                    data, ancillary, _, _ = ours.recvmsg(64, socket.CMSG_SPACE(_UCRED.size))
                    if not data:
                        raise TemplateUnavailable("the forked runtime died before reporting")
            pid = adoption_of(ancillary)
            if pid is None:
                raise TemplateUnavailable("the forked runtime sent no credentials")
            runtime = ForkedRuntime(pid)
            self._children[inner_pid] = runtime
            try:
                # In a thread: on cgroup v1 each move waits for an RCU grace period (~5 ms, three hierarchies), and
                # the child meanwhile imports the runtime client; it runs none of the function's code before "go".
                await asyncio.to_thread(cgroups.adopt, pid)
            except OSError as exc:
                limits.kill_group(pid)
                raise TemplateUnavailable(f"cannot move the forked runtime into its cgroups: {exc}") from exc
            ours.send(b"go")
            return runtime
        finally:
            theirs.close()
            ours.close()

    async def close(self) -> None:
        """End the template (and, under bubblewrap, the sandboxes forked from it: their pid namespace is its)."""
        self._closed = True
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None
        proc = self._proc
        if proc is not None and proc.returncode is None:
            limits.kill_group(proc.pid)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        self._gone("the template was closed")
        if self._capture is not None:
            self._capture.drain()
            self._capture.close()
        await asyncio.to_thread(self._cgroups.release)
        if self._uid is not None:
            self._uid.release()


def _died(task: asyncio.Task[Template]) -> bool:
    """A template that had initialised and whose process is gone since."""
    if not task.done() or task.cancelled() or task.exception() is not None:
        return False
    template = task.result()
    return not template.alive and template.failure is None


class Templates:
    """The agent's templates, one per version configuration (`key`), each started once by whoever needs it first
    (a sandbox, or the local backend's `prepare` when the version is published) and shared by its sandboxes."""

    def __init__(self, make: Callable[[Any], Template], key: Callable[[Any], str]) -> None:
        self._make = make
        self._key = key
        self._templates: dict[str, asyncio.Task[Template]] = {}

    async def get(self, config: Any) -> Template:
        key = self._key(config)
        task = self._templates.get(key)
        if task is None or _died(task):
            # None yet, or one that was alive and is gone (its process died): make one afresh. A template whose
            # init failed stays: every sandbox of that version inits on demand, without trying it again.
            task = asyncio.create_task(self._start(config), name=f"template-{key[:12]}")
            self._templates[key] = task
        return await asyncio.shield(task)

    async def _start(self, config: Any) -> Template:
        template = self._make(config)
        await template.start()
        return template

    async def discard(self, config: Any) -> None:
        task = self._templates.pop(self._key(config), None)
        if task is not None:
            with contextlib.suppress(Exception):
                await (await task).close()

    async def close(self) -> None:
        tasks, self._templates = list(self._templates.values()), {}
        for task in tasks:
            with contextlib.suppress(Exception):
                await (await task).close()
