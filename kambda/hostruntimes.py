"""Which runtimes this host can run for the local backend, and why not when it cannot.

A `nodejs22.x` function must not quietly run on Node.js 20: the local backend runs the host's `node`, so a
nodejs runtime is offered only when its major version is the host's. (Python runtimes run on the interpreter
kambda runs on; matching them to `python3.X` is the sandbox-fidelity work still to come.)
"""

from __future__ import annotations

import functools
import shutil
import subprocess

from .specs import NODEJS_RUNTIMES


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


def problem(runtime: str, node: str | None = None) -> str | None:
    """Why this host cannot run `runtime` locally, or None. `node` is the version to judge by (default: probed)."""
    if runtime not in NODEJS_RUNTIMES:
        return None
    version = node if node is not None else node_version()
    wanted = runtime.removeprefix("nodejs").removesuffix(".x")
    if not version:
        return f"{runtime} needs Node.js {wanted} on this host; there is no `node`"
    major = version.lstrip("v").split(".")[0]
    if major != wanted:
        return f"{runtime} needs Node.js {wanted}; this host has {version}, so it offers nodejs{major}.x"
    return None
