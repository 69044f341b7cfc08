"""Property-based fuzzing of Lambda's control-plane API, on a real `kambda run --auth keys`.

For each operation in `OPERATIONS` (gateway/control/operations.py), `EXAMPLES` generated requests (1,200 in all),
SigV4-signed with the admin key by botocore's own `SigV4Auth`, so that they pass authentication and reach the
handler: bodies built from botocore's model of the operation's input, either a valid body with one or two fields
broken or a body of model fields each plausible, of its type, or hostile (the wrong type, null, huge or negative
numbers, numbers with more digits than Python converts, lone surrogates, very long strings, nesting a few hundred
levels deep), or no object at all (other JSON values, non-JSON bytes, invalid UTF-8, an empty body, a body over the
operation's limit); path parameters with odd characters, percent-encoded bytes, ARNs and very long names; query
strings with the operation's own parameters (Qualifier, Marker, MaxItems, FunctionVersion, tagKeys, ...) and
strangers. Half the requests name a function that exists (`fuzz`: versions 1 and 2, alias `live`, tags); none may
delete it. Besides the fuzzing, a fixed corpus (`sweep`, ~1,860 requests): every body field of every operation,
nested ones too, set to each of `WRONG_VALUES` in an otherwise valid body.

Properties: every answer comes within `TIMEOUT` (no hang) and is below 500; every error has an `x-amzn-ErrorType`
header and a JSON body with a "message" (or "Message"); every 200/201 is a JSON object; the gateway process stays
up, logs no traceback, and afterwards serves a plain boto3 create_function, invoke and delete_function.

The HTTP edge of the signature check is fuzzed too (the parser itself is in tests/unit/test_sigv4.py): random,
truncated and mutated Authorization headers, X-Amz-Date headers that are malformed or out of the 5-minute window,
unsigned x-amz headers, a changed body, presigned-URL parameters: each is a 400 or a 403, never a success or a 5xx.

Deterministic: each property's examples come from a fixed seed (`KAMBDA_FUZZ_SEED=<n>` explores another). Every
operation is fuzzed even when an earlier one fails; a failing request is shrunk by hypothesis and reported with the
first traceback the gateway logged meanwhile (kambda.logs.RateLimit lets a log template through 10 times a minute,
so later ones may be held back), and its body is written next to the gateway's log. (Hypothesis also draws
constants from the project's modules that are loaded, so a failure from a larger test selection replays most
faithfully with the same selection.)
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.client
import io
import json
import os
import re
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock
from urllib.parse import quote, unquote

import botocore.session
import botocore.utils
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from kambda import naming
from kambda.gateway.control import operations
from tests.integration.test_control_plane import Platform, app_zip, create, invoke
from tests.integration.test_fuzz_gateway import json_scalars, json_values

EXAMPLES = 50  # per operation
MIN_REQUESTS = 500  # across all operations (24 x 50 = 1200)
SIGNATURE_EXAMPLES = 200
FIXED_SEED = int(os.environ.get("KAMBDA_FUZZ_SEED") or 0x6B636F6E)
TIMEOUT = 10.0  # seconds for any answer
REGION, ACCOUNT = "us-east-1", "000000000000"
FIXTURE, OTHER = "fuzz", "fuzz-b"  # functions that exist while the fuzzing runs
ALIAS = "live"  # fuzz's alias, to version 1
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")  # a gateway log record's first line
MODEL = botocore.session.get_session().get_service_model("lambda")
# A failing example makes hypothesis describe the strategies, whose pools hold some very long strings on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")


# ---- JSON the way a hostile client writes it ---------------------------------------------------------------


class Raw(str):
    """JSON text put into a body verbatim: what `json.dumps` cannot write (a 5000-digit number, a lone surrogate's
    escape, `1e999`) or should not build (nesting deeper than this process's recursion limit)."""


def dump(value: object) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k), ensure_ascii=False)}: {dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(dump(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def one_in(n: int) -> st.SearchStrategy[bool]:
    """True about once in `n` draws (see tests/integration/test_fuzz_gateway.py for why not `integers(0, n) == 0`)."""
    return st.integers(0, n - 1).map(lambda i: i == n // 2)


HUGE_NUMBERS = [Raw("1" * 5000), Raw("-" + "9" * 4400), Raw("1" * 4300), Raw("1e999"), Raw("-1e999"),
                Raw("1E-400"), Raw("123456789012345678901234567890"), Raw("-0"), Raw("0.0"), Raw("1.5e300"),
                2**63, -(2**63) - 1, 2**64, -1, -2_147_483_649, 0.5, -0.0]  # fmt: skip
SURROGATES = [Raw('"\\ud800"'), Raw('"x\\udfffy"'), Raw('"\\udc80\\ud800"'), Raw('"\\u0000"'), Raw('"\\uffff"')]


@st.composite
def deep(draw: st.DrawFn) -> Raw:
    """Nested a few hundred levels (the gateway's JSON limit is 512; CPython's recursion limit about 1000)."""
    depth = draw(st.sampled_from([100, 511, 512, 513, 1000, 1500]) | st.integers(2, 1200))
    if draw(st.booleans()):
        return Raw("[" * depth + "]" * depth)
    return Raw('{"a": ' * depth + "null" + "}" * depth)


hostile = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(max_value=-1),
    st.floats(allow_nan=False, allow_infinity=False),
    *[st.sampled_from(HUGE_NUMBERS)] * 3,
    st.sampled_from(SURROGATES),
    st.text(max_size=40),  # any unicode
    st.integers(1000, 300_000).map(lambda n: "x" * n),
    st.lists(json_scalars, max_size=4),
    st.dictionaries(st.text(max_size=8), json_scalars, max_size=4),
    json_values,
    deep(),
)


# ---- code packages ---------------------------------------------------------------------------------------------


def _zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


GOOD_ZIP = app_zip("fuzz")
GOOD_ZIP_BASE64 = base64.b64encode(GOOD_ZIP).decode()
ODD_ZIPS = [
    _zip_of({"../evil.py": b"x"}),
    _zip_of({"/abs.py": b"x"}),
    _zip_of({"a" * 300: b"x"}),
    _zip_of({"app.py": b"x", "app.py/inner": b"y"}),
    _zip_of({"ünï/cødé.py": b"x"}),
    _zip_of({}),
    b"PK\x05\x06" + b"\x00" * 18,  # an empty zip's end record
    b"PK\x03\x04" + b"\xff" * 40,
]


@st.composite
def mutated_zip(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from([GOOD_ZIP, *ODD_ZIPS])))
    how = draw(st.sampled_from(["flip", "truncate", "append", "as is"]))
    if how == "flip" and data:
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif how == "truncate":
        del data[draw(st.integers(0, len(data))) :]
    elif how == "append":
        data += draw(st.binary(min_size=1, max_size=64))
    return bytes(data)


zip_file_values = st.one_of(
    st.just(GOOD_ZIP_BASE64),
    mutated_zip().map(lambda b: base64.b64encode(b).decode()),
    st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode()),
    st.sampled_from(["", "not base64!", "UEsDBA", "UEsDBA==\n", "////", "é"]),
    st.text(max_size=40),
)


# ---- bodies from botocore's model ----------------------------------------------------------------------------

SHA = "0" * 64
ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{FIXTURE}"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/fuzz"
ENV_NAMES = st.sampled_from(["A", "B_1", "1A", "AWS_REGION", "a-b", "_X", ""])
TAG_KEYS = st.sampled_from(["team", "aws:reserved", "k" * 129, "a b", "ü", "", "x/y=z+@:"])
# Values that get a request past its first checks, by member name, so that what follows them is reached too.
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "FunctionName": st.sampled_from(["fuzz-new", FIXTURE, "Upper_Case", "x" * 64, "x" * 65, ""]),
    "Runtime": st.sampled_from(["python3.11", "python3.12", "nodejs20.x", "provided.al2023", "cobol85", ""]),
    "Handler": st.sampled_from(["app.handler", "index.handler", "a" * 129, "../x", ""]),
    "Role": st.sampled_from([ROLE, "", "r" * 2049]),
    "Description": st.sampled_from(["", "d", "d" * 256, "d" * 257]),
    "Timeout": st.sampled_from([1, 3, 900, 901, 0, -1]),
    "MemorySize": st.sampled_from([128, 64, 10240, 10241, 0, -128]),
    "ReservedConcurrentExecutions": st.sampled_from([0, 1, 5, 899, 900, 1000, 100_000, -1]),
    "ProvisionedConcurrentExecutions": st.sampled_from([0, 1, -1]),
    "FunctionVersion": st.sampled_from(["1", "2", "99", "$LATEST", "0", "01", "-1", "", "9" * 11, "²"]),
    "Name": st.sampled_from([ALIAS, "new-alias", "123", "$LATEST", "a" * 128, "a" * 129, ""]),
    "RevisionId": st.sampled_from(["", "00000000-0000-0000-0000-000000000000", "x"]),
    "CodeSha256": st.sampled_from(["", "AAAA", base64.b64encode(b"\0" * 32).decode()]),
    "ZipFile": zip_file_values,
    "ImageUri": st.sampled_from(["repo/image:tag", "registry.example/i@sha256:" + SHA, "", ":"]),
    "PackageType": st.sampled_from(["Zip", "Image", "zip", ""]),
    "Architectures": st.sampled_from([["x86_64"], ["arm64"], [], ["x86_64", "arm64"], ["x86_64", "x86_64"]]),
    "Layers": st.lists(st.sampled_from([SHA, f"arn:aws:lambda:{REGION}:{ACCOUNT}:layer:package:{SHA}", "layer"])),
    "Variables": st.dictionaries(ENV_NAMES, st.sampled_from(["v", "", "x" * 5000])),
    "Tags": st.dictionaries(TAG_KEYS, st.sampled_from(["v", "", "v" * 257]), max_size=6),
    "AdditionalVersionWeights": st.dictionaries(
        st.sampled_from(["1", "2", "99", "$LATEST", "a"]), st.sampled_from([0.0, 0.1, 0.5, 1.0, 1.5, -0.1])
    ),
    "Size": st.sampled_from([512, 10240, 511, 10241, 0]),
    "LogFormat": st.sampled_from(["JSON", "Text", "json"]),
    "ApplicationLogLevel": st.sampled_from(["INFO", "DEBUG", "TRACE", "x"]),
    "SystemLogLevel": st.sampled_from(["INFO", "WARN", "x"]),
    "Mode": st.sampled_from(["PassThrough", "Active"]),
    "ApplyOn": st.sampled_from(["None", "PublishedVersions"]),
    "SubnetIds": st.sampled_from([[], ["subnet-1"]]),
    "TargetArn": st.sampled_from(["", "arn:aws:sqs:us-east-1:000000000000:q"]),
    "Publish": st.booleans(),
    "DryRun": st.booleans(),
}


