"""IAM-style identity-based policies for the Lambda API: parsing, request resources, evaluation (pure).

Not wired into the gateway yet. The intended flow: a caller's policy documents are parsed once with `parse`
(a `PolicyError` lists every problem by path, `Statement[1].Effect: must be Allow or Deny`); for each request the
gateway picks the IAM action (`action_for_operation`), builds the resource (`request_resource`), calls `evaluate`,
and on a denial answers 403 `AccessDeniedException` with `access_denied_message` (Lambda's words).

What is mirrored from IAM, and where it is written down:

- Actions are `service:Name`, matched case-insensitively, with `*` and `?` wildcards ("The prefix and the action
  name are case insensitive", IAM User Guide, "IAM JSON policy elements: Action").
- Resources are ARNs matched case-sensitively with `*` (any run of characters, `:` and `/` included) and `?` (one
  character) over the whole ARN. IAM's "IAM JSON policy elements: Resource" describes `*` as expanding beyond the
  colons when it ends a segment; matching the whole ARN as one string is that rule for every pattern seen in
  practice, and differs only for a `*` inside a segment (`function:a*b` also matches `function:ax:yb`, the
  qualified ARN of `ax`).
- A function ARN is qualified exactly when the request names a version or alias, and the policy must say which it
  means: `function:hello` matches only the unqualified ARN, `function:hello:*` only qualified ones, `function:hello*`
  both (Lambda Developer Guide, "Resources and conditions for Lambda actions", "Function resource names": "Lambda
  makes authorization decisions by comparing the resource element in the IAM policy with both the FunctionName and
  Qualifier passed in API calls"). `hello:$LATEST` is a qualified ARN of its own.
- ListFunctions and GetAccountSettings have no resource type (Service Authorization Reference, "Actions,
  resources, and condition keys for AWS Lambda": their resource column is empty, so a policy must say `*`). They
  are checked against the resource `*`, which only a `*` pattern (or a NotResource that does not match it) covers,
  and `*` is what Lambda's error message shows ("... lambda:ListFunctions on resource: * because ...").
- The provisioned-concurrency actions act on a "function alias" or "function version", so their ARN is always
  qualified; every other kambda action acts on "function".
- Evaluation: an explicit Deny in any statement of any attached policy wins, else a matching Allow, else implicit
  deny (IAM User Guide, "Policy evaluation logic" / "The difference between explicit and implicit denies").

Refused rather than approximated, because each could grant more than the author meant: `Condition` (not
evaluated here), `Principal`/`NotPrincipal` (IAM refuses them in identity-based policies), policy variables such as
`${aws:username}` in a 2012-10-17 policy (IAM substitutes them; matching them literally would let a Deny deny
nothing), and any element this module does not know (element names are case-sensitive, so `effect` is a typo).

Size: at most `MAX_POLICY_CHARS` = 6,144 non-whitespace characters, IAM's quota for a managed policy ("IAM doesn't
count white space when calculating the size of a policy", IAM and AWS STS quotas). A text is measured before it is
parsed, so an oversized one costs one linear pass; a mapping is measured as compact JSON.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import jsontext, naming

VERSIONS = ("2012-10-17", "2008-10-17")
DEFAULT_VERSION = "2008-10-17"  # IAM's when Version is omitted (and then policy variables are plain text)
MAX_POLICY_CHARS = 6144

# The Lambda actions kambda authorises, spelled as IAM spells them (Service Authorization Reference, "Actions,
# resources, and condition keys for AWS Lambda"). Each is `lambda:` + a botocore operation name, except
# InvokeFunction (operations Invoke and InvokeWithResponseStream) and InvokeFunctionUrl (a permission-only action:
# no API operation, it authorises calls to a function URL).
LAMBDA_ACTIONS: tuple[str, ...] = (
    "lambda:InvokeFunction",
    "lambda:InvokeAsync",  # deprecated by AWS, still its own action
    "lambda:InvokeFunctionUrl",
    "lambda:CreateFunction",
    "lambda:GetFunction",
    "lambda:GetFunctionConfiguration",
    "lambda:ListFunctions",
    "lambda:UpdateFunctionCode",
    "lambda:UpdateFunctionConfiguration",
    "lambda:DeleteFunction",
    "lambda:PublishVersion",
    "lambda:ListVersionsByFunction",
    "lambda:CreateAlias",
    "lambda:GetAlias",
    "lambda:UpdateAlias",
    "lambda:DeleteAlias",
    "lambda:ListAliases",
    "lambda:PutFunctionConcurrency",
    "lambda:GetFunctionConcurrency",
    "lambda:DeleteFunctionConcurrency",
    "lambda:PutProvisionedConcurrencyConfig",
    "lambda:GetProvisionedConcurrencyConfig",
    "lambda:DeleteProvisionedConcurrencyConfig",
    "lambda:ListProvisionedConcurrencyConfigs",
    "lambda:GetAccountSettings",
    "lambda:TagResource",
    "lambda:UntagResource",
    "lambda:ListTags",
    "lambda:PutFunctionEventInvokeConfig",
    "lambda:GetFunctionEventInvokeConfig",
    "lambda:UpdateFunctionEventInvokeConfig",
    "lambda:DeleteFunctionEventInvokeConfig",
    "lambda:ListFunctionEventInvokeConfigs",
)
# No resource type in the reference: the resource is `*`.
ACCOUNT_ACTIONS = frozenset({"lambda:ListFunctions", "lambda:GetAccountSettings"})
# Resource type "function alias" or "function version": the request always names a qualifier.
QUALIFIED_ACTIONS = frozenset(
    {
        "lambda:PutProvisionedConcurrencyConfig",
        "lambda:GetProvisionedConcurrencyConfig",
        "lambda:DeleteProvisionedConcurrencyConfig",
    }
)
# API operations whose IAM action is not `lambda:` + their own name.
_OPERATION_ACTIONS = {"Invoke": "lambda:InvokeFunction", "InvokeWithResponseStream": "lambda:InvokeFunction"}

ACCESS_DENIED = "AccessDeniedException"  # Lambda's error type for a denial, with HTTP status 403
ACCESS_DENIED_STATUS = 403

_STATEMENT_KEYS = ("Sid", "Effect", "Action", "NotAction", "Resource", "NotResource")
_SERVICE_RE = re.compile(r"[a-z0-9-]+\Z", re.IGNORECASE)
_ACTION_NAME_RE = re.compile(r"[A-Za-z0-9*?]+\Z")
_REQUEST_ACTION_RE = re.compile(r"[a-z0-9-]+:[A-Za-z0-9]+\Z", re.IGNORECASE)
_SID_RE = re.compile(r"[A-Za-z0-9]*\Z")  # IAM's rule for the Sid of an identity-based policy
_FUNCTION_NAME_RE = re.compile(r"[a-zA-Z0-9-_]{1,64}\Z")
_QUALIFIER_RE = re.compile(r"(\$LATEST|[a-zA-Z0-9-_]{1,128})\Z")
_ACTIONS_BY_KEY = {a.lower(): a for a in LAMBDA_ACTIONS}

Rule = Callable[[str], str | None]  # checks one Action/Resource entry: a problem to report, or None


class PolicyError(ValueError):
    """A document that cannot become a `Policy`; `errors` names each path and the rule it breaks."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


