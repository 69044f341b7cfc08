"""Entry points that wire a gateway together and serve it until SIGINT/SIGTERM (`kambda run`, `kambda gateway`)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from kambda import accesskeys, credentials, logs, manifests, naming, packages

from . import connections
from .app import ENDPOINTS, create_app
from .auth import Authenticator, KeySource
from .backends import Backend
from .backends.local import LocalBackend, LocalSettings
from .codestore import CodeStore, PackageMissing
from .control import shapes
from .control.store import FunctionStore
from .deployments import Deployments
from .invoke_api import MAX_HEADERS_BYTES
from .leases import LeaseKeeper, Ownership, Peer
from .pools import WarmPools
from .registry import FunctionVersion, Registry
from .settings import GatewaySettings

log = logging.getLogger("kambda.gateway")

# Connections waiting to be accepted: a burst of clients must not overflow the kernel's queue (SYNs are then
# retried after a second, which looks like a slow gateway); the kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 4096
LINGERING_TIME = 10.0  # aiohttp's default


def load_local_registry(directory: Path, settings: GatewaySettings, store: CodeStore) -> Registry:
    """Every Function manifest in `directory` as its $LATEST version, code materialised under the data dir (a
    package, `code.sha256`, unpacked from the code store; one not there yet is not served, but does not stop the
    gateway: it is how the package gets uploaded)."""
    registry = Registry(settings.namespace)
    cache = settings.data_dir / "code"
    cache.mkdir(parents=True, exist_ok=True)
    for spec in manifests.load_directory(directory):
        package = spec.code.package
        if package is None:
            code_dir, sha = manifests.materialise(spec.code, cache)
        else:
            try:
                code_dir, sha = store.unpack(package, cache), packages.code_sha256(package)
            except (PackageMissing, packages.PackageError) as exc:
                log.error("%s is not served: spec.code.sha256: %s (upload it, e.g. kambda deploy, and restart)",
                          spec.name, exc)  # fmt: skip
                continue
        try:
            opt_dir = str(store.unpack_layers(spec.layers, cache)) if spec.layers else None
        except (PackageMissing, packages.PackageError) as exc:
            log.error("%s is not served: spec.layers: %s (upload it, e.g. kambda layer, and restart)", spec.name, exc)
            continue
        registry.put(FunctionVersion(spec, naming.LATEST, code_dir=str(code_dir), code_sha256=sha, opt_dir=opt_dir))
    return registry


class StartError(Exception):
    """The gateway cannot start (its port is taken, its data directory is in use): one line for the user."""


def lock_data_dir(path: Path) -> IO[str]:
    """Hold an exclusive lock on `path` (created 0700) for as long as the returned file stays open.

    Two gateways on one data directory would share the SQLite queue and the invoke-config file, each believing it
    owns them; the second one is refused instead. The lock dies with the process, so a crash never leaves it stale.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = open(os.open(path / "gateway.lock", os.O_RDWR | os.O_CREAT, 0o600), "r+")  # noqa: SIM115 (held open)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise StartError(
            f"the data directory {path} is in use by another gateway (pid {holder}); give each its own --data-dir"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def connection_limits(settings: GatewaySettings) -> connections.Limits:
    # Connections are file descriptors: raise the soft limit as far as allowed, and stay below it.
    open_files = connections.raise_open_file_limit()
    max_connections = connections.connection_limit(settings.max_connections, open_files)
    if max_connections < settings.max_connections:
        log.warning(
            "at most %d connections (not %d): the open-file limit is %d",
            max_connections,
            settings.max_connections,
            open_files,
        )
    return connections.Limits(
        header_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
        idle_timeout=settings.idle_timeout,
        max_connections=max_connections,
        # A body its handler did not read is drained (so that the client can read our answer) for at most this.
        drain=min(LINGERING_TIME, settings.body_timeout),
    )


def authentication(settings: GatewaySettings, keys: Keys | None = None) -> tuple[Authenticator | None, str]:
    """The API's authenticator for `settings.auth` (None: anonymous), and the line that says so at start. `keys`:
    where the access keys are (default: the data directory's file, as on the local backend)."""
    if keys is None:
        local = accesskeys.KeyFile.in_data_dir(settings.data_dir)
        keys = Keys(local, lambda: len(local.keys()), str(local.path))
    count = keys.count()
    if settings.auth == "none" or (settings.auth == "auto" and count == 0):
        return None, (
            "authentication: NONE - anyone who reaches this port may invoke and deploy (`kambda keys create`, "
            "then --auth keys)"
        )
    authenticator = Authenticator(
        keys.source, region=settings.region, account=settings.account_id, max_body=settings.max_sync_payload,
        body_timeout=settings.body_timeout,
    )  # fmt: skip
    return authenticator, f"authentication: SigV4, {count} access key(s) in {keys.where}"


@dataclass(frozen=True)
class Keys:
    """Where a gateway's access keys are: the source the authenticator asks, how many there are, and where."""

    source: KeySource
    count: Callable[[], int]
    where: str


