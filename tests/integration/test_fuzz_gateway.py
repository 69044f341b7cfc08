"""Property-based fuzzing of the gateway's HTTP surface, over raw sockets, against one real `kambda run`.

Each run sends 2 x `EXAMPLES` generated requests: half from a fixed seed (the same every run, so a regression it
once found stays found), half from a seed that changes every day (new ground, reproducible for that day). Both
seeds are printed; `KAMBDA_FUZZ_SEED=<seed>` replays the second half with a given seed. (Hypothesis also draws
constants from the project's modules that are loaded, so a failure from a larger test selection replays most
faithfully with the same selection; the failing request's bytes are written next to the gateway's log as well.)

Properties: no 5xx, an answer within the socket timeout (no hang), the AWS error shape on every 4xx our handlers
give (aiohttp's own parser may answer a request it cannot parse with a text/plain 400), and afterwards the gateway
is healthy, still invokes echo, and logged no traceback.
"""

from __future__ import annotations

import base64
import datetime
import gzip
import json
import os
import socket
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.conftest import FUNCTIONS, Gateway
from tests.integration.test_malformed_requests import gateway_tracebacks

EXAMPLES = 1000  # per seed
FIXED_SEED = 0x6B616D62
TIMEOUT = 10.0  # seconds for any answer; the gateway's own timeouts below are shorter
GATEWAY_TIMEOUTS = ("--header-timeout", "3", "--body-timeout", "3", "--idle-timeout", "3")


def daily_seed() -> int:
    override = os.environ.get("KAMBDA_FUZZ_SEED")
    return int(override) if override else int(datetime.date.today().strftime("%Y%m%d"))


# ---- what a request is made of ------------------------------------------------------------------------------

NAMES = ["echo", "echo:$LATEST", "echo:1", "arn:aws:lambda:us-east-1:000000000000:function:echo", "nope",
         "arn:aws:lambda:us-east-1:000000000000:function:echo:$LATEST", "x" * 65, "echo%0A", "echo%00", "%24LATEST",
         "ec%68o", "echo%20", "%2e%2e", "%2F", "%25", "%FF%FE", "..", "*", "echo:", ":echo", "echo::1"]  # fmt: skip
ROUTES = [
    "/2015-03-31/functions/{}/invocations",
    "/2019-09-25/functions/{}/event-invoke-config",
    "/v1/invocations/{}",
    "/v1/dead-letters/{}",
    "/v1/dead-letters/{}/redrive",
]
FIXED_PATHS = ["/healthz", "/readyz", "/metrics", "/v1/dead-letters", "/v1/dead-letters/redrive", "/", "*",
               "/2015-03-31/functions", "/2015-03-31/functions/", "//healthz", "/healthz/", "/HEALTHZ",
               "http://127.0.0.1/healthz", "/2015-03-31/functions/echo/invocations/extra"]  # fmt: skip
QUERY_KEYS = ["Qualifier", "MaxItems", "FunctionName", "Marker", "x", ""]
METHODS = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE"]
ODD_METHODS = ["CONNECT", "get", "PRI", "M-SEARCH", "PROPFIND"]
ODD_VERSIONS = ["HTTP/1.0", "HTTP/2.0", "HTTP/1.2", "HTTP/9", "HTTP/1.1x", ""]
ODD_FRAMINGS = ["none", "chunked-bad", "both", "two-lengths", "bad-length", "short", "long"]
HALF_CLOSED = {"chunked-bad", "long"}  # the request never completes: we end our side, the server must not hang


def one_in(n: int) -> st.SearchStrategy[bool]:
    """True about once in `n` draws. (Hypothesis favours the ends of an integer range, so `integers(0, n) == 0`
    would be far more frequent than 1/n: the middle of the range is drawn about as often as any other value.)"""
    return st.integers(0, n - 1).map(lambda i: i == n // 2)


printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
junk_bytes = st.binary(max_size=24)
percent_junk = junk_bytes.map(lambda b: "".join(f"%{x:02X}" for x in b))
odd_segment = st.one_of(st.sampled_from(NAMES), percent_junk, st.from_regex(r"[A-Za-z0-9_\-:.$]{0,80}", fullmatch=True))

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6), st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=40,
)


