"""The code store: deployment packages (zips) under the gateway's data directory, named by their SHA-256.

`<data-dir>/packages/<sha256 hex>.zip`. An upload streams into a temporary file in that directory while it is
hashed, is checked as a package (`kambda.packages`: a zip, nothing outside its tree, at most 250 MB unzipped),
fsync'ed and renamed to its name, so a package survives a restart and a crash never leaves half a file under a
real name (temporary files a crash left are removed at the next start). No registry is involved: a function pod's
agent fetches its package here (`GET`, with its function's credential), and the local backend unpacks packages
from here into its code cache.

A stored file is re-hashed against its name each time it is used (served, or unpacked), not once at startup:
that catches a file changed at any time, costs ~0.1 s per 50 MB per use (a use is a cold start's download, which
the agent verifies again anyway), and keeps startup independent of how many packages there are. A file that no
longer matches its name is set aside (`<hex>.zip.corrupt`) and is from then on absent: the next `kambda deploy`
uploads it again. `HEAD` only says whether a file is there (it is `kambda deploy`'s hint, and must stay cheap for
an unauthenticated caller).

Routes (`CodeAPI`):
- `PUT /kambda/v1/code`, body = the zip: 201 (200 if already stored) `{"Sha256", "CodeSha256", "CodeSize"}`;
  over 50 MB: 413 `RequestEntityTooLargeException`; not a package: 400 `InvalidParameterValueException`.
  Uploads are unauthenticated until the SigV4 issue lands (as the whole gateway is today). They are inert: a
  package is stored under its own hash and runs only when a Function, written by someone allowed to (Kubernetes
  RBAC, or the local user), names that hash.
- `GET /kambda/v1/code/{sha256}`: the zip, only to `Authorization: Bearer <credential>` + `Kambda-Function: ns/name`
  of a function one of whose versions runs that package (401 without a credential, 403 with a wrong one or for
  another function's package, 404 if not stored).
- `HEAD /kambda/v1/code/{sha256}`: 200 or 404, no credential, no body.
- `GET /kambda/v1/info`: `{"backend": "local" | "kubernetes", "namespace": ..., "runtimes": [...]}`, what
  `kambda deploy` asks first (and `kambda runtimes --endpoint`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from aiohttp import web

from kambda import credentials, packages, specs

from . import auth, errors
from .control import operations
from .registry import Registry

if TYPE_CHECKING:
    from .backends import Backend
    from .codemirror import ObjectStoreMirror
from .settings import GatewaySettings

log = logging.getLogger(__name__)
TOO_LARGE = f"Zipped package must be at most {packages.MAX_ZIPPED} bytes (Lambda's limit for an upload)"
_UPLOAD_PREFIX = ".upload-"


class PackageMissing(LookupError):
    """No stored package has this hash (or the one stored no longer matched it and was set aside)."""


class PackageTooLarge(Exception):
    """An upload past Lambda's 50 MB."""


@dataclass(frozen=True)
class Stored:
    sha256: str  # hex
    size: int
    created: bool  # False: it was already stored

    def json(self) -> dict[str, Any]:
        return {"Sha256": self.sha256, "CodeSha256": packages.code_sha256(self.sha256), "CodeSize": self.size}


class Upload:
    """A package being received: a temporary file in the store's directory, hashed and counted as it is written."""

    def __init__(self, file: IO[bytes], path: Path) -> None:
        self.file = file
        self.path = path
        self.size = 0
        self._digest = hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > packages.MAX_ZIPPED:
            raise PackageTooLarge(TOO_LARGE)
        self._digest.update(chunk)
        self.file.write(chunk)  # into the page cache: not worth a thread per chunk

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


