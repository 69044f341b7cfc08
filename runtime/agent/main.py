"""Process entry points of the agent.

- `run_single`: a pod's agent. Its first sandbox is configured by the `KAMBDA_SANDBOX` JSON the operator writes
  into the pod spec and the credential in `KAMBDA_CREDENTIAL` (or the file `KAMBDA_CREDENTIAL_FILE`); the gateway
  spawns more beside it, up to `KAMBDA_SLOTS` (packed sandboxes, `Pod`). Exits on SIGTERM; exits 1 if the gateway
  rejects it or none of its sandboxes can reach it (a visible crash loop); when the gateway has retired all of its
  sandboxes, it waits for the pod's deletion rather than exiting into a restart.
- `run_pool`: a warm-pool pod's agent (`KAMBDA_POOL`): it waits until the gateway specialises it for a function
  version (`pool.py`), then is that version's pod exactly as `run_single`'s.
- `run_supervisor`: the local backend's pre-started agent. Hosts many sandboxes in one warm process, so that a
  cold start spawns only the runtime, never another interpreter that imports grpc. The gateway drives
  it with JSON lines on stdin (`{"op": "start", "sandbox": {...}, "credential": "..."}`); it reports each
  sandbox's end on stdout (`{"event": "stopped", "instance_id": ...}`) and exits when stdin closes, so it can
  never outlive the gateway that started it. Function logs go to stderr, each line prefixed with the function.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any

from grpc import aio

from kambda import naming
from kambda.naming import CODE_REFUSED

from . import code, isolation, limits, pool, snapstart
from .sandbox import Sandbox, SandboxConfig, make_template, template_key
from .session import Identity, Session

log = logging.getLogger("kambda.agent")

# Where Kubernetes reads a container's last words (terminationMessagePath): the operator shows them on the Function.
TERMINATION_LOG = "/dev/termination-log"


def _last_words(reason: str, message: str, path: str = TERMINATION_LOG) -> None:
    with contextlib.suppress(OSError), open(path, "w") as f:  # OSError: not in a pod
        f.write(f"{reason}: {message}"[:4000])  # the kubelet keeps at most 4096 bytes


MAX_MESSAGE = 16 * 1024 * 1024
CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    # A gateway replica whose pod vanished (its network namespace gone: no FIN, no RST) is noticed by a missing
    # ping answer within 3 + 2 s, and the agent goes to the function's next owner; 10 + 5 s made a failover 20 s.
    ("grpc.keepalive_time_ms", 3_000),
    ("grpc.keepalive_timeout_ms", 2_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # A restarted gateway is back within seconds: retry the connection quickly rather than grpc's default 1-120 s.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


def dial(target: str) -> aio.Channel:
    """A channel to a gateway replica the home address sent this sandbox on to: the same options as home's."""
    return aio.insecure_channel(target, options=CHANNEL_OPTIONS)


def config_from_json(data: Mapping[str, Any], *, isolation_mode: str = "none") -> SandboxConfig:
    fields = {k: v for k, v in data.items() if k in SandboxConfig.__dataclass_fields__}
    fields.setdefault("isolation", isolation_mode)
    # In a pod the instance is the pod: its name (HOSTNAME) is the id the gateway sees.
    fields.setdefault("instance_id", os.environ.get("KAMBDA_INSTANCE_ID") or os.environ.get("HOSTNAME", "instance"))
    fields["passthrough_env"] = tuple(fields.get("passthrough_env") or ())
    fields["layers"] = tuple(fields.get("layers") or ())
    return SandboxConfig(**fields)


def templates_for(sink: Any) -> snapstart.Templates:
    """This agent's SnapStart templates; their init output goes to `sink`."""
    return snapstart.Templates(lambda config: make_template(config, sink), template_key)


Spawn = Callable[[list[str]], None]


async def _start_sandbox(
    channel: aio.Channel,
    config: SandboxConfig,
    credential: str,
    sink: Any,
    templates: snapstart.Templates,
    on_spawn: Spawn | None = None,
) -> tuple[Sandbox, Session, asyncio.Task[None]]:
    identity = Identity(config.function, config.version, config.instance_id, credential)
    holder: list[Sandbox] = []

    def on_stop(reason: str) -> None:
        log.info("sandbox %s stopping: %s", config.instance_id, reason)
        if holder:
            asyncio.get_running_loop().create_task(holder[0].stop())

    session = Session(channel, identity, on_stop=on_stop, dial=dial, on_spawn=on_spawn)
    sandbox = Sandbox(config, session, sink, templates)
    holder.append(sandbox)
    try:
        await sandbox.start()
    except BaseException:
        await sandbox.stop()  # its uid lease, cgroups and listener
        raise
    task = asyncio.create_task(session.run(), name=f"session-{config.instance_id}")

    def session_ended(ended: asyncio.Task[None]) -> None:
        if not ended.cancelled() and ended.exception() is not None:
            # Its gateway can no longer reach it: the sandbox goes (the gateway starts another where it needs one).
            log.error("sandbox %s: its gateway session failed", config.instance_id, exc_info=ended.exception())
            asyncio.get_running_loop().create_task(sandbox.stop())

    task.add_done_callback(session_ended)
    return sandbox, session, task