@st.composite
def nested_json(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(400, 3000))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    closed = draw(st.integers(0, depth))  # often unbalanced
    inner = b"1" if opener == b'{"a":' else b""
    return opener * depth + inner + closer * closed


@st.composite
def odd_json(draw: st.DrawFn) -> bytes:
    text = json.dumps(draw(json_values))
    return draw(
        st.sampled_from(
            [
                b"NaN",
                b"Infinity",
                b"-Infinity",
                b'{"a": NaN}',
                text.encode("utf-8-sig"),
                text.encode("utf-16"),
                text.encode("utf-16-le"),
                text.encode("utf-32"),
                text.encode("utf-32-be"),
                text.encode() + b"garbage",
                text.encode()[:-1],
                b"\x00" + text.encode(),
                b'"\x01"',
                b'"\xed\xa0\x80"',  # an encoded surrogate: not UTF-8
                text.encode() * 2,
                b" \t\r\n" + text.encode() + b" \t\r\n",
            ]
        )
    )


odd_bodies = st.one_of(
    st.just(b""),
    json_values.map(lambda v: json.dumps(v).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    nested_json(),
    odd_json(),
    st.binary(max_size=300),
    st.integers(1, 200_000).map(lambda n: b'{"pad": "' + b"x" * n + b'"}'),
)


@st.composite
def segment(draw: st.DrawFn) -> str:
    return "echo" if draw(st.booleans()) else draw(odd_segment)  # half the time a function that exists


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):  # half the time a payload echo can be invoked with
        return json.dumps(draw(json_values)).encode()
    return draw(odd_bodies)


@st.composite
def client_context(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["json", "deep", "odd", "junk", "long"]))
    if kind == "json":
        return base64.b64encode(json.dumps(draw(json_values)).encode()).decode()
    if kind == "deep":
        return base64.b64encode(b'{"a":' + b"[" * 1300 + b"]" * 1300 + b"}").decode()
    if kind == "odd":
        return base64.b64encode(draw(odd_json())).decode()
    if kind == "long":
        return "A" * draw(st.integers(3000, 5000))
    return draw(printable)


@st.composite
def headers(draw: st.DrawFn) -> list[tuple[str, str]]:
    chosen: list[tuple[str, str]] = []
    if not draw(one_in(20)):
        chosen.append(("Host", "127.0.0.1"))
    optional = {
        "X-Amz-Invocation-Type": st.sampled_from(["RequestResponse", "Event", "DryRun", "event", ""]) | printable,
        "X-Amz-Log-Type": st.sampled_from(["None", "Tail", "tail"]) | printable,
        "X-Amz-Client-Context": client_context(),
        "X-Amzn-Trace-Id": printable,
        "X-Amz-Date": printable,
        "Authorization": printable.map(lambda s: "AWS4-HMAC-SHA256 Credential=" + s),
        "Content-Type": st.sampled_from(["application/json", "application/octet-stream", "text/plain; charset=utf-16"])
        | printable,
        "Content-Encoding": st.sampled_from(["gzip", "deflate", "identity", "br", "gzip, gzip", "x-gzip"]) | printable,
        "Expect": st.just("100-continue"),
        "Connection": st.sampled_from(["close", "keep-alive", "Upgrade", "TE"]) | printable,
        "Upgrade": st.sampled_from(["h2c", "websocket"]),
        "Accept-Encoding": printable,
    }
    for name in draw(st.lists(st.sampled_from(sorted(optional)), max_size=6, unique=True)):
        chosen.append((name, draw(optional[name])))
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.from_regex(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,30}", fullmatch=True))
        value = draw(st.one_of(printable, st.integers(0, 20_000).map(lambda n: "v" * n)))
        chosen.append((name, value))
    if draw(one_in(50)):  # now and then something no HTTP parser should accept in a header
        chosen.append((draw(st.sampled_from(["Bad Name", "Bad:Name", "", "X-Nul"])), "a\x00b"))
    return chosen


