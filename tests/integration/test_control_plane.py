"""Lambda's control-plane API on a real `kambda run --auth keys`, driven by boto3 and by the AWS CLI as a Lambda user
drives Lambda: create from a zip, wait, invoke, update, publish, a weighted alias, reserved concurrency, paginated
lists, tags, delete; every refusal with AWS's code; what was created survives a restart of the gateway.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.conftest import Gateway
from tests.workdir import function_manifest

ROLE = "arn:aws:iam::000000000000:role/scenario"
HELLO = "arn:aws:lambda:*:*:function:hello*"
INVOKER = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "lambda:InvokeFunction", "Resource": HELLO}],
}
PROD_A = "arn:aws:lambda:*:*:function:prod-a"  # exactly: the unqualified function
NOT_PROD = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "lambda:*", "Resource": "*"},
    {"Effect": "Deny", "Action": ["lambda:UpdateFunctionCode", "lambda:ListTags"], "Resource": PROD_A},
    {"Effect": "Deny", "Action": "lambda:CreateFunction", "Resource": PROD_A[:-1] + "*"}]}  # fmt: skip


def app_zip(marker: str) -> bytes:
    code = (
        "def handler(event, context):\n"
        f"    return {{'marker': {marker!r}, 'version': context.function_version, 'event': event}}\n"
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", code)
    return buffer.getvalue()


def kambda(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kambda", *args], capture_output=True, text=True, timeout=60)


class Platform:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        (root / "functions").mkdir(parents=True)
        (root / "functions" / "from-directory.yaml").write_text(
            function_manifest("from-directory", "def handler(event, context):\n    return 'listed'\n")
        )
        self.keys: dict[str, tuple[str, str]] = {}
        (root / "invoker.json").write_text(json.dumps(INVOKER))
        (root / "not-prod.json").write_text(json.dumps(NOT_PROD))
        for name, extra in (("admin", []), ("invoker", ["--policy", str(root / "invoker.json")]),
                            ("not-prod", ["--policy", str(root / "not-prod.json")])):  # fmt: skip
            made = kambda("keys", "create", "--name", name, "--data-dir", str(self.data), *extra)
            assert made.returncode == 0, made.stderr
            key = json.loads(made.stdout)["AccessKey"]
            self.keys[name] = (key["AccessKeyId"], key["SecretAccessKey"])
        self.gateway = self.start()

    def start(self) -> Gateway:
        return Gateway(self.root / "functions", self.data, "--auth", "keys")

    def restart(self) -> None:
        self.gateway.stop()
        self.gateway = self.start()

    def client(self, key: str = "admin", *, validate: bool = True) -> Any:
        """`validate=False`: botocore sends what its model would refuse, so that the gateway's checks are shown."""
        key_id, secret = self.keys[key]
        config = Config(retries={"total_max_attempts": 1}, read_timeout=120, parameter_validation=validate)
        return boto3.client("lambda", endpoint_url=self.gateway.url, region_name="us-east-1",
                            aws_access_key_id=key_id, aws_secret_access_key=secret, config=config)  # fmt: skip


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    p = Platform(tmp_path_factory.mktemp("control"))
    yield p
    p.gateway.stop()


def refusal(call: Any) -> tuple[int, str, str]:
    with pytest.raises(ClientError) as info:
        call()
    error = info.value.response
    return error["ResponseMetadata"]["HTTPStatusCode"], error["Error"]["Code"], error["Error"]["Message"]


def invoke(client: Any, name: str, qualifier: str | None = None) -> Any:
    extra = {"Qualifier": qualifier} if qualifier else {}
    response = client.invoke(FunctionName=name, Payload=b'{"n": 1}', **extra)
    assert "FunctionError" not in response, response["Payload"].read()
    return json.loads(response["Payload"].read())


def create(client: Any, name: str, marker: str = "one", **extra: Any) -> Any:
    args = {"FunctionName": name, "Runtime": "python3.11", "Role": ROLE, "Handler": "app.handler",
            "Code": {"ZipFile": app_zip(marker)}, **extra}  # fmt: skip
    return client.create_function(**args)


