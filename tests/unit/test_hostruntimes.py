"""The local backend offers a runtime only when this host really has it: Node.js of that major version, a Python of
that version with awslambdaric and boto3 (probed by running each interpreter)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kambda import hostruntimes
from kambda.specs import PYTHON_RUNTIMES

OWN = f"python{sys.version_info.major}.{sys.version_info.minor}"


def test_a_nodejs_runtime_needs_that_major_version() -> None:
    assert hostruntimes.problem("nodejs20.x", node="v20.20.2") is None
    message = hostruntimes.problem("nodejs22.x", node="v20.20.2") or "no message"
    assert message.startswith("nodejs22.x needs Node.js 22; this host has v20.20.2. This host offers: ")
    assert "nodejs20.x" in message and "nodejs22.x" not in message.split("offers: ")[1]
    assert "there is no `node`" in (hostruntimes.problem("nodejs18.x", node="") or "no message")


def test_the_interpreter_kambda_runs_on_offers_its_version_with_the_provided_packages() -> None:
    runtime = hostruntimes.python_runtime(OWN)
    assert runtime is not None and hostruntimes.problem(OWN) is None
    assert runtime.interpreter == os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    names = {os.path.basename(p) for p in runtime.packages}
    assert {"awslambdaric", "boto3", "botocore"} <= names
    assert not names & {"aiohttp", "kopf", "grpc", "yaml", "kambda", "pytest"}, names  # the platform's own


def test_a_python_version_this_host_lacks_is_refused_with_what_it_offers() -> None:
    absent = [r for r in PYTHON_RUNTIMES if hostruntimes.python_runtime(r) is None]
    assert absent, "this host has every Python version: nothing to refuse"
    message = hostruntimes.problem(absent[0]) or "no message"
    assert message.startswith(f"{absent[0]} needs a Python {absent[0].removeprefix('python')} with awslambdaric")
    assert OWN in message and "provided" in message
    assert absent[0] not in hostruntimes.offered()


def test_provided_runtimes_are_always_offered() -> None:
    assert hostruntimes.problem("provided", node="v20.1.0") is None
    assert {"provided", "provided.al2", "provided.al2023"} <= set(hostruntimes.offered())


def test_the_site_directory_links_only_the_provided_packages(tmp_path: Path) -> None:
    runtime = hostruntimes.python_runtime(OWN)
    assert runtime is not None
    site = runtime.site(tmp_path)
    assert runtime.site(tmp_path) == site  # made once
    probe = "import boto3, awslambdaric\ntry:\n import aiohttp\nexcept ImportError:\n print('clean')"
    result = subprocess.run(
        [runtime.interpreter, "-S", "-c", f"import sys; sys.path.append({str(site)!r})\n{probe}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert result.stdout.strip() == "clean"
