"""The control plane's pure parts: Lambda's request bodies to spec changes, specs to Lambda's shapes, pagination,
and State/LastUpdateStatus from a Function's status."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from kambda import specs
from kambda.gateway import errors
from kambda.gateway.control import operations, shapes
from kambda.gateway.control.kubernetes import alias_object_name, status_of

PLACE = shapes.Place("eu-west-1", "123456789012")


def refused(call: Any) -> str:
    with pytest.raises(errors.AWSError) as info:
        call()
    assert info.value.status == 400 and info.value.error_type == "InvalidParameterValueException"
    return info.value.message


def test_every_operation_is_matched_by_its_own_method_and_path_only() -> None:
    for op in operations.OPERATIONS:
        path = op.template.replace("{FunctionName}", "fn").replace("{Name}", "live").replace("{Resource}", "arn")
        found = operations.match(op.method, path)
        assert found is not None and found[0] is op, op
    assert operations.match("PATCH", "/2015-03-31/functions/fn") is None
    assert operations.match("GET", "/2015-03-31/functions/fn/extra/more") is None
    assert operations.body_limit("POST", "/2015-03-31/functions") == operations.CODE_BODY_LIMIT
    assert operations.body_limit("PUT", "/2015-03-31/functions/fn/configuration") == operations.CONFIG_BODY_LIMIT


def test_configuration_changes_merge_and_remove_as_lambdas_update_does() -> None:
    current = {"runtime": "python3.11", "handler": "app.handler", "environment": {"A": "1"}, "timeoutSeconds": 3}
    spec = shapes.configuration_changes({"Timeout": 9, "Environment": {"Variables": {}}}, current)
    assert spec == {"runtime": "python3.11", "handler": "app.handler", "timeoutSeconds": 9}
    assert current["environment"] == {"A": "1"}  # the input is not changed
    json_logs = shapes.configuration_changes(
        {"LoggingConfig": {"LogFormat": "JSON", "ApplicationLogLevel": "WARN"}}, {}
    )
    assert json_logs["logging"] == {"format": "JSON", "applicationLogLevel": "WARN"}
    text = shapes.configuration_changes({"LoggingConfig": {"LogFormat": "Text"}}, json_logs)
    assert text["logging"] == {"format": "Text"}  # levels go with the JSON format, as on Lambda
    sha = "ab" * 32
    layered = shapes.configuration_changes({"Layers": [PLACE.layer_arn(sha), sha]}, {})
    assert layered["layers"] == [{"sha256": sha}, {"sha256": sha}]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"Timeout": "3"}, "Timeout must be an integer"),
        ({"Timeout": True}, "Timeout must be an integer"),
        ({"Environment": {"Variables": {"A": 1}}}, "Variables must map strings"),
        ({"Layers": ["arn:aws:lambda:us-east-1:1:layer:x:3"]}, "named by its SHA-256"),
        ({"KMSKeyArn": "arn:aws:kms:..."}, "KMS"),
        ({"VpcConfig": {"SubnetIds": ["s-1"]}}, "VPC"),
        ({"TracingConfig": {"Mode": "Active"}}, "PassThrough"),
        ({"DeadLetterConfig": {"TargetArn": "arn:aws:sqs:..."}}, "dead-letter"),
        ({"Description": "x" * 257}, "at most 256"),
    ],
)
def test_bad_configuration_is_refused_naming_lambdas_field(body: dict[str, Any], words: str) -> None:
    assert words in refused(lambda: shapes.configuration_changes(body, {}))


def test_empty_unsupported_settings_are_accepted() -> None:
    body = {"VpcConfig": {"SubnetIds": [], "SecurityGroupIds": []}, "DeadLetterConfig": {}, "KMSKeyArn": ""}
    assert shapes.configuration_changes(body, {}) == {}


def test_code_comes_from_a_zip_or_an_image_never_s3() -> None:
    zipped = base64.b64encode(b"PK...").decode()
    assert shapes.code_change({"Code": {"ZipFile": zipped}}, nested=True).zip_file == b"PK..."
    assert shapes.code_change({"ImageUri": "repo/img:1"}, nested=False).image_uri == "repo/img:1"
    assert "S3" in refused(lambda: shapes.code_change({"Code": {"S3Bucket": "b", "S3Key": "k"}}, nested=True))
    assert "base64" in refused(lambda: shapes.code_change({"ZipFile": "%%%"}, nested=False))
    assert "not both" in refused(lambda: shapes.code_change({"ZipFile": zipped, "ImageUri": "i"}, nested=False))
    assert "required" in refused(lambda: shapes.code_change({}, nested=True))


def test_the_manifest_parser_speaks_lambdas_field_names() -> None:
    spec = {"runtime": "python3.11", "handler": "app.handler", "code": {"sha256": "ab" * 32}, "memoryMB": 64}
    message = refused(lambda: shapes.check_spec("fn", "default", spec))
    assert message.startswith("MemorySize (spec.memoryMB)")


def test_configuration_of_a_zip_and_an_image_function() -> None:
    spec = {"runtime": "python3.11", "handler": "app.handler", "code": {"sha256": "ab" * 32}, "memoryMB": 256,
            "role": "arn:aws:iam::1:role/r", "layers": [{"sha256": "cd" * 32}]}  # fmt: skip
    code = shapes.Code("c2hh", 10)
    config = shapes.configuration(PLACE, "fn", "2", spec, code=code, revision="r", last_modified="t",
                                  status=shapes.Status(), layer_sizes={"cd" * 32: 5})  # fmt: skip
    assert config["FunctionArn"] == "arn:aws:lambda:eu-west-1:123456789012:function:fn:2"
    assert (config["Runtime"], config["Handler"], config["PackageType"]) == ("python3.11", "app.handler", "Zip")
    assert config["MemorySize"] == 256 and config["Timeout"] == 3 and config["Role"] == "arn:aws:iam::1:role/r"
    assert config["Layers"] == [{"Arn": PLACE.layer_arn("cd" * 32), "CodeSize": 5}]
    assert config["State"] == "Active" and config["LastUpdateStatus"] == "Successful"
    assert "StateReason" not in config and config["EphemeralStorage"] == {"Size": 512}
    latest = shapes.configuration(PLACE, "fn", "$LATEST", {"runtime": "provided", "code": {"image": "i"},
                                                            "imageConfig": {"command": ["app.handler"]}},
                                  code=code, revision="r", last_modified="t", status=shapes.Status())  # fmt: skip
    assert latest["FunctionArn"].endswith(":function:fn") and latest["PackageType"] == "Image"
    assert "Runtime" not in latest and latest["ImageConfigResponse"] == {"ImageConfig": {"Command": ["app.handler"]}}


def test_pages_follow_their_markers_to_the_end() -> None:
    keys = [shapes.version_key(name, v) for name in ("a", "a-b", "b") for v in ("$LATEST", "2", "10")]
    assert keys == sorted(keys)  # $LATEST first, then versions by number, functions by name
    seen, marker, pages = [], None, 0
    while True:
        chunk, marker = shapes.page(keys, marker, "4")
        seen += keys[chunk]
        pages += 1
        if marker is None:
            break
    assert seen == keys and pages == 3
    assert shapes.page(keys, None, None) == (slice(0, 9), None)


def test_a_marker_is_a_place_in_the_order_not_a_position() -> None:
    keys = ["a", "c", "d"]
    first, marker = shapes.page(keys, None, "1")
    assert keys[first] == ["a"]
    shifted = ["a", "b", "c", "d"]  # "b" made between the two pages, after the marker: on the next page
    rest, _ = shapes.page(shifted, marker, "10")
    assert shifted[rest] == ["b", "c", "d"]
    fewer = ["c", "d"]  # "a" deleted between the two pages: nothing after it is skipped
    rest, _ = shapes.page(fewer, marker, "10")
    assert fewer[rest] == ["c", "d"]


def test_bad_pagination_parameters_are_refused() -> None:
    keys = ["a"]
    for bad in ("0", "10001", "x", "\u00b2", "\u2460", "9" * 5000):  # the last three: found by the fuzz suite
        assert "MaxItems" in refused(lambda bad=bad: shapes.page(keys, None, bad))
    assert "Marker" in refused(lambda: shapes.page(keys, "not-base64!", None))


def test_revision_ids_change_with_each_generation_only() -> None:
    assert shapes.revision_id("uid", 1) == shapes.revision_id("uid", 1)
    assert shapes.revision_id("uid", 1) != shapes.revision_id("uid", 2) != shapes.revision_id("other", 2)


def _function(generation: int, observed: int | None, latest: str | None, ready: tuple[str, str, int] | None) -> Any:
    status: dict[str, Any] = {}
    if observed is not None:
        status["observedGeneration"] = observed
    if latest:
        status["latestVersion"] = latest
    if ready:
        status["conditions"] = [{"type": "Ready", "status": ready[0], "reason": ready[1], "message": "why",
                                 "observedGeneration": ready[2]}]  # fmt: skip
    return {"metadata": {"generation": generation}, "status": status}


def test_state_follows_the_operator_and_the_registry() -> None:
    created = status_of(_function(1, None, None, None), routable=False, served=False)
    assert (created.state, created.last_update) == ("Pending", "InProgress")
    reconciled = _function(1, 1, "1", ("True", "Reconciled", 1))
    # Published, but this gateway cannot route to it yet: an invoke now would be a 404, so still Pending.
    assert status_of(reconciled, routable=False, served=False).state == "Pending"
    active = status_of(reconciled, routable=True, served=True)
    assert (active.state, active.last_update) == ("Active", "Successful")
    updating = status_of(_function(2, 1, "1", ("True", "Reconciled", 1)), routable=True, served=True)
    assert (updating.state, updating.last_update) == ("Active", "InProgress")
    new_version_not_routed = status_of(_function(2, 2, "2", ("True", "Reconciled", 2)), routable=True, served=False)
    assert (new_version_not_routed.state, new_version_not_routed.last_update) == ("Active", "InProgress")


def test_a_failure_counts_for_its_own_generation_only() -> None:
    failed = status_of(_function(1, None, None, ("False", "InvalidSpec", 1)), routable=False, served=False)
    assert (failed.state, failed.reason_code, failed.last_update) == ("Failed", "InvalidSpec", "Failed")
    failed_update = status_of(_function(2, 1, "1", ("False", "CodeRefused", 2)), routable=True, served=True)
    assert (failed_update.state, failed_update.last_update, failed_update.last_update_code) == (
        "Active", "Failed", "CodeRefused"
    )  # fmt: skip
    # Generation 3 fixes what failed in 2: in progress until the operator has looked at 3.
    fixing = status_of(_function(3, 1, "1", ("False", "UnsupportedRuntime", 2)), routable=True, served=True)
    assert (fixing.state, fixing.last_update) == ("Active", "InProgress")


def test_any_lambda_alias_name_is_an_object_name() -> None:
    assert alias_object_name("fn", "live") == "fn.live"
    odd = {alias_object_name("fn", name) for name in ("Live", "LIVE", "my_alias", "my-alias", "_")}
    assert len(odd) == 5 and all(specs.K8S_NAME_RE.fullmatch(n.replace(".", "-")) for n in odd)
