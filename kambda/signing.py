"""SigV4 for the `kambda` CLI's requests, with the credentials the AWS CLI would use (botocore's chain: the
environment, ~/.aws/credentials and config, a profile), so a gateway that authenticates (gateway/auth.py) takes
`kambda deploy`, `kambda invoke` and the rest exactly as it takes boto3. Without credentials requests go unsigned,
as an anonymous local gateway expects.

A streamed body (a code upload) is signed by its declared SHA-256 (x-amz-content-sha256), which the gateway checks
against the bytes it receives.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

SERVICE = "lambda"
DEFAULT_REGION = "us-east-1"


@functools.cache
def _credentials() -> Any:
    import botocore.session

    credentials = botocore.session.Session().get_credentials()
    return None if credentials is None else credentials.get_frozen_credentials()


def region() -> str:
    """The region requests are signed for: the environment's, as the AWS CLI reads it, else us-east-1."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


def headers(
    method: str, url: str, headers: Mapping[str, str] | None = None, body: bytes | None = None, *,
    payload_sha256: str | None = None,
) -> dict[str, str]:  # fmt: skip
    """`headers` plus the SigV4 ones for this request (unchanged when there are no credentials). `body` is signed
    by its bytes; a streamed body by `payload_sha256` instead."""
    signed = dict(headers or {})
    credentials = _credentials()
    if credentials is None:
        return signed
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    if payload_sha256 is not None:
        signed["X-Amz-Content-SHA256"] = payload_sha256
    request = AWSRequest(method=method, url=url, data=b"" if payload_sha256 is not None else body or b"",
                         headers=signed)  # fmt: skip
    SigV4Auth(credentials, SERVICE, region()).add_auth(request)
    return dict(request.headers.items())
