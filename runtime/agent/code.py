"""A sandbox's code from a zip, before its runtime first starts: downloaded from the Function's own URL
(`spec.code.url` + `sha256`), or from kambda's code store on the gateway (`spec.code.sha256` alone), where the
agent presents its function's credential. The credential goes only to the code store, never to a user's URL, and
a request to the store follows no redirect (urllib would carry the Authorization header along).

The zip is streamed into an unnamed temporary file (gone however the agent ends) next to the code directory, or in
$TMPDIR where that is not writable (a pod's read-only root file system), never held in memory; its SHA-256 is
checked before anything is unpacked; `kambda.packages` unpacks it (zip-slip, links, Lambda's size limits).
Every failure is a `CodeError` naming the source; it fails the sandbox's start.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO

from kambda import packages

# Lambda's unzipped limit: a zip fetched from a URL may be larger than a direct upload's 50 MB.
MAX_DOWNLOAD = packages.MAX_UNZIPPED
TIMEOUT = 60.0  # seconds without progress on the connection
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


class CodeError(Exception):
    pass


def fetch(url: str, sha256: str, target: str) -> None:
    """Download the zip at `url` (no credential), check it against `sha256` (hex) and unpack it into `target`."""
    _install(urllib.request.build_opener(), urllib.request.Request(url), sha256, target, _label(url))


def fetch_from_store(store: str, sha256: str, target: str, *, function: str, credential: str) -> None:
    """The same from the code store at `store` (the gateway's base URL), as function `namespace/name`."""
    if not _SHA256.fullmatch(sha256):
        raise CodeError(f"the Function's code sha256 {sha256!r} is not 64 lower-case hex digits")
    url = f"{store.rstrip('/')}/kambda/v1/code/{sha256}"
    headers = {"Authorization": f"Bearer {credential}", "Kambda-Function": function}
    request = urllib.request.Request(url, headers=headers)
    _install(urllib.request.build_opener(_NoRedirects), request, sha256, target, url)


def fetch_layers(
    store: str, layers: tuple[str, ...], opt_dir: str, *, code_dir: str, function: str, credential: str
) -> None:
    """Lambda's layers: each package from the store unpacked in order into `opt_dir`, a later one's files winning.
    Each is checked as it unpacks; the function's code and its layers together are at most 250 MB unzipped."""
    opt = Path(opt_dir)
    if opt.is_dir():
        packages.clear(opt)  # a restarted agent's volume: fetched afresh, in order
    for i, sha in enumerate(layers):
        staging = opt / f".layer-{i}"
        fetch_from_store(store, sha, str(staging), function=function, credential=credential)
        packages.overlay(staging, opt)
        staging.rmdir()
    check_total(code_dir, opt_dir)


def check_total(code_dir: str, opt_dir: str, limit: int = packages.MAX_UNZIPPED) -> None:
    """Lambda's limit holds for a function's code and its layers together, unzipped."""
    total = _bytes_under(Path(opt_dir)) + _bytes_under(Path(code_dir))
    if total > limit:
        raise CodeError(f"layers: {packages.UNZIPPED_TOO_LARGE} (the code and its layers together: {total} bytes)")


def _bytes_under(root: Path) -> int:
    return sum(f.lstat().st_size for f in root.rglob("*") if f.is_file() and not f.is_symlink())


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # urllib then raises the 3xx as an HTTPError


def _label(url: str) -> str:
    # A presigned URL's query is a secret: it stays out of messages and logs.
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _scratch(target: str) -> str | None:
    parent = Path(target).resolve().parent
    return str(parent) if os.access(parent, os.W_OK) else None  # None: $TMPDIR


def _install(
    opener: urllib.request.OpenerDirector, request: urllib.request.Request, sha256: str, target: str, label: str
) -> None:
    try:
        with tempfile.TemporaryFile(dir=_scratch(target)) as zipped:
            digest = _download(opener, request, zipped, label)
            if digest != sha256:
                raise CodeError(f"{label}: sha256 is {digest}, the Function says {sha256}")
            zipped.seek(0)
            if os.path.isdir(target):
                # The pod's own code volume: a restarted agent (the volume outlives the container) fetches afresh.
                packages.clear(target)
            packages.extract(zipped, target)
    except packages.PackageError as exc:
        raise CodeError(f"{label}: {exc}") from None
    except OSError as exc:  # no room for the zip or its files, a volume not writable: still the code's failure
        raise CodeError(f"{label}: cannot unpack into {target}: {exc}") from None


def _download(
    opener: urllib.request.OpenerDirector, request: urllib.request.Request, out: IO[bytes], label: str
) -> str:
    too_large = f"{label}: larger than {MAX_DOWNLOAD} bytes (Lambda's unzipped limit)"
    digest = hashlib.sha256()
    size = 0
    try:
        with opener.open(request, timeout=TIMEOUT) as response:
            if int(response.headers.get("Content-Length") or 0) > MAX_DOWNLOAD:
                raise CodeError(too_large)
            while chunk := response.read(packages.CHUNK):
                size += len(chunk)
                if size > MAX_DOWNLOAD:
                    raise CodeError(too_large)
                digest.update(chunk)
                out.write(chunk)
    except urllib.error.HTTPError as err:
        raise CodeError(f"{label}: HTTP {err.code}: {_reason(err)}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        raise CodeError(f"{label}: cannot download: {getattr(exc, 'reason', exc)}") from None
    return digest.hexdigest()


def _reason(err: urllib.error.HTTPError) -> str:
    """The message of an AWS-shaped error body (the code store's), else the status line's reason."""
    try:
        body = json.loads(err.read(64 * 1024))
        return str(body.get("message") or body.get("Message") or err.reason)[:300]
    except (ValueError, AttributeError, OSError):
        return str(err.reason)
