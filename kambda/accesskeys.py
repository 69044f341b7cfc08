"""Access keys for the gateway's APIs: an AWS-style key pair, each with the IAM-style policies that say what it may
do (kambda/policies.py). The gateway verifies SigV4 signatures with the secret (gateway/sigv4.py) and authorises
the request with the policies.

On the local backend the keys are one JSON file under the data directory (`access-keys.json`, mode 0600, replaced
atomically), written by `kambda keys create|rm` and re-read by a running gateway when it changes. On Kubernetes the
keys are the entries of one Secret in the platform's namespace, `<release>-access-keys` (labelled
`kambda.dev/access-keys`): entry name the key id, value `secret_entry(key)`. The chart makes it with an
administrator's key, `kambda keys create --kubernetes` adds entries, and the gateways watch it. One Secret, so that
the gateway's RBAC names exactly it and can read no other Secret. Key ids and
secrets look like AWS's (`AKIA` + 16 characters, 40-character secrets), so SDKs and the AWS CLI take them as they
are.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import string
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FILE_NAME = "access-keys.json"
ID_PREFIX = "AKIA"  # what an IAM user's long-term key id starts with; SDKs do not care, people recognise it
ID_ALPHABET = string.ascii_uppercase + "234567"  # base32, as AWS's ids
SECRET_ALPHABET = string.ascii_letters + string.digits + "+/"
ALLOW_ALL: dict[str, Any] = {
    "Version": "2012-10-17",
    # Lambda's API and kambda's own (invocation status, dead letters, the code store: gateway/authz.py).
    "Statement": [{"Effect": "Allow", "Action": ["lambda:*", "kambda:*"], "Resource": "*"}],
}


SECRET_LABEL = "kambda.dev/access-keys"  # the Secret that holds a Kubernetes installation's access keys


class KeyStoreError(Exception):
    """A key store that cannot be read or an operation on a key that is not there."""


@dataclass(frozen=True)
class AccessKey:
    access_key_id: str
    secret_access_key: str
    name: str
    policies: tuple[Mapping[str, Any], ...]
    created: float = field(default_factory=time.time)

    def public(self) -> dict[str, Any]:
        """What `kambda keys ls` shows: never the secret."""
        return {"AccessKeyId": self.access_key_id, "Name": self.name, "Created": int(self.created),
                "Policies": list(self.policies)}  # fmt: skip


def secret_entry(key: AccessKey) -> str:
    """An access key as the value of its entry (named by its id) in the access-keys Secret."""
    return json.dumps({"secretAccessKey": key.secret_access_key, "name": key.name, "policies": list(key.policies),
                       "created": int(key.created)})  # fmt: skip


def from_secret_entry(access_key_id: str, value: str) -> AccessKey:
    """The key an entry holds; KeyStoreError naming what is wrong. An entry without `policies` is an
    administrator's (lambda:* and kambda:*), as a key made without --policy is."""
    try:
        entry = json.loads(value)
        policies = entry.get("policies") or [ALLOW_ALL]
        if not isinstance(policies, list) or not all(isinstance(p, Mapping) for p in policies):
            raise ValueError("policies must be a JSON list of policy documents")
        return AccessKey(access_key_id, str(entry["secretAccessKey"]), str(entry.get("name", "")), tuple(policies),
                         float(entry.get("created") or 0))  # fmt: skip
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise KeyStoreError(f"access key {access_key_id}: not a kambda access-key entry ({exc})") from None


def from_secret(data: Mapping[str, str] | None) -> dict[str, AccessKey]:
    """Every key of the access-keys Secret's `data` (base64 values, as the API server gives them); an entry that
    is not one is left out, and named in the log by the caller's KeyStoreError handling."""
    keys = {}
    for key_id, encoded in (data or {}).items():
        try:
            keys[key_id] = from_secret_entry(key_id, base64.b64decode(encoded).decode())
        except (KeyStoreError, ValueError):
            continue
    return keys


def new_key(name: str, policies: tuple[Mapping[str, Any], ...]) -> AccessKey:
    key_id = ID_PREFIX + "".join(secrets.choice(ID_ALPHABET) for _ in range(16))
    secret = "".join(secrets.choice(SECRET_ALPHABET) for _ in range(40))
    return AccessKey(key_id, secret, name, policies)


class KeyFile:
    """The local backend's keys: one JSON file, read whole, written whole (atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys: dict[str, AccessKey] = {}
        self._seen: tuple[int, int] | None = None  # (mtime_ns, size) of what was read

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> KeyFile:
        return cls(data_dir / FILE_NAME)

    def keys(self) -> dict[str, AccessKey]:
        """The keys as the file has them now (read again only when it changed)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._keys, self._seen = {}, None
            return self._keys
        seen = (stat.st_mtime_ns, stat.st_size)
        if seen != self._seen:
            self._keys = _parse(self.path)
            self._seen = seen
        return self._keys

    def get(self, access_key_id: str) -> AccessKey | None:
        return self.keys().get(access_key_id)

    def create(self, name: str, policies: tuple[Mapping[str, Any], ...]) -> AccessKey:
        key = new_key(name, policies)
        self._write({**self.keys(), key.access_key_id: key})
        return key

    def remove(self, access_key_id: str) -> None:
        keys = dict(self.keys())
        if keys.pop(access_key_id, None) is None:
            raise KeyStoreError(f"no access key {access_key_id} in {self.path}")
        self._write(keys)

    def _write(self, keys: Mapping[str, AccessKey]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {"keys": [{"AccessKeyId": k.access_key_id, "SecretAccessKey": k.secret_access_key, "Name": k.name,
                          "Created": k.created, "Policies": list(k.policies)} for k in keys.values()]}  # fmt: skip
        staging = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # secrets: only the owner reads them
        with os.fdopen(fd, "w") as f:
            json.dump(body, f, indent=2)
        os.replace(staging, self.path)
        self._seen = None  # read back on the next look


def _parse(path: Path) -> dict[str, AccessKey]:
    try:
        body = json.loads(path.read_text())
        entries = body["keys"]
        keys = {}
        for entry in entries:
            key = AccessKey(
                str(entry["AccessKeyId"]), str(entry["SecretAccessKey"]), str(entry.get("Name", "")),
                tuple(entry.get("Policies") or ()), float(entry.get("Created", 0)),
            )  # fmt: skip
            keys[key.access_key_id] = key
        return keys
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyStoreError(f"{path}: not a kambda access-key file ({exc})") from None
