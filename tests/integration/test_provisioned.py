"""Provisioned concurrency on a real `kambda run`, through boto3 as a Lambda user sets it: Put, Get, List and Delete
ProvisionedConcurrencyConfig on a published version and on a weighted alias, and `spec.concurrency.provisioned`
on a manifest.

Lambda's contract: N environments initialised before any request, reporting
`AWS_LAMBDA_INITIALIZATION_TYPE=provisioned-concurrency` and no `Init Duration`; Requested/Allocated/Available and
READY once they are; invocations beyond N spill over to on-demand environments (which do show their init); a
config removed lets its environments go after the idle window; bad requests get Lambda's errors.
"""

from __future__ import annotations

import base64
import io
import json
import urllib.request
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Gateway, wait_until
from tests.integration.test_async import lambda_client as client_for
from tests.workdir import function_manifest

ROLE = "arn:aws:iam::000000000000:role/provisioned"
# A slow init, so that an invocation that had to wait for one would show it (Init Duration ≥ 300 ms).
CODE = """\
import os, time

time.sleep(0.3)
STARTED = time.time()


def handler(event, context):
    time.sleep(event.get("sleep", 0))
    return {"type": os.environ["AWS_LAMBDA_INITIALIZATION_TYPE"], "pid": os.getpid(), "started": STARTED,
            "version": context.function_version}
"""


def package() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", CODE)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("provisioned")
    (root / "functions").mkdir()
    manifest = function_manifest("warm-latest", CODE, concurrency={"provisioned": 2}, scaling={"idleSeconds": 1})
    (root / "functions" / "warm-latest.yaml").write_text(manifest)
    gw = Gateway(root / "functions", root / "data")
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> Any:
    return client_for(gateway.url)


def invoke(client: Any, name: str, qualifier: str | None = None, **event: Any) -> tuple[dict[str, Any], str]:
    extra = {} if qualifier is None else {"Qualifier": qualifier}
    response = client.invoke(FunctionName=name, Payload=json.dumps(event), LogType="Tail", **extra)
    assert "FunctionError" not in response, response
    return json.loads(response["Payload"].read()), base64.b64decode(response["LogResult"]).decode()


def instances(gateway: Gateway, name: str, version: str) -> float:
    states = ("idle", "busy", "starting")
    return sum(gateway.metric("kambda_instances", function=name, version=version, state=s) for s in states)


def create(client: Any, name: str) -> str:
    created = client.create_function(
        FunctionName=name, Runtime="python3.11", Role=ROLE, Handler="app.handler", Code={"ZipFile": package()},
        Publish=True, Timeout=10,
    )  # fmt: skip
    return str(created["Version"])