class Effect(enum.Enum):
    ALLOW = "Allow"
    DENY = "Deny"


class Outcome(enum.Enum):
    ALLOWED = "Allowed"
    EXPLICIT_DENY = "ExplicitDeny"
    IMPLICIT_DENY = "ImplicitDeny"


@dataclass(frozen=True)
class Statement:
    """Exactly one of `actions`/`not_actions` and one of `resources`/`not_resources` is set (never empty)."""

    index: int  # position in the policy's Statement list (0 when Statement was a single object)
    effect: Effect
    sid: str | None = None
    actions: tuple[str, ...] | None = None
    not_actions: tuple[str, ...] | None = None
    resources: tuple[str, ...] | None = None
    not_resources: tuple[str, ...] | None = None

    def applies_to(self, action: str, resource: str) -> bool:
        """Whether this statement covers `action` (canonical) on `resource` (an ARN, or `*`)."""
        return self._covers_action(action) and self._covers_resource(resource)

    def _covers_action(self, action: str) -> bool:
        key = action.lower()
        if self.actions is not None:
            return any(wildcard_match(p.lower(), key) for p in self.actions)
        return not any(wildcard_match(p.lower(), key) for p in self.not_actions or ())

    def _covers_resource(self, resource: str) -> bool:
        if self.resources is not None:
            return any(wildcard_match(p, resource) for p in self.resources)
        return not any(wildcard_match(p, resource) for p in self.not_resources or ())


