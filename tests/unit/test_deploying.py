"""kambda deploy's pure part: the merge patch it writes into a Function's spec."""

from __future__ import annotations

from typing import Any

from kambda import deploying
from kambda.deploying import Options, merge_patch, spec_patch

SHA = "ab" * 32


def test_a_new_function_gets_a_whole_spec_with_lambda_like_defaults() -> None:
    patch = spec_patch(None, SHA, Options())
    assert patch == {"code": {"sha256": SHA}, "runtime": deploying.DEFAULT_RUNTIME, "handler": "app.handler"}
    custom = spec_patch(None, SHA, Options(runtime="provided", memory_mb=256, environment={"A": "1"}))
    assert custom == {"code": {"sha256": SHA}, "runtime": "provided", "memoryMB": 256, "environment": {"A": "1"}}


def test_an_update_replaces_the_code_and_changes_only_what_is_given() -> None:
    existing: dict[str, Any] = {
        "runtime": "python3.11", "handler": "main.run", "memoryMB": 512,
        "code": {"url": "https://example.com/old.zip", "sha256": "cd" * 32},
        "environment": {"KEEP": "no", "CHANGE": "old"}, "concurrency": {"reserved": 3},
    }  # fmt: skip
    patch = spec_patch(existing, SHA, Options(timeout_seconds=30, environment={"CHANGE": "new", "ADD": "1"}))
    assert patch == {
        "code": {"url": None, "sha256": SHA},
        "timeoutSeconds": 30,
        "environment": {"KEEP": None, "CHANGE": "new", "ADD": "1"},
    }
    assert merge_patch(existing, patch) == {
        "runtime": "python3.11", "handler": "main.run", "memoryMB": 512, "timeoutSeconds": 30,
        "code": {"sha256": SHA}, "environment": {"CHANGE": "new", "ADD": "1"}, "concurrency": {"reserved": 3},
    }  # fmt: skip
    assert spec_patch(existing, SHA, Options()) == {"code": {"url": None, "sha256": SHA}}


def test_merge_patch_follows_rfc_7386() -> None:
    # RFC 7386's appendix, a few of its cases
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "b"}, {"a": None}) == {}
    assert merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert merge_patch({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}) == {"a": {"b": "d"}}
    assert merge_patch({}, {"a": {"bb": {"ccc": None}}}) == {"a": {"bb": {}}}
    assert merge_patch(["a"], {"a": "b"}) == {"a": "b"}
