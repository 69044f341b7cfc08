"""kambda.policies: IAM's policy grammar, Lambda's resource ARNs, IAM's evaluation order, Lambda's 403 message."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import botocore.session
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kambda import policies
from kambda.policies import Effect, Outcome, Policy, PolicyError, evaluate, request_resource

REGION, ACCOUNT = "us-east-1", "123456789012"
ALICE = "arn:aws:iam::123456789012:user/alice"
FN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function"  # the prefix of every function ARN below


def policy(*statements: dict[str, Any], version: str = "2012-10-17", name: str | None = None) -> Policy:
    return policies.parse({"Version": version, "Statement": list(statements)}, name=name)


def allow(action: str | list[str], resource: str | list[str], **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def deny(action: str | list[str], resource: str | list[str], **extra: Any) -> dict[str, Any]:
    return {"Effect": "Deny", "Action": action, "Resource": resource, **extra}


def decide(
    attached: list[Policy], action: str, name: str | None = None, qualifier: str | None = None
) -> policies.Decision:
    resource = request_resource(action, region=REGION, account=ACCOUNT, function_name=name, qualifier=qualifier)
    return evaluate(attached, action=action, resource=resource)


def errors_of(document: Any) -> list[str]:
    with pytest.raises(PolicyError) as info:
        policies.parse(document)
    return info.value.errors


# --- The key: InvokeFunction on hello* and nothing else -------------------------------------------------

INVOKE_HELLO = policy(allow("lambda:InvokeFunction", "arn:aws:lambda:*:*:function:hello*"), name="invoke-hello")


@pytest.mark.parametrize(
    ("name", "qualifier", "outcome"),
    [
        pytest.param("hello", None, Outcome.ALLOWED, id="hello"),
        pytest.param("hello-2", None, Outcome.ALLOWED, id="hello-2"),
        pytest.param("hello", "prod", Outcome.ALLOWED, id="hello:prod (the trailing * spans the colon)"),
        pytest.param("hello", "$LATEST", Outcome.ALLOWED, id="hello:$LATEST"),
        pytest.param("other", None, Outcome.IMPLICIT_DENY, id="other"),
        pytest.param("hell", None, Outcome.IMPLICIT_DENY, id="a prefix of hello"),
        pytest.param("my-hello", None, Outcome.IMPLICIT_DENY, id="hello inside another name"),
    ],
)
def test_invoke_only_hello_star(name: str, qualifier: str | None, outcome: Outcome) -> None:
    assert decide([INVOKE_HELLO], "lambda:InvokeFunction", name, qualifier).outcome is outcome


@pytest.mark.parametrize("action", ["lambda:CreateFunction", "lambda:DeleteFunction", "lambda:InvokeAsync"])
@pytest.mark.parametrize("name", ["hello", "other"])
def test_invoke_only_key_may_not_manage_anything(action: str, name: str) -> None:
    decision = decide([INVOKE_HELLO], action, name)
    assert decision.outcome is Outcome.IMPLICIT_DENY and decision.decided_by is None


def test_implicit_deny_message_is_lambdas() -> None:
    decision = decide([INVOKE_HELLO], "lambda:CreateFunction", "my-fn")
    assert policies.access_denied_message(ALICE, decision) == (
        "User: arn:aws:iam::123456789012:user/alice is not authorized to perform: lambda:CreateFunction on resource: "
        "arn:aws:lambda:us-east-1:123456789012:function:my-fn because no identity-based policy allows the "
        "lambda:CreateFunction action"
    )


def test_allow_names_the_statement_that_allowed() -> None:
    decision = decide([INVOKE_HELLO], "lambda:InvokeFunction", "hello")
    assert decision.allowed
    assert decision.decided_by == policies.StatementRef(0, 0, "invoke-hello", None)
    assert str(decision) == f"Allowed by policy 'invoke-hello' Statement[0]: lambda:InvokeFunction on {FN}:hello"
    with pytest.raises(ValueError, match="allowed"):
        policies.access_denied_message(ALICE, decision)


# --- Explicit deny wins ------------------------------------------------------------------------------------------

ADMIN = policy(allow("*", "*"), name="admin")
NO_HELLO_2 = policy(deny("lambda:*", f"{FN}:hello-2", Sid="NoHello2"), name="no-hello-2")


@pytest.mark.parametrize("attached", [[ADMIN, NO_HELLO_2], [NO_HELLO_2, ADMIN]], ids=["allow first", "deny first"])
def test_explicit_deny_overrides_allow_star_in_any_order(attached: list[Policy]) -> None:
    decision = decide(attached, "lambda:InvokeFunction", "hello-2")
    assert decision.outcome is Outcome.EXPLICIT_DENY
    assert decision.decided_by is not None and decision.decided_by.policy_name == "no-hello-2"
    assert decision.decided_by.sid == "NoHello2"
    assert policies.access_denied_message(ALICE, decision) == (
        f"User: {ALICE} is not authorized to perform: lambda:InvokeFunction on resource: {FN}:hello-2 "
        "with an explicit deny in an identity-based policy"
    )
    assert decide(attached, "lambda:InvokeFunction", "hello").allowed  # the rest of `*` still stands


def test_explicit_deny_in_the_same_policy_as_the_allow() -> None:
    both = policy(allow("*", "*"), deny("lambda:DeleteFunction", "*", Sid="KeepEverything"))
    decision = decide([both], "lambda:DeleteFunction", "hello")
    assert decision.outcome is Outcome.EXPLICIT_DENY
    assert str(decision.decided_by) == "policy #0 Statement[1] (Sid 'KeepEverything')"


def test_deny_on_the_unqualified_arn_does_not_cover_a_qualified_one() -> None:
    # IAM compares the policy's ARN with FunctionName and Qualifier together: denying `function:hello-2` leaves
    # `function:hello-2:prod` to the Allow. A Deny meant for every version says `function:hello-2*`.
    assert decide([ADMIN, NO_HELLO_2], "lambda:InvokeFunction", "hello-2", "prod").allowed
    all_of_it = policy(deny("lambda:*", f"{FN}:hello-2*"))
    assert decide([ADMIN, all_of_it], "lambda:InvokeFunction", "hello-2", "prod").outcome is Outcome.EXPLICIT_DENY


# --- Qualified and unqualified ARNs, as the Lambda Developer Guide spells them out --------------------------------


@pytest.mark.parametrize(
    ("pattern", "allowed"),
    [
        (f"{FN}:hello", {None}),
        (f"{FN}:hello:1", {"1"}),
        (f"{FN}:hello:*", {"1", "prod", "$LATEST"}),
        (f"{FN}:hello*", {None, "1", "prod", "$LATEST"}),
    ],
    ids=["unqualified only", "one version", "any qualifier, not unqualified", "both"],
)
def test_qualified_and_unqualified_arns(pattern: str, allowed: set[str | None]) -> None:
    attached = [policy(allow("lambda:InvokeFunction", pattern))]
    for qualifier in (None, "1", "prod", "$LATEST"):
        assert decide(attached, "lambda:InvokeFunction", "hello", qualifier).allowed == (qualifier in allowed)


def test_request_resources() -> None:
    assert request_resource("lambda:InvokeFunction", region=REGION, account=ACCOUNT, function_name="f") == f"{FN}:f"
    qualified = request_resource("lambda:GetFunction", region=REGION, account=ACCOUNT, function_name="f", qualifier="2")
    assert qualified == f"{FN}:f:2"
    # The alias actions act on the function: the alias's name is a parameter, not a qualifier.
    assert request_resource("lambda:CreateAlias", region=REGION, account=ACCOUNT, function_name="f") == f"{FN}:f"
    for action in ("lambda:ListFunctions", "LAMBDA:getaccountsettings"):
        assert request_resource(action, region=REGION, account=ACCOUNT) == "*"


@pytest.mark.parametrize(
    ("action", "kwargs", "message"),
    [
        ("lambda:ListFunctions", {"function_name": "f"}, "acts on no function"),
        ("lambda:InvokeFunction", {}, "needs a bare function name"),
        ("lambda:InvokeFunction", {"function_name": "f:prod"}, "needs a bare function name"),
        ("lambda:InvokeFunction", {"function_name": f"{FN}:f"}, "needs a bare function name"),
        ("lambda:InvokeFunction", {"function_name": "f", "qualifier": "a:b"}, "invalid qualifier"),
        ("lambda:PutProvisionedConcurrencyConfig", {"function_name": "f"}, "a qualifier is required"),
        ("lambda:InvokeFunction", {"function_name": "f", "region": "us-east-1:x"}, "invalid region"),
        ("lambda:InvokeFunction", {"function_name": "f", "account": "*"}, "invalid account"),
        ("lambda:AddPermission", {"function_name": "f"}, "not an action kambda authorises"),
    ],
)
def test_request_resource_refuses_what_cannot_be_authorised(action: str, kwargs: dict[str, Any], message: str) -> None:
    args = {"region": REGION, "account": ACCOUNT, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        request_resource(action, **args)


def test_account_actions_need_resource_star() -> None:
    # ListFunctions has no resource type: a statement scoped to functions does not grant it, `*` does.
    scoped = policy(allow("lambda:List*", "arn:aws:lambda:*:*:function:*"))
    assert decide([scoped], "lambda:ListFunctions").outcome is Outcome.IMPLICIT_DENY
    assert decide([scoped], "lambda:ListVersionsByFunction", "hello").allowed
    assert decide([policy(allow("lambda:ListFunctions", "*"))], "lambda:ListFunctions").allowed
    message = policies.access_denied_message(ALICE, decide([scoped], "lambda:ListFunctions"))
    assert "perform: lambda:ListFunctions on resource: * because no identity-based policy" in message


# --- NotAction and NotResource --------------------------------------------------------------------------------------


def test_allow_not_action_grants_everything_else() -> None:
    attached = [policy({"Effect": "Allow", "NotAction": "lambda:DeleteFunction", "Resource": "*"})]
    assert decide(attached, "lambda:InvokeFunction", "hello").allowed
    assert decide(attached, "lambda:ListFunctions").allowed
    assert decide(attached, "lambda:DeleteFunction", "hello").outcome is Outcome.IMPLICIT_DENY


def test_deny_not_action_denies_everything_else() -> None:
    read_only = policy({"Effect": "Deny", "NotAction": ["lambda:Get*", "lambda:List*"], "Resource": "*"})
    assert decide([ADMIN, read_only], "lambda:GetFunction", "hello").allowed
    assert decide([ADMIN, read_only], "lambda:ListFunctions").allowed
    assert decide([ADMIN, read_only], "lambda:InvokeFunction", "hello").outcome is Outcome.EXPLICIT_DENY


def test_allow_not_resource_grants_everything_else() -> None:
    attached = [policy({"Effect": "Allow", "Action": "lambda:*", "NotResource": f"{FN}:secret*"})]
    assert decide(attached, "lambda:InvokeFunction", "hello").allowed
    assert decide(attached, "lambda:InvokeFunction", "secret").outcome is Outcome.IMPLICIT_DENY
    assert decide(attached, "lambda:InvokeFunction", "secret", "prod").outcome is Outcome.IMPLICIT_DENY
    assert decide(attached, "lambda:ListFunctions").allowed  # `*` is not a secret* function


def test_deny_not_resource_fences_in_one_function() -> None:
    only_hello = policy({"Effect": "Deny", "Action": "*", "NotResource": [f"{FN}:hello", f"{FN}:hello:*"]})
    assert decide([ADMIN, only_hello], "lambda:UpdateFunctionCode", "hello").allowed
    assert decide([ADMIN, only_hello], "lambda:GetFunction", "hello", "3").allowed
    assert decide([ADMIN, only_hello], "lambda:GetFunction", "hello-2").outcome is Outcome.EXPLICIT_DENY
    assert decide([ADMIN, only_hello], "lambda:ListFunctions").outcome is Outcome.EXPLICIT_DENY


# --- Wildcards and case ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [
        ("*", "", True),
        ("*", "arn:aws:lambda:r:a:function:f:q", True),
        ("", "", True),
        ("", "a", False),
        ("a*", "a/b:c", True),  # `*` spans `/` and `:`
        ("a*c", "a:b/c", True),
        ("a*c", "a:b/cd", False),
        ("h?llo", "hello", True),
        ("h?llo", "hllo", False),
        ("h?llo", "heello", False),
        ("?", "", False),
        ("a**b", "ab", True),
        ("*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", False),
        ("Hello", "hello", False),  # resources are case-sensitive
    ],
)
def test_wildcard_match(pattern: str, text: str, matches: bool) -> None:
    assert policies.wildcard_match(pattern, text) is matches


def test_question_mark_is_exactly_one_character() -> None:
    attached = [policy(allow("lambda:InvokeFunction", f"{FN}:h?llo"))]
    assert decide(attached, "lambda:InvokeFunction", "hallo").allowed
    assert decide(attached, "lambda:InvokeFunction", "hllo").outcome is Outcome.IMPLICIT_DENY
    assert decide(attached, "lambda:InvokeFunction", "hello", "1").outcome is Outcome.IMPLICIT_DENY


def test_star_spans_colons_across_segments() -> None:
    # One `*` standing for region:account (and a trailing one for any name and qualifier).
    attached = [policy(allow("lambda:InvokeFunction", "arn:aws:lambda:*:function:*"))]
    assert decide(attached, "lambda:InvokeFunction", "hello", "prod").allowed
    other_service = [policy(allow("lambda:InvokeFunction", "arn:aws:s3:::*"))]
    assert decide(other_service, "lambda:InvokeFunction", "hello").outcome is Outcome.IMPLICIT_DENY


@pytest.mark.parametrize("action", ["LAMBDA:invokefunction", "Lambda:Invoke*", "lambda:INVOKE?UNCTION", "*"])
def test_actions_match_case_insensitively(action: str) -> None:
    attached = [policy(allow(action, "*"))]
    assert decide(attached, "lambda:InvokeFunction", "hello").allowed
    decision = evaluate(attached, action="LAMBDA:INVOKEFUNCTION", resource=f"{FN}:hello")
    assert decision.allowed and decision.action == "lambda:InvokeFunction"  # canonical in messages and logs


def test_invoke_star_does_not_reach_other_actions() -> None:
    attached = [policy(allow("lambda:Invoke*", "*"))]
    allowed = {a for a in policies.LAMBDA_ACTIONS if decide_any(attached, a).allowed}
    assert allowed == {"lambda:InvokeFunction", "lambda:InvokeAsync", "lambda:InvokeFunctionUrl"}


def decide_any(attached: list[Policy], action: str) -> policies.Decision:
    if action in policies.ACCOUNT_ACTIONS:
        return decide(attached, action)
    return decide(attached, action, "hello", "1" if action in policies.QUALIFIED_ACTIONS else None)


def test_resources_match_case_sensitively() -> None:
    attached = [policy(allow("lambda:InvokeFunction", "arn:aws:lambda:*:*:function:HELLO*"))]
    assert decide(attached, "lambda:InvokeFunction", "HELLO").allowed
    assert decide(attached, "lambda:InvokeFunction", "hello").outcome is Outcome.IMPLICIT_DENY


def test_other_actions_are_evaluated_as_iam_would() -> None:
    # kambda's own APIs may have actions of their own, and an AWS action kambda does not list is still an action.
    own = [policy(allow("kambda:Get*", "*"))]
    assert evaluate(own, action="kambda:GetInvocation", resource="*").allowed
    assert evaluate(own, action="kambda:PutCode", resource="*").outcome is Outcome.IMPLICIT_DENY
    lambda_only = [policy(allow("lambda:*", "*"))]
    assert evaluate(lambda_only, action="kambda:GetInvocation", resource="*").outcome is Outcome.IMPLICIT_DENY
    decision = evaluate([ADMIN], action="lambda:AddPermission", resource=f"{FN}:hello")
    assert decision.allowed and decision.action == "lambda:AddPermission"


@pytest.mark.parametrize("action", ["lambda:Invoke*", "*", "InvokeFunction", "lambda:", "lamb da:X", ""])
def test_a_request_names_one_action(action: str) -> None:
    with pytest.raises(ValueError, match="is not an action"):
        evaluate([ADMIN], action=action, resource="*")


# --- Statement as an object or a list, and what a parsed policy holds ------------------------------------------------


def test_statement_as_object_or_list_decides_alike() -> None:
    statement = allow(["lambda:GetFunction", "lambda:InvokeFunction"], [f"{FN}:a", f"{FN}:b"], Sid="Read")
    single = policies.parse({"Version": "2012-10-17", "Statement": statement})
    listed = policies.parse({"Version": "2012-10-17", "Statement": [statement]})
    assert single.statements == listed.statements
    assert single.statements[0] == policies.Statement(
        index=0,
        effect=Effect.ALLOW,
        sid="Read",
        actions=("lambda:GetFunction", "lambda:InvokeFunction"),
        resources=(f"{FN}:a", f"{FN}:b"),
    )
    for name, outcome in (("a", Outcome.ALLOWED), ("b", Outcome.ALLOWED), ("c", Outcome.IMPLICIT_DENY)):
        assert decide([single], "lambda:GetFunction", name).outcome is outcome
        assert decide([listed], "lambda:GetFunction", name).outcome is outcome


def test_text_and_bytes_parse_like_the_mapping() -> None:
    document = {"Version": "2008-10-17", "Id": "keys", "Statement": [allow("lambda:*", "*")]}
    for form in (json.dumps(document), json.dumps(document, indent=4).encode(), document):
        parsed = policies.parse(form, name="p")
        assert (parsed.version, parsed.id, parsed.name, len(parsed.statements)) == ("2008-10-17", "keys", "p", 1)


def test_version_may_be_omitted_as_in_iam() -> None:
    parsed = policies.parse({"Statement": allow("lambda:*", "*")})
    assert parsed.version == "2008-10-17"


def test_policy_variables_are_text_in_a_2008_policy() -> None:
    # Only 2012-10-17 has variables (refused below); before it, `${...}` is part of the ARN as written.
    parsed = policy(allow("lambda:*", f"{FN}:${{aws:username}}-*"), version="2008-10-17")
    assert parsed.statements[0].resources == (f"{FN}:${{aws:username}}-*",)


# --- Documents refused, with the path of each problem ---------------------------------------------------------------


def stmt(**fields: Any) -> dict[str, Any]:
    """A valid statement with `fields` changed (a None value removes the field)."""
    base: dict[str, Any] = {"Effect": "Allow", "Action": "lambda:InvokeFunction", "Resource": "*"}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def doc(*statements: Any, **top: Any) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements), **top}


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (doc(stmt(Effect=None)), "Statement[0].Effect: is required"),
        (doc(stmt(), stmt(Effect="Permit")), "Statement[1].Effect: must be Allow or Deny"),
        (doc(stmt(Effect="allow")), "Statement[0].Effect: must be Allow or Deny"),
        ({"Statement": stmt(Effect=None)}, "Statement.Effect: is required"),
        (doc(stmt(NotAction="lambda:GetFunction")), "Statement[0]: must have Action or NotAction, not both"),
        (doc(stmt(Action=None)), "Statement[0]: must have Action or NotAction"),
        (doc(stmt(NotResource=f"{FN}:x")), "Statement[0]: must have Resource or NotResource, not both"),
        (doc(stmt(Resource=None)), "Statement[0]: must have Resource or NotResource"),
        (
            doc(stmt(Condition={"StringEquals": {"aws:PrincipalTag/team": "a"}})),
            "Statement[0].Condition: Condition is not supported",
        ),
        (doc(stmt(Principal={"AWS": "*"})), "Statement[0].Principal: not allowed in an identity-based policy"),
        (doc(stmt(), Version="2012-10-18"), "Version: must be '2012-10-17' or '2008-10-17'"),
        (doc(stmt(), Version=2012), "Version: must be a string"),
        (doc(stmt(Action=["lambda:GetFunction", 3])), "Statement[0].Action[1]: must be a string"),
        (doc(stmt(Resource=[None])), "Statement[0].Resource[0]: must be a string"),
        (doc(stmt(Resource=5)), "Statement[0].Resource: must be a string or a non-empty list of strings"),
        (doc(stmt(Action=[])), "Statement[0].Action: must be a string or a non-empty list of strings"),
        (doc(stmt(Action={"lambda": "*"})), "Statement[0].Action: must be a string or a non-empty list of strings"),
        (doc(stmt(Action="InvokeFunction")), 'Statement[0].Action: must be "*" or service:action'),
        (doc(stmt(Action="")), 'Statement[0].Action: must be "*" or service:action'),
        (doc(stmt(Action="lamb*:InvokeFunction")), "Statement[0].Action: the service prefix must be spelled out"),
        (doc(stmt(Action="lambda:Invoke Function")), "Statement[0].Action: the action name may hold only"),
        (doc(stmt(Action="lambda:")), "Statement[0].Action: the action name may hold only"),
        (doc(stmt(Resource="function:hello")), 'Statement[0].Resource: must be "*" or an ARN'),
        (doc(stmt(Resource="arn:aws:lambda:*")), 'Statement[0].Resource: must be "*" or an ARN'),
        (doc(stmt(Resource="ARN:aws:lambda:r:a:function:f")), 'Statement[0].Resource: must be "*" or an ARN'),
        (doc(stmt(Resource="arn:aws:lamb*:r:a:function:f")), "Statement[0].Resource: the ARN's service must be"),
        (doc(stmt(Resource=f"{FN}:${{aws:username}}")), "Statement[0].Resource: policy variables such as"),
        (doc(stmt(effect="Allow")), "Statement[0].effect: unknown element"),
        ({"Version": "2012-10-17", "Statements": [stmt()]}, "Statements: unknown element"),
        ({"Version": "2012-10-17"}, "Statement: is required"),
        ({"Version": "2012-10-17", "Statement": "x"}, "Statement: must be an object or a list of objects"),
        (doc(), "Statement: must hold at least one statement"),
        (doc(stmt(), 1), "Statement[1]: must be an object"),
        (doc(stmt(Sid="A"), stmt(Sid="A")), "Statement[1].Sid: 'A' is already the Sid of Statement[0]"),
        (doc(stmt(Sid="allow-invoke")), "Statement[0].Sid: may hold only letters and digits"),
        (doc(stmt(Sid=7)), "Statement[0].Sid: must be a string"),
        (doc(stmt(), Id=7), "Id: must be a string"),
        ("{not json", "document: not valid JSON"),
        ('{"Version": NaN}', "document: not valid JSON"),
        (b"\xff\xfe{}", "document: not valid JSON"),
        ("[]", "document: must be a JSON object"),
        ({"Version": "2012-10-17", "Statement": [stmt(Action=float("nan"))]}, "document: must hold only JSON"),
        ({"Version": "2012-10-17", "Statement": stmt(), ("a", "b"): 1}, "document: must hold only JSON"),
    ],
)
def test_bad_documents_are_refused_with_their_path(document: Any, expected: str) -> None:
    errors = errors_of(document)
    assert any(e.startswith(expected) for e in errors), errors


def test_every_problem_is_reported_at_once() -> None:
    errors = errors_of(doc(stmt(Effect="Maybe", Action=None), stmt(Condition={}), Version="1"))
    assert errors == [
        "Version: must be '2012-10-17' or '2008-10-17'",
        "Statement[0].Effect: must be Allow or Deny",
        "Statement[0]: must have Action or NotAction",
        "Statement[1].Condition: Condition is not supported (kambda does not evaluate conditions, and ignoring one "
        "could grant more than the statement means)",
    ]
    assert str(PolicyError(errors)) == "; ".join(errors)


def sized(chars: int) -> dict[str, Any]:
    """A valid policy of exactly `chars` characters as compact JSON (its Sid pads it)."""
    base = {"Version": "2012-10-17", "Statement": [allow("lambda:*", "*", Sid="")]}
    padding = chars - len(json.dumps(base, separators=(",", ":")))
    base["Statement"][0]["Sid"] = "A" * padding
    return base


def test_size_bound_is_iams_6144_non_whitespace_characters() -> None:
    at_limit, over = sized(policies.MAX_POLICY_CHARS), sized(policies.MAX_POLICY_CHARS + 1)
    assert policies.parse(at_limit).statements
    assert policies.parse(json.dumps(at_limit, indent=8)).statements  # IAM does not count whitespace
    for form in (over, json.dumps(over), json.dumps(over).encode()):
        assert errors_of(form) == ["document: 6145 characters (whitespace not counted); at most 6144"]


def test_a_huge_text_is_refused_before_it_is_parsed() -> None:
    # Unparseable and 1 MB: refused for its size, so the parser never sees it.
    assert errors_of("[" * 1_000_000)[0].startswith("document: 1000000 characters")


# --- The action list ------------------------------------------------------------------------------------------------


def test_actions_are_lambda_operations_as_botocore_names_them() -> None:
    operations = set(botocore.session.get_session().get_service_model("lambda").operation_names)
    assert len(policies.LAMBDA_ACTIONS) == len(set(policies.LAMBDA_ACTIONS)) == 33
    # InvokeFunction authorises Invoke (and InvokeWithResponseStream); InvokeFunctionUrl is permission-only.
    special = {"lambda:InvokeFunction", "lambda:InvokeFunctionUrl"}
    assert {a.removeprefix("lambda:") for a in set(policies.LAMBDA_ACTIONS) - special} <= operations
    assert {"Invoke", "InvokeWithResponseStream"} <= operations
    assert "InvokeFunction" not in operations and "InvokeFunctionUrl" not in operations
    assert set(policies.LAMBDA_ACTIONS) >= policies.ACCOUNT_ACTIONS | policies.QUALIFIED_ACTIONS


@pytest.mark.parametrize(
    ("operation", "action"),
    [
        ("Invoke", "lambda:InvokeFunction"),
        ("InvokeWithResponseStream", "lambda:InvokeFunction"),
        ("InvokeAsync", "lambda:InvokeAsync"),
        ("ListVersionsByFunction", "lambda:ListVersionsByFunction"),
    ],
)
def test_action_for_operation(operation: str, action: str) -> None:
    assert policies.action_for_operation(operation) == action


def test_action_for_an_operation_kambda_does_not_authorise() -> None:
    with pytest.raises(ValueError, match="AddPermission"):
        policies.action_for_operation("AddPermission")


def test_unmatched_actions_flag_typos_and_unsupported_actions() -> None:
    parsed = policy(
        deny(["lambda:InvokeFuntion", "lambda:Get*", "s3:GetObject", "LAMBDA:invokefunction"], "*"),
        {"Effect": "Allow", "NotAction": ["lambda:AddPermission", "lambda:Nothing*"], "Resource": "*"},
    )
    assert policies.unmatched_actions(parsed) == ("lambda:InvokeFuntion", "lambda:AddPermission", "lambda:Nothing*")


# --- Properties -----------------------------------------------------------------------------------------------------

ACTION_PATTERNS = st.sampled_from(
    [
        *policies.LAMBDA_ACTIONS[:8],
        "*",
        "lambda:*",
        "lambda:Invoke*",
        "lambda:Get*",
        "lambda:*Alias",
        "LAMBDA:invokefunction",
        "lambda:?etFunction",
        "s3:GetObject",
    ]
)
RESOURCE_PATTERNS = st.sampled_from(
    [
        "*",
        "arn:aws:lambda:*:*:function:hello*",
        f"{FN}:hello",
        f"{FN}:hello:*",
        f"{FN}:hello-2",
        f"{FN}:h?llo",
        "arn:aws:lambda:*:function:*",
        "arn:aws:lambda:eu-west-1:*:function:*",
    ]
)


@st.composite
def statements(draw: st.DrawFn, effect: str | None = None) -> dict[str, Any]:
    action_key = draw(st.sampled_from(["Action", "NotAction"]))
    resource_key = draw(st.sampled_from(["Resource", "NotResource"]))
    return {
        "Effect": effect or draw(st.sampled_from(["Allow", "Deny"])),
        action_key: draw(st.lists(ACTION_PATTERNS, min_size=1, max_size=3)),
        resource_key: draw(st.lists(RESOURCE_PATTERNS, min_size=1, max_size=3)),
    }


POLICY_SETS = st.lists(st.lists(statements(), min_size=1, max_size=4).map(lambda s: policy(*s)), max_size=3)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str]:
    action = draw(st.sampled_from(policies.LAMBDA_ACTIONS))
    if action in policies.ACCOUNT_ACTIONS:
        return action, request_resource(action, region=REGION, account=ACCOUNT)
    qualifiers = st.sampled_from(["1", "prod", "$LATEST"])
    qualifier = draw(qualifiers if action in policies.QUALIFIED_ACTIONS else st.none() | qualifiers)
    name = draw(st.sampled_from(["hello", "hello-2", "hallo", "other"]))
    region = draw(st.sampled_from([REGION, "eu-west-1"]))
    return action, request_resource(action, region=region, account=ACCOUNT, function_name=name, qualifier=qualifier)


@settings(max_examples=300, deadline=None)
@given(attached=POLICY_SETS, extra=statements(effect="Deny"), request=requests())
def test_adding_a_deny_never_allows_more(
    attached: list[Policy], extra: dict[str, Any], request: tuple[str, str]
) -> None:
    action, resource = request
    before = evaluate(attached, action=action, resource=resource)
    after = evaluate([*attached, policy(extra)], action=action, resource=resource)
    if not before.allowed:
        assert not after.allowed
    if before.outcome is Outcome.EXPLICIT_DENY:
        assert after.outcome is Outcome.EXPLICIT_DENY
    exact = evaluate([*attached, policy(deny(action, resource))], action=action, resource=resource)
    assert exact.outcome is Outcome.EXPLICIT_DENY


@settings(max_examples=300, deadline=None)
@given(attached=POLICY_SETS, request=requests())
def test_without_allow_statements_nothing_is_allowed(attached: list[Policy], request: tuple[str, str]) -> None:
    action, resource = request
    before = evaluate(attached, action=action, resource=resource)
    denies_only = [
        dataclasses.replace(p, statements=tuple(s for s in p.statements if s.effect is Effect.DENY)) for p in attached
    ]
    after = evaluate(denies_only, action=action, resource=resource)
    expected = Outcome.EXPLICIT_DENY if before.outcome is Outcome.EXPLICIT_DENY else Outcome.IMPLICIT_DENY
    assert after.outcome is expected
    assert (after.decided_by is None) == (expected is Outcome.IMPLICIT_DENY)


@settings(max_examples=200, deadline=None)
@given(attached=POLICY_SETS, request=requests())
def test_the_order_of_policies_does_not_change_the_outcome(attached: list[Policy], request: tuple[str, str]) -> None:
    action, resource = request
    forward = evaluate(attached, action=action, resource=resource)
    backward = evaluate(attached[::-1], action=action, resource=resource)
    assert forward.outcome is backward.outcome


POLICY_KEYS = ["Version", "Id", "Statement", "Sid", "Effect", "Action", "NotAction", "Resource", "NotResource"]
JSON_LIKE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["2012-10-17", "Allow", "Deny", "*", "lambda:*", f"{FN}:x", "${x}"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(POLICY_KEYS) | st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=500, deadline=None)
@given(document=JSON_LIKE | st.text(max_size=200) | st.binary(max_size=200))
def test_the_parser_raises_only_policy_error(document: Any) -> None:
    try:
        parsed = policies.parse(document)
    except PolicyError as exc:
        assert exc.errors and all(isinstance(e, str) and ": " in e for e in exc.errors)
    else:
        assert parsed.statements


@settings(max_examples=500, deadline=None)
@given(pattern=st.text("ab:*?", max_size=8), text=st.text("ab:", max_size=10))
def test_wildcard_match_agrees_with_a_regular_expression(pattern: str, text: str) -> None:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    assert policies.wildcard_match(pattern, text) is (re.fullmatch(regex, text, re.DOTALL) is not None)
