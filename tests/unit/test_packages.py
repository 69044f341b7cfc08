"""kambda/packages.py: what a package may hold, how it unpacks, and that building one is deterministic."""

from __future__ import annotations

import contextlib
import io
import os
import stat
import struct
import tempfile
import warnings
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kambda import packages
from kambda.packages import PackageError

REG, LNK = stat.S_IFREG, stat.S_IFLNK


def make_zip(*members: tuple[str, bytes, int]) -> bytes:
    """A zip of (name, data, unix mode incl. file type) members, written as a Unix zip tool would."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return buffer.getvalue()


def refusal(data: bytes) -> str:
    with pytest.raises(PackageError) as info:
        packages.validate(io.BytesIO(data))
    return str(info.value)


def tree(root: Path) -> dict[str, tuple[str, str]]:
    """Every path under `root` -> (kind and mode, content or link target)."""
    found: dict[str, tuple[str, str]] = {}
    for path in sorted(root.rglob("*")):
        st_ = os.lstat(path)
        name = path.relative_to(root).as_posix()
        if stat.S_ISLNK(st_.st_mode):
            found[name] = ("link", os.readlink(path))
        elif stat.S_ISDIR(st_.st_mode):
            found[name] = (f"dir {stat.S_IMODE(st_.st_mode):o}", "")
        else:
            found[name] = (f"file {stat.S_IMODE(st_.st_mode):o}", path.read_text())
    return found


@pytest.mark.parametrize(
    ("members", "message"),
    [
        pytest.param([("../evil.py", b"x", REG | 0o644)], "a path with '..'", id="dot-dot"),
        pytest.param([("a/../../evil.py", b"x", REG | 0o644)], "a path with '..'", id="dot-dot-inside"),
        pytest.param([("/etc/cron.d/evil", b"x", REG | 0o644)], "an absolute path", id="absolute"),
        pytest.param([("lib", b"/etc", LNK | 0o777)], "a symbolic link to /etc, outside", id="absolute-link"),
        pytest.param([("lib", b"../../etc", LNK | 0o777)], "outside the package", id="escaping-link"),
        pytest.param(
            # Lexically "x/.." is the root; the kernel resolves x first (the root), so it is the root's parent.
            [("x", b".", LNK | 0o777), ("y", b"x/..", LNK | 0o777)],
            "y: a symbolic link to x/..",
            id="through-a-link",
        ),
        pytest.param(
            [("d", b"sub", LNK | 0o777), ("d/f.py", b"x", REG | 0o644)], "inside d, which is a symlink", id="under-link"
        ),
        pytest.param([("a", b"1", REG | 0o644), ("a/b", b"2", REG | 0o644)], "which is a file", id="under-a-file"),
        pytest.param([("fifo", b"", stat.S_IFIFO | 0o644)], "only files, directories and symbolic links", id="fifo"),
    ],
)
def test_members_that_would_land_outside_or_are_not_files_are_refused(
    members: list[tuple[str, bytes, int]], message: str
) -> None:
    assert message in refusal(make_zip(*members))


def test_not_a_zip_is_refused() -> None:
    assert refusal(b"PK\x03\x04 but no more").startswith("not a valid zip file")
    assert refusal(b"").startswith("not a valid zip file")


def _patch_sizes(data: bytes, size: int, *, local: bool) -> bytes:
    """The zip with every member's uncompressed size rewritten to `size` (central directory; local headers too)."""
    out = bytearray(data)
    at = out.find(b"PK\x01\x02")
    while at >= 0:
        out[at + 24 : at + 28] = struct.pack("<I", size)
        at = out.find(b"PK\x01\x02", at + 4)
    if local:
        at = out.find(b"PK\x03\x04")
        while at >= 0:
            out[at + 22 : at + 26] = struct.pack("<I", size)
            at = out.find(b"PK\x03\x04", at + 4)
    return bytes(out)


