"""The runtime side of SnapStart for Python: an initialised runtime kept as a template, forked for each sandbox.

This file is not imported by the agent: its source is the `-c` program of a template's interpreter (`python -S`), in
the sandbox, where nothing of the agent is visible. It does Lambda's init phase once: imports awslambdaric's pure
Python parts, imports the handler's module (its init code runs, and registers its `snapshot_restore_py` hooks), runs
the before-snapshot hooks, and says `ready`. Then it serves forks on its control socket (fd `_KAMBDA_ZYGOTE_FD`, a
SOCK_SEQPACKET the agent holds the other end of). A fork request carries the new sandbox's Runtime API address and
two descriptors: where its output goes, and a socket to report on. The child:
- leaves the template's session (its own process group: a timeout kills it, not the template);
- sends its pid with SCM_CREDENTIALS on the report socket, which the kernel translates into the agent's pid
  namespace, and waits until the agent has moved it into its sandbox's cgroups;
- then runs awslambdaric's own `main` with `AWS_LAMBDA_INITIALIZATION_TYPE=snap-start`. The handler's module is
  already imported, so awslambdaric finds it in `sys.modules`; the before-snapshot hooks have run (their list is
  empty now); awslambdaric asks `/runtime/restore/next` and runs the after-restore hooks in this sandbox.

Why the native client is imported only after the fork: awslambdaric's C++ client reads `AWS_LAMBDA_RUNTIME_API`
once, when its module is imported, so a client imported in the template would talk to no sandbox's Runtime API.
What it costs the child is that import (~5 ms); everything else is inherited. `random` re-seeds itself in a forked
child (CPython registers that at fork), so restored sandboxes do not share a random sequence.
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from typing import Any

MAX_MESSAGE = 65536


def _send(ctl: socket.socket, message: dict[str, Any]) -> None:
    ctl.send(json.dumps(message).encode())


def _init(handler: str) -> float:
    """Lambda's init phase, up to the snapshot: returns its duration (ms). Raises what the handler's import raised."""
    started = time.monotonic()
    # The pure Python part of awslambdaric (and what it imports: simplejson, logging...), never the native client
    # (see the module's docstring). http.client is what awslambdaric asks /restore/next with: it imports ssl, 70+ ms.
    import http.client  # noqa: F401

    import awslambdaric.lambda_context
    import awslambdaric.lambda_runtime_exception
    import awslambdaric.lambda_runtime_log_utils
    import awslambdaric.lambda_runtime_marshaller  # noqa: F401
    from awslambdaric import lambda_runtime_hooks_runner

    module = handler.rsplit(".", 1)[0].replace("/", ".")
    __import__(module)
    lambda_runtime_hooks_runner.run_before_snapshot()
    # What exists now is the snapshot: keep the collector off it, so a child's first collection does not write to
    # (and so copy) every page of the template's heap.
    gc.collect()
    gc.freeze()
    return (time.monotonic() - started) * 1000


def _child(ctl: socket.socket, wake: tuple[int, int], request: dict[str, Any], fds: list[int]) -> None:
    """In the forked child: become the sandbox, then run awslambdaric. Never returns."""
    log_fd, report_fd = fds
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        ctl.close()
        for fd in wake:
            os.close(fd)
        os.setsid()
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        report = socket.socket(fileno=report_fd)
        credentials = struct.pack("3i", os.getpid(), os.getuid(), os.getgid())
        report.sendmsg([b"forked"], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, credentials)])
        os.environ["AWS_LAMBDA_RUNTIME_API"] = request["api"]
        # The runtime client is the platform's code: it loads while the agent moves this process into the
        # sandbox's cgroups. The function's code (after-restore hooks, handler) runs only after that ("go").
        from awslambdaric.__main__ import main

        if report.recv(16) != b"go":
            os._exit(70)
        report.close()
    except BaseException:
        os._exit(71)
    try:
        main(sys.argv)
    finally:
        os._exit(1)


def _reap(ctl: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(ctl, {"exited": pid, "status": status})


def serve(ctl: socket.socket) -> None:
    """Fork a sandbox per request until the agent closes the control socket."""
    wake = os.pipe()
    os.set_blocking(wake[1], False)
    signal.set_wakeup_fd(wake[1])
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    while True:
        readable, _, _ = select.select([ctl.fileno(), wake[0]], [], [])
        if wake[0] in readable:
            os.read(wake[0], 4096)
            _reap(ctl)
        if ctl.fileno() not in readable:
            continue
        data, ancillary, _, _ = ctl.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(2 * 4))
        if not data:
            return  # the agent is done with this template: its sandboxes end with it
        fds: list[int] = []
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(struct.unpack(f"{len(payload) // 4}i", payload[: len(payload) - len(payload) % 4]))
        request = json.loads(data)
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            _send(ctl, {"refused": request.get("fork"), "reason": "a fork needs two descriptors"})
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(ctl, wake, request, fds)
        for fd in fds:
            os.close(fd)
        _send(ctl, {"forked": request.get("fork"), "pid": pid})


def main() -> None:
    ctl = socket.socket(fileno=int(os.environ.pop("_KAMBDA_ZYGOTE_FD")))
    site = os.environ.pop("_KAMBDA_RUNTIME_SITE", "")
    if site and site not in sys.path:
        sys.path.append(site)
    handler = sys.argv[1]
    try:
        init_ms = _init(handler)
    except BaseException as exc:
        _send(ctl, {"failed": f"{type(exc).__name__}: {exc}"[:2000]})
        sys.exit(1)
    _send(ctl, {"ready": init_ms})
    serve(ctl)


if __name__ == "__main__":
    main()
