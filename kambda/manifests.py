"""Loading Function manifests from a directory (the local backend) and materialising their code.

A version's code is written once into a content-addressed directory under the code cache, so that it never
changes under a running instance:
- a `code.path` directory is packaged exactly as `kambda deploy DIR` packages it (`packages.build`: symbolic links
  kept as links, files 0755 or 0644 as their exec bit says, `__pycache__` left out; a link out of the tree is
  refused) and that zip unpacked by `packages.extract` into `path-<sha256 of the zip>/`. Its CodeSha256 is the
  zip's, as Lambda's is, so the same directory deployed with `kambda deploy` has the same one;
- inline `code.files` (text, no modes, no links) are written as they are into `<32 hex digits>/`; their
  CodeSha256 is a digest over the sorted file names and contents, there being no zip to hash.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import yaml

from . import hostruntimes, packages
from .specs import Code, FunctionSpec, SpecError, parse_function

log = logging.getLogger(__name__)
PATH_TREE_PREFIX = "path-"  # a code.path tree's directory: never the code store's `<64 hex>/` trees of packages


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


def function_specs(directory: Path) -> dict[str, Mapping[str, Any]]:
    """The directory's Function manifests' specs as written, by name (what the Lambda API shows of them)."""
    found: dict[str, Mapping[str, Any]] = {}
    for _, doc in iter_documents(directory):
        meta, spec = doc.get("metadata"), doc.get("spec")
        if doc.get("kind", "Function") == "Function" and isinstance(meta, Mapping) and isinstance(spec, Mapping):
            found[str(meta.get("name"))] = spec
    return found


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
            try:
                packages.check_tree(code_path)  # named here, with its manifest, rather than when it is zipped
            except packages.PackageError as exc:
                raise ManifestError(f"{path}: spec.code.path: {code_path}: {exc}") from None
            spec = replace(spec, code=Code(path=str(code_path)))
        specs.append(spec)
    return specs


def materialise(code: Code, cache_dir: Path) -> tuple[Path, str]:
    """The code's tree in the content-addressed cache, written once; returns (directory, CodeSha256).

    A directory already there is used only if it still hashes to its name: the cache outlives the gateway, and
    code that changed on disk (tampered with, or half-written by a crash) must never run under the old digest.
    """
    if code.files is not None:
        return _materialise_files(code.files, cache_dir)
    assert code.path is not None, "the local backend materialises inline files or a path"
    return _materialise_directory(Path(code.path), cache_dir)


# ---- a code.path directory: packaged as `kambda deploy DIR` packages it ----------------------------------------


def _materialise_directory(root: Path, cache_dir: Path) -> tuple[Path, str]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=cache_dir) as zipped:
        hex_digest = _package(root, zipped)
        target = cache_dir / f"{PATH_TREE_PREFIX}{hex_digest}"
        if target.is_dir():
            if _tree_sha256(target, cache_dir) == hex_digest:
                return target, packages.code_sha256(hex_digest)
            log.warning("cached code %s does not match its digest: writing it again", target)
            shutil.rmtree(target)
        staging = cache_dir / f".staging-{os.getpid()}-{target.name}"
        shutil.rmtree(staging, ignore_errors=True)
        zipped.seek(0)
        try:
            packages.extract(zipped, staging)
        except packages.PackageError as exc:  # Lambda's limits (250 MB unzipped, ...) hold for a path too
            raise ManifestError(f"spec.code.path: {root}: {exc}") from None
        _move_into_place(staging, target)
    return target, packages.code_sha256(hex_digest)


def _package(root: Path, zipped: IO[bytes]) -> str:
    """Zip the tree into `zipped` (as `kambda deploy` would); the zip's SHA-256, hex."""
    try:
        packages.build(root, zipped)
    except packages.PackageError as exc:
        raise ManifestError(f"spec.code.path: {root}: {exc}") from None
    zipped.seek(0)
    return packages.sha256_hex(zipped)


def _tree_sha256(directory: Path, scratch_dir: Path) -> str | None:
    """The SHA-256 of a cached tree zipped again: `build` is deterministic and stores what `extract` unpacked
    (modes, links), so an intact tree gives its package's very bytes. None: the tree can no longer be packaged
    (something in it was replaced by a link out of it, say), so it is not intact either. Costs about one zipping."""
    with tempfile.TemporaryFile(dir=scratch_dir) as rezipped:
        try:
            packages.build(directory, rezipped)
        except packages.PackageError:
            return None
        rezipped.seek(0)
        return packages.sha256_hex(rezipped)


# ---- inline files ------------------------------------------------------------------------------------------------


def files_sha256(files: Mapping[str, bytes]) -> str:
    """Inline code's CodeSha256 (base64): a digest over its names and contents, as they have no zip."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return base64.b64encode(digest.digest()).decode()


def _files_in(directory: Path) -> dict[str, bytes]:
    """A cached tree of inline files as they were written (bytecode a runtime wrote is not code)."""
    return {
        f.relative_to(directory).as_posix(): f.read_bytes()
        for f in sorted(directory.rglob("*"))
        if f.is_file() and "__pycache__" not in f.parts
    }


def _materialise_files(texts: Mapping[str, str], cache_dir: Path) -> tuple[Path, str]:
    files = {name: text.encode() for name, text in texts.items()}
    sha = files_sha256(files)
    target = cache_dir / hashlib.sha256(sha.encode()).hexdigest()[:32]
    if target.is_dir():
        if files_sha256(_files_in(target)) == sha:
            return target, sha
        log.warning("cached code %s does not match its digest: writing it again", target)
        shutil.rmtree(target)
    staging = cache_dir / f".staging-{os.getpid()}-{target.name}"
    shutil.rmtree(staging, ignore_errors=True)
    for name, data in files.items():
        dest = staging / name
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        dest.write_bytes(data)
        # Readable by a sandbox's own uid whatever the umask. YAML text carries no mode: a custom runtime's entry
        # point must be executable, and so must anything the author wrote as a script.
        dest.chmod(0o755 if name == "bootstrap" or data.startswith(b"#!") else 0o644)
    staging.mkdir(parents=True, exist_ok=True)
    for directory in [staging, *(d for d in staging.rglob("*") if d.is_dir())]:
        directory.chmod(0o755)
    _move_into_place(staging, target)
    return target, sha


def _move_into_place(staging: Path, target: Path) -> None:
    try:
        staging.rename(target)
    except OSError:  # another gateway materialised the same code first
        shutil.rmtree(staging, ignore_errors=True)