@dataclass(frozen=True)
class Policy:
    statements: tuple[Statement, ...]
    version: str = DEFAULT_VERSION
    id: str | None = None
    name: str | None = None  # the caller's name for it (a managed policy's name or ARN), for messages and logs


@dataclass(frozen=True)
class StatementRef:
    """Which statement of which attached policy decided."""

    policy_index: int
    statement_index: int
    policy_name: str | None = None
    sid: str | None = None

    def __str__(self) -> str:
        policy = repr(self.policy_name) if self.policy_name is not None else f"#{self.policy_index}"
        sid = f" (Sid {self.sid!r})" if self.sid else ""
        return f"policy {policy} Statement[{self.statement_index}]{sid}"


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    action: str
    resource: str
    decided_by: StatementRef | None = None  # the Deny that won or the Allow that allowed; None for implicit deny

    @property
    def allowed(self) -> bool:
        return self.outcome is Outcome.ALLOWED

    def __str__(self) -> str:
        by = f" by {self.decided_by}" if self.decided_by is not None else ""
        return f"{self.outcome.value}{by}: {self.action} on {self.resource}"


def wildcard_match(pattern: str, text: str) -> bool:
    """IAM's wildcards over the whole string: `*` any run of characters (`:` and `/` too), `?` exactly one.

    Case-sensitive; lower-case both sides to compare actions. A two-pointer scan that backtracks only to the last
    `*`, so it takes at most len(pattern) * len(text) steps: a regular expression built from a pattern full of `*`
    can backtrack exponentially, and policies come from users.
    """
    p = t = 0
    star, resume = -1, 0  # the last `*` seen, and where in `text` its current run ends
    while t < len(text):
        if p < len(pattern) and pattern[p] == "*":
            star, resume = p, t
            p += 1
        elif p < len(pattern) and (pattern[p] == "?" or pattern[p] == text[t]):
            p += 1
            t += 1
        elif star >= 0:
            resume += 1  # let the last `*` swallow one more character and retry from there
            p, t = star + 1, resume
        else:
            return False
    return pattern[p:].strip("*") == ""


def parse(document: object, *, name: str | None = None) -> Policy:
    """A policy document (JSON text, UTF-8 bytes or the decoded object) as a `Policy`, or `PolicyError` naming every
    problem; any other value is a PolicyError too."""
    doc = _load(document)
    errors: list[str] = []
    for key in doc:
        if key not in ("Version", "Id", "Statement"):
            errors.append(f"{_key(key)}: unknown element; a policy has Version, Id and Statement")
    version = _version(doc, errors)
    policy_id = doc.get("Id")
    if policy_id is not None and not isinstance(policy_id, str):
        errors.append("Id: must be a string")
        policy_id = None
    statements = _statements(doc, version, errors)
    if errors:
        raise PolicyError(errors)
    return Policy(statements=statements, version=version, id=policy_id, name=name)


def evaluate(policies: Iterable[Policy], *, action: str, resource: str) -> Decision:
    """IAM's decision for one request against a principal's identity-based policies.

    `action` is `service:Name` without wildcards: one of `LAMBDA_ACTIONS` (in any case; the decision spells it as
    listed) or another service's (kambda's own APIs may name theirs `kambda:...`). `resource` is an ARN or `*`, for
    Lambda actions what `request_resource` builds.
    """
    canonical = _request_action(action)
    allow: StatementRef | None = None
    for p, policy in enumerate(policies):
        for statement in policy.statements:
            if not statement.applies_to(canonical, resource):
                continue
            ref = StatementRef(p, statement.index, policy.name, statement.sid)
            if statement.effect is Effect.DENY:
                return Decision(Outcome.EXPLICIT_DENY, canonical, resource, ref)  # nothing can override it
            if allow is None:
                allow = ref  # an Allow decides only once no Deny anywhere matches
    if allow is not None:
        return Decision(Outcome.ALLOWED, canonical, resource, allow)
    return Decision(Outcome.IMPLICIT_DENY, canonical, resource)


