"""Code packages of Lambda's size on the local backend: `kambda deploy` (the real CLI) into the gateway's code store,
invoked with boto3; versions; a restart; the store's refusals; the agent's own download path (`code.url` and the
code store) against real HTTP servers; and `kambda deploy`'s Kubernetes writes against a stand-in API server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import io
import json
import os
import subprocess
import sys
import threading
import urllib.parse
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kambda import credentials, deploying, packages
from kambda.runtime.agent import code
from tests.conftest import ROOT, Gateway
from tests.integration.test_async import lambda_client
from tests.workdir import WorkDir

KEY = b"a signing key the tests know, so that they can hold a function's credential"
APP = """\
import hashlib, os
import tinyvendor

MARKER = {marker!r}


def handler(event, context):
    with open(os.path.join(os.environ["LAMBDA_TASK_ROOT"], "blob.bin"), "rb") as f:
        blob = hashlib.sha256(f.read()).hexdigest()
    return {{"said": tinyvendor.shout(event["say"]), "blob": blob, "marker": MARKER,
            "version": context.function_version, "greeting": os.environ.get("GREETING")}}
"""
ECHO = """\
apiVersion: kambda.dev/v1alpha1
kind: Function
metadata: {name: echo}
spec:
  runtime: python3.11
  handler: app.handler
  code: {files: {app.py: "def handler(event, context):\\n    return event\\n"}}
"""


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("key") / "signing-key"
    path.write_bytes(KEY)
    return path


def start(manifests: Path, data: Path, key_file: Path) -> Gateway:
    manifests.mkdir(parents=True, exist_ok=True)
    return Gateway(manifests, data, "--signing-key-file", str(key_file))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, key_file: Path) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("packages")
    (root / "manifests").mkdir()
    (root / "manifests" / "echo.yaml").write_text(ECHO)
    gw = start(root / "manifests", root / "data", key_file)
    yield gw
    gw.stop()


def kambda(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kambda", *args], capture_output=True, text=True, timeout=180, cwd=ROOT
    )


def deployed(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """`kambda deploy`'s result line as a dict (FunctionName, Version, CodeSha256, CodeSize)."""
    assert result.returncode == 0, result.stderr
    return dict(field.split("=", 1) for field in result.stdout.split())


def invoke(client: Any, name: str, event: Mapping[str, Any], qualifier: str | None = None) -> Any:
    extra = {"Qualifier": qualifier} if qualifier else {}
    response = client.invoke(FunctionName=name, Payload=json.dumps(event).encode(), **extra)
    body = json.loads(response["Payload"].read())
    assert "FunctionError" not in response, body
    return body


def project(root: Path, marker: str) -> Path:
    """A function with a third-party package vendored as `pip install -t .` lays it out, and 2.5 MB of random
    (incompressible) bytes, so that the zip is over 2 MB."""
    (root / "tinyvendor").mkdir(parents=True, exist_ok=True)
    (root / "tinyvendor" / "__init__.py").write_text("def shout(text):\n    return text.upper() + '!'\n")
    (root / "tinyvendor-1.0.dist-info").mkdir(exist_ok=True)
    (root / "tinyvendor-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: tinyvendor\n")
    (root / "tinyvendor-1.0.dist-info" / "RECORD").write_text("tinyvendor/__init__.py,,\n")
    if not (root / "blob.bin").exists():
        (root / "blob.bin").write_bytes(os.urandom(2_500_000))
    (root / "app.py").write_text(APP.format(marker=marker))
    return root


def small_project(root: Path, answer: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "app.py").write_text(f"def handler(event, context):\n    return {answer!r}\n")
    return root


