"""The replicas' internal hop (gateway/peering.py) on a real gateway: a request signed with the shared key runs the
invocation and answers its Outcome; anything unsigned, mis-signed, stale, tampered with or malformed is refused
with a clear status, runs nothing, and the gateway keeps serving."""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kambda.gateway import peering
from kambda.runtime.rpc import runtime_pb2 as pb
from tests.conftest import Gateway

ROOT = Path(__file__).resolve().parents[2]
KEY = b"peer-hop-test-signing-key"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    data = tmp_path_factory.mktemp("peer-hop")
    key_file = data / "signing.key"
    key_file.write_bytes(KEY)
    gw = Gateway(ROOT / "tests" / "functions", data / "gw", "--signing-key-file", str(key_file))
    yield gw
    gw.stop()


def invocation(payload: bytes = b'{"hop": 1}', **fields: object) -> bytes:
    message = pb.Invocation(request_id=str(uuid.uuid4()), invoked_function_arn="arn:aws:lambda:us-east-1:0:function:f",
                            payload=payload, **fields)  # type: ignore[arg-type]  # fmt: skip
    return message.SerializeToString()


def hop(
    gateway: Gateway,
    body: bytes,
    *,
    function: str = "default/echo",
    version: str = "$LATEST",
    key: bytes = KEY,
    seconds: int | None = None,
    signed_body: bytes | None = None,
    header: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    seconds = int(time.time()) if seconds is None else seconds
    signature = peering.signature(peering.peer_key(key), seconds, function, version, signed_body or body)
    query = urllib.parse.urlencode({"function": function, "version": version})
    request = urllib.request.Request(f"{gateway.url}{peering.ROUTE}?{query}", data=body, method="POST")
    request.add_header(peering.PEER_HEADER, header if header is not None else f"{seconds} {signature}")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, dict(r.headers.items()), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def test_a_signed_hop_runs_the_invocation_and_answers_its_outcome(gateway: Gateway) -> None:
    status, headers, body = hop(gateway, invocation(b'{"hop": 1}'))
    assert status == 200 and headers["X-Kambda-Outcome"] == "response"
    response = pb.Response.FromString(body)
    assert b'"hop": 1' in response.payload or b'"hop":1' in response.payload
    assert response.report.duration_ms > 0

    status, headers, body = hop(gateway, invocation(), function="default/raising")
    assert status == 200 and headers["X-Kambda-Outcome"] == "error"
    assert pb.Error.FromString(body).error_type


def test_what_is_not_signed_by_a_replica_runs_nothing(gateway: Gateway) -> None:
    before = gateway.metric("kambda_invocations_total", function="echo", version="$LATEST", outcome="success")
    body = invocation()
    now = int(time.time())
    refusals = [
        hop(gateway, body, header=""),  # unsigned
        hop(gateway, body, header="not a signature"),
        hop(gateway, body, key=b"another key"),  # a function's credential cannot sign either: not the peer key
        hop(gateway, body, seconds=now - 120),  # replayed after the window
        hop(gateway, body, seconds=now + 120),
        hop(gateway, invocation(b'{"tampered": true}'), signed_body=body),  # payload changed after signing
    ]
    assert [status for status, _, _ in refusals] == [401] * len(refusals)
    status, _, _ = hop(gateway, body, version="7")  # signed, but no such version here: nothing ran
    assert status == 404
    after = gateway.metric("kambda_invocations_total", function="echo", version="$LATEST", outcome="success")
    assert after == before
    assert hop(gateway, invocation())[0] == 200  # and the gateway still serves


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=512))
def test_signed_garbage_is_a_clear_400_never_a_500(gateway: Gateway, garbage: bytes) -> None:
    status, _, body = hop(gateway, garbage)
    try:
        pb.Invocation.FromString(garbage)
        parses = True
    except Exception:
        parses = False
    if parses:
        assert status in (200, 400), (status, body)  # a valid message, maybe with an empty or invalid payload
    else:
        assert status == 400, (status, body)


def test_an_oversized_hop_is_refused_before_it_is_read_whole(gateway: Gateway) -> None:
    import urllib3  # as boto3 sends: it reads the early 413 although its body is not all sent

    body = invocation(b'"' + b"x" * (peering.MAX_BODY + 10) + b'"')
    seconds = int(time.time())
    sig = peering.signature(peering.peer_key(KEY), seconds, "default/echo", "$LATEST", body)
    response = urllib3.PoolManager().request(
        "POST", f"{gateway.url}{peering.ROUTE}?function=default/echo&version=$LATEST", body=body,
        headers={peering.PEER_HEADER: f"{seconds} {sig}"}, retries=False,
    )  # fmt: skip
    assert response.status == 413
    assert hop(gateway, invocation())[0] == 200
