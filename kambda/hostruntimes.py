"""Which runtimes this host can run for the local backend, with what, and why not when it cannot.

A runtime must be what it says: a `python3.13` function runs on a Python 3.13, a `nodejs22.x` one on Node.js 22,
or is refused with the list of what this host offers.

- Python: the interpreters found on this host for a runtime (the one kambda runs on if it is that version, then
  `python3.N` on PATH, /usr/local/bin and /usr/bin), each asked (a probe run by that interpreter) for its version
  and where its awslambdaric and boto3 are, with their dependencies. Only an interpreter that has both offers its
  version. The runtime process sees those distributions and nothing else of its environment (a directory of
  links, `python_site`; sandbox.py runs the interpreter with `-S`), as on Lambda, where a function has its code,
  its layers, the runtime client and boto3.
- Node.js: the host's `node`, for its own major version.
- provided*: always (the function brings its own runtime).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .specs import NODEJS_RUNTIMES, PROVIDED_RUNTIMES, PYTHON_RUNTIMES

PROVIDED_PACKAGES = ("awslambdaric", "boto3")  # what Lambda's Python runtimes give a function
PATH_DIRS = ("/usr/local/bin", "/usr/bin")

# Run by each candidate interpreter: its version, its real executable, and the top-level files and directories of
# PROVIDED_PACKAGES and their dependencies (extras excluded; a dependency not installed, e.g. one only for older
# Pythons, is skipped). Standard library only: it runs outside kambda's environment.
PROBE = r"""
import importlib.metadata as md, json, os, re, sys
def key(name): return re.sub(r"[-_.]+", "-", name).lower()
roots, found, todo = sys.argv[1:], {}, list(sys.argv[1:])
while todo:
    name = todo.pop()
    if key(name) in found: continue
    try: dist = md.distribution(name)
    except md.PackageNotFoundError: continue
    found[key(name)] = dist
    for req in dist.requires or []:
        if "extra" not in req.partition(";")[2]: todo.append(re.match(r"[A-Za-z0-9._-]+", req).group(0))
paths = sorted({str(d.locate_file(str(f).split("/")[0])) for d in found.values() for f in d.files or []
                if not str(f).startswith(("..", "__pycache__", "/"))})
print(json.dumps({"version": "%d.%d" % sys.version_info[:2],
                  "interpreter": os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable),
                  "missing": [r for r in roots if key(r) not in found], "paths": paths}))