def _typed(shape: Any, depth: int) -> st.SearchStrategy[Any]:
    """A value of the shape's type, botocore's way (a blob is base64 text in a JSON body)."""
    kind = shape.type_name
    if kind == "string":
        enum = list(getattr(shape, "enum", None) or [])
        text = st.text(max_size=40)
        return st.sampled_from(enum) | text if enum else text
    if kind in ("integer", "long"):
        return st.integers(-(2**40), 2**40)
    if kind == "boolean":
        return st.booleans()
    if kind in ("double", "float"):
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind == "blob":
        return zip_file_values
    if kind == "timestamp":
        return st.integers(0, 2**34) | st.text(max_size=30)
    if depth > 4:
        return json_scalars
    if kind == "list":
        return st.lists(member_value("member", shape.member, depth + 1), max_size=4)
    if kind == "map":
        return st.dictionaries(st.text(max_size=16), member_value("value", shape.value, depth + 1), max_size=4)
    if kind == "structure":
        return structure(shape, depth + 1)
    return json_values


def member_value(name: str, shape: Any, depth: int) -> st.SearchStrategy[Any]:
    branches = [_typed(shape, depth), hostile]
    if name in PLAUSIBLE:
        branches = [PLAUSIBLE[name], PLAUSIBLE[name], *branches]
    return st.one_of(*branches)


