"""Event invoke configs shared by gateways on one NATS JetStream (as replicas are): a configuration put through one
gateway is what another one answers and delivers with; a deletion through the other is seen by the first; the
last write wins on both."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ROOT, Gateway, NatsServer
from tests.kube import eventually


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    import boto3
    from botocore.config import Config

    root = tmp_path_factory.mktemp("shared-configs")
    server = NatsServer(root / "nats")
    started = [Gateway(ROOT / "tests" / "functions", root / name, "--queue", "nats", "--nats-url", server.url)
               for name in ("a", "b")]  # fmt: skip
    config = Config(retries={"total_max_attempts": 1})
    a, b = (
        boto3.client("lambda", endpoint_url=gw.url, region_name="us-east-1", aws_access_key_id="x",
                     aws_secret_access_key="x", config=config)
        for gw in started
    )  # fmt: skip
    yield a, b
    for gw in started:
        gw.stop()
    server.stop()


def config_of(client: Any, name: str) -> dict[str, Any] | None:
    try:
        return client.get_function_event_invoke_config(FunctionName=name)  # type: ignore[no-any-return]
    except client.exceptions.ResourceNotFoundException:
        return None


def test_a_config_put_through_one_gateway_is_served_by_the_other(gateways: tuple[Any, Any]) -> None:
    a, b = gateways
    assert config_of(b, "echo") is None
    a.put_function_event_invoke_config(FunctionName="echo", MaximumRetryAttempts=1, MaximumEventAgeInSeconds=120)
    seen = eventually(lambda: config_of(b, "echo"), timeout=10)
    assert seen is not None and seen["MaximumRetryAttempts"] == 1 and seen["MaximumEventAgeInSeconds"] == 120

    b.update_function_event_invoke_config(FunctionName="echo", MaximumRetryAttempts=0)
    assert eventually(lambda: (config_of(a, "echo") or {}).get("MaximumRetryAttempts") == 0, timeout=10)
    assert (config_of(a, "echo") or {}).get("MaximumEventAgeInSeconds") == 120  # merged, as Update does

    b.delete_function_event_invoke_config(FunctionName="echo")
    assert eventually(lambda: config_of(a, "echo") is None, timeout=10)


def test_concurrent_writes_converge_on_one_value(gateways: tuple[Any, Any]) -> None:
    a, b = gateways
    for attempts in range(3):
        a.put_function_event_invoke_config(FunctionName="counter", MaximumRetryAttempts=attempts % 3)
        b.put_function_event_invoke_config(FunctionName="counter", MaximumRetryAttempts=(attempts + 1) % 3)

    def agreed() -> bool:
        left, right = config_of(a, "counter"), config_of(b, "counter")
        return left is not None and right is not None and left["MaximumRetryAttempts"] == right["MaximumRetryAttempts"]

    assert eventually(agreed, timeout=10)