def test_the_lambda_scenario_with_boto3(platform: Platform) -> None:
    lam = platform.client()
    created = create(lam, "scenario", Tags={"team": "payments"}, Description="the scenario", MemorySize=256)
    assert created["FunctionName"] == "scenario" and created["Version"] == "$LATEST"
    assert created["FunctionArn"] == "arn:aws:lambda:us-east-1:000000000000:function:scenario"
    assert created["Runtime"] == "python3.11" and created["Handler"] == "app.handler" and created["Role"] == ROLE
    assert created["MemorySize"] == 256 and created["Description"] == "the scenario" and created["CodeSize"] > 0
    lam.get_waiter("function_active_v2").wait(FunctionName="scenario", WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    assert invoke(lam, "scenario")["marker"] == "one"

    updated = lam.update_function_code(FunctionName="scenario", ZipFile=app_zip("two"))
    assert updated["CodeSha256"] != created["CodeSha256"]
    lam.get_waiter("function_updated_v2").wait(FunctionName="scenario", WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    assert invoke(lam, "scenario")["marker"] == "two"
    published = lam.publish_version(FunctionName="scenario", CodeSha256=updated["CodeSha256"])
    assert published["Version"] == "2" and published["FunctionArn"].endswith(":function:scenario:2")
    lam.get_waiter("published_version_active").wait(FunctionName="scenario", Qualifier="2",
                                                     WaiterConfig={"Delay": 1, "MaxAttempts": 30})  # fmt: skip
    assert invoke(lam, "scenario", "1") == {"marker": "one", "version": "1", "event": {"n": 1}}

    alias = lam.create_alias(FunctionName="scenario", Name="live", FunctionVersion="2",
                             RoutingConfig={"AdditionalVersionWeights": {"1": 0.1}})  # fmt: skip
    assert alias["AliasArn"].endswith(":function:scenario:live") and alias["RevisionId"]
    assert lam.get_alias(FunctionName="scenario", Name="live")["RoutingConfig"] == {
        "AdditionalVersionWeights": {"1": 0.1}
    }
    seen = Counter(invoke(lam, "scenario", "live")["version"] for _ in range(200))
    # 0.9/0.1 over 200 calls: version 1 in 20 ± 4.2 (one standard deviation); 5-45 is beyond 3.5 of them.
    assert set(seen) == {"1", "2"} and 5 <= seen["1"] <= 45, seen

    put = lam.put_function_concurrency(FunctionName="scenario", ReservedConcurrentExecutions=5)
    assert put["ReservedConcurrentExecutions"] == 5
    assert lam.get_function_concurrency(FunctionName="scenario")["ReservedConcurrentExecutions"] == 5
    assert lam.get_function(FunctionName="scenario")["Concurrency"] == {"ReservedConcurrentExecutions": 5}
    assert lam.list_tags(Resource=created["FunctionArn"])["Tags"] == {"team": "payments"}
    settings = lam.get_account_settings()
    assert (
        settings["AccountLimit"]["UnreservedConcurrentExecutions"]
        == settings["AccountLimit"]["ConcurrentExecutions"] - 5
    )

    for extra in ("scenario-b", "scenario-c"):
        create(lam, extra)
    pages = list(lam.get_paginator("list_functions").paginate(PaginationConfig={"PageSize": 1}))
    assert len(pages) >= 3 and all(len(p["Functions"]) <= 1 for p in pages)
    names = [f["FunctionName"] for p in pages for f in p["Functions"]]
    assert {"scenario", "scenario-b", "scenario-c"} <= set(names) and len(names) == len(set(names))
    versions = [
        v["Version"]
        for p in lam.get_paginator("list_versions_by_function").paginate(
            FunctionName="scenario", PaginationConfig={"PageSize": 1}
        )
        for v in p["Versions"]
    ]
    assert versions == ["$LATEST", "1", "2"]
    aliases = lam.list_aliases(FunctionName="scenario", MaxItems=1)
    assert [a["Name"] for a in aliases["Aliases"]] == ["live"] and "NextMarker" not in aliases

    lam.delete_alias(FunctionName="scenario", Name="live")
    lam.delete_function(FunctionName="scenario", Qualifier="1")
    assert [v["Version"] for v in lam.list_versions_by_function(FunctionName="scenario")["Versions"]] == [
        "$LATEST", "2"
    ]  # fmt: skip
    for name in ("scenario", "scenario-b", "scenario-c"):
        lam.delete_function(FunctionName=name)
    assert refusal(lambda: lam.get_function(FunctionName="scenario"))[:2] == (404, "ResourceNotFoundException")
    assert refusal(lambda: invoke(lam, "scenario"))[:2] == (404, "ResourceNotFoundException")
    assert platform.gateway.proc.poll() is None


def test_refusals_have_lambdas_codes(platform: Platform) -> None:
    lam = platform.client(validate=False)
    fn = create(lam, "refusals")
    assert refusal(lambda: create(lam, "refusals"))[:2] == (409, "ResourceConflictException")

    stale = fn["RevisionId"]
    changed = lam.update_function_configuration(FunctionName="refusals", Timeout=10, RevisionId=stale)
    assert changed["Timeout"] == 10 and changed["RevisionId"] != stale
    assert refusal(lambda: lam.update_function_configuration(FunctionName="refusals", Timeout=11, RevisionId=stale))[
        :2
    ] == (412, "PreconditionFailedException")
    assert refusal(lambda: lam.publish_version(FunctionName="refusals", RevisionId=stale))[1] == (
        "PreconditionFailedException"
    )
    status, code, message = refusal(lambda: lam.publish_version(FunctionName="refusals", CodeSha256="AAAA"))
    assert (status, code) == (400, "InvalidParameterValueException") and "CodeSHA256" in message

    for call in (
        lambda: lam.get_function(FunctionName="refusals", Qualifier="99"),
        lambda: lam.get_function_configuration(FunctionName="nothing-here"),
        lambda: lam.create_alias(FunctionName="refusals", Name="live", FunctionVersion="99"),
        lambda: lam.delete_function(FunctionName="nothing-here"),
        lambda: lam.get_alias(FunctionName="refusals", Name="absent"),
    ):
        assert refusal(call)[:2] == (404, "ResourceNotFoundException")

    lam.create_alias(FunctionName="refusals", Name="live", FunctionVersion="1")
    assert refusal(lambda: lam.create_alias(FunctionName="refusals", Name="live", FunctionVersion="1"))[1] == (
        "ResourceConflictException"
    )
    alias = lam.get_alias(FunctionName="refusals", Name="live")
    lam.update_alias(FunctionName="refusals", Name="live", Description="moved", RevisionId=alias["RevisionId"])
    assert (
        refusal(lambda: lam.update_alias(FunctionName="refusals", Name="live", RevisionId=alias["RevisionId"]))[1]
        == "PreconditionFailedException"
    )
    assert refusal(lambda: lam.delete_function(FunctionName="refusals", Qualifier="1"))[1] == (
        "ResourceConflictException"  # the alias routes to it
    )

    for call in (
        lambda: create(lam, "small", MemorySize=64),
        lambda: create(lam, "Upper_Case"),
        lambda: create(lam, "slow", Timeout=901),
        lambda: lam.create_function(
            FunctionName="nozip", Role=ROLE, Runtime="python3.11", Handler="app.handler", Code={"ZipFile": b"not a zip"}
        ),
        lambda: lam.create_function(
            FunctionName="s3",
            Role=ROLE,
            Runtime="python3.11",
            Handler="app.handler",
            Code={"S3Bucket": "b", "S3Key": "k"},
        ),
        lambda: create(lam, "cobol", Runtime="cobol85"),
        lambda: lam.create_alias(FunctionName="refusals", Name="123", FunctionVersion="1"),
        lambda: lam.create_alias(
            FunctionName="refusals",
            Name="w",
            FunctionVersion="1",
            RoutingConfig={"AdditionalVersionWeights": {"1": 1.5}},
        ),
        lambda: lam.put_function_concurrency(FunctionName="refusals", ReservedConcurrentExecutions=100_000),
        lambda: lam.delete_function(FunctionName="refusals", Qualifier="$LATEST"),
        lambda: lam.list_functions(Marker="!!not-a-marker!!"),
    ):
        status, code, message = refusal(call)
        assert (status, code) == (400, "InvalidParameterValueException"), (status, code, message)
    assert {f["FunctionName"] for f in lam.list_functions()["Functions"]} >= {"refusals"}
    assert not {"small", "slow", "nozip", "s3", "cobol"} & {
        f["FunctionName"] for f in lam.list_functions()["Functions"]
    }
    assert platform.gateway.proc.poll() is None


def test_the_manifest_directorys_functions_are_shown_but_not_changed(platform: Platform) -> None:
    lam = platform.client()
    assert "from-directory" in {f["FunctionName"] for f in lam.list_functions()["Functions"]}
    config = lam.get_function(FunctionName="from-directory")["Configuration"]
    assert config["Runtime"] == "python3.11" and config["State"] == "Active" and config["CodeSha256"]
    assert [v["Version"] for v in lam.list_versions_by_function(FunctionName="from-directory")["Versions"]] == [
        "$LATEST"
    ]
    for call in (
        lambda: lam.update_function_configuration(FunctionName="from-directory", Timeout=9),
        lambda: lam.delete_function(FunctionName="from-directory"),
        lambda: create(lam, "from-directory"),
    ):
        status, code, message = refusal(call)
        assert (status, code) == (409, "ResourceConflictException") and "manifests directory" in message
    assert json.loads(lam.invoke(FunctionName="from-directory")["Payload"].read()) == "listed"


def test_an_invoke_only_key_cannot_create_or_delete(platform: Platform) -> None:
    admin, invoker = platform.client(), platform.client("invoker")
    create(admin, "hello-cp")
    assert invoke(invoker, "hello-cp")["marker"] == "one"
    for call in (
        lambda: create(invoker, "hello-new"),
        lambda: invoker.delete_function(FunctionName="hello-cp"),
        lambda: invoker.update_function_code(FunctionName="hello-cp", ZipFile=app_zip("evil")),
        lambda: invoker.list_functions(),
    ):
        status, code, _ = refusal(call)
        assert (status, code) == (403, "AccessDeniedException")
    assert invoke(admin, "hello-cp")["marker"] == "one"


def test_a_deny_holds_however_the_function_is_named(platform: Platform) -> None:
    admin, restricted = platform.client(), platform.client("not-prod", validate=False)
    create(admin, "prod-a", Tags={"owner": "secret-team"})
    # Named with a qualifier, an update would be judged against prod-a:1 but act on prod-a: refused outright.
    status, code, _ = refusal(lambda: restricted.update_function_code(FunctionName="prod-a:1", ZipFile=app_zip("x")))
    assert (status, code) == (400, "InvalidParameterValueException")
    assert refusal(lambda: restricted.update_function_code(FunctionName="prod-a", ZipFile=app_zip("x")))[1] == (
        "AccessDeniedException"
    )
    assert invoke(admin, "prod-a")["marker"] == "one"  # unchanged
    # CreateFunction is judged against the function its body names.
    assert refusal(lambda: create(restricted, "prod-b"))[:2] == (403, "AccessDeniedException")
    create(restricted, "dev-b")
    # GetFunction shows tags only to a caller allowed lambda:ListTags, as Lambda does.
    seen = restricted.get_function(FunctionName="prod-a")
    assert "Tags" not in seen and seen["TagsError"]["ErrorCode"] == "AccessDeniedException"
    assert admin.get_function(FunctionName="prod-a")["Tags"] == {"owner": "secret-team"}


def test_what_the_api_made_survives_a_restart(platform: Platform) -> None:
    lam = platform.client()
    create(lam, "durable", Tags={"keep": "yes"})
    lam.update_function_code(FunctionName="durable", ZipFile=app_zip("two"))
    lam.create_alias(FunctionName="durable", Name="prod", FunctionVersion="1")
    before = lam.get_function(FunctionName="durable")["Configuration"]
    platform.restart()
    lam = platform.client()
    after = lam.get_function(FunctionName="durable")
    assert after["Configuration"]["RevisionId"] == before["RevisionId"] and after["Tags"] == {"keep": "yes"}
    assert invoke(lam, "durable")["marker"] == "two"
    assert invoke(lam, "durable", "prod") == {"marker": "one", "version": "1", "event": {"n": 1}}


def test_the_lambda_scenario_with_the_aws_cli(platform: Platform, tmp_path: Path) -> None:
    key_id, secret = platform.keys["admin"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | {
        "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true", "AWS_PAGER": "",
    }  # fmt: skip
    aws_cli = Path(sys.executable).with_name("aws")

    def aws(*args: str) -> Any:
        done = subprocess.run([str(aws_cli), "lambda", *args, "--endpoint-url", platform.gateway.url, "--output",
                               "json"], capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
        assert done.returncode == 0, (args, done.stderr)
        return json.loads(done.stdout) if done.stdout.strip() else None

    (tmp_path / "one.zip").write_bytes(app_zip("one"))
    (tmp_path / "two.zip").write_bytes(app_zip("two"))
    made = aws("create-function", "--function-name", "cli-fn", "--runtime", "python3.11", "--role", ROLE,
               "--handler", "app.handler", "--zip-file", f"fileb://{tmp_path / 'one.zip'}")  # fmt: skip
    assert made["State"] in ("Pending", "Active")
    aws("wait", "function-active-v2", "--function-name", "cli-fn")
    aws("invoke", "--function-name", "cli-fn", "--payload", "{}", str(tmp_path / "out.json"))  # CLI v1: raw payload
    assert json.loads((tmp_path / "out.json").read_text())["marker"] == "one"
    aws("update-function-code", "--function-name", "cli-fn", "--zip-file", f"fileb://{tmp_path / 'two.zip'}")
    aws("wait", "function-updated-v2", "--function-name", "cli-fn")
    assert aws("publish-version", "--function-name", "cli-fn")["Version"] == "2"
    alias = aws("create-alias", "--function-name", "cli-fn", "--name", "live", "--function-version", "2",
                "--routing-config", '{"AdditionalVersionWeights": {"1": 0.1}}')  # fmt: skip
    assert alias["RoutingConfig"] == {"AdditionalVersionWeights": {"1": 0.1}}
    assert aws("put-function-concurrency", "--function-name", "cli-fn", "--reserved-concurrent-executions", "3") == {
        "ReservedConcurrentExecutions": 3
    }
    listed = aws("list-functions", "--page-size", "1")  # the CLI follows NextMarker itself
    assert "cli-fn" in {f["FunctionName"] for f in listed["Functions"]}
    versions = aws("list-versions-by-function", "--function-name", "cli-fn", "--page-size", "1")
    assert [v["Version"] for v in versions["Versions"]] == ["$LATEST", "1", "2"]
    aws("delete-function", "--function-name", "cli-fn")
    gone = subprocess.run([str(aws_cli), "lambda", "get-function", "--function-name", "cli-fn", "--endpoint-url",
                           platform.gateway.url], capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert gone.returncode != 0 and "ResourceNotFoundException" in gone.stderr


def test_the_kambda_cli_is_a_client_of_the_same_api(platform: Platform) -> None:
    key_id, secret = platform.keys["admin"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | {
        "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }  # fmt: skip

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "kambda", *args, "--endpoint", platform.gateway.url],
                              capture_output=True, text=True, timeout=60, env=env)  # fmt: skip

    lam = platform.client()
    create(lam, "by-cli")
    lam.update_function_code(FunctionName="by-cli", ZipFile=app_zip("two"))
    listed = cli("functions", "ls")
    assert listed.returncode == 0 and "by-cli" in {f["FunctionName"] for f in json.loads(listed.stdout)}
    assert [v["Version"] for v in json.loads(cli("versions", "ls", "by-cli").stdout)] == ["$LATEST", "1", "2"]
    made = cli("aliases", "create", "by-cli", "live", "--version", "2", "--weight", "1=0.25")
    assert made.returncode == 0, made.stderr
    assert lam.get_alias(FunctionName="by-cli", Name="live")["RoutingConfig"] == {
        "AdditionalVersionWeights": {"1": 0.25}
    }
    assert cli("concurrency", "put", "by-cli", "4").returncode == 0
    assert lam.get_function_concurrency(FunctionName="by-cli")["ReservedConcurrentExecutions"] == 4
    assert json.loads(cli("concurrency", "get", "by-cli").stdout) == {"ReservedConcurrentExecutions": 4}
    missing = cli("functions", "get", "no-such-fn")
    assert missing.returncode == 2 and missing.stderr.startswith("ResourceNotFoundException: Function not found")
    unsigned = subprocess.run([sys.executable, "-m", "kambda", "functions", "ls", "--endpoint", platform.gateway.url],
                              capture_output=True, text=True, timeout=60,
                              env={k: v for k, v in env.items() if not k.startswith("AWS_ACCESS")
                                   and not k.startswith("AWS_SECRET")} | {"HOME": "/nonexistent"})  # fmt: skip
    assert unsigned.returncode == 2 and "MissingAuthenticationToken" in unsigned.stderr, unsigned.stderr
    assert cli("functions", "rm", "by-cli").returncode == 0
    assert cli("functions", "get", "by-cli").returncode == 2
