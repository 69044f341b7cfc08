"""Code packages on the real node: `kambda deploy` of a directory with a vendored third-party library (Powertools)
through the in-cluster gateway's code store, `kubectl apply` of a Function naming a stored package, and packages the
pod must refuse (a hash that does not match, a zip that escapes its directory), shown on the Function's status."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aws_lambda_powertools
import pytest

from tests.e2e.conftest import Platform
from tests.integration.test_code_path import EXPECTED, OUTSIDE, package_tree
from tests.kube import eventually

SITE = Path(aws_lambda_powertools.__file__).parents[1]  # where pip put Powertools and its dependencies

APP = """\
import os
from aws_lambda_powertools import Logger, __version__

logger = Logger(service="packaged")


def handler(event, context):
    logger.info("invoked", extra={"who": event.get("name")})
    return {"powertools": __version__, "data": os.path.getsize(os.path.join(os.path.dirname(__file__), "data.bin")),
            "hello": event.get("name")}
"""


def vendored_app(directory: Path) -> Path:
    """An app with Powertools and its dependencies vendored next to it, as `pip install -t .` leaves them, and
    2.5 MB of incompressible data (so the package is well over 2 MB zipped)."""
    directory.mkdir()
    (directory / "app.py").write_text(APP)
    for name in ("aws_lambda_powertools", "jmespath", "typing_extensions.py"):
        source = SITE / name
        if source.is_dir():
            shutil.copytree(source, directory / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, directory / name)
    (directory / "data.bin").write_bytes(os.urandom(2_500_000))
    return directory


def deploy(platform: Platform, source: Path, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kambda", "deploy", str(source), "--name", name, "--runtime", "python3.11",
         "--handler", "app.handler", "--timeout", "30", "--endpoint", platform.url, "--namespace", platform.namespace],
        capture_output=True, text=True, env=platform.cli_env, timeout=300,
    )  # fmt: skip


def invoke(platform: Platform, name: str, payload: object) -> dict[str, object]:
    response = platform.client.invoke(FunctionName=name, Payload=json.dumps(payload).encode())
    assert "FunctionError" not in response, response["Payload"].read()
    return json.loads(response["Payload"].read())  # type: ignore[no-any-return]


def condition(platform: Platform, name: str) -> dict[str, str]:
    fn = platform.kube.get("function", name, platform.namespace) or {}
    conditions = (fn.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Ready"), {})


def test_deploy_uploads_a_vendored_package_and_the_pod_verifies_it(platform: Platform, tmp_path: Path) -> None:
    app = vendored_app(tmp_path / "app")
    result = deploy(platform, app, "packaged")
    assert result.returncode == 0, result.stdout + result.stderr
    fn = platform.kube.get("function", "packaged", platform.namespace)
    assert fn is not None, result.stdout
    sha = fn["spec"]["code"]["sha256"]
    stored = platform.release.volume / "packages" / f"{sha}.zip"
    assert stored.stat().st_size > 2_000_000, "the package lives in the gateway's volume, not in etcd"
    assert eventually(lambda: platform.ready("packaged", "1"), timeout=60), platform.operator_logs()
    platform.wait_served("packaged")

    body = invoke(platform, "packaged", {"name": "zip"})
    assert body["hello"] == "zip" and body["data"] == 2_500_000
    assert str(body["powertools"]).startswith("3.")
    pod = platform.pods("packaged", "1")[0]["metadata"]["name"]

    def logs() -> str:
        return platform.kube.kubectl("logs", pod, "-n", platform.namespace, check=False).stdout

    assert eventually(lambda: f"code {sha} verified" in logs(), timeout=30), logs()

    # The same package named by a manifest, as `kubectl apply` users write it.
    manifest = {"apiVersion": "kambda.dev/v1alpha1", "kind": "Function", "metadata": {"name": "applied"},
                "spec": {"runtime": "python3.11", "handler": "app.handler", "code": {"sha256": sha}}}  # fmt: skip
    platform.apply(json.dumps(manifest))
    assert eventually(lambda: platform.ready("applied", "1"), timeout=60), platform.operator_logs()
    platform.wait_served("applied")
    assert invoke(platform, "applied", {"name": "kubectl"})["hello"] == "kubectl"

    # Deploying changed code is a new version of the same Function.
    (app / "app.py").write_text(APP.replace('"hello"', '"hello2"'))
    result = deploy(platform, app, "packaged")
    assert result.returncode == 0, result.stderr
    assert eventually(lambda: platform.ready("packaged", "2"), timeout=60), platform.operator_logs()
    assert eventually(lambda: "hello2" in invoke(platform, "packaged", {"name": "v2"}), timeout=30)


def zip_of(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return buffer.getvalue()


@pytest.fixture
def served_zips() -> Iterator[tuple[str, dict[str, bytes]]]:
    """An HTTP server on the pod network's bridge (this host, the only address pods reach outside the cluster)."""
    zips: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = zips.get(self.path.lstrip("/"))
            self.send_response(200 if data is not None else 404)
            self.send_header("Content-Length", str(len(data or b"")))
            self.end_headers()
            self.wfile.write(data or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("10.244.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://10.244.0.1:{server.server_address[1]}", zips
    finally:
        server.shutdown()
        server.server_close()


def refused(platform: Platform, name: str, code: dict[str, str]) -> dict[str, str]:
    """Apply a Function with this code, make its first pod start (an async invoke), and return the Ready
    condition once the operator has put the pod's refusal on it."""
    manifest = {"apiVersion": "kambda.dev/v1alpha1", "kind": "Function", "metadata": {"name": name},
                "spec": {"runtime": "python3.11", "handler": "app.handler", "code": code}}  # fmt: skip
    platform.apply(json.dumps(manifest))
    assert eventually(lambda: platform.ready(name, "1"), timeout=60), platform.operator_logs()
    platform.client.invoke(FunctionName=name, InvocationType="Event", Payload=b"{}")
    pods = lambda: [p["status"] for p in platform.pods(name)]  # noqa: E731
    assert eventually(lambda: condition(platform, name).get("reason") == "CodeRefused", timeout=90), (
        condition(platform, name), pods(), platform.operator_logs()[-3000:])  # fmt: skip
    return condition(platform, name)


def test_a_package_whose_hash_does_not_match_is_refused_by_the_pod(
    platform: Platform, served_zips: tuple[str, dict[str, bytes]]
) -> None:
    base, zips = served_zips
    genuine = zip_of({"app.py": "def handler(e, c):\n    return 'genuine'\n"})
    zips["tampered.zip"] = zip_of({"app.py": "def handler(e, c):\n    return 'tampered'\n"})
    sha = hashlib.sha256(genuine).hexdigest()
    ready = refused(platform, "tampered", {"url": f"{base}/tampered.zip", "sha256": sha})
    assert ready["status"] == "False"
    assert f"the Function says {sha}" in ready["message"] and "sha256 is" in ready["message"], ready
    pods = platform.pods("tampered")
    assert pods and all(p["status"].get("phase") != "Succeeded" for p in pods)


def test_a_stored_package_changed_on_disk_never_runs(platform: Platform, tmp_path: Path) -> None:
    source = tmp_path / "small"
    source.mkdir()
    (source / "app.py").write_text("def handler(e, c):\n    return 'genuine'\n")
    result = deploy(platform, source, "genuine")
    assert result.returncode == 0, result.stderr
    sha = (platform.kube.get("function", "genuine", platform.namespace) or {})["spec"]["code"]["sha256"]
    (platform.release.volume / "packages" / f"{sha}.zip").write_bytes(
        zip_of({"app.py": "def handler(e, c):\n    return 'tampered'\n"})
    )
    ready = refused(platform, "victim-of-tampering", {"sha256": sha})
    assert ready["status"] == "False" and sha in ready["message"], ready


def test_a_zip_that_escapes_its_directory_is_refused(
    platform: Platform, served_zips: tuple[str, dict[str, bytes]]
) -> None:
    base, zips = served_zips
    zips["slip.zip"] = zip_of({"app.py": "def handler(e, c):\n    return 1\n", "../../tmp/owned": "x"})
    sha = hashlib.sha256(zips["slip.zip"]).hexdigest()
    ready = refused(platform, "slip", {"url": f"{base}/slip.zip", "sha256": sha})
    assert "../../tmp/owned" in ready["message"], ready


def test_two_layers_a_python_package_and_a_bootstrap(platform: Platform, tmp_path: Path) -> None:
    def layer(name: str, files: dict[str, str]) -> str:
        root = tmp_path / name
        for path, text in files.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(text)
            if path == "bootstrap":
                (root / path).chmod(0o755)
        result = subprocess.run([sys.executable, "-m", "kambda", "layer", str(root), "--endpoint", platform.url],
                                capture_output=True, text=True, timeout=120, env=platform.cli_env)  # fmt: skip
        assert result.returncode == 0, result.stderr
        return dict(f.split("=", 1) for f in result.stdout.split())["Sha256"]

    library = layer("library", {"python/greeting.py": "def greet(who):\n    return f'hello {who} from a layer'\n"})
    # A custom runtime in a layer: the function's code has no bootstrap; this one runs the image's Python client.
    runtime = layer("runtime", {"bootstrap": "#!/bin/sh\nexport PYTHONPATH=/opt/python:/var/runtime\n"
                                             "exec python3 -m awslambdaric \"$_HANDLER\"\n"})  # fmt: skip
    app = tmp_path / "app"
    app.mkdir()
    (app / "app.py").write_text(
        "import greeting\n\ndef handler(event, context):\n    return greeting.greet(event['who'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "kambda", "deploy", str(app), "--name", "layered", "--runtime", "provided",
         "--handler", "app.handler", "--endpoint", platform.url, "--namespace", platform.namespace,
         "--layer", library, "--layer", runtime],
        capture_output=True, text=True, env=platform.cli_env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert eventually(lambda: platform.ready("layered", "1"), timeout=60), platform.operator_logs()
    platform.wait_served("layered")
    assert invoke(platform, "layered", {"who": "pod"}) == "hello pod from a layer"  # type: ignore[comparison-overlap]

    six = {"apiVersion": "kambda.dev/v1alpha1", "kind": "Function", "metadata": {"name": "six-layers"},
           "spec": {"runtime": "python3.11", "handler": "app.handler", "code": {"files": {"app.py": "x"}},
                    "layers": [{"sha256": library}] * 6}}  # fmt: skip
    applied = platform.kube.apply(json.dumps(six), platform.namespace)
    assert applied.returncode != 0 and "spec.layers" in applied.stderr, applied.stderr
    assert platform.kube.get("function", "six-layers", platform.namespace) is None


def test_deploy_keeps_exec_bits_and_links_in_the_pod_and_refuses_links_out(platform: Platform, tmp_path: Path) -> None:
    result = deploy(platform, package_tree(tmp_path / "tree"), "modes-and-links")
    assert result.returncode == 0, result.stdout + result.stderr
    assert eventually(lambda: platform.ready("modes-and-links", "1"), timeout=60), platform.operator_logs()
    platform.wait_served("modes-and-links")
    assert invoke(platform, "modes-and-links", {}) == EXPECTED  # the same as on the local backend

    store = platform.release.volume / "packages"
    for i, (link, target) in enumerate(OUTSIDE):
        bad = package_tree(tmp_path / f"bad-{i}")
        (bad / link).symlink_to(target)
        before = sorted(p.name for p in store.iterdir())
        result = deploy(platform, bad, f"linked-out-{i}")
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.strip().splitlines() == [
            f"kambda deploy: {bad}: {link}: a symbolic link to {target}, outside the package"
        ]
        assert sorted(p.name for p in store.iterdir()) == before  # refused before anything was uploaded
        assert platform.kube.get("function", f"linked-out-{i}", platform.namespace) is None
