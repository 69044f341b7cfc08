"""What a request asks to do, in IAM's terms: the action and the resource ARN a policy is checked against (pure).

Lambda's own operations use Lambda's action names and ARNs (an invoke of `hello:prod` is `lambda:InvokeFunction`
on `arn:aws:lambda:{region}:{account}:function:hello:prod`). kambda's own APIs — invocation status, the dead-letter
queue, the code store, local deployments — have no IAM names, so they get `kambda:` ones, with the function's ARN
where the request names a function and `*` where it does not (as IAM does for Lambda's list operations).

Some paths are not the SigV4 middleware's to judge (`OPEN`): health and readiness probes, metrics scraped inside
the cluster, and the code store's download, which function pods authenticate with their function's credential.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kambda import jsontext, naming, policies

from .control import operations

# The replicas' internal hop is signed by the key they share (peering.py), not by an access key.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/kambda/internal/v1/run"})
_CODE_DOWNLOAD = re.compile(r"^/kambda/v1/code/[^/]+$")


@dataclass(frozen=True)
class Request:
    action: str
    resource: str


def _created_name(operation: str, body: bytes | None) -> str:
    """CreateFunction's FunctionName, read from its body; "" if it has none (the handler refuses such a body)."""
    if operation != "CreateFunction" or not body:
        return ""
    try:
        parsed = jsontext.loads(body)
    except jsontext.InvalidJSON:
        return ""
    name = parsed.get("FunctionName") if isinstance(parsed, dict) else None
    return name if isinstance(name, str) else ""


def is_open(method: str, path: str) -> bool:
    """Paths the SigV4 middleware lets through: probes, metrics, and what has an authentication of its own."""
    return path in OPEN_PATHS or (method in ("GET", "HEAD") and _CODE_DOWNLOAD.match(path) is not None)


def of_request(
    method: str, path: str, query: dict[str, str], region: str, account: str, *, body: bytes | None = None
) -> Request | None:
    """The action and resource of a request, or None for a path no API serves (the router answers it: 404).
    `body`: the request's body, for CreateFunction, whose resource is the function named inside it."""
    parts = path.strip("/").split("/")

    def function(name: str, qualifier: str | None = None) -> str:
        try:
            ref = naming.parse_function_ref(name, qualifier)
        except naming.InvalidReference:
            return naming.function_arn(region, account, name)  # the handler refuses it; the policy judges the name
        return naming.function_arn(region, account, ref.name, ref.qualifier)

    control = operations.match(method, path)
    if control is not None:
        op, params = control
        operation = operations.name_of(op, query)
        action = policies.action_for_operation(operation)
        if action in policies.ACCOUNT_ACTIONS:
            return Request(action, "*")
        name = params.get("FunctionName") or params.get("Resource") or _created_name(op.name, body)
        qualified = op.qualified and operation == op.name  # a List names the function
        return Request(action, function(name, query.get("Qualifier") if qualified else None))
    if len(parts) == 4 and parts[:2] == ["2015-03-31", "functions"] and parts[3] == "invocations":
        return Request("lambda:InvokeFunction", function(parts[2], query.get("Qualifier")))
    if len(parts) == 4 and parts[:2] == ["2019-09-25", "functions"] and parts[3] == "event-invoke-config":
        verb = {"PUT": "Put", "POST": "Update", "GET": "Get", "DELETE": "Delete"}.get(method, "Get")
        return Request(f"lambda:{verb}FunctionEventInvokeConfig", function(parts[2], query.get("Qualifier")))
    if parts[:2] == ["v1", "invocations"]:
        return Request("kambda:GetInvocation", "*")
    if parts[:2] == ["v1", "dead-letters"]:
        if method == "GET":
            return Request("kambda:GetDeadLetters", "*")
        if method == "DELETE":
            return Request("kambda:DeleteDeadLetter", "*")
        return Request("kambda:RedriveDeadLetters", "*")
    if parts[:3] == ["kambda", "v1", "code"]:
        return Request("kambda:PutCode" if method == "PUT" else "kambda:GetCode", "*")
    if parts == ["kambda", "v1", "info"]:
        return Request("kambda:GetInfo", "*")
    if len(parts) == 4 and parts[:3] == ["kambda", "v1", "functions"]:
        action = "lambda:GetFunction" if method == "GET" else "lambda:CreateFunction"
        return Request(action, function(parts[3]))
    return None
