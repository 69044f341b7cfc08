"""The code store shared by several gateways: NATS JetStream's object store (bucket `kambda-packages`, objects
named by their sha256), next to each gateway's local store (gateway/codestore.py).

With the NATS queue every replica is stateless and has its own data directory, so a package uploaded through one
replica must be served by any other. An upload is stored locally as before and then put into the bucket; a replica
that lacks a package a pod asks for (or a `HEAD` asks about) takes it from the bucket into its local store, where it
is re-hashed like any other package before it is served. JetStream replicates and persists the bucket, so no
storage of our own is shared. Chosen over an S3-compatible store because a cluster running this queue already runs
the engine; the local store stays the only one on a single gateway (SQLite queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import nats
from nats.js.errors import NotFoundError, ObjectNotFoundError

from kambda import packages

from .codestore import CodeStore

log = logging.getLogger(__name__)
BUCKET = "kambda-packages"


class ObjectStoreMirror:
    """One owner of the NATS connection and the bucket; `store` is this gateway's local copy."""

    def __init__(self, url: str, store: CodeStore) -> None:
        self._url = url
        self._store = store
        self._nc: Any = None
        self._bucket: Any = None
        self._lock = asyncio.Lock()  # one transfer of a package at a time (two pods asking at once)

    async def open(self) -> None:
        self._nc = await nats.connect(self._url, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
        js = self._nc.jetstream()
        try:
            self._bucket = await js.object_store(BUCKET)
        except NotFoundError:
            self._bucket = await js.create_object_store(BUCKET)

    async def close(self) -> None:
        if self._nc is not None:
            await self._nc.close()

    async def publish(self, sha256: str) -> None:
        """Put a locally stored package into the bucket, unless it is there."""
        with contextlib.suppress(ObjectNotFoundError, NotFoundError):
            await self._bucket.get_info(sha256)
            return
        path = await asyncio.to_thread(self._store.verified, sha256)
        with path.open("rb") as f:
            await self._bucket.put(sha256, f)
        log.info("published package %s to the %s object store", sha256, BUCKET)

    async def size(self, sha256: str) -> int | None:
        try:
            info = await self._bucket.get_info(sha256)
        except (ObjectNotFoundError, NotFoundError):
            return None
        return int(info.size)

    async def fetch(self, sha256: str) -> bool:
        """Bring the package into the local store if the bucket has it; False if it does not."""
        async with self._lock:
            if self._store.size(sha256) is not None:
                return True
            with self._store.receiving() as upload:
                try:
                    # nats-py writes each chunk with `write`: the upload hashes and counts as it goes.
                    await self._bucket.get(sha256, writeinto=upload)
                except (ObjectNotFoundError, NotFoundError):
                    return False
                try:
                    stored = await asyncio.to_thread(self._store.commit, upload)  # re-checked, as an upload is
                except packages.PackageError as exc:
                    log.error("the object store's %s is not a package (%s): not used", sha256, exc)
                    return False
            if stored.sha256 != sha256:
                # Stored under the name of what it is, so it can never be served as `sha256`.
                log.error("the object store's %s holds a package that hashes to %s: not used", sha256, stored.sha256)
                return False
            return True
