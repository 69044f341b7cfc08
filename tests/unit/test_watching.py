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


def _obj(name: str, version: str) -> dict[str, object]:
    return {"metadata": {"name": name, "resourceVersion": version}}


def test_a_relist_after_a_gap_names_what_was_deleted_in_it() -> None:
    from kambda.gateway.watching import WatchState

    state = WatchState()
    assert state.relisted([_obj("a", "1"), _obj("b", "2")], "2") == [] and state.version == "2"
    state.saw("ADDED", _obj("c", "3"))
    state.saw("DELETED", _obj("a", "4"))
    state.saw("BOOKMARK", {"metadata": {"resourceVersion": "9"}})
    assert state.version == "9"  # resumed from here, not listed again
    state.expired()
    assert state.version is None
    gone = state.relisted([_obj("c", "10")], "10")  # b was deleted while the watch had expired
    assert [g["metadata"]["name"] for g in gone] == ["b"]  # type: ignore[index]
    assert state.relisted([_obj("c", "10")], "11") == []
