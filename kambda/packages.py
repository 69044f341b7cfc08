"""Deployment packages: Lambda's zip files, checked, unpacked and built. Standard library only: a function pod's agent
imports this module, and its image holds nothing else.

A package is named by the SHA-256 of its bytes (hex here; Lambda's `CodeSha256` is the same digest in base64).
`validate` reads a zip's directory and refuses, with a `PackageError` meant for the user, anything that is not a
zip, whose members would land outside the target (absolute paths, `..`, symbolic links pointing outside, also by
way of other links), that unpacks to more than Lambda's 250 MB, or that has an absurd number of members.
`extract` validates, then unpacks into an empty directory: regular files (mode 0755 if the zip marks them
executable, else 0644), directories (0755) and the symbolic links that stay inside the tree (kept as links, as
Lambda keeps them). The sizes in a zip's directory are the uploader's claim, so `extract` also counts the bytes it
actually writes and stops at the limit. `build` zips a directory deterministically: the same tree always gives the
same bytes, hence the same SHA-256 (with the same zlib).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import stat
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

MAX_ZIPPED = 50 * 1024 * 1024  # 52428800: Lambda's limit for a zip uploaded directly
MAX_UNZIPPED = 250 * 1024 * 1024  # 262144000: Lambda's limit for a function's unzipped code
# Lambda sets no member count, but every member is a file to create and, while the directory is read, an object in
# memory: 50,000 is twice the files of the largest (250 MB) Python packages. The directory's size is checked from
# the zip's end record before Python parses it, because zipfile parses whatever size the record claims.
MAX_MEMBERS = 50_000
MAX_DIRECTORY_BYTES = 16 * 1024 * 1024
MAX_LINK = 4095  # a symbolic link's target, at most (Linux's PATH_MAX less the NUL)
MAX_NAME = 255  # one path component, in bytes
MAX_PATH = 4000
MAX_LINK_HOPS = 40  # Linux follows at most 40 links in one lookup (then ELOOP); a longer chain is refused
CHUNK = 1024 * 1024
UNZIPPED_TOO_LARGE = f"Unzipped size must be smaller than {MAX_UNZIPPED} bytes"  # Lambda's wording
FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip can hold: `build` stamps every member with it

_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
_EOCD, _EOCD64, _LOCATOR64 = b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07"
Source = str | os.PathLike[str] | IO[bytes]


class PackageError(ValueError):
    """The package cannot be used as a function's code; the message says why, for the person who built it."""


@dataclass(frozen=True)
class Member:
    name: str  # normalised: relative, '/'-separated, no '.', '..' or empty parts
    kind: Literal["file", "dir", "symlink"]
    size: int  # as declared by the zip
    mode: int  # what it is unpacked with (files and dirs)
    info: zipfile.ZipInfo = field(compare=False, repr=False)
    target: str | None = None  # a symlink's target


@dataclass(frozen=True)
class Contents:
    members: tuple[Member, ...]
    size: int  # declared unzipped size, in bytes


def sha256_hex(source: Source) -> str:
    """The SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with _binary(source) as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def code_sha256(hex_digest: str) -> str:
    """Lambda's CodeSha256: the same digest, base64 of its bytes."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def validate(source: Source) -> Contents:
    """The package's members, or `PackageError` saying what is wrong with it. Nothing is written."""
    with _binary(source) as f, _archive(f) as archive:
        return _inspect(archive)


def extract(source: Source, target: str | os.PathLike[str]) -> Contents:
    """Validate, then unpack into `target` (created if need be; it must be empty). On failure it is emptied again."""
    root = Path(target)
    ours = not root.exists()  # else the caller's (a pod's code volume, owned by root): its mode is left alone
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    if any(root.iterdir()):
        raise ValueError(f"{root} is not empty: a package is unpacked into an empty directory")
    try:
        with _binary(source) as f, _archive(f) as archive:
            contents = _inspect(archive)
            _unpack(archive, contents, root)
        if ours:
            root.chmod(0o755)
    except BaseException:
        clear(root)
        raise
    return contents


