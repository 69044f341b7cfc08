"""kambda/manifests.py: a Function's code materialised into the local backend's code cache, as it will run.

A `code.path` directory keeps what a zip keeps (exec bits, symbolic links inside the tree), has the CodeSha256 of
the zip `kambda deploy` would upload, refuses links out of the tree, and is written again when its cached copy has
changed; inline files keep their own digest and modes."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from kambda import manifests, packages
from kambda.specs import Code

MANIFEST = """\
apiVersion: kambda.dev/v1alpha1
kind: Function
metadata: {name: tree}
spec: {runtime: python3.11, handler: app.handler, code: {path: ./src}}
"""


def package_tree(root: Path) -> Path:
    """An ELF helper with its exec bit, a `#!` script without one, and an npm-style relative link."""
    (root / "bin").mkdir(parents=True)
    shutil.copy("/bin/true", root / "bin" / "helper")
    (root / "bin" / "helper").chmod(0o755)
    (root / "notes.sh").write_text("#!/bin/sh\necho not meant to run\n")
    (root / "notes.sh").chmod(0o644)
    (root / "app.py").write_text("def handler(event, context):\n    return 1\n")
    (root / "node_modules" / "tool").mkdir(parents=True)
    (root / "node_modules" / "tool" / "cli.js").write_text("console.log('tool')\n")
    (root / "node_modules" / ".bin").mkdir()
    (root / "node_modules" / ".bin" / "tool").symlink_to("../tool/cli.js")
    return root


def listing(root: Path) -> dict[str, tuple[str, str]]:
    """Every path under `root` -> (kind and mode, sha256 of the content or the link's target)."""
    found: dict[str, tuple[str, str]] = {}
    for path in sorted(root.rglob("*")):
        st = os.lstat(path)
        name = path.relative_to(root).as_posix()
        if stat.S_ISLNK(st.st_mode):
            found[name] = ("link", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            found[name] = (f"dir {stat.S_IMODE(st.st_mode):o}", "")
        else:
            found[name] = (f"file {stat.S_IMODE(st.st_mode):o}", hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def zip_sha256(tree: Path, scratch: Path) -> str:
    packages.build(tree, scratch / "expected.zip")
    return packages.sha256_hex(scratch / "expected.zip")


def test_a_code_path_tree_keeps_exec_bits_and_inside_links_with_the_zips_code_sha256(tmp_path: Path) -> None:
    src = package_tree(tmp_path / "src")
    cache = tmp_path / "cache"
    directory, sha = manifests.materialise(Code(path=str(src)), cache)
    hex_digest = zip_sha256(src, tmp_path)
    assert sha == packages.code_sha256(hex_digest)  # what `kambda deploy src` reports for the same tree
    assert directory == cache / f"path-{hex_digest}"
    found = listing(directory)
    assert found["bin/helper"] == ("file 755", hashlib.sha256(Path("/bin/true").read_bytes()).hexdigest())
    assert found["notes.sh"][0] == "file 644"  # as Lambda keeps it: `#!` alone makes nothing executable
    assert found["app.py"][0] == "file 644"
    assert found["node_modules/.bin/tool"] == ("link", "../tool/cli.js")
    assert (directory / "node_modules" / ".bin" / "tool").read_text() == "console.log('tool')\n"
    assert [p.name for p in cache.iterdir()] == [directory.name]  # no staging or zip left behind


@pytest.mark.parametrize(
    ("link", "target"),
    [
        pytest.param("node_modules/.bin/passwd", "/etc/passwd", id="absolute"),
        pytest.param("escape", "../../outside", id="dot-dot"),
        pytest.param("node_modules/.bin/up", "../../../outside", id="dot-dot-from-a-subdirectory"),
    ],
)
def test_a_link_out_of_the_tree_is_refused_naming_the_manifest_and_the_link(
    tmp_path: Path, link: str, target: str
) -> None:
    src = package_tree(tmp_path / "src")
    (src / link).symlink_to(target)
    (tmp_path / "tree.yaml").write_text(MANIFEST)
    with pytest.raises(manifests.ManifestError) as loading:
        manifests.load_directory(tmp_path)
    assert str(loading.value) == (
        f"{tmp_path / 'tree.yaml'}: spec.code.path: {src}: {link}: a symbolic link to {target}, outside the package"
    )
    with pytest.raises(manifests.ManifestError, match=f"spec.code.path: {src}: {link}: a symbolic link to"):
        manifests.materialise(Code(path=str(src)), tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []  # nothing of it reached the cache


def test_load_directory_accepts_links_inside_the_tree(tmp_path: Path) -> None:
    src = package_tree(tmp_path / "src")
    (tmp_path / "tree.yaml").write_text(MANIFEST)
    [spec] = manifests.load_directory(tmp_path)
    assert spec.code == Code(path=str(src))


def tamper_mode(directory: Path) -> None:
    (directory / "bin" / "helper").chmod(0o644)


def tamper_link(directory: Path) -> None:
    (directory / "node_modules" / ".bin" / "tool").unlink()
    (directory / "node_modules" / ".bin" / "tool").symlink_to("../tool/other.js")


def tamper_link_out(directory: Path) -> None:
    (directory / "node_modules" / ".bin" / "tool").unlink()
    (directory / "node_modules" / ".bin" / "tool").symlink_to("/etc/passwd")


def tamper_content(directory: Path) -> None:
    with open(directory / "app.py", "a") as f:
        f.write("import os; os.system('steal')\n")


def tamper_extra_file(directory: Path) -> None:
    (directory / "sitecustomize.py").write_text("print('injected')\n")


@pytest.mark.parametrize("tamper", [tamper_mode, tamper_link, tamper_link_out, tamper_content, tamper_extra_file])
def test_a_cached_tree_that_changed_is_written_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, tamper: Callable[[Path], None]
) -> None:
    src = package_tree(tmp_path / "src")
    code, cache = Code(path=str(src)), tmp_path / "cache"
    directory, sha = manifests.materialise(code, cache)
    genuine = listing(directory)
    tamper(directory)
    assert listing(directory) != genuine
    with caplog.at_level(logging.WARNING, logger="kambda.manifests"):
        again, again_sha = manifests.materialise(code, cache)
    assert (again, again_sha) == (directory, sha)
    assert listing(again) == genuine
    assert f"cached code {directory} does not match its digest" in caplog.text


def test_an_intact_cached_tree_is_reused_as_it_is(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = package_tree(tmp_path / "src")
    code, cache = Code(path=str(src)), tmp_path / "cache"
    directory, sha = manifests.materialise(code, cache)
    (directory / "__pycache__").mkdir()  # what a runtime may write next to the code is not code
    (directory / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"bytecode")
    inode = directory.stat().st_ino
    with caplog.at_level(logging.WARNING, logger="kambda.manifests"):
        assert manifests.materialise(code, cache) == (directory, sha)
    assert directory.stat().st_ino == inode and (directory / "__pycache__").is_dir()  # not rewritten
    assert caplog.text == ""


def test_a_changed_code_path_is_a_new_tree_under_a_new_digest(tmp_path: Path) -> None:
    src = package_tree(tmp_path / "src")
    cache = tmp_path / "cache"
    first, first_sha = manifests.materialise(Code(path=str(src)), cache)
    (src / "bin" / "helper").chmod(0o644)  # only a mode: Lambda's CodeSha256 changes with it, as the zip does
    second, second_sha = manifests.materialise(Code(path=str(src)), cache)
    assert first_sha != second_sha and first != second
    assert listing(first)["bin/helper"][0] == "file 755" and listing(second)["bin/helper"][0] == "file 644"


def test_inline_files_keep_their_digest_and_modes(tmp_path: Path) -> None:
    files = {"bootstrap": "#!/bin/sh\nexit 0\n", "app.py": "x = 1\n", "lib/run.sh": "#!/bin/sh\n"}
    directory, sha = manifests.materialise(Code(files=files), tmp_path / "cache")
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name].encode()).digest())
    assert sha == base64.b64encode(digest.digest()).decode()
    assert directory == tmp_path / "cache" / hashlib.sha256(sha.encode()).hexdigest()[:32]
    found = listing(directory)
    assert [found[n][0] for n in ("app.py", "bootstrap", "lib", "lib/run.sh")] == [
        "file 644", "file 755", "dir 755", "file 755"
    ]  # fmt: skip
    (directory / "app.py").write_text("x = 2\n")
    assert manifests.materialise(Code(files=files), tmp_path / "cache") == (directory, sha)
    assert (directory / "app.py").read_text() == "x = 1\n"
