"""Functions deployed through the gateway's API (`kambda deploy`), on the local backend only.

`PUT /kambda/v1/functions/{name}` takes a Function manifest (JSON) whose code is a package already in the code store
(`spec.code.sha256`) or inline files, and serves it from then on; `GET` returns the manifest last deployed. Each
function is one file, `<data-dir>/functions/<name>.json` (written to a temporary file, fsync'ed, renamed), read at
start next to the manifests directory's functions, so a deployed function survives a restart.

Versions are numbered as the operator numbers them on Kubernetes: a change of the versioned fields
(`specs.VERSIONED_FIELDS`: code, runtime, memory, ...) publishes version N+1, which `$LATEST` then runs; a change of
anything else (concurrency, scaling) applies to every version. The newest `retainVersions` are kept. Functions
defined by the manifests directory are that directory's: deploying over one is a 409.

These routes exist only on the local backend, a developer tool bound to 127.0.0.1 by default, and are, like the
whole gateway today, unauthenticated. On Kubernetes `kambda deploy` writes the Function object with the user's own
kubeconfig, so that RBAC decides who may, and the gateway has no write power.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from kambda import hostruntimes, jsontext, manifests, naming, packages, specs

from . import errors
from .codestore import CodeStore, PackageMissing
from .connections import read_body
from .registry import FunctionVersion, Registry
from .settings import GatewaySettings

log = logging.getLogger(__name__)


class DeployError(Exception):
    """A manifest that cannot be deployed; `status` and `error_type` say how to answer."""

    def __init__(self, message: str, *, status: int = 400, error_type: str = "InvalidParameterValueException") -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


@dataclass(frozen=True)
class Deployed:
    name: str
    version: str
    code_sha256: str  # Lambda's CodeSha256 (base64)
    code_size: int
    created: bool  # a new version was published

    def json(self) -> dict[str, Any]:
        return {
            "FunctionName": self.name, "Version": self.version, "CodeSha256": self.code_sha256,
            "CodeSize": self.code_size, "Created": self.created,
        }  # fmt: skip


def version_hash(spec: Mapping[str, Any]) -> str:
    """The operator's `version_hash`: the versioned fields, canonically serialised."""
    snapshot = {k: spec[k] for k in specs.VERSIONED_FIELDS if k in spec}
    return hashlib.sha256(json.dumps(snapshot, sort_keys=True).encode()).hexdigest()[:16]