def clear(directory: str | os.PathLike[str]) -> None:
    """Remove what `directory` holds (not links' targets), keeping the directory itself (it may be a mount)."""
    for child in Path(directory).iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def overlay(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Move what `source` holds into `target`, merging directories; on a clash `source` wins (Lambda's layers:
    a later layer's file replaces an earlier one's). `source` is left empty. Both were unpacked by `extract`, so
    neither holds a link that leaves its tree; a link in `target` is replaced, never followed."""
    src, dst = Path(source), Path(target)
    for child in list(src.iterdir()):
        into = dst / child.name
        if child.is_dir() and not child.is_symlink() and into.is_dir() and not into.is_symlink():
            overlay(child, into)
            child.rmdir()
            continue
        if into.is_dir() and not into.is_symlink():
            shutil.rmtree(into)
        elif into.exists() or into.is_symlink():
            into.unlink()
        child.rename(into)


def check_tree(directory: str | os.PathLike[str]) -> None:
    """What `build` would refuse in `directory`, said without building: a symbolic link that points outside the
    tree (absolute, or `..` past its root, also by way of other links), or something that is not a file, a
    directory or a link. Only names and links are read."""
    _listing(Path(directory))


def build(directory: str | os.PathLike[str], dest: str | os.PathLike[str] | IO[bytes]) -> None:
    """Zip `directory` so that the same tree always gives the same bytes: names sorted, one fixed timestamp, modes
    reduced to 0755/0644, symbolic links stored as links, `__pycache__` left out. A link that points outside the
    tree is refused (the package would be). A top-level `bootstrap` is stored executable, as `extract` unpacks it,
    so that zipping an unpacked tree again gives the same bytes (the local backend's cache check relies on it)."""
    root = Path(directory)
    entries, links = _listing(root)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for name, kind in entries:
            path = root / name
            if kind == "dir":
                archive.writestr(_zip_info(name + "/", stat.S_IFDIR | 0o755, zipfile.ZIP_STORED), b"")
            elif kind == "symlink":
                info = _zip_info(name, stat.S_IFLNK | 0o777, zipfile.ZIP_STORED)
                archive.writestr(info, links[name].encode())
            else:
                mode = 0o755 if name == "bootstrap" or os.lstat(path).st_mode & 0o111 else 0o644
                info = _zip_info(name, stat.S_IFREG | mode, zipfile.ZIP_DEFLATED)
                info.file_size = os.lstat(path).st_size  # so that zipfile decides on ZIP64 from the real size
                with open(path, "rb") as src, archive.open(info, "w") as out:
                    shutil.copyfileobj(src, out, CHUNK)


# ---- reading ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _binary(source: Source) -> Iterator[IO[bytes]]:
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as f:
            yield f
    else:
        yield source


@contextlib.contextmanager
def _reading() -> Iterator[None]:
    """Around calls that only read the archive: whatever zipfile, zlib, bz2 or lzma raise on malformed input
    (BadZipFile, zlib.error, EOFError, OSError from a seek to a nonsense offset, ...) is the package's fault."""
    try:
        yield
    except (PackageError, MemoryError):
        raise
    except Exception as exc:
        raise PackageError(f"not a valid zip file: {exc}") from None


@contextlib.contextmanager
def _archive(f: IO[bytes]) -> Iterator[zipfile.ZipFile]:
    with _reading():
        _check_directory_size(f)
        archive = zipfile.ZipFile(f)
    with archive:
        yield archive


def _check_directory_size(f: IO[bytes]) -> None:
    """Refuse a central directory that is too large before zipfile parses all of it into memory. An archive
    whose end record cannot be found is left to zipfile to refuse."""
    size = f.seek(0, os.SEEK_END)
    tail_start = max(0, size - (22 + 0xFFFF))  # the end record is 22 bytes plus a comment of up to 64 KiB
    f.seek(tail_start)
    tail = f.read()
    at = tail.rfind(_EOCD)
    if at < 0 or len(tail) - at < 22:
        return
    entries, directory = struct.unpack("<HI", tail[at + 10 : at + 16])
    zip64 = entries == 0xFFFF or directory == 0xFFFFFFFF  # the real numbers are in the ZIP64 record before it
    if zip64 and at >= 20 and tail[at - 20 : at - 16] == _LOCATOR64 and tail_start + at - 76 >= 0:
        f.seek(tail_start + at - 20 - 56)
        record = f.read(56)
        if record[:4] == _EOCD64:
            entries, directory = struct.unpack("<QQ", record[32:48])
    if entries > MAX_MEMBERS or directory > MAX_DIRECTORY_BYTES:
        raise PackageError(f"too many files in the package (at most {MAX_MEMBERS})")


def _inspect(archive: zipfile.ZipFile) -> Contents:
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise PackageError(f"too many files in the package ({len(infos)}; at most {MAX_MEMBERS})")
    members: list[Member] = []
    total = 0
    for info in infos:
        kind, mode = _kind(info)
        name = _normalise(info.filename)
        if name is None:
            if kind == "dir":
                continue  # "./" or "/": the package root itself
            raise PackageError(f"{info.filename!r}: not a valid file name")
        if info.flag_bits & 0x1:
            raise PackageError(f"{name}: encrypted members cannot be unpacked")
        if info.compress_type not in _METHODS:
            raise PackageError(f"{name}: unsupported compression method {info.compress_type}")
        target = None
        if kind == "symlink":
            if info.file_size > MAX_LINK:
                raise PackageError(f"{name}: a symbolic link longer than {MAX_LINK} bytes")
            with _reading():
                target = archive.read(info).decode()
            if not target or "\0" in target:
                raise PackageError(f"{name}: not a valid symbolic link")
        elif kind == "file" and name == "bootstrap":
            mode = 0o755  # a custom runtime's entry point, whatever the zip tool recorded
        total += info.file_size
        if total > MAX_UNZIPPED:
            raise PackageError(UNZIPPED_TOO_LARGE)
        members.append(Member(name, kind, info.file_size, mode, info, target))
    _check_layout(members)
    return Contents(tuple(members), total)


def _kind(info: zipfile.ZipInfo) -> tuple[Literal["file", "dir", "symlink"], int]:
    unix = info.external_attr >> 16 if info.create_system == 3 else 0  # other systems record no Unix mode
    fmt = stat.S_IFMT(unix)
    if info.filename.endswith("/") or fmt == stat.S_IFDIR:
        return "dir", 0o755
    if fmt == stat.S_IFLNK:
        return "symlink", 0o777
    if fmt in (0, stat.S_IFREG):
        return "file", 0o755 if unix & 0o111 else 0o644
    raise PackageError(f"{info.filename}: only files, directories and symbolic links can be unpacked")


def _normalise(filename: str) -> str | None:
    if "\0" in filename:
        raise PackageError(f"{filename!r}: not a valid file name")
    if filename.startswith("/"):
        raise PackageError(f"{filename}: an absolute path, outside the package")
    parts = [p for p in filename.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PackageError(f"{filename}: a path with '..', outside the package")
    if any(len(p.encode()) > MAX_NAME for p in parts) or len(filename.encode()) > MAX_PATH:
        raise PackageError(f"{filename[:80]}...: a file name too long to unpack")
    return "/".join(parts) or None


def _check_layout(members: list[Member]) -> None:
    """Each path is one thing, no member lies inside a file or a link (so unpacking never writes through a link),
    and every link resolves inside the tree."""
    kinds: dict[str, str] = {}
    for m in members:
        seen = kinds.get(m.name)
        if seen is not None and not (seen == "dir" == m.kind):
            raise PackageError(f"{m.name}: in the package twice")
        kinds[m.name] = m.kind
    for m in members:
        parts = m.name.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if kinds.get(prefix, "dir") != "dir":
                raise PackageError(f"{m.name}: inside {prefix}, which is a {kinds[prefix]}, not a directory")
    _check_links({m.name: m.target for m in members if m.target is not None})


def _check_links(links: dict[str, str]) -> None:
    for name, link in links.items():
        problem = _resolution_problem(name, link, links)
        if problem:
            raise PackageError(f"{name}: a symbolic link to {link}, {problem}")


def _resolution_problem(name: str, link: str, links: dict[str, str]) -> str | None:
    """Why the link at `name` does not resolve inside the tree, following the tree's other links as the kernel
    does (lexically `x/..` is the root, but with `x -> .` it is the root's parent), or None. Components that are not
    links are taken for directories: where they are not, the kernel stops (ENOENT, ENOTDIR) and reaches less."""
    pending = [*name.split("/")[:-1], *link.split("/")]
    resolved: list[str] = []
    hops = 0
    if link.startswith("/"):
        return "outside the package"
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                return "outside the package"
            resolved.pop()
            continue
        resolved.append(part)
        through = links.get("/".join(resolved))
        if through is not None:
            hops += 1
            if hops > MAX_LINK_HOPS:
                return "in a loop of symbolic links"
            if through.startswith("/"):
                return "outside the package"
            resolved.pop()
            pending[:0] = through.split("/")
    return None


# ---- writing ---------------------------------------------------------------------------------------------------


def _unpack(archive: zipfile.ZipFile, contents: Contents, root: Path) -> None:
    written = 0
    directories = {root}
    created: list[Path] = []

    def make_dirs(path: Path) -> None:
        missing = []
        while path not in directories:
            missing.append(path)
            path = path.parent
        for d in reversed(missing):
            d.mkdir(mode=0o755, exist_ok=True)
            directories.add(d)
            created.append(d)

    for m in contents.members:
        dest = root / m.name
        if m.kind == "dir":
            make_dirs(dest)
        elif m.kind == "file":
            make_dirs(dest.parent)
            # O_EXCL | O_NOFOLLOW: never write through something already there (the layout check makes that
            # impossible; this makes it impossible by construction too).
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            with open(os.open(dest, flags, 0o600), "wb") as out:
                with _reading():
                    member = archive.open(m.info)
                with member:
                    size = 0
                    while True:
                        with _reading():
                            chunk = member.read(CHUNK)
                        if not chunk:
                            break
                        size += len(chunk)
                        written += len(chunk)
                        if written > MAX_UNZIPPED:
                            raise PackageError(UNZIPPED_TOO_LARGE)
                        if size > m.size:
                            raise PackageError(f"{m.name}: holds more than the {m.size} bytes it declares")
                        out.write(chunk)
                os.fchmod(out.fileno(), m.mode)
    # Links last, once every file is written: nothing is ever written through one.
    for m in contents.members:
        if m.target is not None:
            dest = root / m.name
            make_dirs(dest.parent)
            os.symlink(m.target, dest)
    for d in created:
        d.chmod(0o755)  # whatever the umask


def _listing(root: Path) -> tuple[list[tuple[str, Literal["file", "dir", "symlink"]]], dict[str, str]]:
    """The tree's entries, sorted, and its links' targets; `PackageError` for what cannot be packaged."""
    entries = sorted(_walk(root))
    links = {name: os.readlink(root / name) for name, kind in entries if kind == "symlink"}
    _check_links(links)
    return entries, links


def _walk(root: Path) -> Iterator[tuple[str, Literal["file", "dir", "symlink"]]]:
    for current, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        base = Path(current)
        for entry in [*dirnames, *filenames]:
            path = base / entry
            name = path.relative_to(root).as_posix()
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                yield name, "symlink"
            elif stat.S_ISDIR(mode):
                yield name, "dir"
            elif stat.S_ISREG(mode):
                yield name, "file"
            else:
                raise PackageError(f"{name}: only files, directories and symbolic links can be packaged")


def _zip_info(name: str, mode: int, compression: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
    info.create_system = 3  # Unix, so that the mode below is read back
    info.external_attr = mode << 16 | (0x10 if stat.S_ISDIR(mode) else 0)  # 0x10: MS-DOS's directory flag
    info.compress_type = compression
    return info
