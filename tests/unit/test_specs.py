from __future__ import annotations

from typing import Any

import pytest

from kambda.specs import SpecError, parse_function


def manifest(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"runtime": "python3.11", "handler": "app.handler", "code": {"files": {"app.py": "x"}}}
    base.update(spec)
    return {"apiVersion": "kambda.dev/v1alpha1", "kind": "Function", "metadata": {"name": "hello"}, "spec": base}


def errors_of(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_function(doc)
    return info.value.errors


def test_defaults_are_lambdas() -> None:
    spec = parse_function(manifest())
    assert (spec.memory_mb, spec.timeout_seconds, spec.namespace) == (128, 3, "default")
    assert spec.concurrency.reserved is None and spec.concurrency.provisioned == 0
    assert spec.scaling.idle_seconds == 300
    assert spec.async_config.max_retry_attempts == 2 and spec.async_config.max_event_age_seconds == 21600


def test_full_manifest() -> None:
    spec = parse_function(
        manifest(
            memoryMB=512,
            timeoutSeconds=30,
            environment={"A": "1", "B": 2},
            concurrency={"reserved": 10, "provisioned": 2},
            scaling={"idleSeconds": 5},
            **{"async": {"maxRetryAttempts": 0, "onFailure": "dlq-fn"}},
        )
    )
    assert spec.memory_mb == 512 and spec.timeout_seconds == 30
    assert spec.environment == {"A": "1", "B": "2"}
    assert spec.concurrency.reserved == 10 and spec.concurrency.provisioned == 2
    assert spec.scaling.idle_seconds == 5
    assert spec.async_config.max_retry_attempts == 0 and spec.async_config.on_failure == "dlq-fn"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"memoryMB": 64}, "spec.memoryMB: must be between 128 and 10240"),
        ({"memoryMB": 20000}, "spec.memoryMB: must be between 128 and 10240"),
        ({"memoryMB": "big"}, "spec.memoryMB: must be an integer"),
        ({"memoryMB": True}, "spec.memoryMB: must be an integer"),
        ({"timeoutSeconds": 0}, "spec.timeoutSeconds: must be between 1 and 900"),
        ({"scaling": {"sandboxesPerPod": 0}}, "spec.scaling.sandboxesPerPod: must be between 1 and 64"),
        ({"scaling": {"sandboxesPerPod": 65}}, "spec.scaling.sandboxesPerPod: must be between 1 and 64"),
        ({"timeoutSeconds": 901}, "spec.timeoutSeconds: must be between 1 and 900"),
        ({"runtime": "java8"}, "spec.runtime: must be one of"),
        ({"handler": None}, "spec.handler: is required"),
        ({"handler": "nodot"}, "spec.handler: must be module.function"),
        ({"code": {}}, "spec.code: must set exactly one of"),
        ({"code": {"files": {"../evil.py": "x"}}}, "spec.code.files.../evil.py: must be a relative path"),
        ({"code": {"files": {"a.py": "x"}, "path": "."}}, "spec.code: must set exactly one of"),
        ({"code": {"url": "https://example.com/f.zip"}}, "spec.code.url: needs sha256"),
        ({"code": {"sha256": "ABC"}}, "spec.code.sha256: must be 64 lower-case hex digits"),
        ({"code": {"sha256": "a" * 64, "files": {"a.py": "x"}}}, "spec.code: must set exactly one of"),
        ({"environment": {"AWS_REGION": "x"}}, "spec.environment.AWS_REGION: is reserved"),
        ({"environment": {"1BAD": "x"}}, "spec.environment.1BAD: name must start with a letter"),
        ({"concurrency": {"reserved": -1}}, "spec.concurrency.reserved: must be at least 0"),
        ({"concurrency": {"reserved": 1, "provisioned": 2}}, "spec.concurrency.provisioned: must not exceed"),
        ({"scaling": {"idleSeconds": -1}}, "spec.scaling.idleSeconds: must be at least 0"),
        ({"async": {"maxRetryAttempts": 3}}, "spec.async.maxRetryAttempts: must be between 0 and 2"),
        ({"async": {"maxEventAgeSeconds": 30}}, "spec.async.maxEventAgeSeconds: must be between 60 and 21600"),
        ({"async": {"onFailure": "not a name"}}, "spec.async.onFailure: must be a function name"),
    ],
)
def test_invalid_fields_name_path_and_rule(spec: dict[str, Any], expected: str) -> None:
    errors = errors_of(manifest(**spec))
    assert any(e.startswith(expected) for e in errors), errors


def test_every_problem_is_reported_at_once() -> None:
    errors = errors_of(manifest(memoryMB=1, timeoutSeconds=1000, runtime="cobol"))
    assert len(errors) == 3


def test_name_and_kind() -> None:
    doc = manifest()
    doc["metadata"]["name"] = "Bad_Name"
    assert any(e.startswith("metadata.name:") for e in errors_of(doc))
    doc = manifest()
    doc["kind"] = "Alias"
    assert "kind: must be Function" in errors_of(doc)


def test_provided_runtime_needs_no_dotted_handler() -> None:
    spec = parse_function(manifest(runtime="provided", handler="whatever", code={"files": {"bootstrap": "#!/bin/sh"}}))
    assert not spec.is_python


def test_a_sha256_alone_is_a_package_in_the_code_store_and_with_a_url_a_download() -> None:
    sha = "0123456789abcdef" * 4
    package = parse_function(manifest(code={"sha256": sha})).code
    assert (package.package, package.url) == (sha, None)
    download = parse_function(manifest(code={"url": "https://example.com/f.zip", "sha256": sha})).code
    assert (download.package, download.url, download.sha256) == (None, "https://example.com/f.zip", sha)
    assert parse_function(manifest()).code.package is None


def test_layers_at_most_five_packages_in_order() -> None:
    base = {
        "metadata": {"name": "f"},
        "spec": {"runtime": "python3.11", "handler": "a.b", "code": {"files": {"a.py": ""}}},
    }
    five = [{"sha256": f"{i:064x}"} for i in range(5)]
    assert parse_function({**base, "spec": {**base["spec"], "layers": five}}).layers == tuple(
        f"{i:064x}" for i in range(5)
    )
    with pytest.raises(SpecError, match="at most 5 layers"):
        parse_function({**base, "spec": {**base["spec"], "layers": [*five, {"sha256": "f" * 64}]}})
    with pytest.raises(SpecError, match=r"spec.layers\[0\].sha256"):
        parse_function({**base, "spec": {**base["spec"], "layers": [{"sha256": "nothex"}]}})
    with pytest.raises(SpecError, match=r"spec\.layers"):
        parse_function({**base, "spec": {**base["spec"], "layers": "abc"}})
