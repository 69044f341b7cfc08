"""The Kubernetes backend's view of what can be invoked: it watches Function and Alias objects and keeps the
registry equal to them. Each version's configuration comes from its ControllerRevision (immutable, cached);
function-level settings (concurrency, scaling, async) from the Function itself.

A watch that ends (its timeout, a dropped connection) is resumed from the last resourceVersion it saw, so no event
is missed and nothing is listed again; only a 410 Gone (the version is older than the API server keeps) makes it
list again, and then what was deleted in the gap is removed too (`WatchState.relisted`): a relist that only added
would keep serving a deleted Function."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from kambda import naming
from kambda.naming import ALIASES, FUNCTIONS, GROUP, VERSION
from kambda.specs import SpecError, parse_function, version_spec

from .registry import FunctionVersion, Registry

log = logging.getLogger(__name__)
WATCH_SECONDS = 300


class WatchState:
    """One watched kind as last seen: its objects by name, and the resourceVersion to resume from (None: list)."""

    def __init__(self) -> None:
        self._bodies: dict[str, dict[str, Any]] = {}
        self.version: str | None = None

    def relisted(self, items: list[dict[str, Any]], version: str) -> list[dict[str, Any]]:
        """A fresh listing replaces what was seen; returns the objects it no longer has (deleted in the gap)."""
        listed = {item["metadata"]["name"]: item for item in items}
        gone = [body for name, body in self._bodies.items() if name not in listed]
        self._bodies, self.version = listed, version
        return gone

    def saw(self, kind: str, body: dict[str, Any]) -> None:
        """A watch event: ADDED/MODIFIED/DELETED keep the objects current; every event (BOOKMARK too) moves on."""
        meta = body.get("metadata") or {}
        if kind == "DELETED":
            self._bodies.pop(meta.get("name", ""), None)
        elif kind in ("ADDED", "MODIFIED"):
            self._bodies[meta["name"]] = body
        self.version = meta.get("resourceVersion") or self.version

    def expired(self) -> None:
        self.version = None


class Watcher:
    def __init__(self, api: client.ApiClient, registry: Registry, namespace: str) -> None:
        self._custom = client.CustomObjectsApi(api)
        self._apps = client.AppsV1Api(api)
        self._registry = registry
        self._namespace = namespace
        self._snapshots: dict[tuple[str, str], dict[str, Any]] = {}  # (Function uid, version) -> versioned spec
        self._states = {FUNCTIONS: WatchState(), ALIASES: WatchState()}
        self.synced = asyncio.Event()

    def rewind(self, version: str) -> None:
        """Resume every watch from `version` next time it starts: as after a compaction, a version the API server
        may no longer have (tests force a 410 Gone with this)."""
        for state in self._states.values():
            if state.version is not None:
                state.version = version

    async def run(self) -> None:
        functions_synced, aliases_synced = asyncio.Event(), asyncio.Event()

        async def both_synced() -> None:
            await functions_synced.wait()
            await aliases_synced.wait()
            self.synced.set()

        await asyncio.gather(
            self._watch(FUNCTIONS, self._on_function, functions_synced),
            self._watch(ALIASES, self._on_alias, aliases_synced),
            both_synced(),
        )

    async def _watch(
        self, plural: str, handle: Callable[[str, dict[str, Any]], Awaitable[None]], synced: asyncio.Event
    ) -> None:
        lister = self._custom.list_namespaced_custom_object
        state = self._states[plural]
        while True:
            try:
                if state.version is None:
                    listing = await lister(GROUP, VERSION, self._namespace, plural)
                    for gone in state.relisted(listing["items"], listing["metadata"]["resourceVersion"]):
                        await handle("DELETED", gone)
                    for item in listing["items"]:
                        await handle("ADDED", item)
                synced.set()
                async with watch.Watch() as w:
                    async for event in w.stream(
                        lister, GROUP, VERSION, self._namespace, plural, resource_version=state.version,
                        timeout_seconds=WATCH_SECONDS, allow_watch_bookmarks=True,
                    ):  # fmt: skip
                        body = event["object"] if event["type"] != "BOOKMARK" else event["raw_object"]
                        if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                            await handle(event["type"], body)
                        state.saw(event["type"], body)
            except asyncio.CancelledError:
                raise
            except ApiException as exc:
                if exc.status == 410:  # Gone: the version is older than the API server keeps; list again
                    state.expired()
                else:
                    log.warning("watching %s failed (%s); resuming", plural, exc.status)
                    await asyncio.sleep(1)
            except Exception:
                log.exception("watching %s failed; resuming", plural)
                await asyncio.sleep(1)

    async def _on_function(self, kind: str, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        if kind == "DELETED":
            self._registry.remove(namespace, name)
            return
        uid = str(meta.get("uid", ""))
        status = body.get("status") or {}
        versions: dict[str, FunctionVersion] = {}
        for entry in status.get("versions") or []:
            number = str(entry["version"])
            snapshot = await self._snapshot(namespace, name, number, uid)
            if snapshot is None:
                continue
            manifest = {
                "metadata": {"name": name, "namespace": namespace},
                "spec": version_spec(body["spec"], snapshot),
            }
            try:
                spec = parse_function(manifest)
            except SpecError as exc:
                log.warning("%s/%s version %s is not runnable: %s", namespace, name, number, exc)
                continue
            versions[number] = FunctionVersion(spec, number, code_dir="/var/task", code_sha256=entry.get("hash", ""))
        latest = str(status.get("latestVersion", ""))
        if latest in versions:
            versions[naming.LATEST] = versions[latest]  # $LATEST runs the newest version's Deployment
        self._registry.replace_function(namespace, name, versions)

    async def _snapshot(self, namespace: str, function: str, version: str, uid: str) -> dict[str, Any] | None:
        """The version's versioned spec, from its ControllerRevision if the Function `uid` owns it: one deleted and
        made again under the same name must not run the old one's version N (cached by uid, so neither does it
        from the cache)."""
        key = (uid, version)
        if key not in self._snapshots:
            try:
                revision = await self._apps.read_namespaced_controller_revision(f"{function}-v{version}", namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            if not any(o.uid == uid for o in revision.metadata.owner_references or []):
                return None  # the old function's, not yet collected: the operator makes this one's
            self._snapshots[key] = dict((revision.data or {}).get("spec") or {})
        return self._snapshots[key]

    async def _on_alias(self, kind: str, body: dict[str, Any]) -> None:
        meta, spec = body["metadata"], body.get("spec") or {}
        function = spec.get("function", "")
        alias = spec.get("name") or meta["name"]  # the Lambda API names its objects {function}.{alias}
        routing = (body.get("status") or {}).get("routing")
        if kind == "DELETED" or not routing:
            self._registry.remove_alias(meta["namespace"], function, alias)
        else:
            self._registry.put_alias(meta["namespace"], function, alias, {str(k): float(v) for k, v in routing.items()})
