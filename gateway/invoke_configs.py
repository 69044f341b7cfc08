"""Per-function asynchronous invocation settings set through the API (Put/Update/Get/DeleteFunctionEventInvokeConfig).

They override the manifest's `spec.async` for this gateway and are kept in a JSON file in the data directory. The
validation is Lambda's: botocore checks only minimums client-side, so the server must refuse the rest.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from kambda import naming, specs

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
        if path.exists():
            self._configs = json.loads(path.read_text())

    def get(self, function: str) -> dict[str, Any] | None:
        return self._configs.get(function)

    def put(self, function: str, config: dict[str, Any]) -> dict[str, Any]:
        """Replace the whole configuration (omitted settings fall back to the manifest)."""
        stored = {**config, "LastModified": time.time()}
        self._configs[function] = stored
        self._save()
        return stored

    def update(self, function: str, config: dict[str, Any]) -> dict[str, Any]:
        """Merge into the existing configuration."""
        merged = {**(self._configs.get(function) or {}), **config}
        return self.put(function, merged)

    def delete(self, function: str) -> bool:
        found = self._configs.pop(function, None) is not None
        self._save()
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
