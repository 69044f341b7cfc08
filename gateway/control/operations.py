"""The control-plane operations: botocore's name, method and path template, defined once (pure).

The HTTP router registers one handler per entry, and the authoriser finds the entry a request is, to check its IAM
action (`lambda:` + the operation's name) against the resource the path names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from kambda import packages

# A ZipFile travels base64-encoded inside the JSON body: 50 MB of zip is about 67 MB of request.
CODE_BODY_LIMIT = packages.MAX_ZIPPED * 4 // 3 + 64 * 1024
CONFIG_BODY_LIMIT = 1024 * 1024  # everything else is a small JSON document
MIN_BODY_RATE = 256 * 1024  # bytes/s a client is given beyond the body timeout: a 67 MB body gets 256 s more


def body_timeout(base: float, limit: int) -> float:
    """How long a body of up to `limit` bytes may take to arrive: the body timeout, and time for its size."""
    return base + limit / MIN_BODY_RATE


@dataclass(frozen=True)
class Operation:
    name: str  # botocore's operation name; the IAM action is lambda:<name>
    method: str
    template: str  # aiohttp's path syntax: {FunctionName}, {Name}, {Resource}
    body_limit: int = CONFIG_BODY_LIMIT
    qualified: bool = False  # the Qualifier query parameter is part of the resource (a version or alias)

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.template)) + r"\Z")


OPERATIONS: tuple[Operation, ...] = (
    Operation("CreateFunction", "POST", "/2015-03-31/functions", CODE_BODY_LIMIT),
    Operation("ListFunctions", "GET", "/2015-03-31/functions"),
    Operation("GetFunction", "GET", "/2015-03-31/functions/{FunctionName}", qualified=True),
    Operation("DeleteFunction", "DELETE", "/2015-03-31/functions/{FunctionName}", qualified=True),
    Operation("GetFunctionConfiguration", "GET", "/2015-03-31/functions/{FunctionName}/configuration", qualified=True),
    Operation("UpdateFunctionConfiguration", "PUT", "/2015-03-31/functions/{FunctionName}/configuration"),
    Operation("UpdateFunctionCode", "PUT", "/2015-03-31/functions/{FunctionName}/code", CODE_BODY_LIMIT),
    Operation("PublishVersion", "POST", "/2015-03-31/functions/{FunctionName}/versions"),
    Operation("ListVersionsByFunction", "GET", "/2015-03-31/functions/{FunctionName}/versions"),
    Operation("CreateAlias", "POST", "/2015-03-31/functions/{FunctionName}/aliases"),
    Operation("ListAliases", "GET", "/2015-03-31/functions/{FunctionName}/aliases"),
    Operation("GetAlias", "GET", "/2015-03-31/functions/{FunctionName}/aliases/{Name}"),
    Operation("UpdateAlias", "PUT", "/2015-03-31/functions/{FunctionName}/aliases/{Name}"),
    Operation("DeleteAlias", "DELETE", "/2015-03-31/functions/{FunctionName}/aliases/{Name}"),
    Operation("PutFunctionConcurrency", "PUT", "/2017-10-31/functions/{FunctionName}/concurrency"),
    Operation("DeleteFunctionConcurrency", "DELETE", "/2017-10-31/functions/{FunctionName}/concurrency"),
    Operation("GetFunctionConcurrency", "GET", "/2019-09-30/functions/{FunctionName}/concurrency"),
    Operation(
        "PutProvisionedConcurrencyConfig",
        "PUT",
        "/2019-09-30/functions/{FunctionName}/provisioned-concurrency",
        qualified=True,
    ),
    Operation(
        "GetProvisionedConcurrencyConfig",
        "GET",
        "/2019-09-30/functions/{FunctionName}/provisioned-concurrency",
        qualified=True,
    ),
    Operation(
        "DeleteProvisionedConcurrencyConfig",
        "DELETE",
        "/2019-09-30/functions/{FunctionName}/provisioned-concurrency",
        qualified=True,
    ),
    Operation("GetAccountSettings", "GET", "/2016-08-19/account-settings"),
    Operation("TagResource", "POST", "/2017-03-31/tags/{Resource}"),
    Operation("UntagResource", "DELETE", "/2017-03-31/tags/{Resource}"),
    Operation("ListTags", "GET", "/2017-03-31/tags/{Resource}"),
)
_COMPILED = tuple((op, op.pattern) for op in OPERATIONS)


def match(method: str, path: str) -> tuple[Operation, dict[str, str]] | None:
    """The operation `method path` is, with its path parameters (still percent-decoded by the caller), or None."""
    for op, pattern in _COMPILED:
        if op.method == method:
            found = pattern.match(path)
            if found:
                return op, found.groupdict()
    return None


# The one path Lambda serves two operations on: a GET with ?List=ALL lists a function's configs.
_LISTED = {"GetProvisionedConcurrencyConfig": "ListProvisionedConcurrencyConfigs"}


def name_of(op: Operation, query: Mapping[str, str]) -> str:
    """The operation a request to `op`'s route is (botocore's name, whose IAM action the authoriser judges)."""
    listed = _LISTED.get(op.name)
    return listed if listed is not None and query.get("List") == "ALL" else op.name


def body_limit(method: str, path: str) -> int | None:
    """How large a body this request may have, if it is a control-plane operation."""
    found = match(method, path)
    return found[0].body_limit if found else None
