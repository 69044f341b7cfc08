"""Lambda layers on the local backend: packages uploaded with `kambda layer`, unpacked in order under /opt (a later
layer's files win), /opt/python importable, /opt/bin on PATH, a custom runtime's `bootstrap` from a layer, and at
most five layers."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Gateway
from tests.integration.test_async import lambda_client
from tests.integration.test_code_packages import KEY, deployed, invoke, kambda, start

PROVIDED_BOOTSTRAP = """\
#!/bin/sh
# A custom runtime shipped as a layer: the function's own code has no bootstrap.
set -eu
API="http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime"
HEADERS="${TMPDIR:-/tmp}/headers.$$"
while true; do
  EVENT=$(curl -sS -D "$HEADERS" "$API/invocation/next")
  REQUEST_ID=$(grep -i '^Lambda-Runtime-Aws-Request-Id:' "$HEADERS" | cut -d: -f2 | tr -d '[:space:]')
  ANSWER="{\\"from\\":\\"layer\\",\\"task\\":\\"$(cat "$LAMBDA_TASK_ROOT/marker")\\"}"
  curl -sS -X POST "$API/invocation/$REQUEST_ID/response" -d "$ANSWER" >/dev/null
done
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("layers")
    (root / "key").write_bytes(KEY)
    gw = start(root / "manifests", root / "data", root / "key")
    yield gw
    gw.stop()


def layer(gateway: Gateway, directory: Path, files: dict[str, str], executable: tuple[str, ...] = ()) -> str:
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if name in executable:
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    result = kambda("layer", str(directory), "--endpoint", gateway.url)
    assert result.returncode == 0, result.stderr
    return dict(field.split("=", 1) for field in result.stdout.split())["Sha256"]


def test_python_layers_in_order_with_a_tool_on_path(gateway: Gateway, tmp_path: Path) -> None:
    first = layer(gateway, tmp_path / "one", {
        "python/greeting.py": "WORD = 'from layer one'\n",
        "python/shared.py": "WHO = 'one'\n",
        "bin/tool": "#!/bin/sh\necho tool-ran\n",
    }, executable=("bin/tool",))  # fmt: skip
    second = layer(gateway, tmp_path / "two", {"python/shared.py": "WHO = 'two'\n"})
    app = tmp_path / "app"
    app.mkdir()
    (app / "app.py").write_text(
        "import os, subprocess, greeting, shared\n\n"
        "def handler(event, context):\n"
        "    tool = subprocess.run(['tool'], capture_output=True, text=True).stdout.strip()\n"
        "    return {'word': greeting.WORD, 'who': shared.WHO, 'tool': tool, 'opt': sorted(os.listdir('/opt'))}\n"
    )
    result = kambda("deploy", str(app), "--name", "layered", "--runtime", "python3.11", "--endpoint", gateway.url,
                    "--layer", first, "--layer", second)  # fmt: skip
    assert deployed(result)["FunctionName"] == "layered"
    client = lambda_client(gateway.url)
    body = invoke(client, "layered", {})
    assert body["word"] == "from layer one"
    assert body["who"] == "two", "the later layer's file wins"
    assert body["tool"] == "tool-ran"

    # The order is part of the version: reversed, the first layer's file wins instead.
    result = kambda("deploy", str(app), "--name", "layered", "--endpoint", gateway.url, "--layer", second,
                    "--layer", first)  # fmt: skip
    assert deployed(result)["Version"] == "2"
    assert invoke(client, "layered", {})["who"] == "one"
    assert invoke(client, "layered", {}, qualifier="1")["who"] == "two"


def test_a_custom_runtime_bootstrap_from_a_layer(gateway: Gateway, tmp_path: Path) -> None:
    runtime = layer(gateway, tmp_path / "runtime", {"bootstrap": PROVIDED_BOOTSTRAP}, executable=("bootstrap",))
    app = tmp_path / "app"
    app.mkdir()
    (app / "marker").write_text("task-code")
    result = kambda("deploy", str(app), "--name", "custom", "--runtime", "provided", "--handler", "x.y",
                    "--endpoint", gateway.url, "--layer", runtime)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert invoke(lambda_client(gateway.url), "custom", {}) == {"from": "layer", "task": "task-code"}


def test_a_sixth_layer_and_a_missing_one_are_refused(gateway: Gateway, tmp_path: Path) -> None:
    sha = layer(gateway, tmp_path / "l", {"python/x.py": "X = 1\n"})
    app = tmp_path / "app"
    app.mkdir()
    (app / "app.py").write_text("def handler(e, c):\n    return 1\n")
    result = kambda("deploy", str(app), "--name", "six", "--runtime", "python3.11", "--endpoint", gateway.url,
                    *[arg for _ in range(6) for arg in ("--layer", sha)])  # fmt: skip
    assert result.returncode == 2 and "at most 5 layers" in result.stderr, result.stderr
    missing = "0" * 64
    result = kambda("deploy", str(app), "--name", "missing", "--runtime", "python3.11", "--endpoint", gateway.url,
                    "--layer", missing)  # fmt: skip
    assert result.returncode == 2 and missing in result.stderr, result.stderr
    result = kambda("deploy", str(app), "--name", "five", "--runtime", "python3.11", "--endpoint", gateway.url,
                    *[arg for _ in range(5) for arg in ("--layer", sha)])  # fmt: skip
    assert deployed(result)["FunctionName"] == "five"  # five is allowed, and the gateway kept serving
    assert invoke(lambda_client(gateway.url), "five", {}) == 1