class Deployments:
    """The one owner of `<root>` (one JSON file per deployed function) and of those functions in the registry."""

    def __init__(
        self, root: Path, store: CodeStore, cache_dir: Path, registry: Registry, *, reserved: Set[str] = frozenset()
    ) -> None:
        self._root = root
        self._store = store
        self._cache = cache_dir
        self._registry = registry
        self._reserved = reserved  # names the manifests directory defines
        self._lock = asyncio.Lock()
        root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def load(self) -> None:
        """Serve every function deployed before (blocking). One that cannot be served is left out, loudly: the
        gateway still starts, so that it can be deployed again."""
        for path in sorted(self._root.glob("*.json")):
            name = path.stem
            if name in self._reserved:
                log.warning("deployed function %s is also in the manifests directory, which wins", name)
                continue
            try:
                record = json.loads(path.read_text())
                self._registry.replace_function(self._registry.namespace, name, self._versions(record))
            except (DeployError, ValueError, KeyError, TypeError, OSError) as exc:
                log.error("deployed function %s is not served: %s (deploy it again)", name, exc)

    def manifest(self, name: str) -> dict[str, Any] | None:
        self._check_name(name)
        path = self._root / f"{name}.json"
        if not path.is_file():
            return None
        manifest: dict[str, Any] = json.loads(path.read_text())["manifest"]
        return manifest

    async def deploy(self, name: str, manifest: Mapping[str, Any]) -> Deployed:
        """Serve `manifest` as function `name`'s newest version; a package is unpacked (in a thread) first."""
        self._check_name(name)
        raw_meta = manifest.get("metadata")
        meta: Mapping[str, Any] = raw_meta if isinstance(raw_meta, Mapping) else {}
        if meta.get("name", name) != name:
            raise DeployError(f"metadata.name is {meta.get('name')!r} but the URL names {name!r}")
        namespace = self._registry.namespace
        if meta.get("namespace", namespace) != namespace:
            raise DeployError(f"this gateway serves namespace {namespace!r}, not {meta.get('namespace')!r}")
        manifest = {**manifest, "metadata": {"name": name, "namespace": namespace}}
        spec = await asyncio.to_thread(self._parse, manifest)  # its runtime may be probed first (a subprocess)
        async with self._lock:  # one deploy at a time, so that version numbers follow each other
            built, created = await asyncio.to_thread(self._publish, name, manifest, spec)
            self._registry.replace_function(namespace, name, built)
        latest = built[naming.LATEST]
        size = self._store.size(spec.code.package) if spec.code.package else None
        if size is None:
            size = sum(len(text.encode()) for text in (spec.code.files or {}).values())
        return Deployed(name, latest.version, latest.code_sha256, size, created)

    def _publish(
        self, name: str, manifest: Mapping[str, Any], spec: specs.FunctionSpec
    ) -> tuple[dict[str, FunctionVersion], bool]:
        """The function's versions with `manifest` as the newest, written to its file (blocking)."""
        path = self._root / f"{name}.json"
        record = json.loads(path.read_text()) if path.is_file() else {"versions": []}
        versions: list[dict[str, Any]] = record["versions"]
        raw_spec = dict(manifest.get("spec") or {})
        digest = version_hash(raw_spec)
        created = not versions or versions[-1]["hash"] != digest
        if created:
            number = versions[-1]["version"] + 1 if versions else 1
            snapshot = {k: raw_spec[k] for k in specs.VERSIONED_FIELDS if k in raw_spec}
            versions.append({"version": number, "hash": digest, "spec": snapshot})
        record = {"manifest": manifest, "versions": versions[-spec.retain_versions :]}
        built = self._versions(record)  # before anything is written: code that cannot run is refused
        _write_atomically(path, json.dumps(record, indent=1, sort_keys=True))
        return built, created

    def _check_name(self, name: str) -> None:
        if not (specs.NAME_RE.fullmatch(name) and specs.K8S_NAME_RE.fullmatch(name)):
            raise DeployError(f"Invalid function name: {name!r}")
        if name in self._reserved:
            raise DeployError(
                f"{name} is defined by the manifests directory this gateway serves: change it there",
                status=409,
                error_type="ResourceConflictException",
            )

    def _parse(self, manifest: Mapping[str, Any]) -> specs.FunctionSpec:
        try:
            spec = specs.parse_function(manifest, default_namespace=self._registry.namespace)
        except specs.SpecError as exc:
            raise DeployError("; ".join(exc.errors)) from None
        unavailable = hostruntimes.problem(spec.runtime)
        if unavailable is not None:
            raise DeployError(f"spec.runtime: {unavailable}")
        if spec.code.package is None and spec.code.files is None:
            # A path would let anyone who reaches this port serve a directory of this host; url, configMap and
            # image are Kubernetes' sources.
            raise DeployError("spec.code: the local backend deploys a package (sha256) or inline files")
        return spec

    def _versions(self, record: Mapping[str, Any]) -> dict[str, FunctionVersion]:
        """Every retained version as the registry serves it, `$LATEST` the newest; each version's code at hand."""
        manifest = record["manifest"]
        shared = {k: v for k, v in manifest["spec"].items() if k not in specs.VERSIONED_FIELDS}
        built: dict[str, FunctionVersion] = {}
        for entry in record["versions"]:
            version_manifest = {**manifest, "spec": {**shared, **entry["spec"]}}
            spec = self._parse(version_manifest)
            code_dir, sha = self._materialise(spec.code)
            opt_dir = self._layers(spec.layers)
            number = str(entry["version"])
            built[number] = FunctionVersion(spec, number, code_dir=str(code_dir), code_sha256=sha, opt_dir=opt_dir)
        built[naming.LATEST] = built[str(record["versions"][-1]["version"])]
        return built

    def _layers(self, layers: tuple[str, ...]) -> str | None:
        if not layers:
            return None
        try:
            return str(self._store.unpack_layers(layers, self._cache))
        except PackageMissing as exc:
            raise DeployError(f"spec.layers: {exc}", status=404, error_type="ResourceNotFoundException") from None
        except packages.PackageError as exc:
            raise DeployError(f"spec.layers: {exc}") from None

    def _materialise(self, code: specs.Code) -> tuple[Path, str]:
        if code.package is None:
            return manifests.materialise(code, self._cache)
        try:
            return self._store.unpack(code.package, self._cache), packages.code_sha256(code.package)
        except PackageMissing as exc:
            raise DeployError(f"spec.code.sha256: {exc}", status=404, error_type="ResourceNotFoundException") from None
        except packages.PackageError as exc:
            raise DeployError(f"spec.code.sha256: {exc}") from None


def _write_atomically(path: Path, text: str) -> None:
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with open(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


class DeployAPI:
    def __init__(self, settings: GatewaySettings, deployments: Deployments | None) -> None:
        self._settings = settings
        self._deployments = deployments  # None: not the local backend

    def add_routes(self, router: web.UrlDispatcher) -> None:
        path = "/kambda/v1/functions/{name}"
        if self._deployments is None:
            router.add_route("*", path, self.elsewhere)
            return
        router.add_put(path, self.put)
        router.add_get(path, self.get)

    async def elsewhere(self, request: web.Request) -> web.StreamResponse:
        raise errors.AWSError(
            404,
            "UnknownOperationException",
            "Functions are deployed through the gateway on the local backend only; on Kubernetes, kambda deploy "
            "writes the Function with your kubeconfig",
        )

    async def get(self, request: web.Request) -> web.StreamResponse:
        assert self._deployments is not None
        name = request.match_info["name"]
        try:
            manifest = self._deployments.manifest(name)
        except DeployError as exc:
            raise errors.AWSError(exc.status, exc.error_type, str(exc)) from None
        if manifest is None:
            raise errors.not_found(naming.function_arn(self._settings.region, self._settings.account_id, name))
        return web.json_response({"Manifest": manifest})

    async def put(self, request: web.Request) -> web.StreamResponse:
        assert self._deployments is not None
        s = self._settings
        body = await read_body(
            request, limit=s.max_sync_payload, timeout=s.body_timeout, too_large="The manifest is too large"
        )
        try:
            manifest = jsontext.loads(body)
        except jsontext.InvalidJSON as exc:
            raise errors.invalid_content(f"The manifest is not JSON: {exc}") from None
        if not isinstance(manifest, Mapping):
            raise errors.invalid_content("The manifest must be a JSON object")
        try:
            deployed = await self._deployments.deploy(request.match_info["name"], manifest)
        except DeployError as exc:
            raise errors.AWSError(exc.status, exc.error_type, str(exc)) from None
        return web.json_response(deployed.json(), status=201 if deployed.created else 200)
