"""The control-plane API's HTTP edge: each operation of `operations.OPERATIONS` reads its request (`shapes`),
changes or reads the `FunctionStore`, and answers in botocore's shapes. Refusals are `errors.AWSError`s, rendered by
the gateway's one error middleware.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import platform
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from kambda import manifests, naming, packages, specs
from kambda.operator import versioning

from .. import auth, errors, provisioning
from ..codemirror import ObjectStoreMirror
from ..codestore import CodeStore
from ..connections import read_json_object
from ..dispatching import PoolSnapshot
from ..invoke_configs import InvokeConfigs
from ..provisioning import Status
from ..settings import GatewaySettings
from . import operations, shapes
from .store import Change, FunctionStore, StoredAlias, StoredFunction, StoredVersion, revision_mismatch

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MIN_UNRESERVED = 100  # Lambda keeps at least this much of the account's concurrency unreserved
# Where the architecture names differ: Lambda says x86_64 and arm64.
_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}


class ControlAPI:
    def __init__(
        self, settings: GatewaySettings, store: FunctionStore, code: CodeStore, mirror: ObjectStoreMirror | None,
        configs: InvokeConfigs, pools: Callable[[tuple[str, str]], PoolSnapshot | None] = lambda key: None,
    ) -> None:  # fmt: skip
        self._pools = pools  # a version's dispatch state here: its provisioned instances
        self._settings = settings
        self._configs = configs  # a deleted function's event-invoke config goes with it, as on Lambda
        self._store = store
        self._packages = code
        self._mirror = mirror
        self._machine = _ARCH.get(platform.machine(), platform.machine())
        self._place = shapes.Place(settings.region, settings.account_id, self._machine)

    def add_routes(self, router: web.UrlDispatcher) -> None:
        for op in operations.OPERATIONS:
            handler: Handler = getattr(self, _snake(op.name))  # every operation has its handler
            router.add_route(op.method, op.template, handler)

    # ---- helpers ---------------------------------------------------------------------------------------------

    async def _body(self, request: web.Request, limit: int = operations.CONFIG_BODY_LIMIT) -> Mapping[str, Any]:
        return await read_json_object(
            request, limit=limit, timeout=operations.body_timeout(self._settings.body_timeout, limit),
            too_large=f"Request must be smaller than {limit} bytes", empty={},
        )  # fmt: skip

    def _ref(self, request: web.Request, *, qualifier: bool = False) -> naming.FunctionRef:
        """The function a request names. Only operations that take a Qualifier may name a version or alias: the
        authoriser judged the qualified ARN, so acting on the bare function instead would act on what it did not
        judge."""
        try:
            ref = naming.parse_function_ref(
                request.match_info["FunctionName"], request.query.get("Qualifier") if qualifier else None
            )
        except naming.InvalidReference as exc:
            raise errors.invalid_parameter(str(exc)) from None
        if not qualifier and ref.qualifier is not None:
            raise errors.invalid_parameter(
                f"FunctionName {request.match_info['FunctionName']!r}: this operation acts on a function; give its "
                "name or ARN without a version or alias"
            )
        return ref

    async def _code(self, spec: Mapping[str, Any]) -> shapes.Code:
        """CodeSha256 and CodeSize of a spec's code, as Lambda reports them."""
        code = spec.get("code") or {}
        if "image" in code:
            digest = hashlib.sha256(str(code["image"]).encode()).digest()
            return shapes.Code(base64.b64encode(digest).decode(), 0)
        sha = code.get("sha256")
        if isinstance(sha, str) and specs.SHA256_RE.fullmatch(sha):
            size = self._packages.size(sha)
            if size is None and self._mirror is not None:
                size = await self._mirror.size(sha)
            return shapes.Code(packages.code_sha256(sha), size or 0)
        files = {k: str(v).encode() for k, v in (code.get("files") or {}).items()}
        return shapes.Code(manifests.files_sha256(files), sum(len(v) for v in files.values()))

    async def _layer_sizes(self, spec: Mapping[str, Any]) -> dict[str, int]:
        sizes = {}
        for layer in spec.get("layers") or []:
            sha = str(layer.get("sha256", ""))
            if specs.SHA256_RE.fullmatch(sha):
                sizes[sha] = (await self._code({"code": {"sha256": sha}})).size
        return sizes

    async def _config(
        self, fn: StoredFunction, version: StoredVersion | None, arn_qualifier: str | None = None
    ) -> dict[str, Any]:
        """FunctionConfiguration of `$LATEST` (`version` None) or of a published version."""
        spec = fn.spec if version is None else version.spec
        code = fn.code if version is None and fn.code is not None else await self._code(spec)
        config = shapes.configuration(
            self._place, fn.name, naming.LATEST if version is None else version.number, spec,
            code=code, revision=fn.revision if version is None else version.revision,
            last_modified=fn.last_modified if version is None else version.last_modified,
            status=fn.status if version is None else shapes.Status(), layer_sizes=await self._layer_sizes(spec),
        )  # fmt: skip
        if arn_qualifier is not None:
            config["FunctionArn"] = self._place.function_arn(fn.name, arn_qualifier)
        return config

    async def _qualified(self, fn: StoredFunction, qualifier: str | None) -> tuple[StoredVersion | None, str | None]:
        """The version a qualifier names (None for $LATEST) and the qualifier to put in the ARN."""
        if qualifier is None or qualifier == naming.LATEST:
            return None, qualifier
        version = fn.version(qualifier)
        if version is None:
            alias = next((a for a in await self._store.aliases(fn.name) if a.name == qualifier), None)
            version = fn.version(alias.version) if alias is not None else None
        if version is None:
            raise errors.not_found(self._place.function_arn(fn.name, qualifier))
        return version, qualifier

    async def _store_zip(self, data: bytes) -> str:
        if len(data) > packages.MAX_ZIPPED:
            raise errors.too_large(f"Zipped size must be smaller than {packages.MAX_ZIPPED} bytes")
        try:
            stored = await asyncio.to_thread(self._packages.put, data)
        except packages.PackageError as exc:
            raise errors.invalid_parameter(f"Could not unzip uploaded file. Please check your file: {exc}") from None
        if self._mirror is not None:
            await self._mirror.publish(stored.sha256)
        return str(stored.sha256)

    def _checked(self, name: str, change: Change = lambda spec: spec) -> Change:
        """`change`, followed by the manifest parser's checks of its result (a spec the store would refuse)."""

        def checked(spec: Mapping[str, Any]) -> Mapping[str, Any]:
            new = change(spec)
            shapes.check_spec(name, self._settings.namespace, new)
            return new

        return checked

    def _check_revision(self, revision: str | None, current: str) -> None:
        if revision is not None and revision != current:
            raise revision_mismatch()

    # ---- functions -------------------------------------------------------------------------------------------

    async def create_function(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request, operations.CODE_BODY_LIMIT)
        name = shapes.function_name(shapes.string(body, "FunctionName", required=True) or "")
        shapes.string(body, "Role", max_len=2048)
        shapes.check_architectures(body, self._machine)
        package_type = shapes.string(body, "PackageType") or "Zip"
        if package_type not in ("Zip", "Image"):
            raise errors.invalid_parameter("PackageType must be Zip or Image")
        change = shapes.code_change(body, nested=True)
        if (change.image_uri is not None) != (package_type == "Image"):
            raise errors.invalid_parameter(
                "PackageType Image takes Code.ImageUri; PackageType Zip (the default) takes Code.ZipFile"
            )
        spec = shapes.configuration_changes(body, None)
        if package_type == "Image":
            spec.setdefault("runtime", "provided")
        tags = shapes.string_map(body, "Tags")
        if tags:
            auth.require(request, "lambda:TagResource", self._place.function_arn(name))  # as AWS asks
            spec["tags"] = tags  # checked with the rest of the spec
        sha = await self._store_zip(change.zip_file) if change.zip_file is not None else None
        spec["code"] = shapes.code_spec(change, sha)
        shapes.check_spec(name, self._settings.namespace, spec)
        fn = await self._store.create(name, spec)
        if shapes.boolean(body, "Publish"):
            fn = await self._store.published(name)
            return web.json_response(await self._config(fn, fn.newest), status=201)
        return web.json_response(await self._config(fn, None), status=201)

    async def get_function(self, request: web.Request) -> web.StreamResponse:
        ref = self._ref(request, qualifier=True)
        fn = await self._store.function(ref.name)
        version, arn_qualifier = await self._qualified(fn, ref.qualifier)
        spec = fn.spec if version is None else version.spec
        code = spec.get("code") or {}
        location: dict[str, Any]
        if "image" in code:
            location = {"RepositoryType": "ECR", "ImageUri": code["image"], "ResolvedImageUri": code["image"]}
        else:
            location = {"RepositoryType": "kambda", "Location": f"/kambda/v1/code/{code.get('sha256', '')}"}
        answer: dict[str, Any] = {"Configuration": await self._config(fn, version, arn_qualifier), "Code": location}
        # Lambda returns tags only to a caller also allowed lambda:ListTags on the function.
        if auth.permits(request, "lambda:ListTags", self._place.function_arn(fn.name)):
            answer["Tags"] = dict(fn.spec.get("tags") or {})
        else:
            answer["TagsError"] = {"ErrorCode": "AccessDeniedException", "Message": "lambda:ListTags is not allowed"}
        reserved = (fn.spec.get("concurrency") or {}).get("reserved")
        if reserved is not None:
            answer["Concurrency"] = {"ReservedConcurrentExecutions": reserved}
        return web.json_response(answer)

    async def get_function_configuration(self, request: web.Request) -> web.StreamResponse:
        ref = self._ref(request, qualifier=True)
        fn = await self._store.function(ref.name)
        version, arn_qualifier = await self._qualified(fn, ref.qualifier)
        return web.json_response(await self._config(fn, version, arn_qualifier))

    async def list_functions(self, request: web.Request) -> web.StreamResponse:
        every = request.query.get("FunctionVersion")
        if every not in (None, "ALL"):
            raise errors.invalid_parameter("FunctionVersion must be ALL")
        listed: list[tuple[str, StoredFunction, StoredVersion | None]] = []
        for fn in await self._store.functions():
            listed.append((shapes.version_key(fn.name, naming.LATEST), fn, None))
            if every == "ALL":
                listed.extend((shapes.version_key(fn.name, v.number), fn, v) for v in fn.versions)
        listed.sort(key=lambda item: item[0])
        chunk, marker = shapes.page(
            [k for k, _, _ in listed], request.query.get("Marker"), request.query.get("MaxItems")
        )
        configs = [await self._config(fn, version) for _, fn, version in listed[chunk]]
        return web.json_response({"Functions": configs, **({"NextMarker": marker} if marker else {})})

    async def update_function_code(self, request: web.Request) -> web.StreamResponse:
        ref = self._ref(request)
        body = await self._body(request, operations.CODE_BODY_LIMIT)
        shapes.check_architectures(body, self._machine)
        change = shapes.code_change(body, nested=False)
        fn = await self._store.function(ref.name)
        is_image = "image" in (fn.spec.get("code") or {})
        if (change.image_uri is not None) != is_image:
            raise errors.invalid_parameter(
                f"Please provide {'ImageUri' if is_image else 'ZipFile'} when updating a function with packageType "
                f"{'Image' if is_image else 'Zip'}"
            )
        self._check_revision(shapes.string(body, "RevisionId"), fn.revision)
        sha = await self._store_zip(change.zip_file) if change.zip_file is not None else None
        code = shapes.code_spec(change, sha)
        if shapes.boolean(body, "DryRun"):
            self._checked(ref.name)({**fn.spec, "code": code})
            return web.json_response(
                {**await self._config(fn, None), "CodeSha256": (await self._code({"code": code})).sha256}
            )
        fn = await self._store.update(
            ref.name,
            self._checked(ref.name, lambda spec: {**spec, "code": code}),
            revision=shapes.string(body, "RevisionId"),
        )
        if shapes.boolean(body, "Publish"):
            fn = await self._store.published(ref.name)
            return web.json_response(await self._config(fn, fn.newest))
        return web.json_response(await self._config(fn, None))

    async def update_function_configuration(self, request: web.Request) -> web.StreamResponse:
        ref = self._ref(request)
        body = await self._body(request)
        revision = shapes.string(body, "RevisionId")
        shapes.configuration_changes(body, {})  # the body's own mistakes first, whatever the function is
        change = self._checked(ref.name, lambda spec: shapes.configuration_changes(body, spec))
        fn = await self._store.update(ref.name, change, revision=revision)
        return web.json_response(await self._config(fn, None))

    async def delete_function(self, request: web.Request) -> web.StreamResponse:
        ref = self._ref(request, qualifier=True)
        if ref.qualifier == naming.LATEST:
            raise errors.invalid_parameter("$LATEST version cannot be deleted without deleting the function.")
        if ref.qualifier is not None:
            shapes.version_number(ref.qualifier, "Qualifier")
            await self._store.delete_version(ref.name, ref.qualifier)
        else:
            await self._store.delete(ref.name)
            await asyncio.to_thread(self._configs.delete, ref.name)
        return web.Response(status=204)

    # ---- versions --------------------------------------------------------------------------------------------

    async def publish_version(self, request: web.Request) -> web.StreamResponse:
        ref = self._ref(request)
        body = await self._body(request)
        fn = await self._store.function(ref.name)
        self._check_revision(shapes.string(body, "RevisionId"), fn.revision)
        expected = shapes.string(body, "CodeSha256")
        current = (await self._code(fn.spec)).sha256
        if expected is not None and expected != current:
            raise errors.invalid_parameter(
                f"CodeSHA256 ({expected}) is different from current CodeSHA256 in $LATEST ({current}). Please try "
                "again with the CodeSHA256 in $LATEST."
            )
        shapes.string(body, "Description", max_len=256)
        fn = await self._store.published(ref.name)
        # Checked again on what was published: a change between the first check and the publish must not slip in.
        self._check_revision(shapes.string(body, "RevisionId"), fn.revision)
        if expected is not None and fn.newest is not None and (await self._code(fn.newest.spec)).sha256 != expected:
            raise revision_mismatch()
        return web.json_response(await self._config(fn, fn.newest), status=201)

    async def list_versions_by_function(self, request: web.Request) -> web.StreamResponse:
        ref = self._ref(request)
        fn = await self._store.function(ref.name)
        versions: list[StoredVersion | None] = [None, *fn.versions]
        keys = [shapes.version_key(fn.name, naming.LATEST if v is None else v.number) for v in versions]
        chunk, marker = shapes.page(keys, request.query.get("Marker"), request.query.get("MaxItems"))
        configs = [await self._config(fn, v) for v in versions[chunk]]
        return web.json_response({"Versions": configs, **({"NextMarker": marker} if marker else {})})

    # ---- aliases ---------------------------------------------------------------------------------------------

    def _alias_json(self, alias: StoredAlias) -> dict[str, Any]:
        return shapes.alias_configuration(
            self._place, alias.function, alias.name, alias.version, alias.weights, alias.description, alias.revision
        )

    async def _alias(self, function: str, name: str) -> StoredAlias:
        found = next((a for a in await self._store.aliases(function) if a.name == name), None)
        if found is None:
            raise errors.resource_not_found(f"Alias not found: {self._place.function_arn(function, name)}")
        return found

    async def create_alias(self, request: web.Request) -> web.StreamResponse:
        ref = self._ref(request)
        body = await self._body(request)
        name = shapes.alias_name(shapes.string(body, "Name", required=True) or "")
        version = shapes.version_number(shapes.string(body, "FunctionVersion", required=True) or "")
        alias = StoredAlias(ref.name, name, version, shapes.alias_routing(body) or {},
                            shapes.string(body, "Description", max_len=256) or "", "")  # fmt: skip
        return web.json_response(self._alias_json(await self._store.put_alias(alias, create=True)), status=201)

    async def get_alias(self, request: web.Request) -> web.StreamResponse:
        ref = self._ref(request)
        return web.json_response(self._alias_json(await self._alias(ref.name, request.match_info["Name"])))

    async def update_alias(self, request: web.Request) -> web.StreamResponse:
        ref = self._ref(request)
        body = await self._body(request)
        current = await self._alias(ref.name, request.match_info["Name"])
        revision = shapes.string(body, "RevisionId")
        self._check_revision(revision, current.revision)
        version = shapes.string(body, "FunctionVersion")
        routing = shapes.alias_routing(body)
        description = shapes.string(body, "Description", max_len=256)
        alias = StoredAlias(
            ref.name, current.name, current.version if version is None else shapes.version_number(version),
            current.weights if routing is None else routing,
            current.description if description is None else description, "",
        )  # fmt: skip
        return web.json_response(self._alias_json(await self._store.put_alias(alias, create=False, revision=revision)))

    async def delete_alias(self, request: web.Request) -> web.StreamResponse:
        ref = self._ref(request)
        await self._alias(ref.name, request.match_info["Name"])
        await self._store.delete_alias(ref.name, request.match_info["Name"])
        return web.Response(status=204)

    async def list_aliases(self, request: web.Request) -> web.StreamResponse:
        ref = self._ref(request)
        aliases = await self._store.aliases(ref.name)
        wanted = request.query.get("FunctionVersion")
        if wanted is not None:
            aliases = [a for a in aliases if a.version == wanted or wanted in a.weights]
        aliases = sorted(aliases, key=lambda a: a.name)
        chunk, marker = shapes.page(
            [a.name for a in aliases], request.query.get("Marker"), request.query.get("MaxItems")
        )
        configs = [self._alias_json(a) for a in aliases[chunk]]
        return web.json_response({"Aliases": configs, **({"NextMarker": marker} if marker else {})})

    # ---- concurrency -----------------------------------------------------------------------------------------

    async def _reserved_elsewhere(self, name: str) -> int:
        return sum(
            int((fn.spec.get("concurrency") or {}).get("reserved") or 0)
            for fn in await self._store.functions()
            if fn.name != name
        )

    async def _set_reserved(self, name: str, reserved: int | None) -> StoredFunction:
        def change(spec: Mapping[str, Any]) -> Mapping[str, Any]:
            concurrency = dict(spec.get("concurrency") or {})
            if reserved is None:
                concurrency.pop("reserved", None)
            else:
                concurrency["reserved"] = reserved
            return _without_empty({**spec, "concurrency": concurrency}, "concurrency")

        return await self._store.update(name, self._checked(name, change))

    async def put_function_concurrency(self, request: web.Request) -> web.StreamResponse:
        ref = self._ref(request)
        body = await self._body(request)
        reserved = shapes.integer(body, "ReservedConcurrentExecutions", required=True)
        assert reserved is not None
        if reserved < 0:
            raise errors.invalid_parameter("ReservedConcurrentExecutions must be at least 0")
        limit = self._settings.max_concurrency
        floor = min(MIN_UNRESERVED, limit // 10)
        if reserved + await self._reserved_elsewhere(ref.name) > limit - floor:
            raise errors.invalid_parameter(
                f"Specified ReservedConcurrentExecutions for function decreases account's "
                f"UnreservedConcurrentExecution below its minimum value of [{floor}]."
            )
        await self._set_reserved(ref.name, reserved)
        return web.json_response({"ReservedConcurrentExecutions": reserved})

    async def get_function_concurrency(self, request: web.Request) -> web.StreamResponse:
        ref = self._ref(request)
        fn = await self._store.function(ref.name)
        reserved = (fn.spec.get("concurrency") or {}).get("reserved")
        return web.json_response({} if reserved is None else {"ReservedConcurrentExecutions": reserved})

    async def delete_function_concurrency(self, request: web.Request) -> web.StreamResponse:
        await self._set_reserved(self._ref(request).name, None)
        return web.Response(status=204)

    # ---- provisioned concurrency ---------------------------------------------------------------------------

    async def _provisioned_target(self, request: web.Request) -> tuple[StoredFunction, str, dict[str, float]]:
        """The function, the qualifier of a provisioned-concurrency request, and the versions it puts instances on
        (an alias: its routing weights; a version: itself)."""
        ref = self._ref(request, qualifier=True)
        fn = await self._store.function(ref.name)
        qualifier = ref.qualifier
        if qualifier is None:
            raise errors.invalid_parameter("Qualifier is required: a published version's number or an alias")
        if qualifier == naming.LATEST:
            raise errors.invalid_parameter(
                "Provisioned Concurrency Configs cannot be applied to unpublished function versions."
            )
        if fn.version(qualifier) is not None:
            return fn, qualifier, {qualifier: 1.0}
        alias = next((a for a in await self._store.aliases(fn.name) if a.name == qualifier), None)
        if alias is None:
            raise errors.not_found(self._place.function_arn(fn.name, qualifier))
        return fn, qualifier, _weights(qualifier, alias)

    def _provisioned_status(self, fn: StoredFunction, executions: int, weights: Mapping[str, float]) -> Status:
        """What this gateway's instances of the qualifier's versions give its `executions` (Lambda's Allocated and
        Available count each version's provisioned instances up to its share)."""
        total = Status(executions, 0, 0)
        for version, share in provisioning.shares(executions, weights).items():
            pool = self._pools((f"{self._settings.namespace}/{fn.name}", version))
            if pool is not None:
                total += Status(0, min(share, pool.allocated), min(share, pool.available))
        return total

    def _provisioned_shape(self, fn: StoredFunction, qualifier: str, status: Status) -> dict[str, Any]:
        return {
            "FunctionArn": self._place.function_arn(fn.name, qualifier),
            "RequestedProvisionedConcurrentExecutions": status.requested,
            "AvailableProvisionedConcurrentExecutions": status.available,
            "AllocatedProvisionedConcurrentExecutions": status.allocated,
            "Status": status.state,
            "LastModified": fn.last_modified,
        }

    @staticmethod
    def _configs_of(fn: StoredFunction) -> Mapping[str, int]:
        return dict((fn.spec.get("concurrency") or {}).get("provisionedConfigs") or {})

    async def _set_provisioned(self, name: str, qualifier: str, executions: int | None) -> StoredFunction:
        def change(spec: Mapping[str, Any]) -> Mapping[str, Any]:
            concurrency = dict(spec.get("concurrency") or {})
            configs = dict(concurrency.get("provisionedConfigs") or {})
            if executions is None:
                configs.pop(qualifier, None)
            else:
                configs[qualifier] = executions
            concurrency["provisionedConfigs"] = configs
            concurrency = _without_empty(concurrency, "provisionedConfigs")
            return _without_empty({**spec, "concurrency": concurrency}, "concurrency")

        return await self._store.update(name, self._checked(name, change))

    async def put_provisioned_concurrency_config(self, request: web.Request) -> web.StreamResponse:
        fn, qualifier, weights = await self._provisioned_target(request)
        body = await self._body(request)
        executions = shapes.integer(body, "ProvisionedConcurrentExecutions", required=True)
        assert executions is not None
        if executions < 1:
            raise errors.invalid_parameter("ProvisionedConcurrentExecutions must be at least 1")
        reserved = (fn.spec.get("concurrency") or {}).get("reserved")
        others = sum(n for q, n in self._configs_of(fn).items() if q != qualifier)
        if reserved is not None and executions + others > reserved:
            raise errors.invalid_parameter(
                "Requested Provisioned Concurrency should not be greater than the reservedConcurrentExecution "
                "for function"
            )
        fn = await self._set_provisioned(fn.name, qualifier, executions)
        status = self._provisioned_status(fn, executions, weights)
        shape = self._provisioned_shape(fn, qualifier, status)
        del shape["FunctionArn"]
        return web.json_response(shape, status=202)

    async def get_provisioned_concurrency_config(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("List") == "ALL":  # one path, two operations (operations.name_of)
            return await self.list_provisioned_concurrency_configs(request)
        fn, qualifier, weights = await self._provisioned_target(request)
        executions = self._configs_of(fn).get(qualifier)
        if executions is None:
            raise errors.AWSError(
                404, "ProvisionedConcurrencyConfigNotFoundException",
                f"No Provisioned Concurrency Config found for this function: "
                f"{self._place.function_arn(fn.name, qualifier)}",
            )  # fmt: skip
        shape = self._provisioned_shape(fn, qualifier, self._provisioned_status(fn, executions, weights))
        del shape["FunctionArn"]
        return web.json_response(shape)

    async def delete_provisioned_concurrency_config(self, request: web.Request) -> web.StreamResponse:
        fn, qualifier, _ = await self._provisioned_target(request)
        if qualifier not in self._configs_of(fn):
            raise errors.AWSError(
                404, "ProvisionedConcurrencyConfigNotFoundException",
                f"No Provisioned Concurrency Config found for this function: "
                f"{self._place.function_arn(fn.name, qualifier)}",
            )  # fmt: skip
        await self._set_provisioned(fn.name, qualifier, None)
        return web.Response(status=204)

    async def list_provisioned_concurrency_configs(self, request: web.Request) -> web.StreamResponse:
        fn = await self._store.function(self._ref(request).name)
        aliases = {a.name: a for a in await self._store.aliases(fn.name)}
        shapes_: list[dict[str, Any]] = []
        for qualifier, executions in sorted(self._configs_of(fn).items()):
            weights = _weights(qualifier, aliases.get(qualifier))
            shapes_.append(self._provisioned_shape(fn, qualifier, self._provisioned_status(fn, executions, weights)))
        return web.json_response({"ProvisionedConcurrencyConfigs": shapes_})

    async def get_account_settings(self, request: web.Request) -> web.StreamResponse:
        functions = await self._store.functions()
        reserved = sum(int((fn.spec.get("concurrency") or {}).get("reserved") or 0) for fn in functions)
        total = 0
        for fn in functions:
            total += sum([(await self._code(v.spec)).size for v in fn.versions])
        return web.json_response({
            "AccountLimit": {
                "TotalCodeSize": 80 * 1024**3, "CodeSizeUnzipped": packages.MAX_UNZIPPED,
                "CodeSizeZipped": packages.MAX_ZIPPED, "ConcurrentExecutions": self._settings.max_concurrency,
                "UnreservedConcurrentExecutions": self._settings.max_concurrency - reserved,
            },
            "AccountUsage": {"TotalCodeSize": total, "FunctionCount": len(functions)},
        })  # fmt: skip

    # ---- tags ------------------------------------------------------------------------------------------------

    def _tagged(self, request: web.Request) -> str:
        resource = request.match_info["Resource"]
        try:
            ref = naming.parse_function_ref(resource)
        except naming.InvalidReference:
            raise errors.invalid_parameter(f"Resource {resource!r} is not a function ARN") from None
        if ref.qualifier is not None:
            raise errors.invalid_parameter("Tags are set on a function, not on a version or alias")
        return ref.name

    async def tag_resource(self, request: web.Request) -> web.StreamResponse:
        name = self._tagged(request)
        body = await self._body(request)
        new = shapes.string_map(body, "Tags")
        if new is None:
            raise errors.invalid_parameter("Tags is required")

        def change(spec: Mapping[str, Any]) -> Mapping[str, Any]:
            return {**spec, "tags": {**(spec.get("tags") or {}), **new}}

        await self._store.update(name, self._checked(name, change))
        return web.Response(status=204)

    async def untag_resource(self, request: web.Request) -> web.StreamResponse:
        name = self._tagged(request)
        keys = request.query.getall("tagKeys", [])
        if not keys:
            raise errors.invalid_parameter("TagKeys is required")

        def change(spec: Mapping[str, Any]) -> Mapping[str, Any]:
            remaining = {k: v for k, v in (spec.get("tags") or {}).items() if k not in keys}
            return _without_empty({**spec, "tags": remaining}, "tags")

        await self._store.update(name, self._checked(name, change))
        return web.Response(status=204)

    async def list_tags(self, request: web.Request) -> web.StreamResponse:
        fn = await self._store.function(self._tagged(request))
        return web.json_response({"Tags": dict(fn.spec.get("tags") or {})})


def _without_empty(spec: dict[str, Any], key: str) -> dict[str, Any]:
    if not spec.get(key):
        spec.pop(key, None)
    return spec


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def _weights(qualifier: str, alias: StoredAlias | None) -> dict[str, float]:
    """The versions a provisioned-concurrency qualifier puts instances on: an alias's routing, or the version."""
    return {qualifier: 1.0} if alias is None else versioning.alias_routing(alias.version, alias.weights)
