"""Per-function asynchronous invocation settings set through the API (Put/Update/Get/DeleteFunctionEventInvokeConfig).

They override the manifest's `spec.async` and are kept in a JSON file in the data directory; with several gateway
replicas they are also shared through JetStream (`SharedInvokeConfigs`), so every replica's deliverer sees them. The
validation is Lambda's: botocore checks only minimums client-side, so the server must refuse the rest.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from kambda import naming, specs

log = logging.getLogger(__name__)
FIELDS = ("MaximumRetryAttempts", "MaximumEventAgeInSeconds", "DestinationConfig")


class InvalidConfig(ValueError):
    pass


def validate(body: Mapping[str, Any]) -> dict[str, Any]:
    """The accepted subset of a request body, or `InvalidConfig` naming the bad value."""
    unknown = set(body) - set(FIELDS) - {"FunctionName", "Qualifier"}
    if unknown:
        raise InvalidConfig(f"Unknown fields: {', '.join(sorted(unknown))}")
    config: dict[str, Any] = {}
    for key, (low, high) in (
        ("MaximumRetryAttempts", specs.MAX_RETRY_ATTEMPTS),
        ("MaximumEventAgeInSeconds", specs.MAX_EVENT_AGE_SECONDS),
    ):
        if key in body and body[key] is not None:
            value = body[key]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InvalidConfig(
                    f"1 validation error detected: Value '{value}' at '{key[0].lower() + key[1:]}' failed to satisfy "
                    f"constraint: Member must have value between {low} and {high}"
                )
            config[key] = value
    if body.get("DestinationConfig") is not None:
        destinations = body["DestinationConfig"]
        if not isinstance(destinations, Mapping) or set(destinations) - {"OnSuccess", "OnFailure"}:
            raise InvalidConfig("DestinationConfig may only have OnSuccess and OnFailure")
        config["DestinationConfig"] = {}
        for key, target in destinations.items():
            arn = target.get("Destination") if isinstance(target, Mapping) else None
            if arn is not None:
                destination_function(arn)  # raises InvalidConfig
            config["DestinationConfig"][key] = {"Destination": arn} if arn else {}
    return config


def destination_function(arn: str) -> str:
    """The function a destination names. Only Lambda functions are destinations here (no SQS/SNS/EventBridge)."""
    if not isinstance(arn, str) or (arn.startswith("arn:") and ":lambda:" not in arn):
        raise InvalidConfig(f"Unsupported destination {arn!r}: only Lambda function destinations are supported")
    try:
        return naming.parse_function_ref(arn).name
    except naming.InvalidReference as exc:
        raise InvalidConfig(str(exc)) from None


class InvokeConfigs:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._configs: dict[str, dict[str, Any]] = {}
        self._written: Callable[[str, dict[str, Any] | None], None] | None = None
        if path.exists():
            self._configs = json.loads(path.read_text())

    def on_write(self, written: Callable[[str, dict[str, Any] | None], None]) -> None:
        """Call `written(function, config or None)` after each change made through the API."""
        self._written = written

    def apply(self, function: str, config: dict[str, Any] | None) -> None:
        """A change another replica made (None: deleted); not announced again."""
        if config is None:
            self._configs.pop(function, None)
        else:
            self._configs[function] = config
        self._save()

    def get(self, function: str) -> dict[str, Any] | None:
        return self._configs.get(function)

    def put(self, function: str, config: dict[str, Any]) -> dict[str, Any]:
        """Replace the whole configuration (omitted settings fall back to the manifest)."""
        stored = {**config, "LastModified": time.time()}
        self._configs[function] = stored
        self._save()
        if self._written is not None:
            self._written(function, stored)
        return stored

    def update(self, function: str, config: dict[str, Any]) -> dict[str, Any]:
        """Merge into the existing configuration."""
        merged = {**(self._configs.get(function) or {}), **config}
        return self.put(function, merged)

    def delete(self, function: str) -> bool:
        found = self._configs.pop(function, None) is not None
        self._save()
        if self._written is not None:
            self._written(function, None)
        return found

    def effective(self, spec: specs.FunctionSpec) -> specs.AsyncConfig:
        base = spec.async_config
        override = self._configs.get(spec.name)
        if not override:
            return base
        destinations = override.get("DestinationConfig") or {}
        on_success = (destinations.get("OnSuccess") or {}).get("Destination")
        on_failure = (destinations.get("OnFailure") or {}).get("Destination")
        return replace(
            base,
            max_retry_attempts=override.get("MaximumRetryAttempts", base.max_retry_attempts),
            max_event_age_seconds=override.get("MaximumEventAgeInSeconds", base.max_event_age_seconds),
            on_success=destination_function(on_success) if on_success else base.on_success,
            on_failure=destination_function(on_failure) if on_failure else base.on_failure,
        )

    def _save(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._configs, indent=2))
        os.replace(tmp, self._path)


class SharedInvokeConfigs:
    """The configurations of several replicas kept equal through a JetStream key-value bucket (`kambda-invoke-
    configs`, a key per function): each change made here is put there, and every change there (this replica's own
    included, in the bucket's order) is applied here, so replicas converge on the last write. Lambda's control plane
    is eventually consistent the same way: a change reaches every replica within moments, not in the same call."""

    BUCKET = "kambda-invoke-configs"

    def __init__(self, url: str, configs: InvokeConfigs) -> None:
        self._url = url
        self._configs = configs
        self._nc: Any = None
        self._kv: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        import nats
        from nats.js.errors import BucketNotFoundError

        self._nc = await nats.connect(self._url, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
        js = self._nc.jetstream()
        try:
            self._kv = await js.key_value(self.BUCKET)
        except BucketNotFoundError:
            self._kv = await js.create_key_value(bucket=self.BUCKET)
        watcher = await self._kv.watchall()
        self._spawn(self._follow(watcher))
        self._configs.on_write(lambda function, config: self._spawn(self._put(function, config)))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._nc is not None:
            await self._nc.close()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _put(self, function: str, config: dict[str, Any] | None) -> None:
        try:
            if config is None:
                await self._kv.delete(function)
            else:
                await self._kv.put(function, json.dumps(config).encode())
        except Exception:  # this replica keeps it; the others do not learn of it: say so
            log.exception("the event invoke config of %s was not shared with the other replicas", function)

    async def _follow(self, watcher: Any) -> None:
        async for entry in watcher:
            if entry is None:  # the end of what the bucket held when watching began
                continue
            deleted = entry.operation in ("DEL", "PURGE") or not entry.value
            self._configs.apply(entry.key, None if deleted else json.loads(entry.value))
