"""Functions made through the gateway's APIs on the local backend: the Lambda control plane's store
(`control/store.FunctionStore`) and `kambda deploy`'s `PUT /kambda/v1/functions/{name}`.

The deploy route takes a Function manifest (JSON) whose code is a package already in the code store
(`spec.code.sha256`) or inline files, and serves it from then on; `GET` returns the manifest last deployed. Each
function is one file, `<data-dir>/functions/<name>.json` (written to a temporary file, fsync'ed, renamed), read at
start next to the manifests directory's functions, so what the API made survives a restart.

Versions are numbered as the operator numbers them on Kubernetes: a change of the versioned fields
(`specs.VERSIONED_FIELDS`: code, runtime, memory, ...) publishes version N+1, which `$LATEST` then runs; a change of
anything else (concurrency, scaling) applies to every version. The newest `retainVersions` are kept. Functions
defined by the manifests directory are that directory's: deploying over one is a 409.

The deploy route exists only on the local backend (on Kubernetes `kambda deploy` writes the Function object with
the user's own kubeconfig, so that RBAC decides who may). Like every API route, it is behind SigV4 unless the
gateway runs anonymously (`--auth`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import tempfile
import uuid
from collections.abc import Mapping, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from kambda import hostruntimes, manifests, naming, packages, specs
from kambda.operator import versioning

from . import errors
from .codestore import CodeStore, PackageMissing
from .connections import read_json_object
from .control import shapes
from .control import store as store_api
from .control.store import StoredAlias, StoredFunction, StoredVersion
from .registry import FunctionVersion, Registry
from .settings import GatewaySettings

log = logging.getLogger(__name__)


class DeployError(errors.AWSError):
    """A manifest that cannot be deployed: an AWS error like any other refusal (400 unless said)."""

    def __init__(self, message: str, *, status: int = 400, error_type: str = "InvalidParameterValueException") -> None:
        super().__init__(status, error_type, message)


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
    """The one owner of `<root>` (one JSON file per deployed function) and of those functions in the registry: the
    local backend's `FunctionStore`.

    A record is `{manifest, versions: [{version, hash, spec, modified}], aliases: {name: {version, weights,
    description, generation}}, uid, generation, modified}`; `generation` counts changes, so that RevisionIds
    (`shapes.revision_id(uid, generation)`) change with every one, as Lambda's do."""

    def __init__(
        self, root: Path, store: CodeStore, cache_dir: Path, registry: Registry, *,
        directory: Mapping[str, Mapping[str, Any]] | None = None,
        place: shapes.Place | None = None,
    ) -> None:  # fmt: skip
        self._root = root
        self._store = store
        self._cache = cache_dir
        self._registry = registry
        # The manifests directory's functions (name -> spec): served, listed and shown, but that directory's to change.
        self._directory = dict(directory or {})
        self._reserved: Set[str] = self._directory.keys()
        self._place = place or shapes.Place("us-east-1", "000000000000")
        self._lock = asyncio.Lock()
        self._started = shapes.now()  # the directory's functions were last modified, as far as the API knows, then
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
                self._serve(name, record, self._versions(record))
            except (DeployError, ValueError, KeyError, TypeError, OSError) as exc:
                log.error("deployed function %s is not served: %s (deploy it again)", name, exc)

    def manifest(self, name: str) -> dict[str, Any] | None:
        self._check_name(name)
        record = self._record(name)
        return None if record is None else dict(record["manifest"])

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
        raw_spec = manifest.get("spec")
        async with self._lock:  # one change at a time, so that version numbers follow each other
            record = await asyncio.to_thread(self._record, name)
            _, created, built = await self._save(name, raw_spec if isinstance(raw_spec, Mapping) else {}, record)
        latest = built[naming.LATEST]
        spec = latest.spec
        size = self._store.size(spec.code.package) if spec.code.package else None
        if size is None:
            size = sum(len(text.encode()) for text in (spec.code.files or {}).values())
        return Deployed(name, latest.version, latest.code_sha256, size, created)

    # ---- FunctionStore ---------------------------------------------------------------------------------------

    async def functions(self) -> list[StoredFunction]:
        def read_all() -> list[tuple[str, dict[str, Any]]]:
            found = []
            for path in sorted(self._root.glob("*.json")):
                record = self._record(path.stem) if path.stem not in self._reserved else None
                if record is not None:  # None: deleted since the listing (reads do not take the lock)
                    found.append((path.stem, record))
            return found

        made = [self._stored(name, record) for name, record in await asyncio.to_thread(read_all)]
        listed = [f for f in map(self._from_directory, sorted(self._directory)) if f is not None]
        return sorted(made + listed, key=lambda f: f.name)

    async def function(self, name: str) -> StoredFunction:
        from_directory = self._from_directory(name)
        if from_directory is not None:
            return from_directory
        return self._stored(name, await self._existing(name))

    def _from_directory(self, name: str) -> StoredFunction | None:
        """A manifests-directory function as the API shows it: $LATEST only (that directory has no versions), its
        code as the registry serves it, read-only."""
        spec = self._directory.get(name)
        served = self._registry.by_key(f"{self._registry.namespace}/{name}", naming.LATEST)
        if spec is None or served is None:
            return None
        code = shapes.Code(served.code_sha256, 0)
        revision = shapes.revision_id(f"directory:{name}", version_hash(spec))
        return StoredFunction(name, spec, revision, self._started, (), code=code)

    async def create(self, name: str, spec: Mapping[str, Any]) -> StoredFunction:
        self._writable(name)
        async with self._lock:
            if await asyncio.to_thread(self._record, name) is not None:
                raise store_api.conflict(f"Function already exist: {name}")
            record, _, _ = await self._save(name, spec, None)
        return self._stored(name, record)

    async def update(self, name: str, change: store_api.Change, *, revision: str | None = None) -> StoredFunction:
        self._writable(name)
        async with self._lock:
            current = await self._existing(name)
            if revision is not None and revision != self._stored(name, current).revision:
                raise store_api.revision_mismatch()
            record, _, _ = await self._save(name, change(current["manifest"]["spec"]), current)
        return self._stored(name, record)

    async def published(self, name: str) -> StoredFunction:
        return await self.function(name)  # a local change is published before it is answered

    async def delete(self, name: str) -> None:
        self._writable(name)
        async with self._lock:
            await self._existing(name)
            await asyncio.to_thread((self._root / f"{name}.json").unlink)
            self._registry.remove(self._registry.namespace, name)
            for alias in list(self._registry.aliases_of(self._registry.namespace, name)):
                self._registry.remove_alias(self._registry.namespace, name, alias)

    async def delete_version(self, name: str, version: str) -> None:
        self._writable(name)
        async with self._lock:
            record = await self._existing(name)
            aliases = [self._alias(name, alias, entry, record) for alias, entry in record.get("aliases", {}).items()]
            arn = self._place.function_arn(name, version)
            store_api.check_version_deletable(arn, self._stored(name, record), aliases, version)
            record = {**record, "versions": [v for v in record["versions"] if str(v["version"]) != version]}
            await self._write(name, record)

    async def aliases(self, function: str) -> list[StoredAlias]:
        if self._from_directory(function) is not None:
            return []  # the manifests directory defines no aliases
        record = await self._existing(function)
        return [
            self._alias(function, alias, entry, record) for alias, entry in sorted(record.get("aliases", {}).items())
        ]

    async def put_alias(self, alias: StoredAlias, *, create: bool, revision: str | None = None) -> StoredAlias:
        self._writable(alias.function)
        async with self._lock:
            record = await self._existing(alias.function)
            entries: dict[str, Any] = dict(record.get("aliases", {}))
            current = entries.get(alias.name)
            arn = self._place.function_arn(alias.function, alias.name)
            if create and current is not None:
                raise store_api.conflict(f"Alias already exists: {arn}")
            if current is None and not create:
                raise errors.resource_not_found(f"Alias not found: {arn}")
            current_revision = None if current is None else self._alias(alias.function, alias.name, current, record)
            if revision is not None and current_revision is not None and revision != current_revision.revision:
                raise store_api.revision_mismatch()
            available = [str(v["version"]) for v in record["versions"]]
            store_api.check_alias(alias, available)
            generation = (current or {}).get("generation", 0) + 1
            entries[alias.name] = {
                "version": alias.version, "weights": dict(alias.weights), "description": alias.description,
                "generation": generation,
            }  # fmt: skip
            record = {**record, "aliases": entries}
            await self._write(alias.function, record)
            self._route(alias.function, alias.name, entries[alias.name])
        return self._alias(alias.function, alias.name, entries[alias.name], record)

    async def delete_alias(self, function: str, name: str) -> None:
        self._writable(function)
        async with self._lock:
            record = await self._existing(function)
            entries = dict(record.get("aliases", {}))
            if entries.pop(name, None) is None:
                raise errors.resource_not_found(f"Alias not found: {self._place.function_arn(function, name)}")
            await self._write(function, {**record, "aliases": entries})
            self._registry.remove_alias(self._registry.namespace, function, name)

    # ---- records ---------------------------------------------------------------------------------------------

    def _record(self, name: str) -> dict[str, Any] | None:
        try:
            text = (self._root / f"{name}.json").read_text()
        except FileNotFoundError:  # never made, or deleted (a read does not wait for the lock)
            return None
        record: dict[str, Any] = json.loads(text)
        return record

    async def _existing(self, name: str) -> dict[str, Any]:
        if name in self._reserved or not (specs.NAME_RE.fullmatch(name) and specs.K8S_NAME_RE.fullmatch(name)):
            raise errors.not_found(self._place.function_arn(name))
        record = await asyncio.to_thread(self._record, name)
        if record is None:
            raise errors.not_found(self._place.function_arn(name))
        return record

    def _writable(self, name: str) -> None:
        self._check_name(name)

    def _stored(self, name: str, record: Mapping[str, Any]) -> StoredFunction:
        spec: Mapping[str, Any] = record["manifest"]["spec"]
        uid = record.get("uid", name)
        versions = tuple(
            StoredVersion(
                str(v["version"]),
                specs.version_spec(spec, v["spec"]),
                v.get("modified") or record.get("modified") or "",
                shapes.revision_id(uid, f"v{v['version']}"),
            )
            for v in record["versions"]
        )
        return StoredFunction(
            name, spec, shapes.revision_id(uid, record.get("generation", len(versions))),
            record.get("modified") or (versions[-1].last_modified if versions else ""), versions,
        )  # fmt: skip

    def _alias(self, function: str, name: str, entry: Mapping[str, Any], record: Mapping[str, Any]) -> StoredAlias:
        uid = record.get("uid", function)
        revision = shapes.revision_id(uid, f"alias:{name}:{entry['generation']}")
        return StoredAlias(
            function, name, entry["version"], dict(entry.get("weights", {})), entry.get("description", ""), revision
        )

    async def _save(
        self, name: str, raw_spec: Mapping[str, Any], record: Mapping[str, Any] | None
    ) -> tuple[dict[str, Any], bool, dict[str, FunctionVersion]]:
        """`raw_spec` as function `name`'s current spec, published as a new version if a versioned field changed:
        (the record written, whether a version was published, the versions served). Under the lock."""
        namespace = self._registry.namespace
        manifest = {"apiVersion": naming.API_VERSION, "kind": "Function",
                    "metadata": {"name": name, "namespace": namespace}, "spec": dict(raw_spec)}  # fmt: skip
        spec = await asyncio.to_thread(self._parse, manifest)  # its runtime may be probed first (a subprocess)
        now = shapes.now()
        record = dict(record or {"versions": [], "aliases": {}, "uid": str(uuid.uuid4()), "generation": 0})
        versions: list[dict[str, Any]] = list(record["versions"])
        digest = version_hash(raw_spec)
        created = not versions or versions[-1]["hash"] != digest
        if created:
            number = versions[-1]["version"] + 1 if versions else 1
            snapshot = {k: raw_spec[k] for k in specs.VERSIONED_FIELDS if k in raw_spec}
            versions.append({"version": number, "hash": digest, "spec": snapshot, "modified": now})
        routed = {int(v) for entry in record.get("aliases", {}).values()
                  for v in [entry["version"], *entry.get("weights", {})]}  # fmt: skip
        drop = set(versioning.versions_to_delete([v["version"] for v in versions], routed, spec.retain_versions))
        record.update(
            manifest=manifest, versions=[v for v in versions if v["version"] not in drop],
            generation=record.get("generation", 0) + 1, modified=now,
        )  # fmt: skip
        built = await asyncio.to_thread(self._versions, record)  # before anything is written: code that cannot run
        await asyncio.to_thread(_write_atomically, self._root / f"{name}.json", json.dumps(record, indent=1))
        self._serve(name, record, built)
        return record, created, built

    async def _write(self, name: str, record: Mapping[str, Any]) -> None:
        """A change that leaves $LATEST as it is (a version deleted, an alias; its RevisionId stays): written, and
        the registry follows."""
        built = await asyncio.to_thread(self._versions, record)
        await asyncio.to_thread(_write_atomically, self._root / f"{name}.json", json.dumps(record, indent=1))
        self._registry.replace_function(self._registry.namespace, name, built)

    def _serve(self, name: str, record: Mapping[str, Any], built: dict[str, FunctionVersion]) -> None:
        self._registry.replace_function(self._registry.namespace, name, built)
        for alias, entry in record.get("aliases", {}).items():
            self._route(name, alias, entry)

    def _route(self, function: str, alias: str, entry: Mapping[str, Any]) -> None:
        routing = versioning.alias_routing(entry["version"], entry.get("weights"))
        self._registry.put_alias(self._registry.namespace, function, alias, routing)

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
        built: dict[str, FunctionVersion] = {}
        for entry in record["versions"]:
            version_manifest = {**manifest, "spec": specs.version_spec(manifest["spec"], entry["spec"])}
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
        manifest = self._deployments.manifest(name)
        if manifest is None:
            raise errors.not_found(naming.function_arn(self._settings.region, self._settings.account_id, name))
        return web.json_response({"Manifest": manifest})

    async def put(self, request: web.Request) -> web.StreamResponse:
        assert self._deployments is not None
        s = self._settings
        manifest = await read_json_object(
            request, limit=s.max_sync_payload, timeout=s.body_timeout, too_large="The manifest is too large",
            what="The manifest",
        )  # fmt: skip
        deployed = await self._deployments.deploy(request.match_info["name"], manifest)
        return web.json_response(deployed.json(), status=201 if deployed.created else 200)
