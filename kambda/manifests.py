"""Loading Function manifests from a directory (the local backend) and materialising their code.

Inline files are written to a content-addressed directory (`<data>/code/<sha256>/`) so a version's code never
changes under a running instance; a `code.path` directory is copied the same way. The sha256 is Lambda's
`CodeSha256` idea: a digest over the sorted file names and contents.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from . import hostruntimes
from .specs import Code, FunctionSpec, SpecError, parse_function

log = logging.getLogger(__name__)


class ManifestError(Exception):
    """A manifest file that cannot be loaded; the message names the file and every problem in it."""


def iter_documents(directory: Path) -> Iterator[tuple[Path, Mapping[str, Any]]]:
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as exc:
            raise ManifestError(f"{path}: not valid YAML: {exc}") from exc
        for doc in docs:
            if doc is None:
                continue
            if not isinstance(doc, Mapping):
                raise ManifestError(f"{path}: every document must be an object")
            yield path, doc


def load_directory(directory: Path) -> list[FunctionSpec]:
    """Every Function in the directory's manifests, with `code.path` made absolute."""
    specs: list[FunctionSpec] = []
    for path, doc in iter_documents(directory):
        if doc.get("kind", "Function") != "Function":
            continue  # Aliases and other kinds are not the local backend's business yet
        try:
            spec = parse_function(doc)
        except SpecError as exc:
            raise ManifestError(f"{path}: " + "; ".join(exc.errors)) from exc
        unavailable = hostruntimes.problem(spec.runtime)
        if unavailable is not None:
            raise ManifestError(f"{path}: spec.runtime: {unavailable}")
        if spec.code.image is not None:
            raise ManifestError(f"{path}: spec.code.image: container-image functions run on Kubernetes only "
                                "(the local backend has no container runtime)")  # fmt: skip
        if spec.code.files is None and spec.code.path is None and spec.code.package is None:
            raise ManifestError(
                f"{path}: spec.code: the local backend runs inline files, a path or a package (sha256 alone)"
            )
        if spec.code.path is not None:
            code_path = (path.parent / spec.code.path).resolve()
            if not code_path.is_dir():
                raise ManifestError(f"{path}: spec.code.path: {code_path} is not a directory")
            spec = replace(spec, code=Code(path=str(code_path)))
        specs.append(spec)
    return specs


def read_code(code: Code) -> dict[str, bytes]:
    """The code's files as relative path -> bytes."""
    if code.files is not None:
        return {name: text.encode() for name, text in code.files.items()}
    assert code.path is not None
    root = Path(code.path)
    files: dict[str, bytes] = {}
    for file in sorted(root.rglob("*")):
        if file.is_file() and "__pycache__" not in file.parts:
            files[file.relative_to(root).as_posix()] = file.read_bytes()
    return files


def code_sha256(files: Mapping[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return base64.b64encode(digest.digest()).decode()


def _files_in(directory: Path) -> dict[str, bytes]:
    """A cached code directory's files as `read_code` would list them (bytecode a runtime wrote is not code)."""
    return {
        f.relative_to(directory).as_posix(): f.read_bytes()
        for f in sorted(directory.rglob("*"))
        if f.is_file() and "__pycache__" not in f.parts
    }


def materialise(files: Mapping[str, bytes], cache_dir: Path) -> tuple[Path, str]:
    """Write the files once into a content-addressed directory; returns (directory, CodeSha256).

    A directory already there is used only if it still hashes to its name: the cache outlives the gateway, and
    code that changed on disk (tampered with, or half-written by a crash) must never run under the old digest.
    """
    sha = code_sha256(files)
    target = cache_dir / hashlib.sha256(sha.encode()).hexdigest()[:32]
    if target.is_dir():
        if code_sha256(_files_in(target)) == sha:
            return target, sha
        log.warning("cached code %s does not match its digest: writing it again", target)
        shutil.rmtree(target)
    staging = cache_dir / f".staging-{os.getpid()}-{target.name}"
    shutil.rmtree(staging, ignore_errors=True)
    for name, data in files.items():
        dest = staging / name
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        dest.write_bytes(data)
        # Readable by a sandbox's own uid whatever the umask; a custom runtime's entry point must be executable,
        # and so must anything the author shipped as a script.
        dest.chmod(0o755 if name == "bootstrap" or data.startswith(b"#!") else 0o644)
    staging.mkdir(parents=True, exist_ok=True)
    for directory in [staging, *(d for d in staging.rglob("*") if d.is_dir())]:
        directory.chmod(0o755)
    try:
        staging.rename(target)
    except OSError:  # another gateway materialised the same code first
        shutil.rmtree(staging, ignore_errors=True)
    return target, sha