def test_declared_unzipped_size_over_lambdas_limit_is_refused_before_unpacking(tmp_path: Path) -> None:
    data = _patch_sizes(make_zip(("a.py", b"x", REG | 0o644)), packages.MAX_UNZIPPED + 1, local=True)
    assert refusal(data) == "Unzipped size must be smaller than 262144000 bytes"
    with pytest.raises(PackageError):
        packages.extract(io.BytesIO(data), tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_bomb_that_lies_about_its_sizes_stops_at_the_declared_size_and_leaves_nothing(tmp_path: Path) -> None:
    # 64 MiB of zeros deflate to ~64 KiB; the directory claims 100 bytes.
    bomb = _patch_sizes(make_zip(("bomb.bin", bytes(64 * 1024 * 1024), REG | 0o644)), 100, local=True)
    assert len(bomb) < 1024 * 1024
    assert packages.validate(io.BytesIO(bomb)).size == 100  # the claim is all the directory shows
    with pytest.raises(PackageError):
        packages.extract(io.BytesIO(bomb), tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []  # the partly written file is gone again


def test_a_directory_claiming_too_many_members_is_refused_before_it_is_parsed() -> None:
    data = bytearray(make_zip(("a.py", b"x", REG | 0o644)))
    end = data.rfind(b"PK\x05\x06")
    data[end + 8 : end + 12] = struct.pack("<HH", 60_000, 60_000)
    assert "too many files" in refusal(bytes(data))


def test_encrypted_members_are_refused() -> None:
    data = bytearray(make_zip(("a.py", b"x", REG | 0o644)))
    at = data.find(b"PK\x01\x02")
    data[at + 8] |= 0x1  # general purpose flag bit 0: encrypted
    assert "encrypted" in refusal(bytes(data))


def test_extract_keeps_modes_and_inside_links(tmp_path: Path) -> None:
    data = make_zip(
        ("app.py", b"print(1)", REG | 0o600),  # too private for a sandbox's own uid: made readable
        ("bin/tool", b"#!/bin/sh\n", REG | 0o700),  # executable: stays so, for every uid
        ("bootstrap", b"#!/bin/sh\n", REG | 0o644),  # a custom runtime's entry point is always executable
        ("lib/", b"", stat.S_IFDIR | 0o700),
        ("lib/current", b"../bin", LNK | 0o777),
        ("./odd//name.txt", b"n", REG | 0o644),
    )
    contents = packages.extract(io.BytesIO(data), tmp_path / "out")
    assert contents.size == len(b"print(1)") + 10 + 10 + 6 + 1
    assert tree(tmp_path / "out") == {
        "app.py": ("file 644", "print(1)"),
        "bin": ("dir 755", ""),
        "bin/tool": ("file 755", "#!/bin/sh\n"),
        "bootstrap": ("file 755", "#!/bin/sh\n"),
        "lib": ("dir 755", ""),
        "lib/current": ("link", "../bin"),
        "odd": ("dir 755", ""),
        "odd/name.txt": ("file 644", "n"),
    }


def test_extract_wants_an_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "here.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        packages.extract(io.BytesIO(make_zip(("a", b"", REG | 0o644))), tmp_path)


def _source_tree(root: Path) -> None:
    (root / "pkg" / "__pycache__").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    (root / "pkg" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"bytecode")
    (root / "app.py").write_text("import pkg\n")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o700)
    (root / "empty").mkdir()
    (root / "current").symlink_to("pkg")


def test_build_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    _source_tree(one)
    two.mkdir()
    (two / "current").symlink_to("pkg")  # the same tree, created in another order, at other times, umask
    os.umask(old := os.umask(0o077))
    try:
        _source_tree_without_link(two)
    finally:
        os.umask(old)
    os.utime(two / "app.py", (1, 1))
    packages.build(one, tmp_path / "one.zip")
    packages.build(two, tmp_path / "two.zip")
    assert packages.sha256_hex(tmp_path / "one.zip") == packages.sha256_hex(tmp_path / "two.zip")
    packages.extract(tmp_path / "one.zip", tmp_path / "out")
    assert tree(tmp_path / "out") == {
        "app.py": ("file 644", "import pkg\n"),
        "current": ("link", "pkg"),
        "empty": ("dir 755", ""),
        "pkg": ("dir 755", ""),
        "pkg/__init__.py": ("file 644", "VALUE = 1\n"),
        "run.sh": ("file 755", "#!/bin/sh\n"),
    }  # __pycache__ left out
    (one / "app.py").write_text("import pkg  # changed\n")
    packages.build(one, tmp_path / "three.zip")
    assert packages.sha256_hex(tmp_path / "three.zip") != packages.sha256_hex(tmp_path / "one.zip")


def _source_tree_without_link(root: Path) -> None:
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (root / "empty").mkdir()
    (root / "app.py").write_text("import pkg\n")
    (root / "pkg").mkdir()
    (root / "pkg" / "__init__.py").write_text("VALUE = 1\n")


def test_build_refuses_a_link_out_of_the_tree(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "etc").symlink_to("/etc")
    with pytest.raises(PackageError, match="etc: a symbolic link to /etc, outside the package"):
        packages.build(tmp_path / "src", tmp_path / "out.zip")


def test_check_tree_refuses_what_build_would_and_names_the_link(tmp_path: Path) -> None:
    root = tmp_path / "src"
    (root / "node_modules" / ".bin").mkdir(parents=True)
    (root / "node_modules" / "tool").mkdir()
    (root / "node_modules" / "tool" / "cli.js").write_text("x\n")
    (root / "node_modules" / ".bin" / "tool").symlink_to("../tool/cli.js")
    packages.check_tree(root)  # a link inside the tree is fine
    (root / "up").symlink_to("../../outside")
    with pytest.raises(PackageError, match=r"^up: a symbolic link to \.\./\.\./outside, outside the package$"):
        packages.check_tree(root)
    with pytest.raises(PackageError, match=r"^up: a symbolic link to"):
        packages.build(root, tmp_path / "out.zip")


def test_zipping_an_unpacked_tree_again_gives_the_same_bytes(tmp_path: Path) -> None:
    """What the local backend's cache check relies on: build(extract(build(tree))) == build(tree), even for a
    bootstrap without its exec bit (which extract makes executable) and a `#!` script without one (kept so)."""
    root = tmp_path / "src"
    root.mkdir()
    _source_tree(root)
    (root / "bootstrap").write_text("#!/bin/sh\n")
    (root / "bootstrap").chmod(0o644)
    (root / "notes.sh").write_text("#!/bin/sh\n")
    (root / "notes.sh").chmod(0o644)
    packages.build(root, tmp_path / "first.zip")
    packages.extract(tmp_path / "first.zip", tmp_path / "unpacked")
    assert tree(tmp_path / "unpacked")["bootstrap"] == ("file 755", "#!/bin/sh\n")
    assert tree(tmp_path / "unpacked")["notes.sh"] == ("file 644", "#!/bin/sh\n")
    packages.build(tmp_path / "unpacked", tmp_path / "second.zip")
    assert (tmp_path / "second.zip").read_bytes() == (tmp_path / "first.zip").read_bytes()


def test_code_sha256_is_lambdas_base64_of_the_digest() -> None:
    # sha256(b"") in hex and as AWS prints it for an empty file
    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert packages.code_sha256(empty) == "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
    assert packages.sha256_hex(io.BytesIO(b"")) == empty


# ---- fuzz ------------------------------------------------------------------------------------------------------

_PART = st.sampled_from(["a", "b", "c"] * 4 + ["..", ".", "", "bootstrap", "é"])
_NAME = st.tuples(st.sampled_from([""] * 9 + ["/"]), st.lists(_PART, min_size=1, max_size=3), st.booleans()).map(
    lambda t: t[0] + "/".join(t[1]) + ("/" if t[2] else "")
)
_MODE = st.sampled_from([REG | 0o644, REG | 0o755, LNK | 0o777, LNK | 0o777, stat.S_IFDIR | 0o755, 0, stat.S_IFIFO])
_LINK = st.lists(_PART, min_size=1, max_size=3).map("/".join).map(str.encode)
_DATA = st.one_of(st.binary(max_size=64), _LINK, st.sampled_from([b".", b"..", b"/", b"/etc"]))
_MEMBERS = st.lists(st.tuples(_NAME, _DATA, _MODE), max_size=6)
_MUTATIONS = st.one_of(st.just([]), st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255)), max_size=6))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(members=_MEMBERS, mutations=_MUTATIONS, cut=st.one_of(st.none(), st.integers(min_value=0, max_value=4096)))
def test_fuzz_validate_and_extract_refuse_only_with_package_error_and_never_write_outside(
    members: list[tuple[str, bytes, int]], mutations: list[tuple[int, int]], cut: int | None
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of duplicate names; the fuzz makes them on purpose
        data = bytearray(make_zip(*members))
    for at, value in mutations:
        if data:
            data[at % len(data)] = value
    if cut is not None:
        del data[cut:]
    with tempfile.TemporaryDirectory() as scratch:
        parent = Path(scratch)
        target = parent / "target"
        with contextlib.suppress(PackageError):
            packages.validate(io.BytesIO(bytes(data)))
        try:
            packages.extract(io.BytesIO(bytes(data)), target)
        except PackageError:
            assert list(target.iterdir()) == []
        assert [p.name for p in parent.iterdir()] == ["target"]
        root = target.resolve()
        for path in target.rglob("*"):
            assert Path(os.path.realpath(path)).is_relative_to(root), path


_LINK_NAME = st.sampled_from(["a", "b", "c", "d/e", "d/f"])
_LINK_TARGET = st.lists(st.sampled_from(["a", "b", "c", "d", "e", "f", "..", "."]), min_size=1, max_size=4)


@settings(max_examples=300, deadline=None)
@given(links=st.dictionaries(_LINK_NAME, _LINK_TARGET.map("/".join), min_size=1, max_size=5))
def test_fuzz_links_that_are_kept_resolve_inside_as_the_kernel_resolves_them(links: dict[str, str]) -> None:
    members = [("d/", b"", stat.S_IFDIR | 0o755), *((n, t.encode(), LNK | 0o777) for n, t in links.items())]
    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch) / "target"
        try:
            packages.extract(io.BytesIO(make_zip(*members)), target)
        except PackageError as exc:
            assert any(why in str(exc) for why in ("outside the package", "loop", "not a directory")), exc
            return
        for name in links:
            assert Path(os.path.realpath(target / name)).is_relative_to(target.resolve()), (name, links)


