"""Runtime credentials: what an agent presents to the gateway to pull a function's invocations.

A credential is an HMAC of the function's `namespace/name` under the gateway's signing key, so the gateway checks it
without storing per-function secrets, and an agent holding function A's credential can never pull function B's work.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_signing_key() -> bytes:
    return secrets.token_bytes(32)


def credential_for(key: bytes, function: str) -> str:
    return hmac.new(key, function.encode(), hashlib.sha256).hexdigest()


def verify(key: bytes, function: str, presented: str) -> bool:
    return hmac.compare_digest(credential_for(key, function), presented)