class CodeStore:
    """The one owner of `<root>` (the packages) and of the trees it unpacks into a code cache."""

    def __init__(self, root: Path) -> None:
        self._root = root
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.Lock()  # unpacking runs in threads (a deploy's request, startup)
        self._unpacked: dict[str, Path] = {}  # hex -> tree unpacked by this process
        for leftover in root.glob(_UPLOAD_PREFIX + "*"):  # a crash mid-upload (the data dir is locked: not ours)
            leftover.unlink(missing_ok=True)

    def path(self, sha256: str) -> Path:
        assert specs.SHA256_RE.fullmatch(sha256), sha256  # callers check: a name never becomes a path otherwise
        return self._root / f"{sha256}.zip"

    def size(self, sha256: str) -> int | None:
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError:
            return None

    @contextlib.contextmanager
    def receiving(self) -> Iterator[Upload]:
        """A new upload; its temporary file is gone afterwards unless `commit` renamed it to its name."""
        fd, name = tempfile.mkstemp(prefix=_UPLOAD_PREFIX, suffix=".zip", dir=self._root)
        try:
            with open(fd, "wb") as file:
                yield Upload(file, Path(name))
        finally:
            Path(name).unlink(missing_ok=True)

    def commit(self, upload: Upload) -> Stored:
        """Check the upload as a package (`PackageError`), then make it durable under its name (blocking)."""
        upload.file.flush()
        os.fsync(upload.file.fileno())
        packages.validate(upload.path)
        sha = upload.hexdigest()
        final = self.path(sha)
        if final.exists() and self._intact(final, sha):
            return Stored(sha, upload.size, created=False)
        os.replace(upload.path, final)
        _fsync_dir(self._root)
        log.info("stored package %s (%d bytes)", sha, upload.size)
        return Stored(sha, upload.size, created=True)

    def put(self, data: bytes) -> Stored:
        """A package given whole (a ZipFile of the Lambda API), stored as an upload is (blocking)."""
        with self.receiving() as upload:
            upload.write(data)
            return self.commit(upload)

    def verified(self, sha256: str) -> Path:
        """The stored package, re-hashed against its name (blocking); `PackageMissing` if absent or no longer
        intact (then it is set aside)."""
        path = self.path(sha256)
        if not path.is_file():
            raise PackageMissing(f"no package {sha256} in the code store")
        if not self._intact(path, sha256):
            raise PackageMissing(
                f"the stored package {sha256} no longer matched its sha256 and was set aside; upload it again"
            )
        return path

    def _intact(self, path: Path, sha256: str) -> bool:
        actual = packages.sha256_hex(path)
        if actual == sha256:
            return True
        log.error("stored package %s hashes to %s: setting it aside as %s.corrupt", path.name, actual, path.name)
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, path.with_name(path.name + ".corrupt"))
        return False

    def unpack(self, sha256: str, cache_dir: Path) -> Path:
        """The package's tree, unpacked into `cache_dir/<hex>/` from the verified zip (blocking).

        Unpacked once per process and then reused. A tree left by an earlier run is unpacked again rather than
        trusted: proving an existing tree equal to the zip costs about as much as unpacking it, and a local
        gateway has few packages.
        """
        with self._lock:
            if sha256 in self._unpacked:
                return self._unpacked[sha256]
            source = self.verified(sha256)
            # 64 hex digits: never one of the 32-digit trees of inline code.
            target = _build_tree(cache_dir, sha256, lambda staging: packages.extract(source, staging))
            self._unpacked[sha256] = target
            return target

    def unpack_layers(self, layers: tuple[str, ...], cache_dir: Path) -> Path:
        """The layers merged as Lambda merges them under /opt (in order, a later layer's files winning), in
        `cache_dir/layers-<digest of the list>/` (blocking). Each layer is unpacked (and verified) by `unpack`."""
        digest = hashlib.sha256(" ".join(layers).encode()).hexdigest()[:32]
        key = f"layers-{digest}"
        with self._lock:
            if key in self._unpacked:
                return self._unpacked[key]
        trees = [self.unpack(sha, cache_dir) for sha in layers]

        def merge(staging: Path) -> None:
            staging.mkdir(mode=0o755)
            for i, tree in enumerate(trees):
                copy = cache_dir / f".staging-{os.getpid()}-layer-{i}"
                shutil.rmtree(copy, ignore_errors=True)
                shutil.copytree(tree, copy, symlinks=True)
                packages.overlay(copy, staging)
                copy.rmdir()

        with self._lock:
            self._unpacked[key] = target = _build_tree(cache_dir, key, merge)
            return target


def _build_tree(cache_dir: Path, name: str, fill: Callable[[Path], object]) -> Path:
    """`cache_dir/name`, built by `fill` in a staging directory and renamed into place (never seen half-built)."""
    target = cache_dir / name
    staging = cache_dir / f".staging-{os.getpid()}-{name}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        fill(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)  # the rename itself is durable only once its directory is
    finally:
        os.close(fd)


