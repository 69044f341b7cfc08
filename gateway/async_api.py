"""HTTP for asynchronous invocations: the status of any async request, the dead-letter queue (list, show, delete,
redrive), and Lambda's FunctionEventInvokeConfig operations. Refusals are raised as `errors.AWSError`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from kambda import jsontext, naming

from . import errors
from .connections import read_body
from .invoke_configs import InvalidConfig, InvokeConfigs, validate
from .queueing import EventQueue
from .registry import NotFound, Registry
from .settings import GatewaySettings

MAX_PAGE = 1000
# An event invoke config is a few hundred bytes; this leaves room for long destination ARNs and nothing else.
MAX_CONFIG_BODY = 64 * 1024


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(data).encode(), content_type="application/json")


class AsyncAPI:
    def __init__(
        self,
        settings: GatewaySettings,
        registry: Registry,
        queue: EventQueue,
        configs: InvokeConfigs,
        on_redrive: Callable[[], None],
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._queue = queue
        self._configs = configs
        self._on_redrive = on_redrive

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/v1/invocations/{request_id}", self.status)
        router.add_get("/v1/dead-letters", self.list_dead)
        router.add_post("/v1/dead-letters/redrive", self.redrive_all)
        router.add_get("/v1/dead-letters/{request_id}", self.show_dead)
        router.add_delete("/v1/dead-letters/{request_id}", self.delete_dead)
        router.add_post("/v1/dead-letters/{request_id}/redrive", self.redrive_one)
        path = "/2019-09-25/functions/{name}/event-invoke-config"
        router.add_put(path, self.put_config)
        router.add_post(path, self.update_config)
        router.add_get(path, self.get_config)
        router.add_delete(path, self.delete_config)

    # ---- status ----------------------------------------------------------------------------------------------

    async def status(self, request: web.Request) -> web.StreamResponse:
        status = await self._queue.status(request.match_info["request_id"])
        if status is None:
            raise errors.resource_not_found("No such asynchronous invocation")
        return _json(status.to_json())

    # ---- dead letters ----------------------------------------------------------------------------------------

    async def list_dead(self, request: web.Request) -> web.StreamResponse:
        try:
            limit = int(request.query.get("MaxItems", "100"))
        except ValueError:
            raise errors.invalid_parameter("MaxItems must be an integer") from None
        if not 1 <= limit <= MAX_PAGE:
            raise errors.invalid_parameter(f"MaxItems must be between 1 and {MAX_PAGE}")
        page, marker = await self._queue.list_dead(
            request.query.get("FunctionName"), request.query.get("Marker"), limit
        )
        return _json({"DeadLetters": [d.to_json(with_payload=False) for d in page], "NextMarker": marker})

    async def show_dead(self, request: web.Request) -> web.StreamResponse:
        dead = await self._queue.get_dead(request.match_info["request_id"])
        if dead is None:
            raise errors.resource_not_found("No such dead letter")
        return _json(dead.to_json())

    async def delete_dead(self, request: web.Request) -> web.StreamResponse:
        if not await self._queue.delete_dead(request.match_info["request_id"]):
            raise errors.resource_not_found("No such dead letter")
        return web.Response(status=204)

    async def redrive_one(self, request: web.Request) -> web.StreamResponse:
        if not await self._queue.redrive(request.match_info["request_id"], time.time()):
            raise errors.resource_not_found("No such dead letter")
        self._on_redrive()
        return _json({"Redriven": 1})

    async def redrive_all(self, request: web.Request) -> web.StreamResponse:
        function = request.query.get("FunctionName")
        count, marker = 0, None
        while True:
            page, marker = await self._queue.list_dead(function, marker, MAX_PAGE)
            for dead in page:
                count += await self._queue.redrive(dead.request_id, time.time())
            if marker is None:
                break
        self._on_redrive()
        return _json({"Redriven": count})

    # ---- FunctionEventInvokeConfig ---------------------------------------------------------------------------

    def _function(self, request: web.Request) -> str:
        """The function named in the path (400 if malformed, 404 if unknown)."""
        try:
            ref = naming.parse_function_ref(request.match_info["name"], request.query.get("Qualifier"))
        except naming.InvalidReference as exc:
            raise errors.invalid_parameter(str(exc)) from None
        try:
            self._registry.resolve(naming.FunctionRef(ref.name, None))
        except NotFound:
            raise errors.not_found(
                naming.function_arn(self._settings.region, self._settings.account_id, ref.name)
            ) from None
        return ref.name

    def _config_response(self, name: str, config: dict[str, Any]) -> web.Response:
        arn = naming.function_arn(self._settings.region, self._settings.account_id, name, naming.LATEST)
        body = {"FunctionArn": arn, **config}
        body.setdefault("DestinationConfig", {"OnSuccess": {}, "OnFailure": {}})
        return _json(body)

    async def _write(self, request: web.Request, merge: bool) -> web.StreamResponse:
        name = self._function(request)
        raw = await read_body(
            request,
            limit=MAX_CONFIG_BODY,
            timeout=self._settings.body_timeout,
            too_large=f"Request must be smaller than {MAX_CONFIG_BODY} bytes for the event invoke config operations",
        )
        try:
            body = jsontext.loads(raw)
            if not isinstance(body, dict):
                raise InvalidConfig("The request body must be a JSON object")
            config = validate(body)
        except ValueError as exc:  # InvalidConfig, or a body that is not strict JSON (jsontext.InvalidJSON)
            raise errors.invalid_parameter(str(exc)) from None
        stored = self._configs.update(name, config) if merge else self._configs.put(name, config)
        return self._config_response(name, stored)

    async def put_config(self, request: web.Request) -> web.StreamResponse:
        return await self._write(request, merge=False)

    async def update_config(self, request: web.Request) -> web.StreamResponse:
        return await self._write(request, merge=True)

    async def get_config(self, request: web.Request) -> web.StreamResponse:
        name = self._function(request)
        config = self._configs.get(name)
        if config is None:
            raise errors.resource_not_found(f"The function {name} has no event invoke config")
        return self._config_response(name, config)

    async def delete_config(self, request: web.Request) -> web.StreamResponse:
        name = self._function(request)
        self._configs.delete(name)
        return web.Response(status=204)
