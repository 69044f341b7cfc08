"""A warm-pool pod's wait: generic until the gateway specialises it for one function version.

The pod's agent is already running (its interpreter started, grpc imported, connected), so becoming a function's
pod costs what a packed sandbox's start costs: write or fetch the code, start the runtime, open its stream. The
stream is the runtime interface's `Wait`, authenticated with the pool's credential, which pulls no function's work;
the order (`Specialise`) carries what a dedicated pod of the version reads from its environment. With several
gateway replicas the pod is sent on to the replica that owns its pool, as a sandbox is to its function's owner.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import cast

import grpc
from grpc import aio

from kambda import naming

from ..rpc import runtime_pb2 as pb
from ..rpc import runtime_pb2_grpc as pb_grpc
from .session import FATAL_CODES, RECONNECT_DELAYS, owner_of

log = logging.getLogger(__name__)


class PoolRejected(Exception):
    """The gateway refused this pool pod for good (a bad credential): waiting again cannot help."""


class UnsafeFiles(ValueError):
    """An order's inline code names a path outside the code directory."""


@dataclass(frozen=True)
class PoolIdentity:
    namespace: str
    runtime: str
    pod: str
    credential: str
    specialised: tuple[str, str] | None = None  # (function, version) this pod already became, if it did

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (
            ("authorization", f"Bearer {self.credential}"),
            ("kambda-function", naming.pool_key(self.namespace, self.runtime)),
        )


async def wait_for_order(
    home: aio.Channel, identity: PoolIdentity, dial: Callable[[str], aio.Channel]
) -> pb.Specialise:
    """Wait, reconnecting as long as it takes, until a gateway specialises this pod."""
    function, version = identity.specialised or ("", "")
    hello = pb.PoolHello(
        namespace=identity.namespace, runtime=identity.runtime, pod=identity.pod, function=function, version=version
    )
    channel, dialled = home, False
    attempt = 0
    while True:
        stub = pb_grpc.RuntimeInterfaceStub(channel)  # type: ignore[no-untyped-call]
        call = stub.Wait(hello, metadata=identity.metadata())
        owner = ""
        try:
            async for order in call:
                return cast(pb.Specialise, order)
            log.info("the gateway ended this pool pod's wait; waiting again")
        except aio.AioRpcError as err:
            if err.code() in FATAL_CODES:
                raise PoolRejected(f"{err.code().name}: {err.details()}") from None
            if err.code() == grpc.StatusCode.FAILED_PRECONDITION:
                owner = owner_of(err.trailing_metadata() or ())
            log.info("pool wait lost (%s); waiting again", err.code().name)
        if dialled:
            await channel.close()
        channel, dialled = (dial(owner), True) if owner else (home, False)
        if not owner:
            await asyncio.sleep(RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)])
            attempt += 1


MARKER = "specialised"


def specialised(state_dir: str) -> tuple[str, str] | None:
    """What this pod was specialised for, if its agent ever was (the marker outlives an agent's restart)."""
    try:
        data = json.loads((Path(state_dir) / MARKER).read_text())
        return str(data["function"]), str(data["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def mark_specialised(state_dir: str, function: str, version: str) -> None:
    """Before anything of the function runs: from now on this pod is that version's, whatever happens to the agent."""
    path = Path(state_dir) / MARKER
    path.write_text(json.dumps({"function": function, "version": version}))


def write_files(code_dir: str, files: Mapping[str, str]) -> None:
    """Inline code into the pod's code volume, read-only and executable as a ConfigMap volume mounts it (0555; the
    runtime sees the volume through a read-only mount). Paths are relative and stay inside the directory: an
    order is trusted, but a path is checked before a write."""
    root = Path(code_dir)
    targets = []
    for name in files:
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts or not path.parts:
            raise UnsafeFiles(f"inline code path {name!r} is not inside the code directory")
        targets.append(root.joinpath(*path.parts))
    for target, content in zip(targets, files.values(), strict=True):
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # a restarted agent writes its order's files again
            os.chmod(target, 0o755)
        target.write_text(content)
        os.chmod(target, 0o555)