@dataclass(frozen=True)
class Replicas:
    """Several gateway replicas sharing functions through Leases in `namespace` (`leases.py`)."""

    api: Any  # kubernetes_asyncio ApiClient
    namespace: str
    prefix: str

    def ownership(self, settings: GatewaySettings, http_port: int) -> tuple[Ownership, LeaseKeeper]:
        if not settings.advertise_host or not settings.identity or not settings.grpc_port:
            raise StartError("several replicas need --advertise-host, --identity and a fixed --grpc-port")
        if settings.max_concurrency < settings.replica_buckets:
            # Each bucket carries max_concurrency / buckets of the limit: some would carry none at all.
            raise StartError(f"--max-concurrency {settings.max_concurrency} is below --replica-buckets "
                             f"{settings.replica_buckets}: each bucket carries a share of it")  # fmt: skip
        host = settings.advertise_host
        me = Peer(settings.identity, f"{host}:{http_port}", f"{host}:{settings.grpc_port}")
        state = Ownership(me, settings.replica_buckets)
        keeper = LeaseKeeper(self.api, self.namespace, self.prefix, state, duration=settings.replica_lease_seconds)
        return state, keeper


async def serve(
    settings: GatewaySettings,
    registry: Registry,
    backend: Backend,
    signing_key: bytes,
    *,
    store: CodeStore | None = None,
    deployments: Deployments | None = None,
    functions: FunctionStore | None = None,
    keys: Keys | None = None,
    replicas: Replicas | None = None,
    pools: WarmPools | None = None,
) -> None:
    loop = asyncio.get_running_loop()
    authenticator, announcement = authentication(settings, keys)
    limits = connection_limits(settings)
    guard = connections.Guard(limits)
    # Bind before anything else starts (gRPC server, agents, queue), so that a taken port fails at once and leaves
    # nothing behind; connections are accepted only once the app is ready.
    try:
        listener = await loop.create_server(
            guard.protocol, settings.host, settings.port, backlog=LISTEN_BACKLOG, start_serving=False
        )
    except OSError as exc:  # asyncio rewords the error ("error while attempting to bind..."): say it plainly
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise StartError(f"cannot listen on {settings.host}:{settings.port}: {reason}") from None
    ownership, keeper = (None, None)
    if replicas is not None:
        ownership, keeper = replicas.ownership(settings, listener.sockets[0].getsockname()[1])
    app = create_app(
        settings,
        registry,
        backend,
        signing_key,
        store=store,
        deployments=deployments,
        functions=functions,
        authenticator=authenticator,
        ownership=ownership,
        pools=pools,
    )
    runner = web.AppRunner(
        app,
        # Headers up to 1 MiB reach our handler, which answers oversized ones in the AWS error shape instead of
        # letting the HTTP parser reply with a bare 400.
        max_field_size=MAX_HEADERS_BYTES * 64,
        max_line_size=MAX_HEADERS_BYTES * 64,
        # The guard's hook for "response written"; nothing is written to an access log.
        access_log=logging.getLogger("aiohttp.access"),
        access_log_class=guard.access_log_class(),
        # The guard closes idle connections; aiohttp's own keep-alive timer (which also runs from the connection's
        # start) is only a backstop that must never fire first, or a half-received head would get no 408.
        keepalive_timeout=max(limits.idle_timeout, limits.header_timeout) + 2 * limits.tick,
        lingering_time=limits.drain,
        # Bodies are decoded by connections.read_body, bounded while decompressing, with AWS-shaped errors.
        auto_decompress=False,
        # guard.shutdown has already let in-flight requests finish; what is left is closed.
        shutdown_timeout=1.0,
    )
    sweeper: asyncio.Task[None] | None = None
    keeping: asyncio.Task[None] | None = None
    try:
        try:
            await runner.setup()
        except OSError as exc:  # the runtime interface's port (rpc.start_server says which)
            raise StartError(exc.strerror or str(exc)) from None
        assert runner.server is not None
        guard.attach(runner.server)
        sweeper = asyncio.create_task(guard.run(), name="connection-guard")
        if keeper is not None:
            try:
                await keeper.step()  # serve knowing the owners (and owning a share) from the first request
            except Exception:  # the API server away: requests wait for an owner, the loop keeps trying
                log.exception("first lease step failed")
            keeping = asyncio.create_task(keeper.run(), name="replica-leases")
        await listener.start_serving()
        port = listener.sockets[0].getsockname()[1]
        names = ", ".join(sorted(fv.spec.name for fv in registry.functions())) or "none"
        print(
            f"kambda gateway on http://{settings.host}:{port} "
            f"(runtime interface {settings.grpc_host}:{app[ENDPOINTS].grpc_port}); functions: {names}\n"
            f"{announcement}",
            flush=True,
        )
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        if keeper is not None:
            # Hand the functions over first: what waits here goes to their new owners, and new requests are
            # forwarded there while in-flight ones finish.
            with contextlib.suppress(Exception):
                await keeper.release()
        listener.close()
        log.info("stopping: %d connections open, in-flight requests get %g s", len(guard), settings.shutdown_grace)
        await guard.shutdown(settings.shutdown_grace)
    finally:
        listener.close()
        for task in (sweeper, keeping):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await runner.cleanup()


