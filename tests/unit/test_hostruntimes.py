"""The local backend offers a nodejs runtime only when this host's Node.js is that version."""

from __future__ import annotations

from kambda import hostruntimes


def test_a_nodejs_runtime_needs_that_major_version() -> None:
    assert hostruntimes.problem("nodejs20.x", node="v20.20.2") is None
    message = hostruntimes.problem("nodejs22.x", node="v20.20.2")
    assert message == "nodejs22.x needs Node.js 22; this host has v20.20.2, so it offers nodejs20.x"
    assert "there is no `node`" in (hostruntimes.problem("nodejs18.x", node="") or "no message")


def test_other_runtimes_are_not_judged_here() -> None:
    assert hostruntimes.problem("python3.12", node="v20.1.0") is None
    assert hostruntimes.problem("provided", node="v20.1.0") is None
