"""Lambda's control-plane shapes to and from Function manifests (pure).

A request body (botocore's `CreateFunctionRequest`, `UpdateFunctionConfigurationRequest`, ...) becomes a change of a
Function's `spec`, checked for types here and for every range by `specs.parse_function`, the one manifest parser;
a Function becomes `FunctionConfiguration`, `AliasConfiguration` and the rest, with Lambda's field names. Every
refusal is an `InvalidParameterValueException` naming Lambda's field, so that a caller can fix it.

What kambda cannot do is refused rather than ignored: S3 code locations (there is no S3: ZipFile, or a package
uploaded to the code store), VPC subnets, EFS, KMS keys, code signing, SQS/SNS dead-letter targets.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kambda import naming, specs

from .. import errors

PACKAGE_ARN_NAME = "package"  # a layer's ARN: arn:aws:lambda:{region}:{account}:layer:package:{sha256 hex}
_LAYER_SHA = re.compile(r"(?:.*:)?([0-9a-f]{64})\Z")
_ALIAS_RE = re.compile(r"(?!^[0-9]+\Z)[a-zA-Z0-9-_]{1,128}\Z")
_VERSION_RE = re.compile(r"[0-9]{1,10}\Z")
_MAX_ITEMS = re.compile(r"[0-9]{1,5}\Z")  # ASCII digits only: str.isdigit() also takes "²", which int() refuses
# Fields kambda has no counterpart for: refused when they ask for something, accepted when empty.
_UNSUPPORTED = {
    "KMSKeyArn": "kambda does not encrypt environment variables with KMS keys",
    "FileSystemConfigs": "kambda has no EFS: mount storage with a Kubernetes volume instead",
    "CodeSigningConfigArn": "kambda does not verify code signatures (a package is pinned by its SHA-256)",
    "DeadLetterConfig": "kambda's dead-letter queue is built in (GET /v1/dead-letters); SQS/SNS targets are not",
}
# The UUID namespace of RevisionIds (any fixed one: RevisionIds only have to change with what they stand for).
_REVISION_NAMESPACE = uuid.UUID("8a6e0804-2bd0-4672-b79a-4ad46c51a2b1")


def invalid(message: str) -> errors.AWSError:
    return errors.invalid_parameter(message)


def revision_id(uid: str, generation: int | str) -> str:
    """Lambda's RevisionId: a UUID that changes with every change of the function's (or alias's) settings."""
    return str(uuid.uuid5(_REVISION_NAMESPACE, f"{uid}:{generation}"))


def now() -> str:
    """LastModified for a change made now."""
    return timestamp(datetime.now(UTC))


def timestamp(moment: datetime) -> str:
    """Lambda's LastModified: 2024-05-01T12:00:00.000+0000."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


# ---- reading request bodies -----------------------------------------------------------------------------------


def _typed(body: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise invalid(f"{key} must be {what}")
    return value


def string(body: Mapping[str, Any], key: str, *, required: bool = False, max_len: int = 2048) -> str | None:
    value = _typed(body, key, str, "a string")
    if value is None and required:
        raise invalid(f"{key} is required")
    if value is not None and len(value) > max_len:
        raise invalid(f"{key} must be at most {max_len} characters")
    return value  # type: ignore[no-any-return]


def integer(body: Mapping[str, Any], key: str, *, required: bool = False) -> int | None:
    value = _typed(body, key, int, "an integer")
    if value is None and required:
        raise invalid(f"{key} is required")
    return value  # type: ignore[no-any-return]


def boolean(body: Mapping[str, Any], key: str) -> bool:
    return bool(_typed(body, key, bool, "true or false"))


def mapping(body: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    return _typed(body, key, Mapping, "an object")  # type: ignore[no-any-return]


def strings(body: Mapping[str, Any], key: str) -> list[str] | None:
    value = _typed(body, key, list, "a list of strings")
    if value is not None and not all(isinstance(v, str) for v in value):
        raise invalid(f"{key} must be a list of strings")
    return value  # type: ignore[no-any-return]


def string_map(body: Mapping[str, Any], key: str) -> dict[str, str] | None:
    value = mapping(body, key)
    if value is None:
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise invalid(f"{key} must map strings to strings")
    return dict(value)


def function_name(value: str) -> str:
    """A bare name for a new function: Lambda's rule, and Kubernetes' object-name rule, which a Function must also
    satisfy (lower case, no underscores)."""
    if not specs.NAME_RE.fullmatch(value):
        raise invalid(f"FunctionName {value!r} must be 1-64 letters, digits, hyphens or underscores")
    if not specs.K8S_NAME_RE.fullmatch(value):
        raise invalid(
            f"FunctionName {value!r}: a kambda function is also a Kubernetes object, so its name is lower-case "
            "letters, digits and hyphens, starting and ending with a letter or digit"
        )
    return value


def alias_name(value: str) -> str:
    if not _ALIAS_RE.fullmatch(value):
        raise invalid(f"Alias name {value!r} must be 1-128 letters, digits, hyphens or underscores, not only digits")
    return value


def version_number(value: str, key: str = "FunctionVersion") -> str:
    if value == naming.LATEST:
        raise invalid(
            f"{key}: kambda's aliases and settings name published versions ($LATEST is always the newest one)"
        )
    if not _VERSION_RE.fullmatch(value):
        raise invalid(f"{key} {value!r} must be a version number")
    return str(int(value))


def layer_packages(arns: Sequence[str]) -> list[dict[str, str]]:
    """Layers as kambda's spec names them: packages in the code store, given as their SHA-256 or an ARN ending in
    it (the `LayerVersionArn` kambda reports)."""
    found = []
    for arn in arns:
        match = _LAYER_SHA.fullmatch(arn)
        if not match:
            raise invalid(
                f"Layer {arn!r}: a kambda layer is a package in the code store, named by its SHA-256 "
                f"(arn:aws:lambda:<region>:<account>:layer:{PACKAGE_ARN_NAME}:<sha256 hex>)"
            )
        found.append({"sha256": match.group(1)})
    return found


def decode_zip(value: object) -> bytes:
    if not isinstance(value, str):
        raise invalid("Code.ZipFile must be base64-encoded bytes")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise invalid("Code.ZipFile is not valid base64") from None


def check_unsupported(body: Mapping[str, Any]) -> None:
    for key, why in _UNSUPPORTED.items():
        value = body.get(key)
        if value not in (None, "", {}, []) and not (key == "DeadLetterConfig" and not _present(value)):
            raise invalid(f"{key}: {why}")
    vpc = body.get("VpcConfig")
    if vpc is not None:
        if not isinstance(vpc, Mapping):
            raise invalid("VpcConfig must be an object")
        if vpc.get("SubnetIds") or vpc.get("SecurityGroupIds"):
            raise invalid("VpcConfig: kambda has no VPCs; a Function's spec.network.egress limits its traffic")
    tracing = mapping(body, "TracingConfig")
    if tracing is not None and tracing.get("Mode", "PassThrough") != "PassThrough":
        raise invalid("TracingConfig.Mode: kambda passes trace headers through (PassThrough) and traces nothing")


def _present(value: object) -> bool:
    return isinstance(value, Mapping) and any(v not in (None, "") for v in value.values())


def check_architectures(body: Mapping[str, Any], machine: str) -> None:
    archs = strings(body, "Architectures")
    if archs is not None and archs != [machine]:
        raise invalid(f"Architectures must be [{machine!r}]: this installation's nodes run {machine}")


# ---- request bodies -> spec changes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CodeChange:
    """Where new code comes from: a zip to store first, or an image (exactly one)."""

    zip_file: bytes | None = None
    image_uri: str | None = None


def code_change(body: Mapping[str, Any], *, nested: bool) -> CodeChange:
    """CreateFunction's `Code` object (`nested`) or UpdateFunctionCode's top-level fields."""
    code = mapping(body, "Code") if nested else body
    if code is None:
        raise invalid("Code is required")
    if any(code.get(k) for k in ("S3Bucket", "S3Key", "S3ObjectVersion")):
        raise invalid(
            "Code.S3Bucket: kambda has no S3. Send ZipFile (up to 50 MB), or upload the package with `kambda deploy`"
        )
    image = string(code, "ImageUri")
    if "ZipFile" in code and code["ZipFile"] is not None:
        if image is not None:
            raise invalid("Code: give ZipFile or ImageUri, not both")
        return CodeChange(zip_file=decode_zip(code["ZipFile"]))
    if image is not None:
        return CodeChange(image_uri=image)
    raise invalid("Code: ZipFile or ImageUri is required")


def code_spec(change: CodeChange, package_sha256: str | None) -> dict[str, Any]:
    if change.image_uri is not None:
        return {"image": change.image_uri}
    return {"sha256": package_sha256}


def configuration_changes(body: Mapping[str, Any], current: Mapping[str, Any] | None) -> dict[str, Any]:
    """The spec fields CreateFunction or UpdateFunctionConfiguration sets, merged onto `current` (None: a new
    function). Fields the body leaves out keep their values, as Lambda's update does."""
    spec: dict[str, Any] = dict(current or {})
    check_unsupported(body)
    for key, field, max_len in (("Runtime", "runtime", 64), ("Handler", "handler", 128),
                                ("Description", "description", 256), ("Role", "role", 2048)):  # fmt: skip
        value = string(body, key, max_len=max_len)
        if value is not None:
            spec[field] = value
    for key, field in (("Timeout", "timeoutSeconds"), ("MemorySize", "memoryMB")):
        number = integer(body, key)
        if number is not None:
            spec[field] = number
    env = mapping(body, "Environment")
    if env is not None:
        variables = string_map(env, "Variables") or {}
        if variables:
            spec["environment"] = variables
        else:
            spec.pop("environment", None)
    layers = strings(body, "Layers")
    if layers is not None:
        if layers:
            spec["layers"] = layer_packages(layers)
        else:
            spec.pop("layers", None)
    storage = mapping(body, "EphemeralStorage")
    if storage is not None:
        spec["ephemeralStorage"] = {"size": integer(storage, "Size", required=True)}
    snap = mapping(body, "SnapStart")
    if snap is not None:
        spec["snapStart"] = {"applyOn": string(snap, "ApplyOn", required=True)}
    logging = mapping(body, "LoggingConfig")
    if logging is not None:
        spec["logging"] = _logging(logging, spec.get("logging"))
    image = mapping(body, "ImageConfig")
    if image is not None:
        spec["imageConfig"] = _image_config(image)
    return spec


def _logging(body: Mapping[str, Any], current: Mapping[str, Any] | None) -> dict[str, Any]:
    result = dict(current or {})
    for key, field in (("LogFormat", "format"), ("ApplicationLogLevel", "applicationLogLevel"),
                       ("SystemLogLevel", "systemLogLevel")):  # fmt: skip
        value = string(body, key, max_len=32)
        if value is not None:
            result[field] = value
    if result.get("format", "Text") == "Text":  # Lambda drops the levels when the format goes back to Text
        result.pop("applicationLogLevel", None)
        result.pop("systemLogLevel", None)
    return result


def _image_config(body: Mapping[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, field in (("EntryPoint", "entryPoint"), ("Command", "command")):
        value = strings(body, key)
        if value:
            result[field] = value
    working = string(body, "WorkingDirectory", max_len=1000)
    if working:
        result["workingDirectory"] = working
    return result


def check_spec(name: str, namespace: str, spec: Mapping[str, Any]) -> specs.FunctionSpec:
    """The spec as a Function, or InvalidParameterValueException with every problem the manifest parser found."""
    manifest = {"apiVersion": naming.API_VERSION, "kind": "Function",
                "metadata": {"name": name, "namespace": namespace}, "spec": dict(spec)}  # fmt: skip
    try:
        return specs.parse_function(manifest)
    except specs.SpecError as exc:
        raise invalid("; ".join(_lambda_words(e) for e in exc.errors)) from None


_FIELD_WORDS = {
    "spec.memoryMB": "MemorySize", "spec.timeoutSeconds": "Timeout", "spec.runtime": "Runtime",
    "spec.handler": "Handler", "spec.environment": "Environment.Variables", "spec.layers": "Layers",
    "spec.ephemeralStorage.size": "EphemeralStorage.Size", "spec.logging": "LoggingConfig",
    "spec.concurrency.reserved": "ReservedConcurrentExecutions", "spec.description": "Description",
    "spec.tags": "Tags", "spec.snapStart.applyOn": "SnapStart.ApplyOn", "spec.snapStart": "SnapStart",
}  # fmt: skip


def _lambda_words(problem: str) -> str:
    """`spec.memoryMB: must be ...` as `MemorySize (spec.memoryMB): must be ...`: the caller's field first."""
    path, sep, rule = problem.partition(": ")
    for prefix, word in _FIELD_WORDS.items():
        if path == prefix or path.startswith(prefix + "."):
            return f"{word} ({path}){sep}{rule}"
    return problem


def alias_routing(body: Mapping[str, Any]) -> dict[str, float] | None:
    routing = mapping(body, "RoutingConfig")
    if routing is None:
        return None
    weights = mapping(routing, "AdditionalVersionWeights") or {}
    result: dict[str, float] = {}
    for version, weight in weights.items():
        number = version_number(str(version), "RoutingConfig.AdditionalVersionWeights")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= 1:
            raise invalid(f"RoutingConfig.AdditionalVersionWeights.{version} must be a number between 0 and 1")
        result[number] = float(weight)
    if sum(result.values()) > 1:
        raise invalid("RoutingConfig.AdditionalVersionWeights: the weights add up to more than 1")
    return result


# ---- functions -> response shapes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Status:
    """Lambda's State and LastUpdateStatus with their reasons."""

    state: str = "Active"  # Pending | Active | Inactive | Failed
    reason: str | None = None
    reason_code: str | None = None
    last_update: str = "Successful"  # InProgress | Successful | Failed
    last_update_reason: str | None = None
    last_update_code: str | None = None


@dataclass(frozen=True)
class Code:
    sha256: str  # Lambda's CodeSha256 (base64)
    size: int


@dataclass(frozen=True)
class Place:
    """Where functions run, as their ARNs and configurations say it."""

    region: str
    account: str
    architecture: str = "x86_64"  # Lambda's name for the nodes' machine (x86_64 or arm64)

    def function_arn(self, name: str, qualifier: str | None = None) -> str:
        return naming.function_arn(self.region, self.account, name, qualifier)

    def layer_arn(self, sha256: str) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account}:layer:{PACKAGE_ARN_NAME}:{sha256}"


def configuration(
    place: Place, name: str, version: str, spec: Mapping[str, Any], *, code: Code, revision: str,
    last_modified: str, status: Status, layer_sizes: Mapping[str, int] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """botocore's FunctionConfiguration for one version (`$LATEST` or a number) whose whole spec is `spec`."""
    is_image = "image" in (spec.get("code") or {})
    logging = spec.get("logging") or {}
    log_format = logging.get("format", "Text")
    snap_start = (spec.get("snapStart") or {}).get("applyOn", "None")
    config: dict[str, Any] = {
        "FunctionName": name,
        "FunctionArn": place.function_arn(name, None if version == naming.LATEST else version),
        "Role": spec.get("role") or f"arn:aws:iam::{place.account}:role/kambda-function",
        "CodeSize": code.size,
        "Description": spec.get("description", ""),
        "Timeout": spec.get("timeoutSeconds", 3),
        "MemorySize": spec.get("memoryMB", 128),
        "LastModified": last_modified,
        "CodeSha256": code.sha256,
        "Version": version,
        "Environment": {"Variables": dict(spec.get("environment") or {})},
        "TracingConfig": {"Mode": "PassThrough"},
        "RevisionId": revision,
        "State": status.state,
        "LastUpdateStatus": status.last_update,
        "PackageType": "Image" if is_image else "Zip",
        "Architectures": [place.architecture],
        "EphemeralStorage": {"Size": (spec.get("ephemeralStorage") or {}).get("size", specs.EPHEMERAL_STORAGE_MB[0])},
        # Every kambda version is published, the one $LATEST runs too (Lambda restores only published versions).
        "SnapStart": {"ApplyOn": snap_start, "OptimizationStatus": "On" if snap_start != "None" else "Off"},
        "LoggingConfig": {"LogFormat": log_format, "LogGroup": f"/aws/lambda/{name}"},
    }
    if log_format == "JSON":
        config["LoggingConfig"]["ApplicationLogLevel"] = logging.get("applicationLogLevel", "INFO")
        config["LoggingConfig"]["SystemLogLevel"] = logging.get("systemLogLevel", "INFO")
    if not is_image:
        config["Runtime"] = spec.get("runtime")
        config["Handler"] = spec.get("handler")
    else:
        image = spec.get("imageConfig") or {}
        config["ImageConfigResponse"] = {"ImageConfig": {
            k: v for k, v in (("EntryPoint", image.get("entryPoint")), ("Command", image.get("command")),
                              ("WorkingDirectory", image.get("workingDirectory"))) if v
        }}  # fmt: skip
    layers = [layer["sha256"] for layer in spec.get("layers") or []]
    if layers:
        config["Layers"] = [
            {"Arn": place.layer_arn(sha), "CodeSize": (layer_sizes or {}).get(sha, 0)} for sha in layers
        ]
    for key, value in (("StateReason", status.reason), ("StateReasonCode", status.reason_code),
                       ("LastUpdateStatusReason", status.last_update_reason),
                       ("LastUpdateStatusReasonCode", status.last_update_code)):  # fmt: skip
        if value is not None:
            config[key] = value
    return config


def alias_configuration(
    place: Place, function: str, alias: str, version: str, weights: Mapping[str, float], description: str,
    revision: str,
) -> dict[str, Any]:  # fmt: skip
    config: dict[str, Any] = {
        "AliasArn": place.function_arn(function, alias),
        "Name": alias,
        "FunctionVersion": version,
        "Description": description,
        "RevisionId": revision,
    }
    if weights:
        config["RoutingConfig"] = {"AdditionalVersionWeights": dict(weights)}
    return config


def page(keys: Sequence[str], marker: str | None, max_items: str | None) -> tuple[slice, str | None]:
    """Which of a listing's items (their `keys` ascending, unique) one page holds, Lambda's way: MaxItems 1-10,000
    (50 unless given), after `marker`; and the NextMarker, opaque to the caller (the last key returned, base64), or
    None at the end. A key rather than a position, so that a function made or deleted between two pages neither
    repeats nor hides another."""
    limit = 50
    if max_items is not None:
        if not _MAX_ITEMS.fullmatch(max_items) or not 1 <= int(max_items) <= 10_000:
            raise invalid("MaxItems must be an integer between 1 and 10000")
        limit = int(max_items)
    start = 0
    if marker:
        try:
            after = base64.urlsafe_b64decode(marker.encode()).decode()
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise invalid(f"Invalid Marker {marker!r}") from None
        start = bisect.bisect_right(keys, after)
    end = min(start + limit, len(keys))
    next_marker = base64.urlsafe_b64encode(keys[end - 1].encode()).decode() if end < len(keys) else None
    return slice(start, end), next_marker


def version_key(function: str, version: str) -> str:
    """A listing's order of versions: by function, then $LATEST, then by number."""
    return f"{function}\0{'' if version == naming.LATEST else version.zfill(10)}"