def request_resource(
    action: str, *, region: str, account: str, function_name: str | None = None, qualifier: str | None = None
) -> str:
    """The resource IAM checks `action` against: `*`, or the function ARN, qualified exactly when `qualifier` is set.

    `function_name` is a bare name (resolve a partial or full ARN with `naming.parse_function_ref` first); alias
    actions (CreateAlias, GetAlias, ...) take the function's name, and the alias name is not a qualifier here.
    Raises ValueError for a request that cannot be authorised as given (wiring errors, not the caller's).
    """
    canonical = canonical_action(action)
    if canonical in ACCOUNT_ACTIONS:
        if function_name is not None or qualifier is not None:
            raise ValueError(f"{canonical} acts on no function; its resource is always *")
        return "*"
    if function_name is None or not _FUNCTION_NAME_RE.match(function_name):
        raise ValueError(f"{canonical} needs a bare function name, got {function_name!r}")
    if qualifier is not None and not _QUALIFIER_RE.match(qualifier):
        raise ValueError(f"invalid qualifier {qualifier!r}")
    if canonical in QUALIFIED_ACTIONS and qualifier is None:
        raise ValueError(f"{canonical} acts on a version or alias: a qualifier is required")
    for label, value in (("region", region), ("account", account)):
        # A `:` would shift the ARN's segments, and a wildcard is a pattern's business, not a request's.
        if not value or any(c in value for c in ":*?/"):
            raise ValueError(f"invalid {label} {value!r}")
    return naming.function_arn(region, account, function_name, qualifier)


def canonical_action(action: str) -> str:
    """One of `LAMBDA_ACTIONS`, as spelled there, for `action` in any case; ValueError for anything else."""
    try:
        return _ACTIONS_BY_KEY[action.lower()]
    except KeyError:
        raise ValueError(f"{action!r} is not an action kambda authorises") from None


def _request_action(action: str) -> str:
    if action.lower() in _ACTIONS_BY_KEY:
        return _ACTIONS_BY_KEY[action.lower()]
    if not _REQUEST_ACTION_RE.match(action):
        # A request names one action; a wildcard here would be matched as a pattern by nothing and by everything.
        raise ValueError(f"{action!r} is not an action (service:Name, without wildcards)")
    return action


def action_for_operation(operation: str) -> str:
    """The IAM action a Lambda API operation (botocore's name, e.g. Invoke) needs."""
    return canonical_action(_OPERATION_ACTIONS.get(operation, f"lambda:{operation}"))


def unmatched_actions(policy: Policy) -> tuple[str, ...]:
    """The policy's `lambda:` action patterns that match no action kambda authorises (typos, unsupported actions).

    IAM accepts such a policy, and so does `parse`; but a Deny for `lambda:InvokeFuntion` denies nothing,
    which an operator wants to hear about.
    """
    found: list[str] = []
    for statement in policy.statements:
        for pattern in (statement.actions or ()) + (statement.not_actions or ()):
            key = pattern.lower()
            if key.startswith("lambda:") and not any(wildcard_match(key, a) for a in _ACTIONS_BY_KEY):
                found.append(pattern)
    return tuple(dict.fromkeys(found))


