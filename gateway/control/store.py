"""Where the control plane's functions live, as one interface with two owners: the local backend's data directory
(`gateway/deployments.py`) and the Kubernetes API server (`control/kubernetes.py`).

Specs are plain dicts, as a Function manifest's `spec` is. Versions follow kambda's rule, the operator's: a change
of a versioned field (`specs.VERSIONED_FIELDS`) publishes version N+1, which `$LATEST` then runs. A store raises
the AWS errors itself (`errors.AWSError`: not found, conflict, precondition failed), so that the API renders them as
it renders every refusal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from kambda.operator import versioning

from .. import errors
from .shapes import Code, Status

# A change of a function's spec: the current spec in, the new one out (pure; it may raise an AWSError to refuse).
# The store applies it to what it holds at the moment of writing, so that concurrent changes are never lost.
Change = Callable[[Mapping[str, Any]], Mapping[str, Any]]


@dataclass(frozen=True)
class StoredVersion:
    number: str
    spec: Mapping[str, Any]  # the version's whole spec: its snapshot, and the function's shared settings
    last_modified: str
    revision: str


@dataclass(frozen=True)
class StoredFunction:
    name: str
    spec: Mapping[str, Any]  # what $LATEST is
    revision: str  # Lambda's RevisionId of $LATEST
    last_modified: str
    versions: tuple[StoredVersion, ...]  # published, oldest first
    status: Status = field(default_factory=Status)
    code: Code | None = None  # $LATEST's CodeSha256 and size where the store knows them better than its spec says

    def version(self, number: str) -> StoredVersion | None:
        return next((v for v in self.versions if v.number == number), None)

    @property
    def newest(self) -> StoredVersion | None:
        return self.versions[-1] if self.versions else None


@dataclass(frozen=True)
class StoredAlias:
    function: str
    name: str
    version: str
    weights: Mapping[str, float]  # additional versions' shares
    description: str
    revision: str


class FunctionStore(Protocol):
    async def functions(self) -> list[StoredFunction]:
        """Every function, by name."""
        ...

    async def function(self, name: str) -> StoredFunction:
        """The function, or ResourceNotFoundException."""
        ...

    async def create(self, name: str, spec: Mapping[str, Any]) -> StoredFunction:
        """A new function (ResourceConflictException if the name is taken)."""
        ...

    async def update(self, name: str, change: Change, *, revision: str | None = None) -> StoredFunction:
        """The function's spec changed by `change`; `revision`, if given, must be its current RevisionId."""
        ...

    async def published(self, name: str) -> StoredFunction:
        """The function once its current spec is a published version (Kubernetes: the operator's work)."""
        ...

    async def delete(self, name: str) -> None: ...

    async def delete_version(self, name: str, version: str) -> None: ...

    async def aliases(self, function: str) -> list[StoredAlias]: ...

    async def put_alias(self, alias: StoredAlias, *, create: bool, revision: str | None = None) -> StoredAlias:
        """Create (`create`: a conflict if it exists) or replace an alias; `revision` as for `update`."""
        ...

    async def delete_alias(self, function: str, name: str) -> None: ...


def check_alias(alias: StoredAlias, versions: Iterable[str]) -> None:
    """An alias may route only to versions that exist, with weights that add up to at most 1."""
    problems = versioning.alias_problems(alias.version, alias.weights, versions)
    if problems:
        missing = any("does not exist" in p for p in problems)
        error_type = "ResourceNotFoundException" if missing else "InvalidParameterValueException"
        raise errors.AWSError(404 if missing else 400, error_type, "; ".join(problems))


def check_version_deletable(arn: str, fn: StoredFunction, aliases: Iterable[StoredAlias], version: str) -> None:
    """A version may be deleted unless it is what $LATEST runs or an alias routes to it (Lambda's rule, with
    kambda's $LATEST being the newest version)."""
    if fn.version(version) is None:
        raise errors.not_found(arn)
    if fn.newest is not None and fn.newest.number == version:
        raise conflict(f"Version {version} is what $LATEST runs: it can be deleted with the function")
    for alias in aliases:
        if version == alias.version or version in alias.weights:
            raise conflict(f"Alias {alias.name} routes to version {version}: change the alias first")


def conflict(message: str) -> errors.AWSError:
    return errors.AWSError(409, "ResourceConflictException", message)


def revision_mismatch() -> errors.AWSError:
    return errors.AWSError(
        412,
        "PreconditionFailedException",
        "The Revision Id provided does not match the latest Revision Id. Call the GetFunction/GetAlias API to "
        "retrieve the latest Revision Id",
    )
