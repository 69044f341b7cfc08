"""What the gateway can invoke: function versions, looked up by the names callers use.

The local backend fills it from a directory of manifests (`manifests.load_directory`); the Kubernetes backend from
watching Function objects. Either way a version is a frozen snapshot: spec plus materialised code.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from kambda import naming
from kambda.specs import FunctionSpec

from . import provisioning
from .routing import pick as routing_pick


@dataclass(frozen=True)
class FunctionVersion:
    spec: FunctionSpec
    version: str  # "$LATEST", "1", "2", ...
    code_dir: str
    code_sha256: str
    opt_dir: str | None = None  # the local backend's merged layers (pods unpack their own under /opt)

    @property
    def function(self) -> str:
        """namespace/name: the function's identity on the runtime interface."""
        return f"{self.spec.namespace}/{self.spec.name}"

    @property
    def key(self) -> tuple[str, str]:
        return (self.function, self.version)


class NotFound(LookupError):
    def __init__(self, name: str, qualifier: str | None) -> None:
        super().__init__(name if qualifier is None else f"{name}:{qualifier}")
        self.name = name
        self.qualifier = qualifier


class Registry:
    """Function versions and aliases by namespace and name; a gateway serves one namespace's functions by name."""

    def __init__(self, namespace: str = "default", *, rng: Callable[[], float] = random.random) -> None:
        self.namespace = namespace
        self._versions: dict[tuple[str, str], dict[str, FunctionVersion]] = {}
        self._aliases: dict[tuple[str, str], dict[str, dict[str, float]]] = {}  # function -> alias -> routing
        self._rng = rng  # None for tests: a fixed sequence makes weighted routing deterministic

    def put(self, version: FunctionVersion) -> None:
        spec = version.spec
        self._versions.setdefault((spec.namespace, spec.name), {})[version.version] = version

    def replace_function(self, namespace: str, name: str, versions: dict[str, FunctionVersion]) -> None:
        """All versions of one function at once (`$LATEST` among them), as the Kubernetes watch sees them."""
        self._versions[(namespace, name)] = versions

    def remove(self, namespace: str, name: str) -> None:
        self._versions.pop((namespace, name), None)

    def put_alias(self, namespace: str, function: str, alias: str, routing: dict[str, float]) -> None:
        self._aliases.setdefault((namespace, function), {})[alias] = routing

    def remove_alias(self, namespace: str, function: str, alias: str) -> None:
        self._aliases.get((namespace, function), {}).pop(alias, None)

    def routing(self, namespace: str, function: str, alias: str) -> dict[str, float] | None:
        return self._aliases.get((namespace, function), {}).get(alias)

    def aliases_of(self, namespace: str, function: str) -> list[str]:
        return list(self._aliases.get((namespace, function), {}))

    def functions(self) -> list[FunctionVersion]:
        return [v[naming.LATEST] for v in self._versions.values() if naming.LATEST in v]

    def all_versions(self) -> list[FunctionVersion]:
        return [fv for versions in self._versions.values() for fv in versions.values()]

    def get_function(self, name: str) -> dict[str, FunctionVersion] | None:
        return self._versions.get((self.namespace, name))

    def resolve(self, ref: naming.FunctionRef) -> FunctionVersion:
        versions = self.get_function(ref.name)
        qualifier = ref.qualifier or naming.LATEST
        if versions is None:
            raise NotFound(ref.name, ref.qualifier)
        routing = self._aliases.get((self.namespace, ref.name), {}).get(qualifier)
        if routing is not None:
            qualifier = routing_pick(routing, self._rng())
        if qualifier not in versions:
            raise NotFound(ref.name, ref.qualifier)
        return versions[qualifier]

    def uses_package(self, function: str, sha256: str) -> bool:
        """Whether a version of `namespace/name` runs the code store's package `sha256` (who may download it)."""
        namespace, _, name = function.partition("/")
        return any(
            v.spec.code.package == sha256 or sha256 in v.spec.layers
            for v in self._versions.get((namespace, name), {}).values()
        )

    def by_key(self, function: str, version: str) -> FunctionVersion | None:
        namespace, _, name = function.partition("/")
        return self._versions.get((namespace, name), {}).get(version)

    def provisioned(self, version: FunctionVersion) -> int:
        """The provisioned concurrency `version` keeps: its own, its aliases' shares, and the function's
        `spec.concurrency.provisioned` if it is the version `$LATEST` runs (provisioning.requested)."""
        spec = version.spec
        latest = self._versions.get((spec.namespace, spec.name), {}).get(naming.LATEST)
        return provisioning.requested(
            spec, version.version, None if latest is None else latest.version,
            lambda alias: self.routing(spec.namespace, spec.name, alias),
        )  # fmt: skip