def _configure_logs() -> None:
    # A malformed request, or a client that went away mid-request (aiohttp then fails writing e.g. its
    # "100 Continue"), is the client's doing: one INFO line each (rate-limited), not a traceback.
    client_faults = (HttpProcessingError, web.RequestPayloadError, ConnectionError)
    logs.configure(filters=[logs.OneLine("aiohttp.server", client_faults)])


def _serve_holding_data_dir(settings: GatewaySettings, main: Callable[[], Coroutine[Any, Any, None]]) -> int:
    """Run `main` while holding the data directory's lock; a start that cannot happen is one line, not a traceback."""
    _configure_logs()
    try:
        lock = lock_data_dir(settings.data_dir)
    except StartError as exc:
        print(f"kambda: {exc}", file=sys.stderr)
        return 1
    try:
        asyncio.run(main())
    except StartError as exc:
        print(f"kambda: {exc}", file=sys.stderr)
        return 1
    except manifests.ManifestError as exc:
        print(f"kambda: {exc}", file=sys.stderr)
        return 2
    finally:
        lock.close()
    return 0


def run_local(directory: Path, settings: GatewaySettings, signing_key: bytes | None = None) -> int:
    """The local platform; runtime credentials are derived from `signing_key` (default: a new key per start)."""

    async def main() -> None:
        # Both write under the data directory: under its lock.
        store = CodeStore(settings.data_dir / "packages")
        registry = load_local_registry(directory, settings, store)
        deployments = Deployments(
            settings.data_dir / "functions", store, settings.data_dir / "code", registry,
            directory=manifests.function_specs(directory),
            place=shapes.Place(settings.region, settings.account_id),
        )  # fmt: skip
        deployments.load()
        key = signing_key or credentials.new_signing_key()
        local = LocalSettings(
            signing_key=key, region=settings.region, use_cgroups=settings.use_cgroups, isolation=settings.isolation,
            runtimes_dir=settings.data_dir / "runtimes",
        )  # fmt: skip
        await serve(
            settings, registry, LocalBackend(local), key, store=store, deployments=deployments, functions=deployments
        )

    return _serve_holding_data_dir(settings, main)


class _NoKeys:
    def get(self, access_key_id: str) -> None:
        return None


_NO_KEYS = _NoKeys()


async def _secret_keys(api: Any, settings: GatewaySettings, tasks: list[asyncio.Task[None]]) -> Keys:
    """The access-keys Secret (`--keys-secret NAMESPACE/NAME`), watched; none without one (anonymous unless
    `--auth keys`, which needs it)."""
    namespace, _, name = settings.keys_secret.rpartition("/")
    if settings.auth == "none" or (settings.auth == "auto" and not name):
        return Keys(_NO_KEYS, lambda: 0, "no access-keys Secret (--keys-secret)")  # auto: anonymous, as said at start
    if not name:
        raise StartError(
            "--auth keys on Kubernetes needs --keys-secret NAMESPACE/NAME (the chart's access-keys Secret)"
        )
    from .kubekeys import SecretKeys

    secrets = SecretKeys(api, namespace or settings.namespace, name)
    tasks.append(asyncio.create_task(secrets.run(), name="access-keys"))
    await asyncio.wait_for(secrets.synced.wait(), 60)
    return Keys(secrets, secrets.count, secrets.where)


def run_kubernetes(settings: GatewaySettings, signing_key: bytes) -> int:
    """The gateway of a cluster: functions from the API server, instances as pods of per-version Deployments."""
    from kubernetes_asyncio import client

    from kambda import kubeconfig

    from .backends.kubernetes import KubernetesBackend
    from .control.kubernetes import KubernetesFunctionStore
    from .watching import Watcher

    async def main() -> None:
        await kubeconfig.load()
        async with client.ApiClient() as api:
            registry = Registry(settings.namespace)
            watcher = Watcher(api, registry, settings.namespace)
            watching = asyncio.create_task(watcher.run(), name="watch")
            tasks = [watching]
            try:
                await asyncio.wait_for(watcher.synced.wait(), 60)
                store = CodeStore(settings.data_dir / "packages")
                backend = KubernetesBackend(api, settings.image_runtimes, pools=True, signing_key=signing_key)
                place = shapes.Place(settings.region, settings.account_id)
                functions = KubernetesFunctionStore(api, settings.namespace, registry, place)
                replicas = None
                if settings.replica_leases:
                    lease_namespace, _, prefix = settings.replica_leases.rpartition("/")
                    replicas = Replicas(api, lease_namespace or settings.namespace, prefix)
                await serve(settings, registry, backend, signing_key, store=store, functions=functions,
                            keys=await _secret_keys(api, settings, tasks), replicas=replicas,
                            pools=backend.pools)  # fmt: skip
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    return _serve_holding_data_dir(settings, main)
