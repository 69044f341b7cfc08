"""`kambda deploy`: package code, put it in the gateway's code store, then create or update the Function.

1. A directory is zipped deterministically (`packages.build`: the same tree, the same SHA-256); a zip is taken as
   it is. Either is checked locally first (`packages.validate`), so that a bad package is named before it travels.
2. `GET {endpoint}/kambda/v1/info` says which backend the gateway runs; `HEAD .../kambda/v1/code/{sha256}` whether
   the package is already stored, else `PUT .../kambda/v1/code` uploads it (streamed from disk, with progress).
3. The Function's spec gets `code: {sha256: <hex>}` (replacing whatever code it had) plus the options given:
   - kubernetes: the Function object is created, or merge-patched, with the user's own kubeconfig: Kubernetes RBAC
     decides, and the gateway has no write power;
   - local: `PUT .../kambda/v1/functions/{name}` with the whole manifest (the local backend's deploy API).
   Either way the new spec is first parsed here (`specs.parse_function`), so its problems are named at once.

`spec_patch` and `merge_patch` are pure (RFC 7386 JSON merge patch); the rest is I/O.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from . import naming, packages, signing, specs

DEFAULT_RUNTIME = "python3.11"  # offered by the default runtime image, and by kambda's oldest Python locally
DEFAULT_HANDLER = "app.handler"
PROGRESS_ABOVE = 1024 * 1024  # smaller uploads print no progress


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class DeployFailed(Exception):
    """One line for the user; `kambda deploy` exits non-zero with it."""


@dataclass(frozen=True)
class Options:
    runtime: str | None = None
    handler: str | None = None
    memory_mb: int | None = None
    timeout_seconds: int | None = None
    environment: Mapping[str, str] | None = None  # None: unchanged; given, it replaces the whole environment
    layers: tuple[str, ...] | None = None  # None: unchanged; given, the layers' sha256s in order (replacing)


def spec_patch(existing: Mapping[str, Any] | None, sha256: str, options: Options) -> dict[str, Any]:
    """The merge patch that gives a Function's spec this package and these options; for a new function (no
    `existing` spec) the whole spec, with Lambda-like defaults for what is not given."""
    old_code = (existing or {}).get("code") or {}
    patch: dict[str, Any] = {"code": {**dict.fromkeys(k for k in old_code if k != "sha256"), "sha256": sha256}}
    runtime = options.runtime or (None if existing else DEFAULT_RUNTIME)
    if runtime:
        patch["runtime"] = runtime
    handler = options.handler
    if handler is None and existing is None and runtime in specs.PYTHON_RUNTIMES:
        handler = DEFAULT_HANDLER
    if handler:
        patch["handler"] = handler
    if options.memory_mb is not None:
        patch["memoryMB"] = options.memory_mb
    if options.timeout_seconds is not None:
        patch["timeoutSeconds"] = options.timeout_seconds
    if options.environment is not None:
        old_env = (existing or {}).get("environment") or {}
        removed = dict.fromkeys(k for k in old_env if k not in options.environment)
        patch["environment"] = {**removed, **options.environment}
    if options.layers is not None:
        patch["layers"] = [{"sha256": sha} for sha in options.layers]  # a merge patch replaces a list whole
    return patch


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null removes a key, anything else replaces."""
    if not isinstance(patch, Mapping):
        return patch
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def function_manifest(name: str, namespace: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": naming.API_VERSION, "kind": "Function", "metadata": {"name": name, "namespace": namespace},
            "spec": dict(spec)}  # fmt: skip


def check(manifest: Mapping[str, Any]) -> None:
    try:
        specs.parse_function(manifest)
    except specs.SpecError as exc:
        raise DeployFailed("; ".join(exc.errors)) from None


# ---- the package -----------------------------------------------------------------------------------------------


def package(source: Path, scratch: IO[bytes]) -> IO[bytes]:
    """The zip to upload: `source` itself if it is a file, else the directory zipped into `scratch`. Checked."""
    if source.is_dir():
        try:
            packages.build(source, scratch)
        except packages.PackageError as exc:
            raise DeployFailed(f"{source}: {exc}") from None
        zipped = scratch
    elif source.is_file():
        zipped = open(source, "rb")  # noqa: SIM115 (the caller's: closed with the process)
    else:
        raise DeployFailed(f"{source}: neither a directory nor a zip file")
    zipped.seek(0)
    try:
        packages.validate(zipped)
    except packages.PackageError as exc:
        raise DeployFailed(f"{source}: {exc}") from None
    zipped.seek(0)
    return zipped


# ---- the gateway -----------------------------------------------------------------------------------------------