def zip_of(*members: tuple[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def request(
    gateway: Gateway, method: str, path: str, body: bytes | Iterable[bytes] | None = None, **headers: str
) -> tuple[int, Mapping[str, str], bytes]:
    url = urllib.parse.urlsplit(gateway.url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=120)
    try:
        chunked = body is not None and not isinstance(body, bytes)
        conn.request(method, path, body=body, headers={k.replace("_", "-"): v for k, v in headers.items()},
                     encode_chunked=chunked)  # fmt: skip
        response = conn.getresponse()
        return response.status, dict(response.headers), response.read()
    finally:
        conn.close()


def error_type(headers: Mapping[str, str]) -> str:
    return headers.get("x-amzn-ErrorType", "")


def still_serving(gateway: Gateway) -> None:
    assert invoke(lambda_client(gateway.url), "echo", {"alive": True}) == {"alive": True}


def store_sha(data: Path, sha: str) -> Path:
    return data / "packages" / f"{sha}.zip"


def test_deploy_versions_and_a_restart(tmp_path: Path, key_file: Path) -> None:
    manifests, data = tmp_path / "manifests", tmp_path / "data"
    gw = start(manifests, data, key_file)
    try:
        src = project(tmp_path / "project", marker="one")
        first = deployed(kambda("deploy", str(src), "--name", "vendored", "--env", "GREETING=hi", "--endpoint", gw.url))
        packages.build(src, tmp_path / "expected.zip")  # the CLI's zip is the library's, byte for byte
        sha = packages.sha256_hex(tmp_path / "expected.zip")
        assert first == {
            "FunctionName": "vendored", "Version": "1", "CodeSha256": packages.code_sha256(sha),
            "CodeSize": str((tmp_path / "expected.zip").stat().st_size),
        }  # fmt: skip
        assert int(first["CodeSize"]) > 2_000_000
        blob = hashlib.sha256((src / "blob.bin").read_bytes()).hexdigest()
        client = lambda_client(gw.url)
        assert invoke(client, "vendored", {"say": "hi"}) == {
            "said": "HI!", "blob": blob, "marker": "one", "version": "1", "greeting": "hi",
        }  # fmt: skip

        same = kambda("deploy", str(src), "--name", "vendored", "--endpoint", gw.url)
        assert deployed(same)["Version"] == "1" and "already stored" in same.stderr  # nothing changed, nothing sent
        project(src, marker="two")
        second = kambda("deploy", str(src), "--name", "vendored", "--endpoint", gw.url)
        assert deployed(second)["Version"] == "2" and "uploading" in second.stderr
        assert invoke(client, "vendored", {"say": "v2"})["marker"] == "two"
        assert invoke(client, "vendored", {"say": "v1"}, qualifier="1")["marker"] == "one"

        # A zip as it is, referenced by a manifest in the served directory; and a package tampered with on disk.
        (tmp_path / "plain.zip").write_bytes(zip_of(("app.py", b"def handler(e, c):\n    return 'plain'\n")))
        plain = deployed(kambda("deploy", str(tmp_path / "plain.zip"), "--name", "plain", "--endpoint", gw.url))
        plain_sha = packages.sha256_hex(tmp_path / "plain.zip")
        assert plain["CodeSha256"] == packages.code_sha256(plain_sha)
        (manifests / "from-store.yaml").write_text(
            "apiVersion: kambda.dev/v1alpha1\nkind: Function\nmetadata: {name: from-store}\n"
            f"spec: {{runtime: python3.11, handler: app.handler, code: {{sha256: {plain_sha}}}}}\n"
        )
        (manifests / "missing.yaml").write_text(
            "apiVersion: kambda.dev/v1alpha1\nkind: Function\nmetadata: {name: missing}\n"
            f"spec: {{runtime: python3.11, handler: app.handler, code: {{sha256: {'e' * 64}}}}}\n"
        )  # not uploaded (yet): the gateway still starts, so that it can be
        victim = deployed(kambda("deploy", str(small_project(tmp_path / "victim", "victim")), "--name", "victim",
                                 "--endpoint", gw.url))  # fmt: skip
        assert invoke(client, "victim", {}) == "victim"
        victim_sha = base64.b64decode(victim["CodeSha256"]).hex()
        stored = store_sha(data, victim_sha)
        tampered = bytearray(stored.read_bytes())
        tampered[len(tampered) // 2] ^= 0xFF
        stored.write_bytes(tampered)
    finally:
        gw.stop()

    gw = start(manifests, data, key_file)  # the same data directory and key
    try:
        client = lambda_client(gw.url)
        assert invoke(client, "vendored", {"say": "again"})["marker"] == "two"
        assert invoke(client, "vendored", {"say": "again"}, qualifier="1")["marker"] == "one"
        assert invoke(client, "plain", {}) == "plain"
        assert invoke(client, "from-store", {}) == "plain"
        with pytest.raises(client.exceptions.ResourceNotFoundException):
            client.invoke(FunctionName="victim", Payload=b"{}")  # never run from a package that changed on disk
        assert "no longer matched its sha256" in gw.logs()
        with pytest.raises(client.exceptions.ResourceNotFoundException):
            client.invoke(FunctionName="missing", Payload=b"{}")
        assert f"missing is not served: spec.code.sha256: no package {'e' * 64} in the code store" in gw.logs()
        assert not stored.exists() and stored.with_name(stored.name + ".corrupt").exists()
    finally:
        gw.stop()


def test_upload_refusals_and_the_gateway_keeps_serving(gateway: Gateway) -> None:
    status, headers, body = request(gateway, "PUT", "/kambda/v1/code", b"this is not a zip")
    assert (status, error_type(headers)) == (400, "InvalidParameterValueException")
    assert "Could not unzip uploaded file: not a valid zip file" in json.loads(body)["message"]
    still_serving(gateway)

    slip = zip_of(("app.py", b""), ("../../etc/cron.d/evil", b"* * * * * root sh"))
    status, headers, body = request(gateway, "PUT", "/kambda/v1/code", slip)
    assert (status, error_type(headers)) == (400, "InvalidParameterValueException")
    assert "../../etc/cron.d/evil: a path with '..', outside the package" in json.loads(body)["message"]
    still_serving(gateway)

    too_big = packages.MAX_ZIPPED + 1
    status, headers, body = request(gateway, "PUT", "/kambda/v1/code", bytes(too_big))  # declared in Content-Length
    assert (status, error_type(headers)) == (413, "RequestEntityTooLargeException"), body
    still_serving(gateway)
    chunks = (bytes(1024 * 1024) for _ in range(too_big // (1024 * 1024) + 1))  # chunked: counted while received
    status, headers, body = request(gateway, "PUT", "/kambda/v1/code", chunks)
    assert (status, error_type(headers)) == (413, "RequestEntityTooLargeException"), body
    assert "at most 52428800 bytes" in json.loads(body)["message"]
    still_serving(gateway)

    data_dir = Path(gateway.log_path).parent
    assert [p.name for p in (data_dir / "packages").iterdir() if p.name.startswith(".")] == []  # no half files

    good = zip_of(("app.py", b"def handler(e, c):\n    return 1\n"))
    status, _, body = request(gateway, "PUT", "/kambda/v1/code", good)
    sha = hashlib.sha256(good).hexdigest()
    assert (status, json.loads(body)) == (
        201,
        {"Sha256": sha, "CodeSha256": packages.code_sha256(sha), "CodeSize": len(good)},
    )
    assert request(gateway, "PUT", "/kambda/v1/code", good)[0] == 200  # already stored
    assert request(gateway, "HEAD", f"/kambda/v1/code/{sha}")[:1] == (200,)
    assert request(gateway, "HEAD", f"/kambda/v1/code/{'0' * 64}")[0] == 404


def test_deploy_errors_are_one_line(gateway: Gateway, tmp_path: Path) -> None:
    src = small_project(tmp_path / "src", "x")
    (src / "secrets").symlink_to("/etc")
    result = kambda("deploy", str(src), "--name", "linked", "--endpoint", gateway.url)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"kambda deploy: {src}: secrets: a symbolic link to /etc, outside the package"
    ]
    (src / "secrets").unlink()
    bad = kambda("deploy", str(src), "--name", "bad", "--memory", "64", "--endpoint", gateway.url)
    assert bad.returncode == 2 and "spec.memoryMB: must be between 128 and 10240" in bad.stderr
    fixed = kambda("deploy", str(src), "--name", "echo", "--endpoint", gateway.url)
    assert fixed.returncode == 2 and "ResourceConflictException" in fixed.stderr  # the manifests directory's
    unreachable = kambda("deploy", str(src), "--name", "x", "--endpoint", "http://127.0.0.1:9")
    assert unreachable.returncode == 2 and "cannot reach the gateway at http://127.0.0.1:9" in unreachable.stderr
    still_serving(gateway)


def test_a_package_is_served_only_to_its_functions_credential(gateway: Gateway, tmp_path: Path) -> None:
    result = deployed(kambda("deploy", str(small_project(tmp_path / "src", "private")), "--name", "private",
                             "--endpoint", gateway.url))  # fmt: skip
    sha = base64.b64decode(result["CodeSha256"]).hex()
    path = f"/kambda/v1/code/{sha}"
    private = credentials.credential_for(KEY, "default/private")

    status, headers, _ = request(gateway, "GET", path)
    assert (status, error_type(headers), headers.get("WWW-Authenticate")) == (
        401, "MissingAuthenticationTokenException", "Bearer"
    )  # fmt: skip
    status, headers, _ = request(
        gateway, "GET", path, Authorization="Bearer " + "0" * 64, Kambda_Function="default/private"
    )
    assert (status, error_type(headers)) == (403, "AccessDeniedException")
    echo = credentials.credential_for(KEY, "default/echo")  # a real credential, of a function that does not run it
    status, headers, _ = request(gateway, "GET", path, Authorization=f"Bearer {echo}", Kambda_Function="default/echo")
    assert (status, error_type(headers)) == (403, "AccessDeniedException")
    status, headers, body = request(gateway, "GET", path, Authorization=f"Bearer {private}",
                                    Kambda_Function="default/private")  # fmt: skip
    assert (status, headers["Content-Type"], hashlib.sha256(body).hexdigest()) == (200, "application/zip", sha)

    # The agent's own path: what a pod of `private` does before its runtime starts.
    target = tmp_path / "task"
    code.fetch_from_store(gateway.url, sha, str(target), function="default/private", credential=private)
    assert "return 'private'" in (target / "app.py").read_text()
    with pytest.raises(code.CodeError, match=r"HTTP 403: invalid credential for default/private"):
        code.fetch_from_store(gateway.url, sha, str(tmp_path / "t2"), function="default/private", credential="x")


def test_a_tampered_package_is_refused_never_run(gateway: Gateway, tmp_path: Path) -> None:
    data = Path(gateway.log_path).parent
    client = lambda_client(gateway.url)
    good = zip_of(("app.py", b"def handler(e, c):\n    return 'good'\n"))
    sha = hashlib.sha256(good).hexdigest()
    assert request(gateway, "PUT", "/kambda/v1/code", good)[0] == 201
    store_sha(data, sha).write_bytes(good.replace(b"good", b"evil"))  # same length, other bytes

    manifest = {"apiVersion": "kambda.dev/v1alpha1", "kind": "Function", "metadata": {"name": "tampered"},
                "spec": {"runtime": "python3.11", "handler": "app.handler", "code": {"sha256": sha}}}  # fmt: skip
    status, headers, body = request(gateway, "PUT", "/kambda/v1/functions/tampered", json.dumps(manifest).encode())
    assert (status, error_type(headers)) == (404, "ResourceNotFoundException")
    assert f"the stored package {sha} no longer matched its sha256" in json.loads(body)["Message"]
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.invoke(FunctionName="tampered", Payload=b"{}")
    # Uploaded again, it is whole again and runs.
    assert request(gateway, "PUT", "/kambda/v1/code", good)[0] == 201
    assert request(gateway, "PUT", "/kambda/v1/functions/tampered", json.dumps(manifest).encode())[0] == 201
    assert invoke(client, "tampered", {}) == "good"

    # Served to an agent: re-hashed first, so the bytes on disk never leave the gateway.
    store_sha(data, sha).write_bytes(good.replace(b"good", b"evil"))
    credential = credentials.credential_for(KEY, "default/tampered")
    status, _, body = request(gateway, "GET", f"/kambda/v1/code/{sha}", Authorization=f"Bearer {credential}",
                              Kambda_Function="default/tampered")  # fmt: skip
    assert status == 404 and b"evil" not in body


def test_url_code_with_a_wrong_hash_or_a_zip_slip_fails_clearly(tmp_path: Path) -> None:
    served = WorkDir(tmp_path / "served")
    try:
        good = zip_of(("app.py", b"x = 1\n"))
        slip = zip_of(("app.py", b""), ("../escaped.py", b"owned = True\n"))
        (served.directory / "good.zip").write_bytes(good)
        (served.directory / "slip.zip").write_bytes(slip)
        good_sha, slip_sha = hashlib.sha256(good).hexdigest(), hashlib.sha256(slip).hexdigest()
        url = f"{served.url}/files/good.zip"
        sandbox = tmp_path / "sandbox"
        sandbox.mkdir()

        with pytest.raises(code.CodeError) as wrong:
            code.fetch(url, "f" * 64, str(sandbox / "task"))
        assert str(wrong.value) == f"{url}: sha256 is {good_sha}, the Function says {'f' * 64}"
        with pytest.raises(code.CodeError) as missing:
            code.fetch(f"{served.url}/files/gone.zip?X-Amz-Signature=secret", good_sha, str(sandbox / "task"))
        assert (
            str(missing.value) == f"{served.url}/files/gone.zip: HTTP 404: Not Found"
        )  # a presigned query is a secret
        with pytest.raises(code.CodeError) as slipped:
            code.fetch(f"{served.url}/files/slip.zip", slip_sha, str(sandbox / "task"))
        assert str(slipped.value).endswith("../escaped.py: a path with '..', outside the package")
        assert [p.name for p in sandbox.iterdir()] == ["task"] and list((sandbox / "task").iterdir()) == []

        code.fetch(url, good_sha, str(sandbox / "task"))
        assert (sandbox / "task" / "app.py").read_text() == "x = 1\n"
        code.fetch(url, good_sha, str(sandbox / "task"))  # a restarted agent: its code volume is still full
        assert [p.name for p in (sandbox / "task").iterdir()] == ["app.py"]

        # A pod's agent with that configuration: the failure is its exit and its last words, as for any CodeError.
        config = {"function": "default/f", "version": "1", "runtime": "python3.11", "handler": "app.handler",
                  "code_dir": str(tmp_path / "pod-task"), "memory_mb": 128, "timeout_seconds": 3,
                  "code_url": url, "code_sha256": "f" * 64, "use_cgroups": False}  # fmt: skip
        env = {**os.environ, "KAMBDA_SANDBOX": json.dumps(config), "KAMBDA_CREDENTIAL": "c", "HOSTNAME": "pod-1"}
        agent = subprocess.run([sys.executable, "-m", "kambda.runtime.agent", "--gateway", "127.0.0.1:9"],
                               env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip
        assert agent.returncode != 0
        assert f"{url}: sha256 is {good_sha}, the Function says {'f' * 64}" in agent.stderr
    finally:
        served.stop()


class FakeFunctionsAPI:
    """The Kubernetes API's Function endpoints, as far as `kambda deploy` uses them (GET, POST, merge PATCH), on a
    loopback port. A stand-in for the API server, which these tests may not start; it records each request."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, str]] = []  # (method, path, content type)
        self.auth: set[str] = set()
        api = self
        prefix = "/apis/kambda.dev/v1alpha1/namespaces/team/functions"

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> Any:
                api.requests.append((self.command, self.path, self.headers.get("Content-Type", "")))
                api.auth.add(self.headers.get("Authorization", ""))
                return json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")

            def do_GET(self) -> None:
                self._body()
                name = self.path.removeprefix(prefix + "/")
                if name in api.objects:
                    return self._answer(200, api.objects[name])
                self._answer(404, {"kind": "Status", "message": f'functions "{name}" not found', "code": 404})

            def do_POST(self) -> None:
                obj = self._body()
                api.objects[obj["metadata"]["name"]] = obj
                self._answer(201, obj)

            def do_PATCH(self) -> None:
                patch = self._body()
                name = self.path.removeprefix(prefix + "/")
                if self.headers.get("Content-Type") != "application/merge-patch+json":
                    return self._answer(415, {"kind": "Status", "message": "not a merge patch"})
                api.objects[name] = deploying.merge_patch(api.objects[name], patch)
                self._answer(200, api.objects[name])

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "me", "user": {"token": "my-own-token"}}],
            "contexts": [{"name": "c", "context": {"cluster": "fake", "user": "me", "namespace": "team"}}],
        }))  # fmt: skip
        return path

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_on_kubernetes_deploy_creates_then_merge_patches_the_function_with_the_users_kubeconfig(
    tmp_path: Path,
) -> None:
    api = FakeFunctionsAPI()
    try:
        kubeconfig = str(api.kubeconfig(tmp_path / "kubeconfig"))
        first, second = "1" * 64, "2" * 64
        options = deploying.Options(memory_mb=256, environment={"A": "1", "B": "2"})
        action, _ = asyncio.run(deploying.deploy_kubernetes(kubeconfig, "fn", "team", first, options))
        assert action == "created"
        assert api.objects["fn"] == {
            "apiVersion": "kambda.dev/v1alpha1", "kind": "Function", "metadata": {"name": "fn", "namespace": "team"},
            "spec": {"code": {"sha256": first}, "runtime": "python3.11", "handler": "app.handler", "memoryMB": 256,
                     "environment": {"A": "1", "B": "2"}},
        }  # fmt: skip
        api.objects["fn"]["spec"]["concurrency"] = {"reserved": 2}  # set by someone else meanwhile: kept
        update = deploying.Options(timeout_seconds=30, environment={"B": "3"})
        action, _ = asyncio.run(deploying.deploy_kubernetes(kubeconfig, "fn", "team", second, update))
        assert action == "updated"
        assert api.objects["fn"]["spec"] == {
            "code": {"sha256": second}, "runtime": "python3.11", "handler": "app.handler", "memoryMB": 256,
            "timeoutSeconds": 30, "environment": {"B": "3"}, "concurrency": {"reserved": 2},
        }  # fmt: skip
        assert [m for m, _, _ in api.requests] == ["GET", "POST", "GET", "PATCH"]
        assert api.requests[3][2] == "application/merge-patch+json"  # not the client's default, a JSON Patch
        assert api.auth == {"Bearer my-own-token"}  # the user's own credentials, nothing of the gateway's
        with pytest.raises(deploying.DeployFailed, match=r"spec.memoryMB: must be between 128 and 10240"):
            asyncio.run(deploying.deploy_kubernetes(kubeconfig, "fn", "team", second, deploying.Options(memory_mb=1)))
        assert len(api.requests) == 5  # refused before anything was written
    finally:
        api.stop()