def access_denied_message(principal: str, decision: Decision) -> str:
    """The Message of Lambda's 403 AccessDeniedException for a denial, in AWS's words.

    `principal` is the caller's ARN (e.g. arn:aws:iam::123456789012:user/alice). The formats are IAM's ("User:
    user is not authorized to perform: action on resource: resource because context", IAM User Guide,
    "Troubleshoot access denied error messages"), as Lambda returns them, e.g. "... lambda:GetFunction on resource:
    arn:aws:lambda:us-east-1:...:function:feast-... because no identity-based policy allows the lambda:GetFunction
    action" (feast-dev/feast#2800) and "... with an explicit deny in an identity-based policy"
    (nficano/python-lambda#715).
    """
    head = f"User: {principal} is not authorized to perform: {decision.action} on resource: {decision.resource}"
    if decision.outcome is Outcome.EXPLICIT_DENY:
        return f"{head} with an explicit deny in an identity-based policy"
    if decision.outcome is Outcome.IMPLICIT_DENY:
        return f"{head} because no identity-based policy allows the {decision.action} action"
    raise ValueError("an allowed request has no access-denied message")


def _load(document: object) -> Mapping[str, Any]:
    """The document as a mapping, within the size bound; every failure is a PolicyError."""
    if isinstance(document, str | bytes | bytearray):
        try:
            text = jsontext.decode(document)  # strict UTF-8, as for every JSON a client sends
            _check_size(text)  # before parsing: an oversized text costs one pass, not a parse
            value = jsontext.loads(text)
        except jsontext.InvalidJSON as exc:
            raise PolicyError([f"document: not valid JSON ({exc})"]) from None
        if not isinstance(value, Mapping):
            raise PolicyError(["document: must be a JSON object"])
        return value
    if not isinstance(document, Mapping):
        raise PolicyError(["document: must be a JSON object"])
    try:
        compact = json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        raise PolicyError(["document: must hold only JSON values (objects, arrays, strings, numbers)"]) from None
    _check_size(compact)
    return document


def _check_size(text: str) -> None:
    size = sum(1 for c in text if not c.isspace())
    if size > MAX_POLICY_CHARS:
        raise PolicyError([f"document: {size} characters (whitespace not counted); at most {MAX_POLICY_CHARS}"])


def _version(doc: Mapping[str, Any], errors: list[str]) -> str:
    version = doc.get("Version", DEFAULT_VERSION)
    if not isinstance(version, str):
        errors.append("Version: must be a string")
        return DEFAULT_VERSION
    if version not in VERSIONS:
        errors.append(f"Version: must be {' or '.join(map(repr, VERSIONS))}")
        return DEFAULT_VERSION
    return version


def _statements(doc: Mapping[str, Any], version: str, errors: list[str]) -> tuple[Statement, ...]:
    raw = doc.get("Statement")
    if raw is None:
        errors.append("Statement: is required")
        return ()
    if isinstance(raw, Mapping):
        items, paths = [raw], ["Statement"]
    elif isinstance(raw, list):
        if not raw:
            errors.append("Statement: must hold at least one statement")
        items, paths = raw, [f"Statement[{i}]" for i in range(len(raw))]
    else:
        errors.append("Statement: must be an object or a list of objects")
        return ()
    statements: list[Statement] = []
    sids: dict[str, str] = {}
    for index, (item, path) in enumerate(zip(items, paths, strict=True)):
        if not isinstance(item, Mapping):
            errors.append(f"{path}: must be an object")
            continue
        statement = _statement(item, index, path, version, errors)
        if statement is None:
            continue
        if statement.sid:
            if statement.sid in sids:
                errors.append(f"{path}.Sid: {statement.sid!r} is already the Sid of {sids[statement.sid]}")
            sids.setdefault(statement.sid, path)
        statements.append(statement)
    return tuple(statements)