class Pod:
    """The sandboxes of one function pod (packed sandboxes): the first starts with the pod, the gateway asks for
    more on any sandbox's stream (Spawn), up to `slots`. Each is its own runtime with its own Runtime API and
    stream, one invocation at a time; they share the pod's code, its SnapStart template and its memory limit."""

    def __init__(self, channel: aio.Channel, base: SandboxConfig, credential: str, slots: int, sink: Any) -> None:
        self._channel = channel
        # Spawned sandboxes find the code (and layers) the first one fetched and verified in the pod's volume.
        self._spawned_config = dataclasses.replace(base, code_url=None, code_store=None)
        self._base = base
        self._credential = credential
        self._slots = slots
        self._sink = sink
        self.templates = templates_for(sink)
        self._sandboxes: dict[str, tuple[Sandbox, Session, asyncio.Task[None]]] = {}
        self._starting: set[asyncio.Task[None]] = set()
        self.changed = asyncio.Event()  # a sandbox came or went
        self.last_failure: str | None = None  # why the sandbox that went last went, unless the gateway stopped it
        self.pod = naming.pod_of(base.instance_id)

    async def start_first(self) -> tuple[Sandbox, Session, asyncio.Task[None]]:
        first = await _start_sandbox(
            self._channel, self._base, self._credential, self._sink, self.templates, self.spawn
        )
        self._add(self._base.instance_id, first)
        return first

    def _add(self, instance_id: str, started: tuple[Sandbox, Session, asyncio.Task[None]]) -> None:
        self._sandboxes[instance_id] = started
        sandbox = started[0]

        def gone(_: object) -> None:
            if self._sandboxes.get(instance_id) is started:
                del self._sandboxes[instance_id]
            self.last_failure = _failed(started[1], started[2])
            self.changed.set()

        sandbox_stopped = asyncio.ensure_future(sandbox.stopped.wait())
        sandbox_stopped.add_done_callback(gone)
        self.changed.set()

    def spawn(self, instance_ids: list[str]) -> None:
        """The gateway's Spawn: start these sandboxes beside the others (ids of this pod's free slots only)."""
        for instance_id in instance_ids:
            slot = naming.slot_of(instance_id)
            if naming.pod_of(instance_id) != self.pod or not 0 <= slot < self._slots:
                log.warning("spawn of %s refused: not a slot of pod %s (%d slots)", instance_id, self.pod, self._slots)
                continue
            task = asyncio.create_task(self._spawn_one(instance_id), name=f"spawn-{instance_id}")
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def _spawn_one(self, instance_id: str) -> None:
        previous = self._sandboxes.get(instance_id)
        if previous is not None:
            await previous[0].stopped.wait()  # a retired one still stopping: its slot is free once it has
        config = dataclasses.replace(self._spawned_config, instance_id=instance_id)
        try:
            started = await _start_sandbox(
                self._channel, config, self._credential, self._sink, self.templates, self.spawn
            )
        except Exception:  # the gateway withdraws it when it never connects; the others carry on
            log.exception("sandbox %s did not start", instance_id)
            return
        self._add(instance_id, started)

    @property
    def sandboxes(self) -> list[tuple[Sandbox, Session, asyncio.Task[None]]]:
        return list(self._sandboxes.values())

    async def close(self) -> None:
        for task in list(self._starting):
            task.cancel()
        await asyncio.gather(*self._starting, return_exceptions=True)
        running = self.sandboxes
        await asyncio.gather(*(sandbox.stop() for sandbox, _, _ in running), return_exceptions=True)
        for _, _, task in running:
            task.cancel()
        await asyncio.gather(*(task for _, _, task in running), return_exceptions=True)
        await self.templates.close()


def _failed(session: Session, task: asyncio.Task[None]) -> str | None:
    """Why a sandbox's session ended for good other than by the gateway's Stop, or None."""
    if session.failure is not None:
        return str(session.failure)
    if task.done() and not task.cancelled() and task.exception() is not None:
        return f"the gateway session failed: {task.exception()!r}"
    return None


