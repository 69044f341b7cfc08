"""Entry points that wire a gateway together and serve it until SIGINT/SIGTERM (`kambda run`, `kambda gateway`)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web

from kambda import credentials, logs, manifests, naming

from .app import ENDPOINTS, create_app
from .backends import Backend
from .backends.local import LocalBackend, LocalSettings
from .invoke_api import MAX_HEADERS_BYTES
from .registry import FunctionVersion, Registry
from .settings import GatewaySettings

log = logging.getLogger("kambda.gateway")


def load_local_registry(directory: Path, settings: GatewaySettings) -> Registry:
    """Every Function manifest in `directory` as its $LATEST version, code materialised under the data dir."""
    registry = Registry(settings.namespace)
    cache = settings.data_dir / "code"
    cache.mkdir(parents=True, exist_ok=True)
    for spec in manifests.load_directory(directory):
        code_dir, sha = manifests.materialise(manifests.read_code(spec.code), cache)
        registry.put(FunctionVersion(spec=spec, version=naming.LATEST, code_dir=str(code_dir), code_sha256=sha))
    return registry


async def serve(settings: GatewaySettings, registry: Registry, backend: Backend, signing_key: bytes) -> None:
    app = create_app(settings, registry, backend, signing_key)
    # Headers up to 1 MiB reach our handler, which answers oversized ones in the AWS error shape instead of
    # letting the HTTP parser reply with a bare 400.
    runner = web.AppRunner(
        app, access_log=None, max_field_size=MAX_HEADERS_BYTES * 64, max_line_size=MAX_HEADERS_BYTES * 64
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    names = ", ".join(sorted(fv.spec.name for fv in registry.functions())) or "none"
    print(
        f"kambda gateway on http://{settings.host}:{settings.port} "
        f"(runtime interface {settings.grpc_host}:{app[ENDPOINTS].grpc_port}); functions: {names}",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run_local(directory: Path, settings: GatewaySettings) -> int:
    logs.configure()
    try:
        registry = load_local_registry(directory, settings)
    except manifests.ManifestError as exc:
        print(f"kambda: {exc}", file=sys.stderr)
        return 2
    key = credentials.new_signing_key()
    backend = LocalBackend(LocalSettings(signing_key=key, region=settings.region, use_cgroups=settings.use_cgroups))
    asyncio.run(serve(settings, registry, backend, key))
    return 0


def run_kubernetes(settings: GatewaySettings, signing_key: bytes) -> int:
    """The gateway of a cluster: functions from the API server, instances as pods of per-version Deployments."""
    from kubernetes_asyncio import client

    from kambda import kubeconfig

    from .backends.kubernetes import KubernetesBackend
    from .watching import Watcher

    logs.configure()

    async def main() -> None:
        await kubeconfig.load()
        async with client.ApiClient() as api:
            registry = Registry(settings.namespace)
            watcher = Watcher(api, registry, settings.namespace)
            watching = asyncio.create_task(watcher.run(), name="watch")
            try:
                await asyncio.wait_for(watcher.synced.wait(), 60)
                await serve(settings, registry, KubernetesBackend(api), signing_key)
            finally:
                watching.cancel()
                await asyncio.gather(watching, return_exceptions=True)

    asyncio.run(main())
    return 0
