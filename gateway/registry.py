"""What the gateway can invoke: function versions, looked up by the names callers use.

The local backend fills it from a directory of manifests (`manifests.load_directory`); the Kubernetes backend from
watching Function objects. Either way a version is a frozen snapshot: spec plus materialised code.
"""

from __future__ import annotations

from dataclasses import dataclass

from kambda import naming
from kambda.specs import FunctionSpec


@dataclass(frozen=True)
class FunctionVersion:
    spec: FunctionSpec
    version: str  # "$LATEST", "1", "2", ...
    code_dir: str
    code_sha256: str

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
    """Function versions by namespace and name. A gateway serves one namespace by name; others by `ns/name`."""

    def __init__(self, namespace: str = "default") -> None:
        self.namespace = namespace
        self._versions: dict[tuple[str, str], dict[str, FunctionVersion]] = {}

    def put(self, version: FunctionVersion) -> None:
        spec = version.spec
        self._versions.setdefault((spec.namespace, spec.name), {})[version.version] = version

    def remove(self, namespace: str, name: str) -> None:
        self._versions.pop((namespace, name), None)

    def functions(self) -> list[FunctionVersion]:
        return [v[naming.LATEST] for v in self._versions.values() if naming.LATEST in v]

    def all_versions(self) -> list[FunctionVersion]:
        return [fv for versions in self._versions.values() for fv in versions.values()]

    def get_function(self, name: str) -> dict[str, FunctionVersion] | None:
        return self._versions.get((self.namespace, name))

    def resolve(self, ref: naming.FunctionRef) -> FunctionVersion:
        versions = self.get_function(ref.name)
        qualifier = ref.qualifier or naming.LATEST
        if versions is None or qualifier not in versions:
            raise NotFound(ref.name, ref.qualifier)
        return versions[qualifier]

    def by_key(self, function: str, version: str) -> FunctionVersion | None:
        namespace, _, name = function.partition("/")
        return self._versions.get((namespace, name), {}).get(version)