def _terminate_on_signals() -> asyncio.Event:
    terminate = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, terminate.set)
    return terminate


def _stdout_sink(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


async def run_single(gateway: str) -> int:
    """A pod's agent: its first sandbox, and those the gateway spawns beside it (KAMBDA_SLOTS in all)."""
    config = config_from_json(json.loads(os.environ["KAMBDA_SANDBOX"]))
    credential = os.environ.get("KAMBDA_CREDENTIAL", "")
    if not credential and os.environ.get("KAMBDA_CREDENTIAL_FILE"):
        with open(os.environ["KAMBDA_CREDENTIAL_FILE"]) as f:
            credential = f.read().strip()
    slots = max(1, int(os.environ.get("KAMBDA_SLOTS", "1") or 1))
    terminate = _terminate_on_signals()
    async with aio.insecure_channel(gateway, options=CHANNEL_OPTIONS) as channel:
        return await _serve_pod(channel, config, credential, slots, terminate)


async def run_pool(gateway: str) -> int:
    """A warm-pool pod's agent: it waits (KAMBDA_POOL, KAMBDA_POOL_CREDENTIAL) until the gateway specialises it,
    then serves that function version exactly as a dedicated pod's agent does."""
    settings = json.loads(os.environ["KAMBDA_POOL"])
    state_dir = settings.get("state_dir") or "/run/kambda"
    identity = pool.PoolIdentity(
        settings["namespace"], settings["runtime"], os.environ.get("HOSTNAME", ""),
        os.environ.get("KAMBDA_POOL_CREDENTIAL", ""), pool.specialised(state_dir),
    )  # fmt: skip
    terminate = _terminate_on_signals()
    async with aio.insecure_channel(gateway, options=CHANNEL_OPTIONS) as channel:
        waiting = asyncio.create_task(pool.wait_for_order(channel, identity, dial))
        terminated = asyncio.create_task(terminate.wait())
        await asyncio.wait((waiting, terminated), return_when=asyncio.FIRST_COMPLETED)
        terminated.cancel()
        if not waiting.done():
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
            return 0
        try:
            order = waiting.result()
        except pool.PoolRejected as exc:
            log.error("the gateway refuses this pool pod: %s", exc)
            return 1
        config = dataclasses.replace(
            config_from_json(json.loads(order.sandbox)),
            code_write_dir=settings.get("code_write_dir"), opt_write_dir=settings.get("opt_write_dir"),
        )  # fmt: skip
        log.info("specialised for %s version %s", config.function, config.version)
        try:
            pool.mark_specialised(state_dir, config.function, config.version)
            pool.write_files(config.code_target, order.files)
        except (OSError, pool.UnsafeFiles) as exc:
            log.error("refusing the code: %s", exc)
            _last_words(CODE_REFUSED, str(exc))
            return 1
        return await _serve_pod(channel, config, order.credential, max(1, order.slots), terminate)


async def _serve_pod(
    channel: aio.Channel, config: SandboxConfig, credential: str, slots: int, terminate: asyncio.Event
) -> int:
    pod = Pod(channel, config, credential, slots, _stdout_sink)
    try:
        await pod.start_first()
    except code.CodeError as exc:
        # Nothing of the function ran. Exiting makes the pod crash-loop visibly, with the reason on it.
        log.error("refusing the code: %s", exc)
        _last_words(CODE_REFUSED, str(exc))
        await pod.close()
        return 1
    if config.code_sha256:
        log.info("code %s verified (sha256) and unpacked into %s", config.code_sha256, config.code_dir)
    failure: str | None = None
    terminated = asyncio.create_task(terminate.wait())
    while not terminate.is_set():
        running = pod.sandboxes
        if not running:
            if pod.last_failure is not None:
                # Never an agent that is alive but can no longer reach the gateway (or that it refuses): exit,
                # and the kubelet restarts it (a refused pod crash-loops visibly).
                failure = pod.last_failure
                break
            # Every sandbox retired by the gateway: it deletes this pod; exiting would make the kubelet
            # restart it.
            await terminate.wait()
            break
        pod.changed.clear()
        changed = asyncio.create_task(pod.changed.wait())
        await asyncio.wait((changed, terminated), return_when=asyncio.FIRST_COMPLETED)
        changed.cancel()
    await pod.close()
    terminated.cancel()
    if failure is not None:
        log.error("%s", failure)
        return 1
    return 0


async def run_supervisor(gateway: str, isolation_mode: str = "auto") -> int:
    loop = asyncio.get_running_loop()
    try:
        isolation.detect(isolation_mode)
    except (isolation.IsolationUnavailable, ValueError) as exc:
        sys.stdout.write(json.dumps({"event": "fatal", "message": str(exc)}) + "\n")
        sys.stdout.flush()
        return 2
    swept = limits.sweep_dead_agents()
    if swept:
        log.info("removed the cgroups of %d agents that had died (and what still ran in them)", swept)
    watchdog = limits.ThawWatchdog()
    # Ctrl-C in `kambda run` reaches the whole process group; the gateway then ends this agent by closing stdin,
    # after its own shutdown. SIGTERM is a stop of its own: every sandbox is stopped and cleaned up.
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    terminated = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, terminated.set)
    reader = asyncio.StreamReader(limit=16 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    sandboxes: dict[str, Sandbox] = {}
    err = sys.stderr.buffer

    def report(event: Mapping[str, Any]) -> None:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()

    def prefixed_sink(prefix: bytes) -> Any:
        partial = bytearray()

        def sink(data: bytes) -> None:
            partial.extend(data)
            *lines, rest = bytes(partial).split(b"\n")
            partial[:] = rest
            if lines:
                err.write(b"".join(prefix + line + b"\n" for line in lines))
                err.flush()

        return sink

    async def watch(instance_id: str, sandbox: Sandbox, task: asyncio.Task[None]) -> None:
        await sandbox.stopped.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        sandboxes.pop(instance_id, None)
        report({"event": "stopped", "instance_id": instance_id})

    watchers: set[asyncio.Task[None]] = set()
    templates = templates_for(prefixed_sink(b"[snapstart] "))
    preparing: set[asyncio.Task[Any]] = set()
    stop_on_term = asyncio.create_task(terminated.wait())

    async def next_command() -> bytes:
        read = asyncio.create_task(reader.readline())
        await asyncio.wait((read, stop_on_term), return_when=asyncio.FIRST_COMPLETED)
        if not read.done():
            read.cancel()
            return b""
        return read.result()

    async with aio.insecure_channel(gateway, options=CHANNEL_OPTIONS) as channel:
        report({"event": "ready"})
        while line := await next_command():
            try:
                command = json.loads(line)
                if command["op"] == "start":
                    config = config_from_json(command["sandbox"], isolation_mode=isolation_mode)
                    sink = prefixed_sink(f"[{config.name}:{config.version}] ".encode())
                    sandbox, _, task = await _start_sandbox(channel, config, command["credential"], sink, templates)
                    sandboxes[config.instance_id] = sandbox
                    watcher = asyncio.create_task(watch(config.instance_id, sandbox, task))
                    watchers.add(watcher)
                    watcher.add_done_callback(watchers.discard)
                elif command["op"] in ("prepare", "discard"):
                    # A SnapStart version was published (its template inits now, before any request) or is gone.
                    config = config_from_json(command["sandbox"], isolation_mode=isolation_mode)
                    job = templates.get(config) if command["op"] == "prepare" else templates.discard(config)
                    preparing.add(prepared := asyncio.ensure_future(job))
                    prepared.add_done_callback(preparing.discard)
                elif command["op"] == "stop" and command["instance_id"] in sandboxes:
                    await sandboxes[command["instance_id"]].stop()
            except Exception as exc:  # a bad command must not take the other sandboxes down
                log.exception("bad supervisor command %r", line)
                report({"event": "error", "message": str(exc), "command": line.decode(errors="replace")})
                if isinstance(line, bytes) and b'"start"' in line:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        report({"event": "stopped", "instance_id": json.loads(line)["sandbox"]["instance_id"]})
        await asyncio.gather(*(s.stop() for s in list(sandboxes.values())), return_exceptions=True)
        await asyncio.gather(*watchers, *preparing, return_exceptions=True)
        await templates.close()
    stop_on_term.cancel()
    limits.release_agent()
    watchdog.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="kambda agent", description="kambda sandbox agent")
    parser.add_argument("--gateway", default=os.environ.get("KAMBDA_GATEWAY", "127.0.0.1:9090"), help="gRPC host:port")
    parser.add_argument("--supervise", action="store_true", help="host many sandboxes, driven on stdin")
    parser.add_argument("--pool", action="store_true", help="a warm-pool pod: wait to be specialised")
    parser.add_argument("--isolation", choices=isolation.MODES, default="auto", help="sandboxes (with --supervise)")
    args = parser.parse_args(argv)
    from kambda import logs

    logs.configure()
    # Every function's credential is in this process's memory: keep it out of /proc/<pid>/mem and ptrace.
    isolation.harden_agent()
    if args.supervise:
        return asyncio.run(run_supervisor(args.gateway, args.isolation))
    if args.pool:
        return asyncio.run(run_pool(args.gateway))
    return asyncio.run(run_single(args.gateway))