class CodeAPI:
    def __init__(
        self,
        settings: GatewaySettings,
        store: CodeStore,
        registry: Registry,
        signing_key: bytes,
        backend: Backend,
        mirror: ObjectStoreMirror | None = None,
    ) -> None:
        self._mirror = mirror  # the store several gateways share (JetStream), if they do
        self._settings = settings
        self._store = store
        self._registry = registry
        self._key = signing_key
        self._backend = backend

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_put("/kambda/v1/code", self.upload)
        router.add_get("/kambda/v1/code/{sha256}", self.download, allow_head=False)
        router.add_head("/kambda/v1/code/{sha256}", self.exists)
        router.add_get("/kambda/v1/info", self.info)

    async def info(self, request: web.Request) -> web.StreamResponse:
        info = {"backend": self._backend.name, "namespace": self._settings.namespace}
        # The local backend probes this host's interpreters the first time (subprocesses): not on the event loop.
        return web.json_response({**info, "runtimes": await asyncio.to_thread(self._backend.runtimes)})

    async def upload(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Content-Encoding", "identity").lower() not in ("", "identity"):
            raise errors.unsupported_media_type("A package is sent as it is: a zip, without Content-Encoding")
        length = request.content_length
        if length is not None and length > packages.MAX_ZIPPED:
            raise errors.too_large(TOO_LARGE)
        # An upload may take longer than the body timeout: a 50 MB zip is given 200 s more.
        timeout = operations.body_timeout(self._settings.body_timeout, length or packages.MAX_ZIPPED)
        with self._store.receiving() as upload:
            try:
                async with asyncio.timeout(timeout):
                    async for chunk in request.content.iter_chunked(packages.CHUNK):
                        upload.write(chunk)
            except TimeoutError:
                raise errors.request_timeout(f"The package was not received within {timeout:g} seconds") from None
            except PackageTooLarge:
                raise errors.too_large(TOO_LARGE) from None  # the rest of the body is drained, then answered
            except (web.RequestPayloadError, asyncio.IncompleteReadError, ConnectionError) as exc:
                raise errors.invalid_content(f"Could not read the request body: {exc}", close=True) from None
            auth.payload_must_match(request, upload.hexdigest())  # a body other than the one signed is not kept
            try:
                stored = await asyncio.to_thread(self._store.commit, upload)
            except packages.PackageError as exc:
                raise errors.invalid_parameter(f"Could not unzip uploaded file: {exc}") from None
        if self._mirror is not None:
            await self._mirror.publish(stored.sha256)
        return web.json_response(stored.json(), status=201 if stored.created else 200)

    async def exists(self, request: web.Request) -> web.StreamResponse:
        sha = request.match_info["sha256"]
        size = self._store.size(sha) if specs.SHA256_RE.fullmatch(sha) else None
        if size is None and self._mirror is not None and specs.SHA256_RE.fullmatch(sha):
            size = await self._mirror.size(sha)
        if size is None:
            raise errors.resource_not_found(f"no package {sha} in the code store")
        return web.Response(status=200, headers={"Kambda-Code-Size": str(size)})

    async def download(self, request: web.Request) -> web.StreamResponse:
        sha = request.match_info["sha256"]
        function = request.headers.get("Kambda-Function", "")
        token = request.headers.get("Authorization", "")
        if not function or not token.startswith("Bearer "):
            raise errors.AWSError(
                401,
                "MissingAuthenticationTokenException",
                "A function's credential is needed: Authorization: Bearer <credential> and Kambda-Function: ns/name",
                headers={"WWW-Authenticate": "Bearer"},
            )
        # As gateway/rpc.py authenticates an agent's stream: the HMAC of namespace/name under the signing key.
        if not credentials.verify(self._key, function, token.removeprefix("Bearer ")):
            raise errors.AWSError(403, "AccessDeniedException", f"invalid credential for {function}")
        if not (specs.SHA256_RE.fullmatch(sha) and self._registry.uses_package(function, sha)):
            raise errors.AWSError(403, "AccessDeniedException", f"{function} does not run package {sha}")
        if self._mirror is not None and self._store.size(sha) is None:
            await self._mirror.fetch(sha)  # uploaded through another replica
        try:
            path = await asyncio.to_thread(self._store.verified, sha)
        except PackageMissing as exc:
            raise errors.resource_not_found(str(exc)) from None
        return web.FileResponse(path, headers={"Content-Type": "application/zip"})