def _statement(item: Mapping[str, Any], index: int, path: str, version: str, errors: list[str]) -> Statement | None:
    before = len(errors)
    for key in item:
        if key == "Condition":
            errors.append(
                f"{path}.Condition: Condition is not supported (kambda does not evaluate conditions, and ignoring "
                "one could grant more than the statement means)"
            )
        elif key in ("Principal", "NotPrincipal"):
            errors.append(f"{path}.{key}: not allowed in an identity-based policy (the principal is its holder)")
        elif key not in _STATEMENT_KEYS:
            errors.append(f"{path}.{_key(key)}: unknown element; a statement has {', '.join(_STATEMENT_KEYS)}")
    sid = _sid(item, path, errors)
    effect = _effect(item, path, errors)
    actions = _pair(item, "Action", "NotAction", path, errors, _action_rule)
    resources = _pair(item, "Resource", "NotResource", path, errors, lambda r: _resource_rule(r, version))
    if len(errors) > before or effect is None or actions is None or resources is None:
        return None
    (action_key, action_values), (resource_key, resource_values) = actions, resources
    return Statement(
        index=index,
        effect=effect,
        sid=sid,
        actions=action_values if action_key == "Action" else None,
        not_actions=action_values if action_key == "NotAction" else None,
        resources=resource_values if resource_key == "Resource" else None,
        not_resources=resource_values if resource_key == "NotResource" else None,
    )


def _sid(item: Mapping[str, Any], path: str, errors: list[str]) -> str | None:
    sid = item.get("Sid")
    if sid is None:
        return None
    if not isinstance(sid, str):
        errors.append(f"{path}.Sid: must be a string")
        return None
    if not _SID_RE.match(sid):
        errors.append(f"{path}.Sid: may hold only letters and digits")
        return None
    return sid


def _effect(item: Mapping[str, Any], path: str, errors: list[str]) -> Effect | None:
    effect = item.get("Effect")
    if effect is None:
        errors.append(f"{path}.Effect: is required")
        return None
    if effect not in ("Allow", "Deny"):  # exactly as IAM spells them: `allow` is refused there too
        errors.append(f"{path}.Effect: must be Allow or Deny")
        return None
    return Effect(effect)


def _pair(
    item: Mapping[str, Any],
    positive: str,
    negative: str,
    path: str,
    errors: list[str],
    rule: Rule,
) -> tuple[str, tuple[str, ...]] | None:
    """The one element of `positive`/`negative` the statement has, as (its name, its values)."""
    present = [k for k in (positive, negative) if k in item]
    if len(present) != 1:
        both = ", not both" if present else ""
        errors.append(f"{path}: must have {positive} or {negative}{both}")
        return None
    key = present[0]
    values = _strings(item[key], f"{path}.{key}", errors, rule)
    return None if values is None else (key, values)


def _strings(value: object, path: str, errors: list[str], rule: Rule) -> tuple[str, ...] | None:
    """A string or a non-empty list of strings, each checked by `rule` (which returns a problem or None)."""
    if isinstance(value, str):
        entries, paths = [value], [path]
    elif isinstance(value, list) and value:
        entries, paths = value, [f"{path}[{i}]" for i in range(len(value))]
    else:
        errors.append(f"{path}: must be a string or a non-empty list of strings")
        return None
    before = len(errors)
    for entry, entry_path in zip(entries, paths, strict=True):
        if not isinstance(entry, str):
            errors.append(f"{entry_path}: must be a string")
            continue
        problem = rule(entry)
        if problem is not None:
            errors.append(f"{entry_path}: {problem}")
    return None if len(errors) > before else tuple(entries)


def _action_rule(action: str) -> str | None:
    if action == "*":
        return None
    service, colon, name = action.partition(":")
    if not colon:
        return 'must be "*" or service:action, e.g. lambda:InvokeFunction'
    if not _SERVICE_RE.match(service):
        return "the service prefix must be spelled out (letters, digits and '-', no wildcards)"
    if not _ACTION_NAME_RE.match(name):
        return "the action name may hold only letters, digits, * and ?"
    return None


def _resource_rule(resource: str, version: str) -> str | None:
    if resource == "*":
        return None
    parts = resource.split(":", 5)
    if len(parts) < 6 or parts[0] != "arn":
        return 'must be "*" or an ARN (arn:partition:service:region:account:resource)'
    if not _SERVICE_RE.match(parts[2]):
        return "the ARN's service must be spelled out, without wildcards"
    if version == "2012-10-17" and "${" in resource:
        # IAM would substitute the variable; matching it as text would make a Deny deny nothing.
        return "policy variables such as ${aws:username} are not supported"
    return None


def _key(key: object) -> str:
    return key if isinstance(key, str) else repr(key)