def test_overlay_merges_directories_and_the_later_file_wins(tmp_path: Path) -> None:
    first, second, opt = tmp_path / "one", tmp_path / "two", tmp_path / "opt"
    for root, files in ((first, {"python/a.py": "1", "python/shared.py": "one", "bin": None}),
                        (second, {"python/shared.py": "two", "python/b.py": "2", "bin/tool": "t"})):  # fmt: skip
        for name, text in files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if text is None:
                path.write_text("a file where the later layer has a directory")
            else:
                path.write_text(text)
    opt.mkdir()
    packages.overlay(first, opt)
    packages.overlay(second, opt)
    assert (opt / "python" / "shared.py").read_text() == "two"
    assert (opt / "python" / "a.py").read_text() == "1" and (opt / "python" / "b.py").read_text() == "2"
    assert (opt / "bin" / "tool").read_text() == "t"  # a directory replaced a file
    assert not any(first.iterdir()) and not any(second.iterdir())


def test_code_and_layers_together_are_held_to_the_unzipped_limit(tmp_path: Path) -> None:
    from kambda.runtime.agent import code

    task, opt = tmp_path / "task", tmp_path / "opt"
    (task / "lib").mkdir(parents=True)
    (opt / "python").mkdir(parents=True)
    (task / "lib" / "a.bin").write_bytes(b"x" * 600)
    (opt / "python" / "b.bin").write_bytes(b"y" * 500)
    code.check_total(str(task), str(opt), limit=1100)  # exactly at the limit: fine
    with pytest.raises(code.CodeError, match="Unzipped size must be smaller than"):
        code.check_total(str(task), str(opt), limit=1099)
