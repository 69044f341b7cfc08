"""The code store shared by several gateways through NATS JetStream's object store (a real nats-server): a package
uploaded through one gateway is served by another; what the bucket holds is checked like an upload."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from kambda import packages
from kambda.gateway.codemirror import BUCKET, ObjectStoreMirror
from kambda.gateway.codestore import CodeStore
from tests.conftest import NatsServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    nats_server = NatsServer(tmp_path / "nats")
    yield nats_server
    nats_server.stop()


def zip_of(text: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", text)
    return buffer.getvalue()


def store_in(store: CodeStore, data: bytes) -> str:
    with store.receiving() as upload:
        upload.write(data)
        return store.commit(upload).sha256


async def test_a_package_published_by_one_gateway_is_fetched_by_another(server: NatsServer, tmp_path: Path) -> None:
    first, second = CodeStore(tmp_path / "a"), CodeStore(tmp_path / "b")
    mirrors = [ObjectStoreMirror(server.url, first), ObjectStoreMirror(server.url, second)]
    for mirror in mirrors:
        await mirror.open()
    try:
        data = zip_of("def handler(e, c):\n    return 'shared'\n")
        sha = store_in(first, data)
        assert second.size(sha) is None and await mirrors[1].size(sha) is None  # not published yet
        await mirrors[0].publish(sha)
        await mirrors[0].publish(sha)  # idempotent
        assert await mirrors[1].size(sha) == len(data)
        assert await mirrors[1].fetch(sha) is True
        assert second.verified(sha).read_bytes() == data
        assert await mirrors[1].fetch("0" * 64) is False
    finally:
        for mirror in mirrors:
            await mirror.close()


async def test_an_object_that_is_not_what_its_name_says_is_never_served(server: NatsServer, tmp_path: Path) -> None:
    store = CodeStore(tmp_path / "b")
    mirror = ObjectStoreMirror(server.url, store)
    await mirror.open()
    nc = await nats.connect(server.url)
    try:
        claimed = packages.sha256_hex(io.BytesIO(zip_of("genuine")))
        bucket = await nc.jetstream().object_store(BUCKET)
        await bucket.put(claimed, zip_of("tampered"))  # written into the bucket behind the gateways' backs
        assert await mirror.fetch(claimed) is False
        assert store.size(claimed) is None
        await bucket.put("1" * 64, b"not a zip at all")
        assert await mirror.fetch("1" * 64) is False
        assert store.size("1" * 64) is None
    finally:
        await nc.close()
        await mirror.close()
