"""The CRDs on a real API server: every example applies; invalid manifests are refused, naming the field."""

from __future__ import annotations

import pytest

from tests.kube import ROOT, Kube


def test_every_example_applies(kube: Kube, namespace: str) -> None:
    result = kube.kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples"))
    assert result.returncode == 0, result.stderr
    names = {fn["metadata"]["name"] for fn in kube.list("functions", namespace)}
    assert {"hello", "echo", "shell-echo"} <= names
    assert kube.get("alias", "live", namespace) is not None
    assert "hello" in kube.kubectl("get", "fn", "-n", namespace).stdout  # the short name works


def function(spec: str, name: str = "bad") -> str:
    return f"apiVersion: kambda.dev/v1alpha1\nkind: Function\nmetadata: {{name: {name}}}\nspec: {spec}\n"


GOOD = "runtime: python3.11, handler: app.handler, code: {files: {app.py: x}}"


ALIAS = "apiVersion: kambda.dev/v1alpha1\nkind: Alias\nmetadata: {name: a}\n"


def good(extra: str) -> str:
    return function("{" + GOOD + ", " + extra + "}")


@pytest.mark.parametrize(
    ("manifest", "field"),
    [
        (function("{runtime: python3.11, handler: a.b, memoryMB: 64, code: {files: {a.py: x}}}"), "spec.memoryMB"),
        (function("{runtime: python3.11, handler: a.b, memoryMB: 20000, code: {files: {a.py: x}}}"), "spec.memoryMB"),
        (function("{runtime: python3.11, handler: a.b, memoryMB: lots, code: {files: {a.py: x}}}"), "spec.memoryMB"),
        (
            function("{runtime: python3.11, handler: a.b, timeoutSeconds: 901, code: {files: {a.py: x}}}"),
            "spec.timeoutSeconds",
        ),
        (
            function("{runtime: python3.11, handler: a.b, timeoutSeconds: 0, code: {files: {a.py: x}}}"),
            "spec.timeoutSeconds",
        ),
        (function("{runtime: cobol85, handler: a.b, code: {files: {a.py: x}}}"), "spec.runtime"),
        (function("{runtime: python3.11, handler: a.b}"), "spec.code"),
        (function("{handler: a.b, code: {files: {a.py: x}}}"), "spec.runtime"),
        (function("{runtime: python3.11, handler: 'has space', code: {files: {a.py: x}}}"), "spec.handler"),
        (function("{runtime: python3.11, handler: a.b, code: {files: {a.py: x}, image: img}}"), "spec.code"),
        (function("{runtime: python3.11, handler: a.b, code: {url: 'https://x/a.zip'}}"), "spec.code"),
        (good("async: {maxRetryAttempts: 3}"), "spec.async.maxRetryAttempts"),
        (good("async: {maxEventAgeSeconds: 30}"), "spec.async.maxEventAgeSeconds"),
        (good("concurrency: {reserved: -1}"), "spec.concurrency.reserved"),
        (good("network: {egress: internet}"), "spec.network.egress"),
        (good("environment: {A: {nested: 1}}"), "spec.environment.A"),
        (good("logging: {format: json}"), "spec.logging.format"),
        (good("logging: {format: JSON, systemLogLevel: ERROR}"), "spec.logging.systemLogLevel"),
        (good("logging: {applicationLogLevel: WARN}"), "spec.logging"),  # levels need format JSON
        (good("logging: {format: Text, systemLogLevel: WARN}"), "spec.logging"),
        (good("ephemeralStorage: {size: 511}"), "spec.ephemeralStorage.size"),
        (good("ephemeralStorage: {size: 10241}"), "spec.ephemeralStorage.size"),
        (
            "apiVersion: kambda.dev/v1alpha1\nkind: Alias\nmetadata: {name: a}\n"
            "spec: {function: hello, version: '1', additionalVersionWeights: {'2': 1.5}}\n",
            "spec.additionalVersionWeights.2",
        ),
        (
            "apiVersion: kambda.dev/v1alpha1\nkind: Alias\nmetadata: {name: a}\nspec: {function: hello}\n",
            "spec.version",
        ),
        (
            ALIAS + "spec: {function: hello, version: latest}\n",
            "spec.version",
        ),
    ],
)
def test_invalid_manifests_are_refused_naming_the_field(kube: Kube, namespace: str, manifest: str, field: str) -> None:
    result = kube.apply(manifest, namespace)
    assert result.returncode != 0, f"accepted: {manifest}"
    assert field in result.stderr, result.stderr


def test_logging_and_ephemeral_storage_are_accepted_with_lambdas_defaults(kube: Kube, namespace: str) -> None:
    manifest = function(
        "{" + GOOD + ", logging: {format: JSON, applicationLogLevel: WARN}, ephemeralStorage: {size: 2048}}",
        name="logs",
    )
    result = kube.apply(manifest, namespace)
    assert result.returncode == 0, result.stderr
    assert (
        kube.apply(function("{" + GOOD + ", logging: {}, ephemeralStorage: {}}", name="defaults"), namespace).returncode
        == 0
    )
    defaulted = kube.get("function", "defaults", namespace)
    assert defaulted is not None
    spec = defaulted["spec"]
    assert spec["logging"] == {"format": "Text"} and spec["ephemeralStorage"] == {"size": 512}