def ready(client: Any, name: str, qualifier: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def is_ready() -> bool:
        found.update(client.get_provisioned_concurrency_config(FunctionName=name, Qualifier=qualifier))
        return bool(found["Status"] == "READY")

    assert wait_until(is_ready, timeout=60), found
    return found


def deploy(gateway: Gateway, name: str, **spec: Any) -> str:
    """A function deployed with kambda's own API (`kambda deploy`), which can also set its idle window."""
    body = function_manifest(name, CODE, timeoutSeconds=10, **spec).encode()
    request = urllib.request.Request(f"{gateway.url}/kambda/v1/functions/{name}", data=body, method="PUT")
    with urllib.request.urlopen(request, timeout=30) as response:
        return str(json.loads(response.read())["Version"])


def test_a_version_keeps_its_provisioned_environments_and_spills_over(gateway: Gateway, client: Any) -> None:
    version = deploy(gateway, "pc-version", scaling={"idleSeconds": 1})
    assert instances(gateway, "pc-version", version) == 0  # could have had some: none before the config
    put = client.put_provisioned_concurrency_config(
        FunctionName="pc-version", Qualifier=version, ProvisionedConcurrentExecutions=3
    )
    assert put["RequestedProvisionedConcurrentExecutions"] == 3
    assert put["Status"] in ("IN_PROGRESS", "READY")
    status = ready(client, "pc-version", version)
    assert status["RequestedProvisionedConcurrentExecutions"] == 3
    assert status["AllocatedProvisionedConcurrentExecutions"] == 3
    assert status["AvailableProvisionedConcurrentExecutions"] == 3
    assert "LastModified" in status
    # The first 3 concurrent requests find initialised environments: no Init Duration, provisioned type.
    with ThreadPoolExecutor(3) as pool:
        first = list(pool.map(lambda _: invoke(client, "pc-version", version, sleep=1.5), range(3)))
    for result, log in first:
        assert result["type"] == "provisioned-concurrency", result
        assert "Init Duration" not in log, log
    assert len({r["pid"] for r, _ in first}) <= 3
    # A 4th at the same time as 3 others is served on demand, and waits for (and shows) its init.
    with ThreadPoolExecutor(4) as pool:
        four = list(pool.map(lambda _: invoke(client, "pc-version", version, sleep=1.5), range(4)))
    kinds = sorted(r["type"] for r, _ in four)
    assert kinds == ["on-demand", *["provisioned-concurrency"] * 3], kinds
    on_demand = next(log for r, log in four if r["type"] == "on-demand")
    assert "Init Duration" in on_demand
    # Idle for longer than the idle window: the spill-over goes, the provisioned ones stay.
    assert wait_until(lambda: instances(gateway, "pc-version", version) == 3, timeout=30)
    # Removed: nothing keeps them any more, and they retire after the idle window.
    client.delete_provisioned_concurrency_config(FunctionName="pc-version", Qualifier=version)
    with pytest.raises(ClientError) as gone:
        client.get_provisioned_concurrency_config(FunctionName="pc-version", Qualifier=version)
    assert gone.value.response["Error"]["Code"] == "ProvisionedConcurrencyConfigNotFoundException"
    assert wait_until(lambda: instances(gateway, "pc-version", version) == 0, timeout=30)


def test_an_alias_shares_its_provisioned_concurrency_by_weight(gateway: Gateway, client: Any) -> None:
    one = create(client, "pc-alias")
    two = client.publish_version(
        FunctionName="pc-alias",
        RevisionId=client.update_function_configuration(FunctionName="pc-alias", MemorySize=256)["RevisionId"],
    )["Version"]
    assert two != one
    assert wait_until(lambda: client.get_function(FunctionName="pc-alias")["Configuration"]["Version"] != one)
    client.create_alias(
        FunctionName="pc-alias", Name="live", FunctionVersion=one,
        RoutingConfig={"AdditionalVersionWeights": {two: 0.25}},
    )  # fmt: skip
    client.put_provisioned_concurrency_config(
        FunctionName="pc-alias", Qualifier="live", ProvisionedConcurrentExecutions=4
    )
    status = ready(client, "pc-alias", "live")
    assert status["AllocatedProvisionedConcurrentExecutions"] == 4
    assert instances(gateway, "pc-alias", one) == 3 and instances(gateway, "pc-alias", two) == 1
    listed = client.list_provisioned_concurrency_configs(FunctionName="pc-alias")["ProvisionedConcurrencyConfigs"]
    assert [c["FunctionArn"].rsplit(":", 1)[-1] for c in listed] == ["live"]
    assert listed[0]["RequestedProvisionedConcurrentExecutions"] == 4


def test_the_manifests_provisioned_concurrency_is_latests(gateway: Gateway, client: Any) -> None:
    # Two environments before any request, kept although the idle window is 1 s.
    assert wait_until(lambda: gateway.metric("kambda_instances", function="warm-latest", state="idle") == 2)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: invoke(client, "warm-latest", sleep=0.5), range(2)))
    for result, log in results:
        assert result["type"] == "provisioned-concurrency"
        assert "Init Duration" not in log
    assert not wait_until(lambda: instances(gateway, "warm-latest", "$LATEST") < 2, timeout=3)


def test_refusals_have_lambdas_codes(gateway: Gateway, client: Any) -> None:
    version = create(client, "pc-refused")

    def refusal(**kwargs: Any) -> tuple[str, str]:
        with pytest.raises(ClientError) as refused:
            client.put_provisioned_concurrency_config(FunctionName="pc-refused", **kwargs)
        return refused.value.response["Error"]["Code"], refused.value.response["Error"]["Message"]

    code, message = refusal(Qualifier="$LATEST", ProvisionedConcurrentExecutions=1)
    assert code == "InvalidParameterValueException" and "unpublished" in message
    assert refusal(Qualifier="99", ProvisionedConcurrentExecutions=1)[0] == "ResourceNotFoundException"
    assert refusal(Qualifier="nosuchalias", ProvisionedConcurrentExecutions=1)[0] == "ResourceNotFoundException"
    client.put_function_concurrency(FunctionName="pc-refused", ReservedConcurrentExecutions=2)
    code, message = refusal(Qualifier=version, ProvisionedConcurrentExecutions=3)
    assert code == "InvalidParameterValueException" and "reservedConcurrentExecution" in message
    with pytest.raises(ClientError) as missing:
        client.get_provisioned_concurrency_config(FunctionName="pc-refused", Qualifier=version)
    assert missing.value.response["Error"]["Code"] == "ProvisionedConcurrencyConfigNotFoundException"
    with pytest.raises(ClientError) as missing_fn:
        client.get_provisioned_concurrency_config(FunctionName="pc-nothing", Qualifier="1")
    assert missing_fn.value.response["Error"]["Code"] == "ResourceNotFoundException"
    # SnapStart and provisioned concurrency do not go together (as on Lambda).
    client.update_function_configuration(FunctionName="pc-refused", SnapStart={"ApplyOn": "PublishedVersions"})
    assert wait_until(
        lambda: client.get_function_configuration(FunctionName="pc-refused")["LastUpdateStatus"] == "Successful"
    )
    snap = client.list_versions_by_function(FunctionName="pc-refused")["Versions"][-1]["Version"]
    assert snap not in ("$LATEST", version)
    code, message = refusal(Qualifier=snap, ProvisionedConcurrentExecutions=1)
    assert code == "InvalidParameterValueException" and "SnapStart" in message
    assert instances(gateway, "pc-refused", version) == 0
