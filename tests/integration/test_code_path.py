"""A package's Unix modes and symbolic links on the local backend, as Lambda keeps them: a `code.path` directory
served by `kambda run` and the same directory through `kambda deploy DIR`, invoked with boto3 (real gateway, agent,
bubblewrap and awslambdaric). An ELF helper keeps its exec bit and runs; an npm-style relative link inside the
package stays a link and is read through; a link out of the package is refused, naming it, before anything runs
or is uploaded."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Gateway
from tests.integration.test_async import lambda_client

HANDLER = """\
import os, stat, subprocess


def handler(event, context):
    root = os.environ["LAMBDA_TASK_ROOT"]
    tool = os.path.join(root, "node_modules", ".bin", "tool")
    with open(tool) as f:
        through_link = f.read()
    modes = {name: oct(stat.S_IMODE(os.lstat(os.path.join(root, name)).st_mode))
             for name in ("bin/helper", "notes.sh", "app.py")}
    helper = subprocess.run([os.path.join(root, "bin", "helper")], timeout=10)
    return {"helper": helper.returncode, "islink": os.path.islink(tool), "target": os.readlink(tool),
            "through_link": through_link, "modes": modes}
"""
EXPECTED = {
    "helper": 0,
    "islink": True,
    "target": "../tool/cli.js",
    "through_link": "console.log('tool')\n",
    "modes": {"bin/helper": "0o755", "notes.sh": "0o644", "app.py": "0o644"},
}
MANIFEST = """\
apiVersion: kambda.dev/v1alpha1
kind: Function
metadata: {{name: {name}}}
spec: {{runtime: python3.11, handler: app.handler, timeoutSeconds: 30, code: {{path: {path}}}}}
"""
OUTSIDE = [("node_modules/.bin/passwd", "/etc/passwd"), ("escape", "../../outside")]


def package_tree(root: Path) -> Path:
    """The handler, an ELF binary (/bin/true) as `bin/helper` 0755, a `#!` script left 0644, and
    `node_modules/.bin/tool -> ../tool/cli.js` as npm lays it out."""
    (root / "bin").mkdir(parents=True)
    shutil.copy("/bin/true", root / "bin" / "helper")
    (root / "bin" / "helper").chmod(0o755)
    (root / "app.py").write_text(HANDLER)
    (root / "notes.sh").write_text("#!/bin/sh\n")
    (root / "notes.sh").chmod(0o644)
    (root / "node_modules" / "tool").mkdir(parents=True)
    (root / "node_modules" / "tool" / "cli.js").write_text("console.log('tool')\n")
    (root / "node_modules" / "tool" / "cli.js").chmod(0o755)
    (root / "node_modules" / ".bin").mkdir()
    (root / "node_modules" / ".bin" / "tool").symlink_to("../tool/cli.js")
    return root


def kambda(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kambda", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def invoke(url: str, name: str) -> Any:
    response = lambda_client(url).invoke(FunctionName=name, Payload=b"{}")
    body = json.loads(response["Payload"].read())
    assert "FunctionError" not in response, body
    return body


def stored(data: Path) -> list[str]:
    packages = data / "packages"
    return sorted(p.name for p in packages.iterdir()) if packages.is_dir() else []


def test_a_code_path_and_its_deploy_keep_exec_bits_and_links(tmp_path: Path) -> None:
    src = package_tree(tmp_path / "src")
    manifests, data = tmp_path / "manifests", tmp_path / "data"
    manifests.mkdir()
    (manifests / "tree.yaml").write_text(MANIFEST.format(name="tree", path="../src"))
    gw = Gateway(manifests, data)
    try:
        assert invoke(gw.url, "tree") == EXPECTED

        result = kambda("deploy", str(src), "--name", "deployed", "--runtime", "python3.11", "--endpoint", gw.url)
        assert result.returncode == 0, result.stderr
        assert invoke(gw.url, "deployed") == EXPECTED
        # One package either way: the code.path tree is the very zip `kambda deploy` uploaded, unpacked.
        code_sha256 = dict(field.split("=", 1) for field in result.stdout.split())["CodeSha256"]
        assert (data / "code" / f"path-{base64.b64decode(code_sha256).hex()}").is_dir()
    finally:
        gw.stop()

    # The cache outlives the gateway: a tree changed in it is written again before it runs.
    [cached] = (data / "code").glob("path-*")
    (cached / "bin" / "helper").chmod(0o644)
    gw = Gateway(manifests, data)
    try:
        assert invoke(gw.url, "tree") == EXPECTED
        assert "does not match its digest: writing it again" in gw.logs()
    finally:
        gw.stop()


@pytest.mark.parametrize(("link", "target"), OUTSIDE, ids=["absolute", "dot-dot"])
def test_a_link_out_of_the_package_is_refused_naming_it(tmp_path: Path, link: str, target: str) -> None:
    good = package_tree(tmp_path / "good")
    bad = package_tree(tmp_path / "bad")
    (bad / link).symlink_to(target)
    refusal = f"{link}: a symbolic link to {target}, outside the package"

    # `kambda run` with it as a code.path: the gateway does not start, and says which manifest and which link.
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "bad.yaml").write_text(MANIFEST.format(name="bad", path=str(bad)))
    # (A gateway that started instead would serve until the timeout.)
    run = kambda("run", str(manifests), "--port", "0", "--data-dir", str(tmp_path / "refused-data"), timeout=30)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines() == [f"kambda: {manifests / 'bad.yaml'}: spec.code.path: {bad}: {refusal}"]

    # `kambda deploy DIR`: refused before anything is uploaded, or even asked of the gateway.
    (manifests / "bad.yaml").write_text(MANIFEST.format(name="good", path=str(good)))
    data = tmp_path / "data"
    gw = Gateway(manifests, data)
    try:
        before = stored(data)
        result = kambda("deploy", str(bad), "--name", "bad", "--runtime", "python3.11", "--endpoint", gw.url)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [f"kambda deploy: {bad}: {refusal}"]
        assert stored(data) == before
        assert invoke(gw.url, "good") == EXPECTED
    finally:
        gw.stop()
    unreachable = kambda("deploy", str(bad), "--name", "bad", "--endpoint", "http://127.0.0.1:9")
    assert unreachable.stderr.strip().splitlines() == [f"kambda deploy: {bad}: {refusal}"]