@dataclass
class Request:
    raw: bytes = field(repr=False)  # can be megabytes: `described` says what it is
    method: str
    framing: str
    body_size: int
    described: str


@st.composite
def requests(draw: st.DrawFn) -> Request:
    if not draw(one_in(4)):
        target = draw(st.sampled_from(ROUTES)).format(draw(segment()))
    else:
        target = draw(st.sampled_from(FIXED_PATHS) | st.from_regex(r"/[!-~]{0,60}", fullmatch=True))
    if draw(st.booleans()):
        pairs = draw(st.lists(st.tuples(st.sampled_from(QUERY_KEYS), segment()), max_size=3))
        target += "?" + "&".join(f"{k}={v}" for k, v in pairs)
    if target.startswith("/2015-03-31/") and not draw(one_in(3)):
        method = "POST"  # the invoke route is where most of the surface is
    else:
        method = draw(st.sampled_from(METHODS))
        if draw(one_in(20)):  # llhttp refuses methods it does not know: a few suffice
            method = draw(st.sampled_from(ODD_METHODS) | st.from_regex(r"[A-Z]{1,12}", fullmatch=True))
    version = draw(st.sampled_from(ODD_VERSIONS)) if draw(one_in(15)) else "HTTP/1.1"
    head_headers = draw(headers())
    body = draw(bodies())
    coding = next((v for k, v in head_headers if k == "Content-Encoding"), "")
    if coding in ("gzip", "x-gzip") and draw(st.booleans()):
        body = gzip.compress(body, mtime=0)  # reproducible bytes
    elif coding == "deflate" and draw(st.booleans()):
        body = zlib.compress(body)
    framing = draw(st.sampled_from(ODD_FRAMINGS)) if draw(one_in(4)) else draw(st.sampled_from(["length", "chunked"]))
    payload = body
    if framing == "length":
        head_headers.append(("Content-Length", str(len(body))))
    elif framing == "none":
        payload = b""
    elif framing in ("chunked", "chunked-bad"):
        head_headers.append(("Transfer-Encoding", "chunked"))
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True) if b > a]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        if framing == "chunked-bad":
            payload = draw(st.sampled_from([b"zz\r\n", b"-1\r\n", b"5\r\nab", b"ffffffffffffffffff\r\n", b"3;\n"]))
    elif framing == "both":
        head_headers += [("Content-Length", str(len(body))), ("Transfer-Encoding", "chunked")]
    elif framing == "two-lengths":
        head_headers += [("Content-Length", str(len(body))), ("Content-Length", str(len(body) + 1))]
    elif framing == "bad-length":
        head_headers.append(("Content-Length", draw(st.sampled_from(["abc", "-1", "1e3", " 5", "0x10", "+3", ""]))))
    elif framing == "short":
        head_headers.append(("Content-Length", str(len(body) // 2)))
    elif framing == "long":
        head_headers.append(("Content-Length", str(len(body) + draw(st.integers(1, 1000)))))
    line = f"{method} {target} {version}".rstrip()
    head = line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head_headers) + "\r\n"
    raw = head.encode("utf-8", "surrogateescape") + payload
    described = f"{line!r} {len(head_headers)} headers, framing={framing}, body={len(payload)}: {payload[:80]!r}"
    return Request(raw, method, framing, len(payload), described)


# ---- talking to the gateway ---------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def _read_response(stream: BinaryIO, method: str) -> Response | None:
    """One response (after any 1xx), or None if the server closed the connection without one."""
    while True:
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            byte = stream.read(1)
            if not byte:
                return None
            head += byte
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        fields = {}
        for h in lines[1:]:
            if h:
                name, _, value = h.partition(":")
                fields[name.strip().lower()] = value.strip()
        if 100 <= status < 200:
            continue
        if method == "HEAD" or status in (204, 304):
            return Response(status, fields, b"")
        length = int(fields.get("content-length", "-1"))
        body = b""
        while len(body) < length or length < 0:
            chunk = stream.read(length - len(body) if length >= 0 else 65536)
            if not chunk:
                break
            body += chunk
        return Response(status, fields, body)


def exchange(port: int, request: Request) -> Response | None:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        try:
            sock.sendall(request.raw)
            if request.framing in HALF_CLOSED:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server answered (and closed) before it had read all of it: read that answer
        try:
            return _read_response(sock.makefile("rb"), request.method.upper())
        except ConnectionResetError:
            return None


def check(response: Response | None, request: Request, outcomes: Counter[str]) -> None:
    if response is None:
        # No answer at all is acceptable only where the request itself never completed, or where the gateway
        # answered early and closed while a large body was still arriving (the kernel then resets the connection,
        # which can destroy the answer in flight).
        assert request.framing in HALF_CLOSED or request.body_size > 64 * 1024, f"no answer to {request.described}"
        outcomes["closed"] += 1
        return
    outcomes[f"{response.status} {response.headers.get('x-amzn-errortype', '')}".strip()] += 1
    assert response.status < 500, f"{response.status} for {request.described}: {response.body[:300]!r}"
    if 400 <= response.status < 500:
        error_type = response.headers.get("x-amzn-errortype")
        if error_type is None:
            # Only aiohttp's own parser answers without our middleware: a plain 400 for an unparseable request.
            assert response.status == 400, f"{response.status} for {request.described}: {response.body[:300]!r}"
            assert response.headers.get("content-type", "").startswith("text/plain")
            return
        assert response.headers.get("x-amzn-requestid"), request.described
        if request.method.upper() != "HEAD":
            shape = json.loads(response.body)
            assert shape["Type"] == "User", (request.described, shape)
            assert shape.get("message") or shape.get("Message"), (request.described, shape)


@pytest.fixture(scope="module")
def fuzz_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = Gateway(FUNCTIONS, tmp_path_factory.mktemp("fuzz"), *GATEWAY_TIMEOUTS)
    yield gateway
    gateway.stop()
    assert gateway.proc.returncode == 0, gateway.logs()


@pytest.mark.parametrize("which", ["fixed", "daily"])
def test_fuzz_http_surface(fuzz_gateway: Gateway, which: str) -> None:
    fuzz_seed = FIXED_SEED if which == "fixed" else daily_seed()
    print(f"\nfuzz seed ({which}): KAMBDA_FUZZ_SEED={fuzz_seed}")
    outcomes: Counter[str] = Counter()
    failing = fuzz_gateway.log_path.parent / f"failing-request-{which}.bin"
    started = time.monotonic()

    @seed(fuzz_seed)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
    )
    @given(requests())
    def property_holds(request: Request) -> None:
        try:
            check(exchange(fuzz_gateway.port, request), request, outcomes)
            assert fuzz_gateway.proc.poll() is None, f"the gateway died on {request.described}"
        except BaseException:
            # Every byte of the (last, shrunk) failing request, to replay it with `nc` or a socket.
            failing.write_bytes(request.raw)
            print(f"failing request written to {failing}")
            raise

    try:
        property_holds()
    finally:
        elapsed = time.monotonic() - started
        print(f"{sum(outcomes.values())} requests in {elapsed:.1f} s: {dict(sorted(outcomes.items()))}")
    assert sum(outcomes.values()) >= EXAMPLES
    _still_healthy(fuzz_gateway)


def _still_healthy(gateway: Gateway) -> None:
    import urllib.request

    with urllib.request.urlopen(gateway.url + "/healthz", timeout=10) as r:
        assert r.status == 200 and json.loads(r.read()) == {"status": "ok"}
    request = urllib.request.Request(
        gateway.url + "/2015-03-31/functions/echo/invocations", data=b'{"after": "fuzz"}', method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        assert r.status == 200 and json.loads(r.read()) == {"after": "fuzz"}
    assert gateway_tracebacks(gateway.logs()) == [], Path(gateway.log_path).read_text()[-5000:]
