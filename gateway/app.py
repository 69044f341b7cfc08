"""Composition of the gateway: one aiohttp Application whose cleanup contexts start and stop, in order, the gRPC
runtime interface server, the backend and the scaler. State lives under typed AppKeys, never in globals."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import auth, errors, rpc
from .admission import Admission
from .async_api import AsyncAPI
from .auth import Authenticator
from .backends import Backend
from .codemirror import ObjectStoreMirror
from .codestore import CodeAPI, CodeStore
from .control import operations
from .control.api import ControlAPI
from .control.store import FunctionStore
from .delivering import Deliverer
from .deployments import DeployAPI, Deployments
from .dispatching import Dispatcher
from .invoke_api import InvokeAPI
from .invoke_configs import InvokeConfigs
from .invoking import Invoker
from .leases import Ownership
from .metrics import Metrics
from .peering import PeerAPI, PeerClient
from .placement import Placement
from .pools import WarmPools
from .queueing import EventQueue
from .queues.sqlite import SQLiteQueue
from .registry import Registry
from .scaler import Scaler
from .settings import GatewaySettings


@dataclass
class Endpoints:
    """Where the gateway listens, known once bound (ports may be 0 = any free port)."""

    grpc_port: int = 0

    def grpc_target(self, host: str) -> str:
        # Agents on this host cannot dial a wildcard address.
        return f"{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{self.grpc_port}"


SETTINGS = web.AppKey("settings", GatewaySettings)
REGISTRY = web.AppKey("registry", Registry)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
METRICS = web.AppKey("metrics", Metrics)
SCALER = web.AppKey("scaler", Scaler)
ENDPOINTS = web.AppKey("endpoints", Endpoints)
READY = web.AppKey("ready", asyncio.Event)


def open_queue(settings: GatewaySettings) -> EventQueue:
    if settings.queue_backend == "sqlite":
        return SQLiteQueue(settings.data_dir / "queue.db", synchronous=settings.sqlite_synchronous)
    if settings.queue_backend == "nats":
        from .queues.jetstream import JetStreamQueue

        return JetStreamQueue(
            settings.nats_url,
            lease_seconds=settings.lease_seconds,
            status_retention=settings.status_retention,
            status_max_bytes=settings.status_max_bytes,
        )
    raise ValueError(f"unknown queue backend {settings.queue_backend!r} (sqlite or nats)")


def create_app(
    settings: GatewaySettings,
    registry: Registry,
    backend: Backend,
    signing_key: bytes,
    *,
    store: CodeStore | None = None,
    deployments: Deployments | None = None,  # the local backend's deploy API; None: not served
    functions: FunctionStore | None = None,  # the control plane's store; None: the control-plane API is not served
    authenticator: Authenticator | None = None,  # None: anonymous
    ownership: Ownership | None = None,  # replicas: who owns which function (None: this gateway owns all)
    pools: WarmPools | None = None,  # Kubernetes: warm-pool pods waiting on this gateway (None: no pools)
) -> web.Application:
    middlewares = [_aws_errors, *([auth.middleware(authenticator)] if authenticator is not None else [])]
    # Every handler reads its body with its own limit (connections.read_body): this is only aiohttp's ceiling.
    largest = max(settings.max_sync_payload, operations.CODE_BODY_LIMIT)
    app = web.Application(client_max_size=largest + 1, middlewares=middlewares)
    metrics = Metrics()
    scaler_box: list[Scaler] = []
    ownership = ownership or Ownership.alone()
    dispatcher = Dispatcher(
        on_demand=lambda key: scaler_box[0].poke(key) if scaler_box else None,
        queue_timeout=settings.queue_timeout,
        owned=ownership.is_mine,
    )
    metrics.watch(dispatcher)
    scaler = Scaler(
        dispatcher, backend, metrics, gateway_cap=settings.max_concurrency, tick=settings.scaler_tick,
        owned=ownership.is_mine, versions=registry.all_versions, provisioned=registry.provisioned,
    )  # fmt: skip
    scaler_box.append(scaler)
    app[SETTINGS] = settings
    app[REGISTRY] = registry
    app[DISPATCHER] = dispatcher
    app[METRICS] = metrics
    app[SCALER] = scaler
    endpoints = app[ENDPOINTS] = Endpoints()
    app[READY] = asyncio.Event()

    admission = Admission(ownership.share(settings.max_concurrency))
    invoker = Invoker(dispatcher, metrics, admission)
    peers = PeerClient(signing_key, queue_timeout=settings.queue_timeout)
    placement = Placement(ownership, invoker, peers, metrics)
    servicer = rpc.RuntimeInterface(registry, dispatcher, signing_key, ownership, pools)
    if pools is not None:
        metrics.watch_pools(pools)

    def owners_changed(gained: set[int], lost: set[int]) -> None:
        admission.resize(ownership.share(settings.max_concurrency))
        if lost:
            servicer.hand_over()
        scaler.poke()

    ownership.on_change(owners_changed)
    queue = open_queue(settings)
    configs = InvokeConfigs(settings.data_dir / "event-invoke-configs.json")
    deliverer = Deliverer(
        queue=queue, registry=registry, placement=placement, metrics=metrics, configs=configs,
        settings=settings,
    )  # fmt: skip
    api = InvokeAPI(settings, registry, placement, metrics, queue, deliverer.poke)
    PeerAPI(registry, ownership, invoker, signing_key).add_routes(app.router)
    app.router.add_post("/2015-03-31/functions/{name}/invocations", api.invoke)
    AsyncAPI(settings, registry, queue, configs, deliverer.poke).add_routes(app.router)
    store = store or CodeStore(settings.data_dir / "packages")
    # With the NATS queue the gateway may run as several replicas: packages are shared through JetStream too.
    mirror = ObjectStoreMirror(settings.nats_url, store) if settings.queue_backend == "nats" else None
    CodeAPI(settings, store, registry, signing_key, backend, mirror).add_routes(app.router)
    DeployAPI(settings, deployments).add_routes(app.router)
    if functions is not None:
        ControlAPI(settings, functions, store, mirror, configs, dispatcher.snapshot).add_routes(app.router)
    app.router.add_route("*", "/2015-03-31/functions/{name}/invocations", _method_not_allowed)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)

    async def run_grpc(app: web.Application) -> AsyncIterator[None]:
        server, endpoints.grpc_port = await rpc.start_server(servicer, settings.grpc_host, settings.grpc_port)
        yield
        await server.stop(grace=1)

    async def run_peers(app: web.Application) -> AsyncIterator[None]:
        yield
        await peers.close()

    async def run_backend(app: web.Application) -> AsyncIterator[None]:
        await backend.open(scaler.instance_gone, endpoints.grpc_target(settings.grpc_host))
        yield
        await backend.close()

    async def run_scaler(app: web.Application) -> AsyncIterator[None]:
        # Versions with provisioned concurrency get their instances before the first request.
        for version in registry.all_versions():
            dispatcher.pool(version)
        task = asyncio.create_task(scaler.run(), name="scaler")
        app[READY].set()
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def run_queue(app: web.Application) -> AsyncIterator[None]:
        await queue.open()
        yield
        await queue.close()

    async def run_mirror(app: web.Application) -> AsyncIterator[None]:
        if mirror is not None:
            await mirror.open()
        yield
        if mirror is not None:
            await mirror.close()

    async def run_deliverer(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(deliverer.run(), name="deliverer")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # Order matters: instances can connect before anything is dispatched, and the queue outlives its deliverer.
    app.cleanup_ctx.extend([run_grpc, run_peers, run_backend, run_queue, run_mirror, run_scaler, run_deliverer])
    return app


@web.middleware
async def _aws_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Where every refusal is rendered: handlers raise `errors.AWSError`; unknown routes, wrong methods and
    unexpected failures answer in the same AWS error shape botocore parses."""
    try:
        return await handler(request)
    except errors.AWSError as error:
        return error.response()
    except web.HTTPNotFound:
        return errors.aws_error(404, "UnknownOperationException", f"Unknown operation: {request.method} {request.path}")
    except web.HTTPMethodNotAllowed as exc:
        return _wrong_method(request, exc.allowed_methods).response()
    except web.HTTPException:
        raise
    except Exception as exc:
        request.app.logger.exception("unhandled error on %s %s", request.method, request.path)
        return errors.service_error(f"Internal error: {type(exc).__name__}").response()


def _wrong_method(request: web.Request, allowed: Iterable[str]) -> errors.AWSError:
    return errors.AWSError(
        405,
        "UnknownOperationException",
        f"{request.method} is not allowed on {request.path}",
        headers={"Allow": ", ".join(sorted(allowed))},
    )


async def _method_not_allowed(request: web.Request) -> web.StreamResponse:
    raise _wrong_method(request, ["POST"])


async def _healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.StreamResponse:
    if not request.app[READY].is_set():
        return web.json_response({"status": "starting"}, status=503)
    return web.json_response({"status": "ready"})


async def _metrics(request: web.Request) -> web.StreamResponse:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
