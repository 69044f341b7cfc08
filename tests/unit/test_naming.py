from __future__ import annotations

import pytest

from kambda.naming import FunctionRef, InvalidReference, function_arn, parse_function_ref


@pytest.mark.parametrize(
    ("name", "qualifier", "expected"),
    [
        ("hello", None, FunctionRef("hello", None)),
        ("hello:$LATEST", None, FunctionRef("hello", "$LATEST")),
        ("hello:prod", None, FunctionRef("hello", "prod")),
        ("hello", "3", FunctionRef("hello", "3")),
        ("hello:3", "3", FunctionRef("hello", "3")),
        ("arn:aws:lambda:us-east-1:123456789012:function:hello", None, FunctionRef("hello", None)),
        ("arn:aws:lambda:eu-west-2:123456789012:function:hello:live", None, FunctionRef("hello", "live")),
        ("123456789012:function:hello", None, FunctionRef("hello", None)),
    ],
)
def test_parse(name: str, qualifier: str | None, expected: FunctionRef) -> None:
    assert parse_function_ref(name, qualifier) == expected


@pytest.mark.parametrize(
    ("name", "qualifier"),
    [
        ("bad name", None),
        ("a" * 65, None),
        ("hello:1", "2"),
        ("hello", "bad!"),
        ("", None),
        ("arn:aws:lambda:us-east-1:123:function:x", None),
    ],
)
def test_invalid(name: str, qualifier: str | None) -> None:
    with pytest.raises(InvalidReference):
        parse_function_ref(name, qualifier)


def test_arn() -> None:
    assert function_arn("us-east-1", "000000000000", "f") == "arn:aws:lambda:us-east-1:000000000000:function:f"
    assert function_arn("us-east-1", "000000000000", "f", "2").endswith(":function:f:2")


@pytest.mark.parametrize(
    ("name", "qualifier"),
    [
        ("echo\n", None),  # `$` would have matched before the newline and invoked `echo`
        ("echo\x00", None),
        ("echo:$LATEST\n", None),
        ("echo:prod\n", None),
        ("arn:aws:lambda:us-east-1:123456789012:function:echo\n", None),
        ("\necho", None),
        ("echo", "$LATEST\n"),
        ("echo", "prod\n"),
        ("echo", "\x00"),
        ("echo", ""),
    ],
)
def test_trailing_and_embedded_control_characters_are_invalid(name: str, qualifier: str | None) -> None:
    with pytest.raises(InvalidReference):
        parse_function_ref(name, qualifier)


def test_specs_patterns_match_whole_strings() -> None:
    from kambda import specs

    for pattern, good in ((specs.NAME_RE, "echo"), (specs.K8S_NAME_RE, "echo"), (specs.ENV_NAME_RE, "GREETING"),
                          (specs.HANDLER_RE, "app.handler")):  # fmt: skip
        assert pattern.fullmatch(good) and pattern.match(good)
        assert not pattern.fullmatch(good + "\n") and not pattern.match(good + "\n")