def structure(shape: Any, depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    members = {name: member_value(name, member, depth) for name, member in body_members(shape).items()}
    extra = st.dictionaries(st.sampled_from(["Unknown", "functionname", "", "ü"]) | st.text(max_size=8), hostile,
                            max_size=2)  # fmt: skip
    known = st.fixed_dictionaries({}, optional=members)
    return st.tuples(known, st.one_of(st.just({}), st.just({}), extra)).map(lambda kv: {**kv[1], **kv[0]})


def input_shape(op: operations.Operation) -> Any:
    return MODEL.operation_model(op.name).input_shape


NOT_OBJECTS = ["empty", "space", "value", "deep", "binary", "truncated", "constant", "bom", "utf16", "latin1", "twice",
               "large"]  # fmt: skip


@st.composite
def not_an_object(draw: st.DrawFn, op: operations.Operation) -> bytes:
    kind = draw(st.sampled_from(NOT_OBJECTS))
    text = dump(draw(json_values))
    if kind == "empty":
        return b""
    if kind == "space":
        return draw(st.sampled_from([b" ", b"\r\n\t ", b"\x00", b"\x0b"]))
    if kind == "value":
        return dump(draw(st.lists(json_scalars, max_size=3) | json_scalars | st.sampled_from(HUGE_NUMBERS))).encode()
    if kind == "deep":
        return draw(deep()).encode()
    if kind == "binary":
        return draw(st.binary(min_size=1, max_size=300))
    if kind == "truncated":
        whole = b'{"FunctionName": "fuzz", "Timeout": 3, "Tags": {"a": "b"}, "Code": {"ZipFile": "UEsDBA=="}}'
        return whole[: draw(st.integers(1, len(whole) - 1))]
    if kind == "constant":
        return draw(st.sampled_from([b"NaN", b'{"Timeout": NaN}', b'{"Timeout": Infinity}', b"-Infinity", b"true",
                                     b"null", b'{"a": 1,}', b"{'a': 1}", b'{"a" 1}', b'{"\xff": 1}']))  # fmt: skip
    if kind == "bom":
        return b"\xef\xbb\xbf{}"
    if kind == "utf16":
        return "{}".encode("utf-16")
    if kind == "latin1":
        return '{"Description": "café"}'.encode("latin-1")
    if kind == "twice":
        return (text + text).encode()
    # Over the operation's limit (413); a code operation's limit is ~67 MB: send 2 MB of object instead.
    size = op.body_limit + 1 if op.body_limit <= operations.CONFIG_BODY_LIMIT else 2 * 1024 * 1024
    return b'{"Description": "' + b"x" * size + b'"}'


# A body each operation accepts (on `fuzz`), for `almost_valid` to break in one or two places only: a request
# that is right but for one field gets past every check before that field's.
VALID_BODIES: dict[str, dict[str, Any]] = {
    "CreateFunction": {"FunctionName": "fuzz-new", "Runtime": "python3.11", "Role": ROLE, "Handler": "app.handler",
                       "Code": {"ZipFile": GOOD_ZIP_BASE64}, "Environment": {"Variables": {"A": "b"}},
                       "Tags": {"team": "fuzz"}, "Architectures": ["x86_64"]},
    "UpdateFunctionConfiguration": {"Description": "changed", "Timeout": 5, "MemorySize": 256,
                                    "Environment": {"Variables": {"A": "b"}}, "EphemeralStorage": {"Size": 512},
                                    "LoggingConfig": {"LogFormat": "JSON", "ApplicationLogLevel": "INFO"}},
    "UpdateFunctionCode": {"ZipFile": GOOD_ZIP_BASE64, "Publish": True},
    "PublishVersion": {"Description": "published"},
    "CreateAlias": {"Name": "new-alias", "FunctionVersion": "1", "Description": "d",
                    "RoutingConfig": {"AdditionalVersionWeights": {"2": 0.5}}},
    "UpdateAlias": {"FunctionVersion": "2", "RoutingConfig": {"AdditionalVersionWeights": {"1": 0.25}}},
    "PutFunctionConcurrency": {"ReservedConcurrentExecutions": 5},
    "PutProvisionedConcurrencyConfig": {"ProvisionedConcurrentExecutions": 1},
    "TagResource": {"Tags": {"fuzzed": "yes"}},
}  # fmt: skip


def body_members(shape: Any) -> dict[str, Any]:
    return {n: m for n, m in shape.members.items() if m.serialization.get("location") is None}


@st.composite
def almost_valid(draw: st.DrawFn, shape: Any, body: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    """`body` with one or two of its members (nested ones too) changed, removed or added."""
    body = dict(body)
    members = body_members(shape)
    for name in draw(st.lists(st.sampled_from(sorted(members)), min_size=1, max_size=2, unique=True)):
        member = members[name]
        if isinstance(body.get(name), dict) and member.type_name == "structure" and depth < 3 and draw(st.booleans()):
            body[name] = draw(almost_valid(member, body[name], depth + 1))
        elif name in body and draw(one_in(4)):
            del body[name]
        else:
            body[name] = draw(member_value(name, member, depth))
    return body


def body_for(op: operations.Operation) -> st.SearchStrategy[bytes]:
    shape = input_shape(op)
    if shape is None or not body_members(shape):
        objects = st.dictionaries(st.text(max_size=8), hostile, max_size=3).map(lambda v: dump(v).encode())
        return st.one_of(st.just(b""), st.just(b""), objects, not_an_object(op))
    objects = structure(shape).map(lambda value: dump(value).encode())
    near = almost_valid(shape, VALID_BODIES.get(op.name, {})).map(lambda value: dump(value).encode())
    return st.one_of(near, near, objects, objects, not_an_object(op))


# ---- path parameters and query strings -----------------------------------------------------------------------

FUNCTION_NAMES = [FIXTURE, f"{FIXTURE}:1", f"{FIXTURE}:2", f"{FIXTURE}:{ALIAS}", f"{FIXTURE}:$LATEST",
                  f"{FIXTURE}:99", OTHER, "absent", "Fuzz", "fuzz_", "-fuzz", ARN, f"{ARN}:{ALIAS}", f"{ARN}:1",
                  f"{ACCOUNT}:function:{FIXTURE}", f"{REGION}:{ACCOUNT}:function:{FIXTURE}:1",
                  f"arn:aws:lambda:eu-west-1:111111111111:function:{FIXTURE}", "arn:aws:s3:::bucket",
                  f"arn:aws:lambda:{REGION}:{ACCOUNT}:layer:package:{SHA}", f"function:{FIXTURE}", f"{FIXTURE}::1",
                  f":{FIXTURE}", f"{FIXTURE}:", "$LATEST", "x" * 64, "x" * 65, "x" * 170, "x" * 171,
                  f"{FIXTURE}:" + "q" * 129]  # fmt: skip
ODD_SEGMENTS = ["", "%", "%zz", "%2F", "%2f", "%00", "%0A", "%0D%0A", "..", ".", "%2e%2e", "%u0041", "fuzz%20",
                "fu%7Az", "fuzz%3A1", "fuzz%3a%24LATEST", "%C0%AF", "%ED%A0%80", "%F0%9F%98%80", "%FF%FE", "*",
                "fuzz;x", "fuzz,1", "~", "fuzz+1", "%2B", "@", "fuzz:1:2", "fuzz%00:1"]  # fmt: skip
ALIAS_NAMES = [ALIAS, "absent", "123", "$LATEST", "1", "a" * 128, "a" * 129, "LIVE", "live-2", "a_b"]


def _encoded_text(text: str) -> str:
    return quote(text, safe="")


def segment(pool: list[str]) -> st.SearchStrategy[str]:
    """One path parameter, as it appears in the request target (percent-encoded where it must be)."""
    return st.one_of(
        st.sampled_from(pool).map(lambda s: quote(s, safe=":$@")),
        st.sampled_from(pool).map(lambda s: quote(s, safe=":$@")),
        st.sampled_from(pool).map(_encoded_text),  # every ':' and '$' as %3A, %24
        st.sampled_from(ODD_SEGMENTS),
        st.text(max_size=60).map(_encoded_text),  # any unicode, UTF-8 percent-encoded
        st.binary(min_size=1, max_size=24).map(lambda b: "".join(f"%{x:02X}" for x in b)),  # not always UTF-8
        st.from_regex(r"[A-Za-z0-9\-_.~:@!$&'()*+,;=]{0,80}", fullmatch=True),  # characters a path may hold bare
        st.integers(200, 6000).map(lambda n: "n" * n),
        st.tuples(st.sampled_from(pool), st.sampled_from(ODD_SEGMENTS)).map(lambda t: quote(t[0], safe=":") + t[1]),
    )


def _marker(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


QUALIFIERS = ["1", "2", "99", "$LATEST", ALIAS, "absent", "0", "01", "-1", "", "²", "$latest", "a" * 129, "9" * 11,
              "1:2"]  # fmt: skip
MARKERS = [_marker(t) for t in ("0", "1", "2", "3", "-1", "99", "²", "٣", "9" * 5000, "abc", "")] + [
    "!!not-a-marker!!", "", "AAAA", "=", "%"]  # fmt: skip
MAX_ITEMS = ["²", "①", "9" * 5000, "1" * 4301, "³", "٣", "½", "0", "-1", "10001", "1.5", " 1", "1e3", "", "0x10",
             "1", "2", "50", "10000"]  # fmt: skip
QUERY_VALUES: dict[str, st.SearchStrategy[str]] = {
    "Qualifier": st.one_of(*[st.sampled_from(QUALIFIERS)] * 3, st.text(max_size=20)),
    "Marker": st.one_of(*[st.sampled_from(MARKERS)] * 3, st.text(max_size=20)),
    "MaxItems": st.one_of(*[st.sampled_from(MAX_ITEMS)] * 3, st.integers().map(str), st.text(max_size=8)),
    "FunctionVersion": st.sampled_from(["ALL", "all", "1", "2", "$LATEST", ""]) | st.text(max_size=12),
    "tagKeys": st.sampled_from(["team", "absent", "aws:x", "", "k" * 200]) | st.text(max_size=12),
    "MasterRegion": st.sampled_from([REGION, "ALL", ""]) | st.text(max_size=12),
}


@st.composite
def query_for(draw: st.DrawFn, op: operations.Operation) -> list[tuple[str, str]]:
    shape = input_shape(op)
    names = [
        m.serialization.get("name")
        for m in (shape.members.values() if shape is not None else ())
        if m.serialization.get("location") == "querystring"
    ]
    pairs: list[tuple[str, str]] = []
    for name in names:
        repeats = draw(st.integers(0, 3)) if name == "tagKeys" else int(draw(st.integers(0, 2)) > 0)
        pairs += [(name, draw(QUERY_VALUES.get(name, st.text(max_size=12)))) for _ in range(repeats)]
    if draw(one_in(4)):  # parameters the operation does not take, or takes twice
        key = draw(st.sampled_from(["Qualifier", "Marker", "MaxItems", "FunctionVersion", "x", "", "ü"]))
        pairs.append((key, draw(QUERY_VALUES.get(key, st.text(max_size=12)))))
    return pairs


def encode_query(pairs: list[tuple[str, str]]) -> str:
    """Encoded as SigV4's canonical form encodes it, so that botocore signs what is sent (sorted or not)."""
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in pairs)


# ---- requests --------------------------------------------------------------------------------------------------


@dataclass
class Request:
    operation: str
    method: str
    target: str  # path and query, as sent
    body: bytes = field(repr=False)
    headers: list[tuple[str, str]] = field(default_factory=list)  # besides the signature's own

    def described(self) -> str:
        body = self.body if len(self.body) <= 600 else self.body[:600] + b"...(%d bytes)" % len(self.body)
        return f"{self.operation}: {self.method} {self.target[:1000]}\nheaders {self.headers}\nbody {body!r}"


def _destroys_the_fixture(method: str, target: str) -> bool:
    """Would this delete `fuzz`, `fuzz-b` or fuzz's alias, which the requests after it need? (As the router may
    see the path: percent-decoded, its dot segments resolved; `../` after an alias name is DeleteFunction.)"""
    path, _, query = target.partition("?")
    qualifier = next((unquote(v) for k, _, v in (p.partition("=") for p in query.split("&")) if k == "Qualifier"), None)
    for seen in {unquote(path), botocore.utils.remove_dot_segments(unquote(path))}:
        found = operations.match(method, seen)
        if found is None or found[0].name not in ("DeleteFunction", "DeleteAlias"):
            continue
        op, params = found
        try:
            ref = naming.parse_function_ref(params["FunctionName"], qualifier if op.qualified else None)
        except naming.InvalidReference:
            continue
        if ref.name in (FIXTURE, OTHER) and (ref.qualifier is None if op.qualified else params["Name"] == ALIAS):
            return True
    return False


CONTENT_TYPES = ["application/json", "application/x-amz-json-1.1", "text/plain", "", "application/json; charset=x"]


@st.composite
def requests_for(draw: st.DrawFn, op: operations.Operation) -> Request:
    pools = {"FunctionName": FUNCTION_NAMES, "Name": ALIAS_NAMES, "Resource": FUNCTION_NAMES}
    params = {}
    for name in pools:
        if "{" + name + "}" in op.template:
            params[name] = FIXTURE if name != "Name" and draw(st.booleans()) else draw(segment(pools[name]))
    if "Name" in params and draw(one_in(3)):
        params["Name"] = ALIAS
    query = draw(query_for(op))
    target = op.template.format(**params) + ("?" + encode_query(query) if query else "")
    if _destroys_the_fixture(op.method, target):
        target = op.template.format(**dict.fromkeys(params, "absent")) + target[len(target.partition("?")[0]) :]
    body = draw(body_for(op))
    headers = [("Content-Type", draw(st.sampled_from(CONTENT_TYPES)))]
    coding = draw(st.sampled_from(["identity"] * 8 + ["gzip", "gzip-not", "deflate", "br"]))
    if coding == "gzip":
        body = gzip.compress(body, mtime=0)
    elif coding == "deflate":
        body = zlib.compress(body)
    if coding != "identity":
        headers.append(("Content-Encoding", coding.removesuffix("-not")))
    return Request(op.name, op.method, target, body, headers)


# ---- talking to the gateway ----------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float


def signed_headers(
    platform: Platform, method: str, target: str, body: bytes, extra: list[tuple[str, str]], *, when: datetime | None
) -> list[tuple[str, str]]:
    """`extra` with Host, X-Amz-Date and Authorization, as botocore signs them for the admin key."""
    key_id, secret = platform.keys["admin"]
    host = f"127.0.0.1:{platform.gateway.port}"
    request = AWSRequest(method=method, url=f"http://{host}{target}", data=body, headers={"Host": host, **dict(extra)})
    auth = SigV4Auth(Credentials(key_id, secret), "lambda", REGION)
    if when is None:
        auth.add_auth(request)
    else:
        with mock.patch("botocore.auth.get_current_datetime", return_value=when):
            auth.add_auth(request)
    return list(request.headers.items())


def send(port: int, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> Answer | None:
    """One request on its own connection; None if the server closed it without an answer."""
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        connection.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value.encode("utf-8", "surrogateescape"))
        if body or method in ("POST", "PUT"):
            connection.putheader("Content-Length", str(len(body)))
        # Answered (and closed) before all of a large body was read: read that answer.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.endheaders(body or None)
        try:
            response = connection.getresponse()
            data = response.read()
        except (http.client.RemoteDisconnected, ConnectionResetError):
            return None
        fields = {k.lower(): v for k, v in response.getheaders()}
        return Answer(response.status, fields, data, time.monotonic() - started)
    finally:
        connection.close()


def exchange(platform: Platform, request: Request, *, when: datetime | None = None) -> Answer | None:
    headers = signed_headers(platform, request.method, request.target, request.body, request.headers, when=when)
    return send(platform.gateway.port, request.method, request.target, headers, request.body)


def check_error_shape(answer: Answer, what: str) -> None:
    assert answer.headers.get("x-amzn-errortype"), f"no x-amzn-ErrorType on a {answer.status} for {what}"
    try:
        shape = json.loads(answer.body)
    except ValueError:
        raise AssertionError(f"{answer.status}, its body not JSON, for {what}: {answer.body[:300]!r}") from None
    assert isinstance(shape, dict), f"{answer.status} body is not an object for {what}: {shape!r}"
    message = shape.get("message", shape.get("Message"))
    assert isinstance(message, str), f"{answer.status} body without a message for {what}: {shape!r}"


def check(answer: Answer | None, request: Request, limit: int) -> str:
    """The outcome's name, or AssertionError saying what is wrong with it."""
    what = request.described()
    if answer is None:
        # Only a body over the limit may be cut off: the answer (413) can be lost when the kernel resets the
        # connection on the unread rest.
        assert len(request.body) > limit, f"the connection closed without an answer to {what}"
        return "closed"
    assert answer.status < 500, f"{answer.status} for {what}\nanswer {answer.body[:2000]!r}"
    if answer.status >= 400:
        check_error_shape(answer, what)
    elif answer.status in (200, 201):
        assert isinstance(json.loads(answer.body), dict), f"{answer.status} for {what}: {answer.body[:300]!r}"
    return f"{answer.status} {answer.headers.get('x-amzn-errortype', '')}".strip()


# ---- the gateway and what the requests work on ---------------------------------------------------------------


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    p = Platform(tmp_path_factory.mktemp("fuzz-control"))
    lam = p.client()
    create(lam, FIXTURE, Tags={"team": "fuzz"}, Description="fuzzed")
    lam.update_function_code(FunctionName=FIXTURE, ZipFile=app_zip("two"))  # version 2
    lam.create_alias(FunctionName=FIXTURE, Name=ALIAS, FunctionVersion="1")
    create(lam, OTHER)
    yield p
    p.gateway.stop()
    assert p.gateway.proc.returncode == 0, p.gateway.logs()[-5000:]


def first_traceback(platform: Platform, offset: int) -> str:
    """The first traceback the gateway logged after `offset`, with its log line (the gateway lets only a few of
    the same error through a minute, so the failing example's own may not be there), else the log's tail."""
    log = platform.gateway.log_path.read_bytes()[offset:].decode(errors="replace")
    lines = log.split("\n")
    start = next((i for i, line in enumerate(lines) if line.startswith("Traceback")), None)
    if start is None:  # kambda.logs.RateLimit lets one template through 10 times a minute
        return "(no traceback logged since the start of this property)\n" + log[-2000:]
    end = next((i for i in range(start + 1, len(lines)) if LOG_LINE.match(lines[i])), len(lines))
    return "\n".join(lines[max(start - 1, 0) : end])[-6000:]


def run_property(
    platform: Platform, name: str, strategy: st.SearchStrategy[Any], examples: int, test: Any, failures: list[str]
) -> None:
    """`test(example)` for `examples` generated examples from a fixed seed; a failure (shrunk) is recorded with the
    gateway's log lines it caused and its body saved, and the fuzzing goes on with the next operation."""
    failing = platform.gateway.log_path.parent / f"failing-{name}.bin"
    started = log_size(platform)

    @seed(FIXED_SEED ^ zlib.crc32(name.encode()))
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def property_holds(example: Any) -> None:
        try:
            test(example)
            assert platform.gateway.proc.poll() is None, "the gateway died"
        except (AssertionError, OSError, http.client.HTTPException) as exc:
            failing.write_bytes(example.body)
            if isinstance(exc, TimeoutError):
                problem = f"no answer within {TIMEOUT:g} s (a hang) to {example.described()}"
            elif isinstance(exc, AssertionError):
                problem = str(exc)
            else:
                problem = f"{exc!r} for {example.described()}"
            log = first_traceback(platform, started)
            raise AssertionError(f"{problem}\n--- gateway log (first traceback) ---\n{log}") from None

    try:
        property_holds()
    except AssertionError as exc:
        failures.append(f"{name}: {exc}")


def log_size(platform: Platform) -> int:
    return platform.gateway.log_path.stat().st_size


def tracebacks_since(platform: Platform, offset: int) -> list[str]:
    """The gateway's own tracebacks, as tests/integration/test_malformed_requests.py's `gateway_tracebacks` finds
    them (a function's output is prefixed and may hold its own)."""
    log = platform.gateway.log_path.read_bytes()[offset:].decode(errors="replace")
    return [line for line in log.split("\n") if line.startswith("Traceback")]


def still_serves(platform: Platform) -> None:
    """The gateway is up and a plain boto3 create, invoke and delete works."""
    assert platform.gateway.proc.poll() is None, platform.gateway.logs()[-5000:]
    lam = platform.client()
    create(lam, "after-fuzz")
    lam.get_waiter("function_active_v2").wait(FunctionName="after-fuzz", WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    assert invoke(lam, "after-fuzz")["marker"] == "one"
    lam.delete_function(FunctionName="after-fuzz")
    assert lam.get_function(FunctionName=FIXTURE)["Configuration"]["FunctionName"] == FIXTURE


# ---- the tests -------------------------------------------------------------------------------------------------


def test_fuzz_every_control_plane_operation(platform: Platform) -> None:
    print(f"\nfuzz seed: KAMBDA_FUZZ_SEED={FIXED_SEED}")
    offset = log_size(platform)
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    slowest = 0.0
    started = time.monotonic()
    for op in operations.OPERATIONS:

        def one(request: Request, op: operations.Operation = op) -> None:
            nonlocal slowest
            answer = exchange(platform, request)
            slowest = max(slowest, answer.seconds if answer else 0.0)
            outcomes[f"{op.name} {check(answer, request, op.body_limit)}"] += 1

        run_property(platform, op.name, requests_for(op), EXAMPLES, one, failures)
    elapsed = time.monotonic() - started
    total = sum(outcomes.values())
    print(f"{total} requests in {elapsed:.1f} s (slowest {slowest:.2f} s): {dict(sorted(outcomes.items()))}")
    assert {name.split()[0] for name in outcomes} >= {op.name for op in operations.OPERATIONS} or failures
    assert total >= MIN_REQUESTS
    still_serves(platform)
    assert not failures, "\n\n".join(failures)
    assert tracebacks_since(platform, offset) == [], first_traceback(platform, offset)


# The sweep: each of these in each known body field (and each field of a field that is an object), in a body that
# is otherwise valid, so that every field's own check is reached.
WRONG_VALUES: list[Any] = [
    "5",  # a string where a number (or an object) goes
    {"a": {"b": [1]}},
    Raw("1" * 5000),  # more digits than Python converts to an int by default
    Raw("1e999"),  # a float that is infinite
    -1,
    -(2**63),
    None,
    [1, "a", None],
    "ünï©ødé ☃ 𝄞",
    Raw('"\\ud800"'),  # a lone surrogate
    "x" * 100_000,
    Raw('{"a": ' * 300 + "1" + "}" * 300),  # deep, but within the JSON limit: parsed, then refused
    Raw("[" * 600 + "]" * 600),  # deeper than the JSON limit
    True,
]


def sweep(op: operations.Operation) -> Iterator[Request]:
    shape = input_shape(op)
    if shape is None or not body_members(shape):
        return
    valid = VALID_BODIES.get(op.name, {})
    target = op.template.format(FunctionName=FIXTURE, Name=ALIAS, Resource=FIXTURE)
    for name, member in body_members(shape).items():
        for value in WRONG_VALUES:
            yield Request(op.name, op.method, target, dump({**valid, name: value}).encode())
        if member.type_name == "structure":
            outer: dict[str, Any] = valid[name] if isinstance(valid.get(name), dict) else {}
            for inner in member.members:
                for value in WRONG_VALUES:
                    body = {**valid, name: {**outer, inner: value}}
                    yield Request(op.name, op.method, target, dump(body).encode())


def test_every_body_field_with_each_wrong_value(platform: Platform) -> None:
    """A corpus besides the fuzzing: every field of every body, each wrong in each way; all failures reported."""
    offset = log_size(platform)
    outcomes: Counter[str] = Counter()
    failures: dict[str, list[str]] = {}
    for op in operations.OPERATIONS:
        for request in sweep(op):
            try:
                outcomes[check(exchange(platform, request), request, op.body_limit)] += 1
            except AssertionError as exc:
                failures.setdefault(op.name, []).append(str(exc))
            except OSError as exc:  # TimeoutError: no answer within TIMEOUT, a hang
                failures.setdefault(op.name, []).append(f"{exc!r} for {request.described()}")
    total = sum(outcomes.values()) + sum(len(f) for f in failures.values())
    print(f"\n{total} requests: {dict(sorted(outcomes.items()))}")
    report = [f"{op}: {len(found)} failed, the first:\n{found[0]}" for op, found in failures.items()]
    assert platform.gateway.proc.poll() is None
    assert not failures, "\n\n".join(report) + "\n--- gateway log ---\n" + first_traceback(platform, offset)
    assert tracebacks_since(platform, offset) == [], first_traceback(platform, offset)


@dataclass
class Forged:
    method: str
    target: str
    body: bytes
    headers: list[tuple[str, str]]
    kind: str

    def described(self) -> str:
        return f"{self.kind}: {self.method} {self.target}\nheaders {self.headers}\nbody {self.body[:200]!r}"


SIGNED_TARGETS = [
    ("GET", "/2015-03-31/functions", b""),
    ("GET", f"/2015-03-31/functions/{FIXTURE}?Qualifier=1", b""),
    ("PUT", f"/2015-03-31/functions/{FIXTURE}/configuration", b'{"Description": "forged"}'),
    ("DELETE", f"/2015-03-31/functions/{OTHER}", b""),
    ("POST", "/2017-03-31/tags/" + quote(ARN, safe=":"), b'{"Tags": {"forged": "yes"}}'),
]
latin1_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=300)


def _replace_part(header: str, part: str, value: str) -> str:
    """The Authorization header with its `part=` component's value replaced."""
    return re.sub(rf"(?<=\b{part}=)[^,]*", lambda _: value, header, count=1)


MUTATIONS: dict[str, Callable[[str], str]] = {
    "unknown key": lambda h: h.replace("Credential=", "Credential=AKIAUNKNOWN", 1),
    "no key": lambda h: h.replace("Credential=", "Credential=/", 1),
    "region": lambda h: h.replace(f"/{REGION}/", "/eu-west-1/"),
    "service": lambda h: h.replace("/lambda/", "/s3/"),
    "terminator": lambda h: h.replace("aws4_request", "aws4_reques"),
    "scope date": lambda h: re.sub(r"(Credential=[^/]*/)\d{8}", r"\g<1>19990101", h),
    "too many slashes": lambda h: h.replace("aws4_request", "aws4_request/x"),
    "long credential": lambda h: h.replace("Credential=", "Credential=" + "K" * 300, 1),
    "no host signed": lambda h: _replace_part(h, "SignedHeaders", "x-amz-date"),
    "unsorted signed": lambda h: _replace_part(h, "SignedHeaders", "x-amz-date;host;content-type"),
    "upper signed": lambda h: _replace_part(h, "SignedHeaders", "Host;X-Amz-Date"),
    "duplicate signed": lambda h: _replace_part(h, "SignedHeaders", "host;host;x-amz-date"),
    "empty signed": lambda h: _replace_part(h, "SignedHeaders", ""),
    "signature flipped": lambda h: h[:-1] + ("0" if h[-1] != "0" else "1"),
    "signature upper": lambda h: h[:-64] + h[-64:].upper() if any(c in "abcdef" for c in h[-64:]) else h[:-1] + "g",
    "signature short": lambda h: h[:-1],
    "signature long": lambda h: h + "0",
    "signature not hex": lambda h: h[:-64] + "z" * 64,
    "signature empty": lambda h: _replace_part(h, "Signature", ""),
    "algorithm": lambda h: h.replace("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA512", 1),
    "algorithm lower": lambda h: h.replace("AWS4-HMAC-SHA256", "aws4-hmac-sha256", 1),
    "no algorithm": lambda h: h.removeprefix("AWS4-HMAC-SHA256 "),
    "duplicate part": lambda h: h + ", Signature=" + "0" * 64,
    "extra part": lambda h: h + ", Foo=bar",
    "missing part": lambda h: ", ".join(p for p in h.split(", ") if not p.startswith("SignedHeaders")),
    "no equal sign": lambda h: h.replace("Signature=", "Signature", 1),
    "too long": lambda h: h + ", Foo=" + "x" * 5000,
    "nul": lambda h: h.replace("Credential=", "Credential=\x00", 1),
}  # fmt: skip
BAD_DATES = ["", "0", "20240230T000000Z", "2024-01-01T00:00:00Z", "2024011T000000Z", "20240101T000000",
             "20240101t000000z", "20241301T000000Z", "20240101T250000Z", "99999999T999999Z", "00000000T000000Z",
             "20240101T000000Z ", "Mon, 01 Jan 2024 00:00:00 GMT", "1704067200"]  # fmt: skip


@st.composite
def forged_requests(draw: st.DrawFn, platform: Platform) -> Forged:
    method, target, body = draw(st.sampled_from(SIGNED_TARGETS))
    base = [("Content-Type", "application/json")]
    kind = draw(st.sampled_from(["random", "prefixed", "truncated", "mutated", "late", "bad date", "no date",
                                 "date header", "two dates", "token", "unsigned header", "other body", "presigned",
                                 "two authorizations"]))  # fmt: skip
    now = datetime.now(UTC)
    signed = signed_headers(platform, method, target, body, base, when=None)
    authorization = next(v for k, v in signed if k == "Authorization")
    others = [(k, v) for k, v in signed if k != "Authorization"]
    headers = signed
    if kind == "random":
        headers = [*others, ("Authorization", draw(latin1_text | st.sampled_from(["", " ", "AWS4-HMAC-SHA256"])))]
    elif kind == "prefixed":
        headers = [*others, ("Authorization", "AWS4-HMAC-SHA256 Credential=" + draw(latin1_text))]
    elif kind == "truncated":
        headers = [*others, ("Authorization", authorization[: draw(st.integers(0, len(authorization) - 1))])]
    elif kind == "mutated":
        mutation = draw(st.sampled_from(sorted(MUTATIONS)))
        kind = f"mutated ({mutation})"
        headers = [*others, ("Authorization", MUTATIONS[mutation](authorization))]
    elif kind == "late":  # signed, correctly, more than 5 minutes away from the gateway's clock
        minutes = draw(st.sampled_from([6, 10, 60, 24 * 60, 365 * 24 * 60]) | st.integers(6, 10**6))
        when = now + draw(st.sampled_from([-1, 1])) * timedelta(minutes=minutes)
        headers = signed_headers(platform, method, target, body, base, when=when)
    elif kind == "bad date":
        stamp = draw(st.sampled_from(BAD_DATES) | latin1_text)
        headers = [(k, stamp if k == "X-Amz-Date" else v) for k, v in signed]
    elif kind == "no date":
        headers = [(k, v) for k, v in signed if k != "X-Amz-Date"]
    elif kind == "date header":
        headers = [(k, v) for k, v in signed if k != "X-Amz-Date"] + [
            ("Date", now.strftime("%a, %d %b %Y %H:%M:%S GMT"))
        ]
    elif kind == "two dates":
        headers = [*signed, ("X-Amz-Date", now.strftime("%Y%m%dT%H%M%SZ"))]
    elif kind == "token":
        headers = signed_headers(platform, method, target, body, [*base, ("X-Amz-Security-Token", "t")], when=None)
    elif kind == "unsigned header":
        headers = [*signed, (draw(st.sampled_from(["X-Amz-Foo", "x-amz-content-sha256", "X-Amz-Target"])), "1")]
    elif kind == "other body":
        body = body + b" " if body else b"{}"
    elif kind == "presigned":
        parts = {"X-Amz-Algorithm": "AWS4-HMAC-SHA256", "X-Amz-Credential": draw(latin1_text),
                 "X-Amz-Date": draw(st.sampled_from(BAD_DATES) | latin1_text), "X-Amz-Expires": draw(latin1_text),
                 "X-Amz-SignedHeaders": "host", "X-Amz-Signature": draw(latin1_text)}  # fmt: skip
        chosen = draw(st.lists(st.sampled_from(sorted(parts)), unique=True, min_size=1))
        target += ("&" if "?" in target else "?") + encode_query([(k, parts[k]) for k in chosen])
        headers = others if draw(st.booleans()) else signed
    elif kind == "two authorizations":
        headers = [*signed, ("Authorization", authorization)]
    return Forged(method, target, body, headers, kind)


def test_fuzz_the_signature_check_over_http(platform: Platform) -> None:
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    offset = log_size(platform)

    def one(request: Forged) -> None:
        answer = send(platform.gateway.port, request.method, request.target, request.headers, request.body)
        what = request.described()
        assert answer is not None, f"the connection closed without an answer to {what}"
        assert answer.status in (400, 403), f"{answer.status} for {what}\nanswer {answer.body[:2000]!r}"
        if answer.status == 400 and "x-amzn-errortype" not in answer.headers:
            # aiohttp's own parser refusing what is not HTTP (a NUL in a header), before any handler, as in
            # tests/integration/test_fuzz_gateway.py: a plain-text 400.
            assert answer.headers.get("content-type", "").startswith("text/plain"), what
            outcomes[f"{request.kind.split(' (')[0]} 400 (aiohttp's parser)"] += 1
            return
        check_error_shape(answer, what)
        outcomes[f"{request.kind.split(' (')[0]} {answer.status} {answer.headers['x-amzn-errortype']}"] += 1

    run_property(platform, "signature", forged_requests(platform), SIGNATURE_EXAMPLES, one, failures)
    print(f"\n{sum(outcomes.values())} forged requests: {dict(sorted(outcomes.items()))}")
    assert not failures, "\n\n".join(failures)
    assert sum(outcomes.values()) >= SIGNATURE_EXAMPLES
    assert platform.gateway.proc.poll() is None
    lam = platform.client()
    assert lam.get_function(FunctionName=OTHER)["Configuration"]["FunctionName"] == OTHER  # no forged DELETE passed
    assert "forged" not in lam.list_tags(Resource=ARN)["Tags"]
    assert tracebacks_since(platform, offset) == [], first_traceback(platform, offset)
