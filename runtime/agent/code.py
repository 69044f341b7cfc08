"""Code from a URL (`spec.code.url` + `sha256`): downloaded once per sandbox, verified, unpacked into /var/task."""

from __future__ import annotations

import hashlib
import io
import os
import urllib.request
import zipfile
from pathlib import Path

MAX_ZIP = 250 * 1024 * 1024  # Lambda's unzipped deployment package limit, applied to the download


class CodeError(Exception):
    pass


def fetch(url: str, sha256: str, target: str) -> None:
    with urllib.request.urlopen(url, timeout=60) as response:
        data = response.read(MAX_ZIP + 1)
    if len(data) > MAX_ZIP:
        raise CodeError(f"{url}: larger than {MAX_ZIP} bytes")
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise CodeError(f"{url}: sha256 is {digest}, the Function says {sha256}")
    root = Path(target).resolve()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for member in archive.infolist():
            dest = (root / member.filename).resolve()
            if not dest.is_relative_to(root):
                raise CodeError(f"{url}: {member.filename} would land outside the code directory")
        archive.extractall(root)
        for member in archive.infolist():
            mode = member.external_attr >> 16
            if mode & 0o111 or member.filename == "bootstrap":
                os.chmod(root / member.filename, 0o755)
