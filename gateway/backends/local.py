"""The local backend: instances are sandboxes hosted by one pre-started agent process on this host.

The agent process is started once (it imports grpc, ~0.1 s) and kept warm; starting an instance is one
JSON line on its stdin, after which only the runtime process is spawned. The agent exits when its stdin closes, so
it never outlives the gateway. If it dies, it is started again and the scaler re-creates what is still needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from kambda import credentials, hostruntimes

from ..registry import FunctionVersion
from . import OnGone

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalSettings:
    signing_key: bytes
    runtimes_dir: Path  # where the Python runtimes' site directories are made (the data directory's runtimes/)
    region: str = "us-east-1"
    use_cgroups: bool = True
    python: str = sys.executable  # the agent's interpreter (its runtimes' are hostruntimes')
    isolation: str = "auto"  # of sandboxes from each other and from the platform: auto | bwrap | none


class LocalBackend:
    name = "local"

    def __init__(self, settings: LocalSettings) -> None:
        self._settings = settings
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._owners: dict[str, tuple[str, str]] = {}  # instance id -> version key
        self._on_gone: OnGone = lambda key, instance_id: None
        self._closing = False
        self._grpc_target = ""
        self._lock = asyncio.Lock()

    def runtimes(self) -> list[str]:
        return hostruntimes.offered()

    async def open(self, on_gone: OnGone, grpc_target: str) -> None:
        self._on_gone = on_gone
        self._grpc_target = grpc_target
        await self._ensure_agent()

    async def _ensure_agent(self) -> asyncio.subprocess.Process:
        async with self._lock:
            if self._proc is not None and self._proc.returncode is None:
                return self._proc
            proc = await asyncio.create_subprocess_exec(
                self._settings.python,
                "-m",
                "kambda.runtime.agent",
                "--supervise",
                "--isolation",
                self._settings.isolation,
                "--gateway",
                self._grpc_target,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=16 * 1024 * 1024,
            )
            assert proc.stdout is not None
            first = json.loads(await proc.stdout.readline() or b"{}")
            if first.get("event") != "ready":
                await proc.wait()
                raise RuntimeError(f"the local agent failed to start: {first.get('message', first)}")
            self._proc = proc
            self._reader = asyncio.create_task(self._read_events(proc))
            return proc

    async def _read_events(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            try:
                event = json.loads(line)
            except ValueError:
                log.warning("unreadable event from the local agent: %r", line)
                continue
            if event.get("event") == "stopped":
                self._gone(event["instance_id"])
            elif event.get("event") == "error":
                log.error("local agent: %s", event.get("message"))
        await proc.wait()
        if not self._closing:
            log.error("local agent exited (%s); its instances are gone", proc.returncode)
            for instance_id in list(self._owners):
                self._gone(instance_id)

    def _gone(self, instance_id: str) -> None:
        key = self._owners.pop(instance_id, None)
        if key is not None:
            self._on_gone(key, instance_id)

    async def adopt(self, version: FunctionVersion) -> list[str]:
        return []  # the local agent process never outlives the gateway

    def _sandbox(self, version: FunctionVersion, instance_id: str) -> dict[str, object]:
        spec = version.spec
        return {
            "instance_id": instance_id,
            "function": version.function,
            "version": version.version,
            "runtime": spec.runtime,
            "handler": spec.handler,
            "code_dir": version.code_dir,
            "opt_dir": version.opt_dir,
            "memory_mb": spec.memory_mb,
            "timeout_seconds": spec.timeout_seconds,
            "environment": dict(spec.environment),
            "region": self._settings.region,
            **self._python_fields(spec.runtime),
            "use_cgroups": self._settings.use_cgroups,
            "tmp_mb": spec.ephemeral_storage_mb,  # the size of its private /tmp
            "log_format": spec.logging.log_format,
            "application_log_level": spec.logging.application_log_level,
            "system_log_level": spec.logging.system_log_level,
            "snap_start": spec.snap_start,
        }

    async def prepare(self, version: FunctionVersion) -> None:
        """A SnapStart version was published: its template inits now, so no request waits for that."""
        await self._template_op("prepare", version)

    async def discard(self, version: FunctionVersion) -> None:
        await self._template_op("discard", version)

    async def _template_op(self, op: str, version: FunctionVersion) -> None:
        if not version.spec.snap_start:
            return
        proc = await self._ensure_agent()
        assert proc.stdin is not None
        proc.stdin.write(json.dumps({"op": op, "sandbox": self._sandbox(version, "template")}).encode() + b"\n")
        await proc.stdin.drain()

    def slots(self, version: FunctionVersion) -> int:
        """Every instance is its own start here: a runtime under the warm agent is already a process start."""
        return 1

    async def start_instances(self, version: FunctionVersion, count: int) -> list[str]:
        proc = await self._ensure_agent()
        assert proc.stdin is not None
        credential = credentials.credential_for(self._settings.signing_key, version.function)
        ids: list[str] = []
        lines: list[bytes] = []
        for _ in range(count):
            instance_id = uuid.uuid4().hex[:16]
            sandbox = self._sandbox(version, instance_id)
            lines.append(json.dumps({"op": "start", "sandbox": sandbox, "credential": credential}).encode() + b"\n")
            self._owners[instance_id] = version.key
            ids.append(instance_id)
        proc.stdin.write(b"".join(lines))
        await proc.stdin.drain()
        return ids

    def _python_fields(self, runtime: str) -> dict[str, str]:
        """The interpreter of a python* runtime and the directory of what Lambda provides it (hostruntimes.py).
        A runtime this host lacks was refused when its Function was loaded; none of it is sent."""
        python = hostruntimes.python_runtime(runtime)
        if python is None:
            return {}
        return {"python": python.interpreter, "python_site": str(python.site(self._settings.runtimes_dir))}

    async def stop_instances(self, version: FunctionVersion, instance_ids: list[str]) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            return
        # A connected sandbox stops itself on the gateway's Stop; this covers ones that never connected.
        proc.stdin.write(b"".join(json.dumps({"op": "stop", "instance_id": i}).encode() + b"\n" for i in instance_ids))
        await proc.stdin.drain()

    async def close(self) -> None:
        self._closing = True
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
