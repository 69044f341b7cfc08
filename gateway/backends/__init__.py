"""Where instances run. One interface, two implementations: `local` (agent subprocesses on this host, the embedded
default) and `kubernetes` (a Deployment per version, scaled through the scale subresource)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..registry import FunctionVersion

# Called when an instance the backend started has ended for good (or never came up): (version key, instance id).
OnGone = Callable[[tuple[str, str], str], None]


class Backend(Protocol):
    name: str  # "local" or "kubernetes", as GET /kambda/v1/info says

    def runtimes(self) -> list[str]:
        """The runtimes this backend runs (GET /kambda/v1/info, `kambda runtimes`)."""
        ...

    async def open(self, on_gone: OnGone, grpc_target: str) -> None:
        """Get ready to start instances; they reach the gateway's runtime interface at `grpc_target`."""
        ...

    async def adopt(self, version: FunctionVersion) -> list[str]:
        """Instances of `version` that already run (e.g. pods kept while the gateway restarted), as placeholders
        the scaler counts as starting until they connect."""
        ...

    def slots(self, version: FunctionVersion) -> int:
        """How many instances of `version` one unit the backend starts hosts (packing.py): a Kubernetes pod hosts
        `specs.slots_per_pod`; further ones are spawned into it over a sandbox's stream. The local backend: 1."""
        ...

    async def start_instances(self, version: FunctionVersion, count: int) -> list[str]:
        """Start `count` units (pods; local: instances); returns the ids of their first instances (placeholders
        where they cannot be named in advance). They connect to the gateway when their runtime is up."""
        ...

    async def prepare(self, version: FunctionVersion) -> None:
        """Make ready what a published version's instances start from, before any request (the local backend: a
        SnapStart template). On Kubernetes a pod makes its own."""
        ...

    async def discard(self, version: FunctionVersion) -> None:
        """The version is gone (or changed): what `prepare` made for it is not needed any more."""
        ...

    async def stop_instances(self, version: FunctionVersion, instance_ids: list[str]) -> None:
        """Units freed by the scaler (pods none of whose sandboxes is left; local: instances): idle instances were
        already sent Stop on their stream; others never connected."""
        ...

    async def close(self) -> None: ...