"""


@dataclass(frozen=True)
class PythonRuntime:
    runtime: str  # python3.N
    interpreter: str  # the base interpreter's real path (no virtualenv: -S, and the packages come as links)
    packages: tuple[str, ...]  # the provided distributions' top-level files and directories

    def site(self, root: Path) -> Path:
        """A directory of links to the packages under `root` (made once; content-addressed, so never stale)."""
        digest = hashlib.sha256("\0".join((self.interpreter, *self.packages)).encode()).hexdigest()[:12]
        target = root / f"{self.runtime}-{digest}"
        if target.is_dir():
            return target
        root.mkdir(parents=True, exist_ok=True)
        staging = root / f".staging-{os.getpid()}-{target.name}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o755)
        for path in self.packages:
            (staging / os.path.basename(path)).symlink_to(path)
        staging.chmod(0o755)  # whatever the umask: a sandbox's own uid lists it
        try:
            staging.rename(target)
        except OSError:  # another gateway made the same one first
            shutil.rmtree(staging, ignore_errors=True)
        return target


def _candidates(runtime: str) -> list[str]:
    """Where a `runtime` (python3.N) interpreter may be: the one kambda runs on if it is that version, then
    `python3.N` on PATH, in /usr/local/bin and /usr/bin."""
    own = f"python{sys.version_info.major}.{sys.version_info.minor}"
    on_path = shutil.which(runtime)
    named = [p for p in (on_path, *(os.path.join(d, runtime) for d in PATH_DIRS)) if p]
    return [sys.executable, *named] if runtime == own else named


@functools.cache
def _probe(interpreter: str) -> dict[str, object] | None:
    """What `interpreter` says of itself (PROBE), once per process; None if it does not run (a pyenv shim of a
    version that is not installed, say)."""
    try:
        result = subprocess.run(
            [interpreter, "-c", PROBE, *PROVIDED_PACKAGES], capture_output=True, text=True, timeout=30, check=True
        )
        answer: dict[str, object] = json.loads(result.stdout)
        return answer
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


@dataclass(frozen=True)
class PythonSurvey:
    """What the Python interpreters on this host offer, and the ones that cannot serve a runtime, with why."""

    offered: dict[str, PythonRuntime]
    unusable: dict[str, str]  # interpreter -> reason


@functools.cache
def _survey_of(runtime: str) -> tuple[PythonRuntime | None, dict[str, str]]:
    """The first candidate that is `runtime` with awslambdaric and boto3, and those that are it without them.
    Per runtime, so that serving python3.11 functions probes only the interpreters that could be python3.11
    (probing every candidate took 1.3 s at each gateway start on a host with pyenv shims)."""
    unusable: dict[str, str] = {}
    seen: set[str] = set()
    for candidate in _candidates(runtime):
        real = os.path.realpath(candidate)
        if real in seen or not os.access(real, os.X_OK):
            continue
        seen.add(real)
        answer = _probe(candidate)
        if answer is None or f"python{answer['version']}" != runtime:
            continue
        missing = answer["missing"]
        if isinstance(missing, list) and missing:
            unusable[real] = f"{runtime} without {' and '.join(map(str, missing))} (pip install awslambdaric boto3)"
            continue
        paths = answer["paths"]
        packages = tuple(str(p) for p in paths) if isinstance(paths, list) else ()
        return PythonRuntime(runtime, str(answer["interpreter"]), packages), unusable
    return None, unusable


def python_survey() -> PythonSurvey:
    """Every Python runtime this host offers (each probed once per process), and the unusable interpreters."""
    offered: dict[str, PythonRuntime] = {}
    unusable: dict[str, str] = {}
    for runtime in PYTHON_RUNTIMES:
        found, without = _survey_of(runtime)
        unusable.update(without)
        if found is not None:
            offered[runtime] = found
    return PythonSurvey(offered, unusable)


def python_runtime(runtime: str) -> PythonRuntime | None:
    return _survey_of(runtime)[0] if runtime in PYTHON_RUNTIMES else None


@functools.cache
def node_version(node: str = "node") -> str | None:
    """`node --version` (e.g. v20.20.2), or None without Node.js."""
    path = shutil.which(node)
    if path is None:
        return None
    try:
        result = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def _node_runtime(version: str | None) -> str | None:
    if not version:
        return None
    runtime = f"nodejs{version.lstrip('v').split('.')[0]}.x"
    return runtime if runtime in NODEJS_RUNTIMES else None


def offered(node: str | None = None) -> list[str]:
    """Every runtime this host runs, in the order of specs.RUNTIMES."""
    node_runtime = _node_runtime(node if node is not None else node_version())
    python = python_survey().offered
    return (
        [r for r in PYTHON_RUNTIMES if r in python]
        + [r for r in NODEJS_RUNTIMES if r == node_runtime]
        + list(PROVIDED_RUNTIMES)
    )


def problem(runtime: str, node: str | None = None) -> str | None:
    """Why this host cannot run `runtime` locally, or None. `node` is the version to judge by (default: probed)."""
    if runtime in NODEJS_RUNTIMES:
        version = node if node is not None else node_version()
        wanted = runtime.removeprefix("nodejs").removesuffix(".x")
        if not version:
            return f"{runtime} needs Node.js {wanted} on this host; there is no `node`"
        if _node_runtime(version) != runtime:
            return f"{runtime} needs Node.js {wanted}; this host has {version}. {_offers(node)}"
    if runtime in PYTHON_RUNTIMES and python_runtime(runtime) is None:
        return f"{runtime} needs a Python {runtime.removeprefix('python')} with awslambdaric and boto3. {_offers(node)}"
    return None


def _offers(node: str | None) -> str:
    return f"This host offers: {', '.join(offered(node))}"