class Gateway:
    """The few gateway calls `kambda deploy` makes (stdlib urllib)."""

    def __init__(self, endpoint: str, timeout: float = 60.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._timeout = timeout

    def call(
        self, method: str, path: str, body: bytes | _Readable | None = None, headers: Mapping[str, str] | None = None,
        *, payload_sha256: str | None = None,
    ) -> tuple[int, Any]:  # fmt: skip
        """`payload_sha256`: a streamed body's hash, which its signature covers (x-amz-content-sha256)."""
        url = self.endpoint + path
        if payload_sha256 is not None:
            headers = signing.headers(method, url, headers, payload_sha256=payload_sha256)
        else:
            headers = signing.headers(method, url, headers, body if isinstance(body, bytes) else None)
        request = urllib.request.Request(url, data=body, method=method, headers=dict(headers))
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as err:
            if method == "HEAD" or (err.code == 404 and method == "GET"):
                return err.code, None
            raise DeployFailed(f"{method} {path}: {_aws_message(err)}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise DeployFailed(f"cannot reach the gateway at {self.endpoint}: {getattr(exc, 'reason', exc)}") from None

    def info(self) -> Mapping[str, Any]:
        status, body = self.call("GET", "/kambda/v1/info")
        if status != 200 or not isinstance(body, Mapping) or "backend" not in body:
            raise DeployFailed(f"{self.endpoint} does not look like a kambda gateway (GET /kambda/v1/info)")
        return body

    def has(self, sha256: str) -> bool:
        return self.call("HEAD", f"/kambda/v1/code/{sha256}")[0] == 200

    def upload(self, zipped: IO[bytes], sha256: str, size: int, progress: Callable[[int], None]) -> Mapping[str, Any]:
        body = _Counting(zipped, progress)
        headers = {"Content-Type": "application/zip", "Content-Length": str(size)}
        _, stored = self.call("PUT", "/kambda/v1/code", body, headers, payload_sha256=sha256)
        return stored  # type: ignore[no-any-return]


class _Counting:
    """A file whose reads report how far they got (http.client sends a body with `read` in blocks)."""

    def __init__(self, file: IO[bytes], progress: Callable[[int], None]) -> None:
        self._file = file
        self._progress = progress
        self._sent = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(size if size > 0 else packages.CHUNK)
        self._sent += len(chunk)
        self._progress(self._sent)
        return chunk


def progress_line(total: int, out: IO[str] = sys.stderr) -> Callable[[int], None]:
    """Reports an upload's progress on one line of `out`, at most every 0.2 s (and always at the end)."""
    last = [0.0]

    def report(sent: int) -> None:
        now = time.monotonic()
        if total <= PROGRESS_ABOVE or (now - last[0] < 0.2 and sent < total):
            return
        last[0] = now
        out.write(f"\ruploading {sent / 2**20:.1f} of {total / 2**20:.1f} MiB ({100 * sent // total}%)")
        if sent >= total:
            out.write("\n")
        out.flush()

    return report


def _aws_message(err: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(err.read())
        message = body.get("message") or body.get("Message") or body
    except (ValueError, AttributeError):
        message = err.reason
    return f"{err.headers.get('x-amzn-ErrorType') or err.code}: {message}"


# ---- the Function ----------------------------------------------------------------------------------------------


def check_runtime(info: Mapping[str, Any], runtime: str) -> None:
    """Refuse a runtime the gateway's installation does not run (as its GET /kambda/v1/info lists them)."""
    offered = info.get("runtimes")
    if isinstance(offered, list) and runtime not in offered:
        raise DeployFailed(f"{runtime} is not offered by this installation; it offers {', '.join(map(str, offered))}")


def deploy_local(gateway: Gateway, name: str, namespace: str, sha256: str, options: Options) -> Mapping[str, Any]:
    status, current = gateway.call("GET", f"/kambda/v1/functions/{name}")
    existing = current["Manifest"]["spec"] if status == 200 and isinstance(current, Mapping) else None
    spec = merge_patch(existing or {}, spec_patch(existing, sha256, options))
    manifest = function_manifest(name, namespace, spec)
    check(manifest)
    _, deployed = gateway.call(
        "PUT", f"/kambda/v1/functions/{name}", json.dumps(manifest).encode(), {"Content-Type": "application/json"}
    )
    return deployed  # type: ignore[no-any-return]


async def deploy_kubernetes(
    kubeconfig: str | None, name: str, namespace: str, sha256: str, options: Options
) -> tuple[str, Mapping[str, Any]]:
    """Create or merge-patch the Function object as the kubeconfig's user; returns ("created" | "updated", object)."""
    from kubernetes_asyncio import client, config
    from kubernetes_asyncio.client.exceptions import ApiException

    try:
        await config.load_kube_config(config_file=kubeconfig)
    except Exception as exc:  # a missing or unreadable kubeconfig: its own error types, one line for the user
        where = kubeconfig or "$KUBECONFIG or ~/.kube/config"
        raise DeployFailed(f"cannot load the kubeconfig ({where}): {exc}") from None
    args = (naming.GROUP, naming.VERSION, namespace, naming.FUNCTIONS)
    async with client.ApiClient() as api:
        custom = client.CustomObjectsApi(api)
        try:
            try:
                existing = await custom.get_namespaced_custom_object(*args, name)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                existing = None
            old_spec = existing.get("spec") if existing else None
            patch = spec_patch(old_spec, sha256, options)
            check(function_manifest(name, namespace, merge_patch(old_spec or {}, patch)))
            if existing is None:
                created = await custom.create_namespaced_custom_object(*args, function_manifest(name, namespace, patch))
                return "created", created
            # A dict body would go as a JSON *Patch* by default; `_content_type` is honoured but not in the stubs.
            updated = await custom.patch_namespaced_custom_object(  # type: ignore[call-arg]
                *args, name, {"spec": patch}, _content_type="application/merge-patch+json"
            )
            return "updated", updated
        except ApiException as exc:
            raise DeployFailed(f"the Kubernetes API refused: {exc.status} {_k8s_message(exc)}") from None


def _k8s_message(exc: Any) -> str:
    try:
        return str(json.loads(exc.body).get("message"))
    except (ValueError, TypeError, AttributeError):
        return str(exc.reason)
