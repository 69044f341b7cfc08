"""SigV4 and IAM-style policies on a real `kambda run --auth keys`, with boto3 signing as it always does.

Keys are made with `kambda keys create` (a policy file each): an administrator (lambda:*), an invoker allowed only
`lambda:InvokeFunction` on `function:hello*`, and one allowed everything but denied `function:hello-2` explicitly.
Each refusal has AWS's code and status; the gateway keeps serving throughout.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.conftest import Gateway
from tests.workdir import function_manifest

ECHO = "def handler(event, context):\n    return {'fn': context.function_name, 'event': event}\n"
POLICIES: dict[str, object] = {
    "admin": None,  # `kambda keys create` without --policy: lambda:* and kambda:*
    "invoker": {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "lambda:InvokeFunction", "Resource": "arn:aws:lambda:*:*:function:hello*"}]},
    "denied": {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "lambda:*", "Resource": "*"},
        {"Sid": "NotHello2", "Effect": "Deny", "Action": "lambda:InvokeFunction",
         "Resource": "arn:aws:lambda:*:*:function:hello-2"}]},
}  # fmt: skip


def kambda(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kambda", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, tuple[str, str]]]]:
    root = tmp_path_factory.mktemp("auth")
    (root / "functions").mkdir()
    for name in ("hello", "hello-2", "other"):
        (root / "functions" / f"{name}.yaml").write_text(function_manifest(name, ECHO))
    data = root / "data"
    keys: dict[str, tuple[str, str]] = {}
    for name, policy in POLICIES.items():
        args = ["keys", "create", "--name", name, "--data-dir", str(data)]
        if policy is not None:
            (root / f"{name}.json").write_text(json.dumps(policy))
            args += ["--policy", str(root / f"{name}.json")]
        made = kambda(*args)
        assert made.returncode == 0, made.stderr
        key = json.loads(made.stdout)["AccessKey"]
        keys[name] = (key["AccessKeyId"], key["SecretAccessKey"])
    gateway = Gateway(root / "functions", data, "--auth", "keys")
    yield gateway, keys
    gateway.stop()


def client(gateway: Gateway, key_id: str, secret: str) -> Any:
    return boto3.client("lambda", endpoint_url=gateway.url, region_name="us-east-1", aws_access_key_id=key_id,
                        aws_secret_access_key=secret, config=Config(retries={"total_max_attempts": 1}))  # fmt: skip


def invoke(lambda_client: Any, name: str) -> Any:
    response = lambda_client.invoke(FunctionName=name, Payload=b'{"n": 1}')
    return json.loads(response["Payload"].read())


def refusal(call: Any) -> tuple[int, str, str]:
    with pytest.raises(ClientError) as info:
        call()
    error = info.value.response
    return error["ResponseMetadata"]["HTTPStatusCode"], error["Error"]["Code"], error["Error"]["Message"]


def test_the_gateway_says_it_authenticates(platform: tuple[Gateway, dict[str, tuple[str, str]]]) -> None:
    gateway, _ = platform
    assert "authentication: SigV4, 3 access key(s)" in gateway.logs()


def test_a_signed_request_is_served_and_bad_signatures_are_refused(
    platform: tuple[Gateway, dict[str, tuple[str, str]]],
) -> None:
    gateway, keys = platform
    key_id, secret = keys["admin"]
    assert invoke(client(gateway, key_id, secret), "hello") == {"fn": "hello", "event": {"n": 1}}

    wrong = client(gateway, key_id, secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    assert refusal(lambda: invoke(wrong, "hello"))[:2] == (403, "InvalidSignatureException")
    unknown = client(gateway, "AKIAUNKNOWNUNKNOWN00", secret)
    assert refusal(lambda: invoke(unknown, "hello")) == (
        403, "UnrecognizedClientException", "The security token included in the request is invalid."
    )  # fmt: skip
    anonymous = urllib.request.Request(f"{gateway.url}/2015-03-31/functions/hello/invocations", data=b"{}")
    with pytest.raises(urllib.error.HTTPError) as unsigned:
        urllib.request.urlopen(anonymous, timeout=10)
    assert unsigned.value.code == 403 and unsigned.value.headers["x-amzn-ErrorType"].startswith(
        ("MissingAuthenticationToken", "IncompleteSignature")
    )

    # Signed 10 minutes ago (botocore's own clock moved back): outside the 5-minute window.
    past = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) - datetime.timedelta(minutes=10)
    with mock.patch.object(botocore.auth, "get_current_datetime", lambda *a, **k: past):
        status, code, message = refusal(lambda: invoke(client(gateway, key_id, secret), "hello"))
    assert (status, code) == (403, "InvalidSignatureException") and "Signature expired" in message, message

    # A body other than the one signed.
    url = f"{gateway.url}/2015-03-31/functions/hello/invocations"
    signed = AWSRequest(method="POST", url=url, data=b'{"n": 1}', headers={"Content-Type": "application/json"})
    botocore.auth.SigV4Auth(Credentials(key_id, secret), "lambda", "us-east-1").add_auth(signed)
    tampered = urllib.request.Request(url, data=b'{"n": 2}', headers=dict(signed.headers.items()), method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(tampered, timeout=10)
    assert refused.value.code == 403 and refused.value.headers["x-amzn-ErrorType"] == "InvalidSignatureException"
    as_signed = urllib.request.Request(url, data=b'{"n": 1}', headers=dict(signed.headers.items()), method="POST")
    with urllib.request.urlopen(as_signed, timeout=10) as answered:  # the same request, untampered: served
        assert json.loads(answered.read()) == {"fn": "hello", "event": {"n": 1}}
    assert gateway.proc.poll() is None


def test_policies_decide_what_a_key_may_do(platform: tuple[Gateway, dict[str, tuple[str, str]]]) -> None:
    gateway, keys = platform
    invoker = client(gateway, *keys["invoker"])
    assert invoke(invoker, "hello")["fn"] == "hello"
    assert invoke(invoker, "hello-2")["fn"] == "hello-2"
    status, code, message = refusal(lambda: invoke(invoker, "other"))
    assert (status, code) == (403, "AccessDeniedException")
    assert "is not authorized to perform: lambda:InvokeFunction on resource: " in message
    assert message.endswith("because no identity-based policy allows the lambda:InvokeFunction action"), message
    config = {"FunctionName": "hello", "MaximumRetryAttempts": 0}
    assert refusal(lambda: invoker.put_function_event_invoke_config(**config))[1] == "AccessDeniedException"

    denied = client(gateway, *keys["denied"])
    assert invoke(denied, "hello")["fn"] == "hello"  # allowed by lambda:* ...
    status, code, message = refusal(lambda: invoke(denied, "hello-2"))  # ... but the explicit Deny wins
    assert (status, code) == (403, "AccessDeniedException") and "with an explicit deny" in message, message


def test_keys_are_listed_without_secrets_and_removed(
    platform: tuple[Gateway, dict[str, tuple[str, str]]], tmp_path: Path
) -> None:
    gateway, keys = platform
    data = Path(gateway.log_path).parent
    listed = kambda("keys", "ls", "--data-dir", str(data))
    assert listed.returncode == 0
    shown = json.loads(listed.stdout)["AccessKeys"]
    assert {k["AccessKeyId"] for k in shown} == {key_id for key_id, _ in keys.values()}
    assert not any(secret in listed.stdout for _, secret in keys.values())
    extra = json.loads(kambda("keys", "create", "--name", "temp", "--data-dir", str(data)).stdout)["AccessKey"]
    temp = client(gateway, extra["AccessKeyId"], extra["SecretAccessKey"])
    assert invoke(temp, "hello")["fn"] == "hello"  # the running gateway sees a key made after it started
    assert kambda("keys", "rm", extra["AccessKeyId"], "--data-dir", str(data)).returncode == 0
    assert refusal(lambda: invoke(temp, "hello"))[1] == "UnrecognizedClientException"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"Statement": [{"Effect": "Maybe", "Action": "lambda:*", "Resource": "*"}]}))
    refused = kambda("keys", "create", "--policy", str(bad), "--data-dir", str(data))
    assert refused.returncode == 2 and "Effect" in refused.stderr, refused.stderr


def test_the_cli_signs_with_the_aws_credentials_it_finds(
    platform: tuple[Gateway, dict[str, tuple[str, str]]], tmp_path: Path
) -> None:
    import os

    gateway, keys = platform
    (tmp_path / "app.py").write_text("def handler(event, context):\n    return 'deployed'\n")

    def deploy(key: str | None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | {"AWS_EC2_METADATA_DISABLED": "true"}
        if key is not None:
            env |= {"AWS_ACCESS_KEY_ID": keys[key][0], "AWS_SECRET_ACCESS_KEY": keys[key][1]}
        return subprocess.run(
            [sys.executable, "-m", "kambda", "deploy", str(tmp_path), "--name", f"by-{key}", "--endpoint", gateway.url],
            capture_output=True, text=True, timeout=120, env=env, cwd=Path(__file__).resolve().parents[2],
        )  # fmt: skip

    unsigned = deploy(None)
    assert unsigned.returncode == 2 and "MissingAuthenticationTokenException" in unsigned.stderr, unsigned.stderr
    refused = deploy("invoker")  # may only invoke: the upload is refused, naming the action
    assert refused.returncode == 2 and "AccessDeniedException" in refused.stderr, refused.stderr
    assert "kambda:" in refused.stderr
    deployed = deploy("admin")  # signed, the package by its declared hash, the manifest by its body
    assert deployed.returncode == 0, deployed.stderr
    assert invoke(client(gateway, *keys["admin"]), "by-admin") == "deployed"


def test_a_code_upload_is_held_to_the_hash_it_signed(platform: tuple[Gateway, dict[str, tuple[str, str]]]) -> None:
    import hashlib
    import io
    import zipfile

    gateway, keys = platform
    package = io.BytesIO()
    with zipfile.ZipFile(package, "w") as archive:
        archive.writestr("app.py", "def handler(event, context):\n    return 1\n")
    body = package.getvalue()
    url = f"{gateway.url}/kambda/v1/code"

    def put(declared: str | None, sent: bytes) -> int:
        request = AWSRequest(method="PUT", url=url, data=b"", headers={"Content-Type": "application/zip"})
        if declared is not None:
            request.headers["X-Amz-Content-SHA256"] = declared
        botocore.auth.SigV4Auth(Credentials(*keys["admin"]), "lambda", "us-east-1").add_auth(request)
        if declared is None:  # botocore declared nothing itself? then the empty body's hash was signed
            del request.headers["X-Amz-Content-SHA256"]
        sending = urllib.request.Request(url, data=sent, headers=dict(request.headers.items()), method="PUT")
        try:
            with urllib.request.urlopen(sending, timeout=30) as answered:
                return int(answered.status)
        except urllib.error.HTTPError as refused:
            assert refused.headers["x-amzn-ErrorType"] == "InvalidSignatureException", refused.read()
            return refused.code

    right = hashlib.sha256(body).hexdigest()
    assert put(hashlib.sha256(b"other bytes").hexdigest(), body) == 403  # not the bytes it signed: not kept
    head = urllib.request.Request(f"{url}/{right}", method="HEAD")
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(head, timeout=10)
    assert put(None, body) == 403  # a streamed body must declare its hash
    assert put(right, body) in (200, 201)
