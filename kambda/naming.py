"""Function names, qualifiers and ARNs as the Lambda API spells them (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass

LATEST = "$LATEST"
# The custom resources: API group and version, a manifest's apiVersion, and their plural names in API URLs.
GROUP, VERSION = "kambda.dev", "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
FUNCTIONS, ALIASES = "functions", "aliases"
# Versions of a Function the operator is asked to delete (DeleteFunction with a Qualifier): comma-separated numbers
# in this annotation. The operator owns versions, so the gateway asks rather than deletes.
DELETE_VERSIONS_ANNOTATION = f"{GROUP}/delete-versions"
# A function pod's termination message starts with this when its agent refused the code (a hash that does not
# match, an unsafe or oversized zip): the operator puts the rest on the Function's status.
CODE_REFUSED = "CodeRefused"
# The Function's Ready=False reasons that mean its spec cannot run as it is (the operator sets them; the Lambda API
# reports them as State/LastUpdateStatus Failed). Others (a version still on its way) are transient.
INVALID_SPEC, UNSUPPORTED_CODE, UNSUPPORTED_RUNTIME, NO_CODE_STORE = (
    "InvalidSpec", "UnsupportedCode", "UnsupportedRuntime", "NoCodeStore",
)  # fmt: skip
FAILED_REASONS = frozenset({INVALID_SPEC, UNSUPPORTED_CODE, UNSUPPORTED_RUNTIME, NO_CODE_STORE, CODE_REFUSED})
# When the Lambda API last changed a Function (its LastModified); kubectl's changes keep the previous one.
LAST_MODIFIED_ANNOTATION = f"{GROUP}/last-modified"
# The label every object of a function carries (its Deployments, ControllerRevisions, pods): the Function's name.
FUNCTION_LABEL = f"{GROUP}/function"
# botocore's FunctionName pattern with the parts we need captured. Patterns here are only ever used with
# `fullmatch`: `$` would also match before a trailing newline, so `echo\n` would name `echo`.
_FUNCTION_REF = re.compile(
    r"(?:arn:(?:aws[a-zA-Z-]*)?:lambda:)?"
    r"(?:[a-z]{2}(?:(?:-gov)|(?:-iso(?:[a-z]?)))?-[a-z]+-\d{1}:)?"
    r"(?:\d{12}:)?"
    r"(?:function:)?"
    r"(?P<name>[a-zA-Z0-9-_]{1,64})"
    r"(?::(?P<qualifier>\$LATEST|[a-zA-Z0-9-_]{1,128}))?"
)
_QUALIFIER = re.compile(r"\$LATEST|[a-zA-Z0-9-_]{1,128}")


class InvalidReference(ValueError):
    """The caller's function name or qualifier is malformed (a 400, unlike an unknown function's 404)."""


@dataclass(frozen=True)
class FunctionRef:
    name: str
    qualifier: str | None  # None means unqualified: $LATEST


def parse_function_ref(function_name: str, qualifier: str | None = None) -> FunctionRef:
    """Split `name`, `name:qual`, a partial or a full ARN, reconciling it with an explicit `Qualifier`."""
    if len(function_name) > 170:
        raise InvalidReference("FunctionName must be at most 170 characters")
    match = _FUNCTION_REF.fullmatch(function_name)
    if not match:
        raise InvalidReference(f"Invalid function name: {function_name!r}")
    derived = match.group("qualifier")
    if qualifier is not None:
        if not _QUALIFIER.fullmatch(qualifier):
            raise InvalidReference(f"Invalid qualifier: {qualifier!r}")
        if derived is not None and derived != qualifier:
            raise InvalidReference(
                "The derived qualifier from the function name does not match the specified qualifier."
            )
    return FunctionRef(name=match.group("name"), qualifier=qualifier if qualifier is not None else derived)


def function_arn(region: str, account: str, name: str, qualifier: str | None = None) -> str:
    arn = f"arn:aws:lambda:{region}:{account}:function:{name}"
    return f"{arn}:{qualifier}" if qualifier else arn


# The runtime interface's redirect (gateway replicas): trailing metadata naming the owning replica's address.
OWNER_METADATA = "kambda-owner"
# Lambda's AWS_LAMBDA_INITIALIZATION_TYPE values. The gateway tells an instance its type when its stream opens (the
# metadata below), the agent starts the runtime with it, and says it again on a reconnect.
ON_DEMAND, PROVISIONED_CONCURRENCY, SNAP_START = "on-demand", "provisioned-concurrency", "snap-start"
INITIALIZATION_TYPE_METADATA = "kambda-initialization-type"

# Packed sandboxes (Kubernetes): a function pod hosts several sandboxes of its version. The first is named after its
# pod, so a pod of one sandbox is the instance it always was; the n-th after it is `{pod}.{n}` (Deployment pod names
# never contain a dot).
SLOT_SEPARATOR = "."


def sandbox_id(pod: str, slot: int) -> str:
    return pod if slot == 0 else f"{pod}{SLOT_SEPARATOR}{slot}"


def pod_of(instance_id: str) -> str:
    return instance_id.split(SLOT_SEPARATOR, 1)[0]


def slot_of(instance_id: str) -> int:
    """The slot an instance id names; -1 for one that is not a sandbox id (a placeholder's)."""
    _, _, slot = instance_id.partition(SLOT_SEPARATOR)
    return int(slot) if slot.isdigit() else (0 if not slot else -1)


# Warm pools (Kubernetes): generic pods per namespace and runtime, waiting to be specialised for a function version.
# A pool pod carries POOL_LABEL (its pool's Deployment selects it); specialising it removes that label, so the pool's
# ReplicaSet lets it go and starts a replacement, and gives it the function's label (its NetworkPolicy then applies)
# and SPECIALISED_LABEL instead of the version label (which would make the version's ReplicaSet adopt it).
POOL_LABEL = f"{GROUP}/pool"
SPECIALISED_LABEL = f"{GROUP}/specialised-version"
# On a version's Deployment: the pool (runtime) its pods may come from, set by the operator when a pool pod can take
# every setting of the function; otherwise WARM_POOL_REFUSAL says why it gets dedicated pods only.
WARM_POOL_ANNOTATION = f"{GROUP}/warm-pool"
WARM_POOL_REFUSAL = f"{GROUP}/warm-pool-refusal"
# On a Namespace: the pool size there (per runtime in use), overriding the operator's --warm-pool-size.
WARM_POOL_SIZE_LABEL = f"{GROUP}/warm-pool-size"


def pool_deployment(runtime: str) -> str:
    """The pool Deployment of a runtime in a namespace (no dots: its pods' names must not contain one)."""
    return "kambda-pool-" + runtime.replace(".", "-")


def pool_key(namespace: str, runtime: str) -> str:
    """What a pool's credential signs, in place of a function's `namespace/name` (no function is named with ':')."""
    return f"{namespace}/pool:{runtime}"
