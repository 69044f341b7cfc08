"""How the gateway's watch rebuilds a version's spec from the Function and the version's snapshot."""

from __future__ import annotations

from kambda.specs import version_spec


def test_a_versioned_field_added_later_does_not_leak_into_an_older_version() -> None:
    current = {"runtime": "python3.11", "handler": "app.handler", "code": {"sha256": "b" * 64},
               "environment": {"ADDED": "in v2"}, "layers": [{"sha256": "c" * 64}],
               "scaling": {"idleSeconds": 5}, "concurrency": {"reserved": 2}}  # fmt: skip
    v1 = {"runtime": "python3.11", "handler": "app.handler", "code": {"sha256": "a" * 64}}
    spec = version_spec(current, v1)
    assert spec["code"] == {"sha256": "a" * 64}
    assert "environment" not in spec and "layers" not in spec
    assert spec["scaling"] == {"idleSeconds": 5} and spec["concurrency"] == {"reserved": 2}  # the function's own
