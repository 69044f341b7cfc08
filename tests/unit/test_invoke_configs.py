from __future__ import annotations

from pathlib import Path

import pytest

from kambda.gateway.invoke_configs import InvalidConfig, InvokeConfigs, validate
from kambda.specs import parse_function


@pytest.mark.parametrize(
    "body",
    [
        {"MaximumRetryAttempts": 3},
        {"MaximumRetryAttempts": -1},
        {"MaximumRetryAttempts": "2"},
        {"MaximumEventAgeInSeconds": 30},
        {"MaximumEventAgeInSeconds": 21601},
        {"Surprise": 1},
        {"DestinationConfig": {"OnFailure": {"Destination": "arn:aws:sqs:us-east-1:123456789012:q"}}},
        {"DestinationConfig": {"Elsewhere": {}}},
    ],
)
def test_invalid(body: dict[str, object]) -> None:
    with pytest.raises(InvalidConfig):
        validate(body)


def test_put_replaces_update_merges_and_overrides_the_manifest(tmp_path: Path) -> None:
    spec = parse_function({
        "metadata": {"name": "f"},
        "spec": {"runtime": "python3.11", "handler": "a.b", "code": {"files": {"a.py": ""}},
                 "async": {"maxRetryAttempts": 2, "onFailure": "sink"}},
    })  # fmt: skip
    configs = InvokeConfigs(tmp_path / "c.json")
    configs.put("f", validate({"MaximumRetryAttempts": 0}))
    configs.update("f", validate({"MaximumEventAgeInSeconds": 120}))
    effective = configs.effective(spec)
    assert (effective.max_retry_attempts, effective.max_event_age_seconds, effective.on_failure) == (0, 120, "sink")
    destination = {
        "DestinationConfig": {"OnSuccess": {"Destination": "arn:aws:lambda:us-east-1:123456789012:function:ok"}}
    }
    configs.put("f", validate(destination))
    effective = InvokeConfigs(tmp_path / "c.json").effective(spec)  # persisted
    assert (effective.max_retry_attempts, effective.on_success) == (2, "ok")
    assert configs.delete("f") and configs.get("f") is None
