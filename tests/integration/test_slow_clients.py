"""Stalled connections: thousands of clients that connect and then send nothing, half a head, half a body, or
nothing more after one request must neither slow the gateway down nor stay open past their deadlines; a connection
limit evicts idle keep-alive connections first and refuses (503) only when every connection is busy; SIGTERM does
not wait for any of them. Also the start-up refusals: a taken port, a data directory another gateway holds."""

from __future__ import annotations

import json
import os
import re
import resource
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import FUNCTIONS, ROOT, Gateway, free_port, wait_until

HEADER_TIMEOUT, BODY_TIMEOUT, IDLE_TIMEOUT = 4.0, 5.0, 5.0
TIMEOUTS = ("--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT),
            "--idle-timeout", str(IDLE_TIMEOUT))  # fmt: skip
# Past its deadline a connection is closed at the next sweep (at most a second later); the rest is slack for a
# loaded machine closing thousands of them at once.
MARGIN = 3.0
STALLED_PER_KIND = 750
KINDS = ("silent", "partial-head", "partial-body", "idle")
INVOKE = "/2015-03-31/functions/echo/invocations"


@pytest.fixture(scope="module", autouse=True)
def enough_file_descriptors() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = STALLED_PER_KIND * len(KINDS) + 1000
    if hard != resource.RLIM_INFINITY and hard < wanted:
        # As root (CI) the hard limit can be raised too; an unprivileged user cannot go past it.
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
        except (ValueError, OSError):
            pytest.skip(f"needs {wanted} file descriptors; this user's hard limit is {hard} (`ulimit -Hn`)")
        return
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


@dataclass
class Stalled:
    kind: str
    sock: socket.socket
    since: float  # when the client did the last thing it will ever do
    received: bytes = b""
    closed_at: float | None = None
    error: str | None = None

    @property
    def deadline(self) -> float:
        timeout = {"silent": HEADER_TIMEOUT, "partial-head": HEADER_TIMEOUT, "partial-body": BODY_TIMEOUT}
        return self.since + timeout.get(self.kind, IDLE_TIMEOUT)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed: float = field(default=0.0)


def read_reply(sock: socket.socket) -> Reply:
    """One HTTP response from `sock` (Content-Length framed, as all of the gateway's are)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-body")
        body += chunk
    return Reply(int(lines[0].split()[1]), headers, body)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def open_stalled(port: int, kind: str) -> Stalled:
    sock = connect(port)
    if kind == "partial-head":
        sock.sendall(f"POST {INVOKE} HTTP/1.1\r\nHost: x\r\nContent-Le".encode())
    elif kind == "partial-body":
        sock.sendall(f'POST {INVOKE} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{"cut'.encode())
    elif kind == "idle":
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_reply(sock).status == 200
    return Stalled(kind, sock, time.monotonic())


def invoke(port: int, i: int) -> Reply:
    started = time.monotonic()
    with connect(port) as sock:
        body = json.dumps({"i": i}).encode()
        sock.sendall(f"POST {INVOKE} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        reply = read_reply(sock)
    reply.elapsed = time.monotonic() - started
    return reply


def watch_until_closed(stalled: list[Stalled], until: float) -> None:
    """Read whatever the server sends each connection and note when it closes it, until all are or `until`."""
    with selectors.DefaultSelector() as selector:
        for s in stalled:
            s.sock.setblocking(False)
            selector.register(s.sock, selectors.EVENT_READ, s)
        while selector.get_map() and time.monotonic() < until:
            for key, _ in selector.select(timeout=0.2):
                s = key.data
                try:
                    chunk = s.sock.recv(65536)
                except ConnectionResetError:
                    chunk, s.error = b"", "reset"
                except BlockingIOError:
                    continue
                if chunk:
                    s.received += chunk
                    continue
                s.closed_at = time.monotonic()
                selector.unregister(s.sock)


def none_readable(stalled: list[Stalled]) -> list[Stalled]:
    """The connections the server has sent something to (an answer, or its FIN) by now."""
    with selectors.DefaultSelector() as selector:
        for s in stalled:
            selector.register(s.sock, selectors.EVENT_READ, s)
        return [key.data for key, _ in selector.select(timeout=0)]


@pytest.fixture(scope="module")
def slow_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = Gateway(FUNCTIONS, tmp_path_factory.mktemp("slow"), *TIMEOUTS)
    yield gateway
    gateway.stop()
    assert gateway.proc.returncode == 0, gateway.logs()


def test_thousands_of_stalled_connections(slow_gateway: Gateway) -> None:
    assert invoke(slow_gateway.port, -1).status == 200  # warm: the 64 below measure the gateway, not a cold start
    stalled = [open_stalled(slow_gateway.port, kind) for _ in range(STALLED_PER_KIND) for kind in KINDS]
    opened = time.monotonic()
    try:
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda i: invoke(slow_gateway.port, i), range(64)))
        invoked = time.monotonic()
        assert [(r.status, json.loads(r.body)) for r in replies] == [(200, {"i": i}) for i in range(64)]
        slowest = max(r.elapsed for r in replies)
        assert slowest < 2, f"an invocation took {slowest:.2f} s next to {len(stalled)} stalled connections"
        # Nothing was closed (or answered) before its deadline: at least those whose deadline is still ahead are
        # all still open and silent.
        not_due = [s for s in stalled if s.deadline > time.monotonic() + 0.2]
        assert not_due, "opening the connections took longer than their deadlines: nothing to check"
        assert none_readable(not_due) == []

        latest = max(s.deadline for s in stalled)
        watch_until_closed(stalled, until=latest + MARGIN + 5)
        print(f"\n{len(stalled)} stalled connections opened in {opened - stalled[0].since:.1f} s; 64 invocations "
              f"meanwhile, the slowest {slowest:.3f} s (all done {invoked - opened:.1f} s later)")  # fmt: skip
        for kind in KINDS:
            of_kind = [s for s in stalled if s.kind == kind]
            lateness = [s.closed_at - s.deadline for s in of_kind if s.closed_at is not None]
            print(f"{kind}: {len(lateness)}/{len(of_kind)} closed, {min(lateness):+.2f} s to {max(lateness):+.2f} s "
                  "from their deadlines")  # fmt: skip
            assert len(lateness) == len(of_kind), f"{len(of_kind) - len(lateness)} {kind} connections still open"
            assert min(lateness) >= -0.05, f"a {kind} connection was closed {-min(lateness):.2f} s early"
            assert max(lateness) <= MARGIN, f"a {kind} connection was closed {max(lateness):.2f} s late"
            for s in of_kind:
                if kind in ("partial-head", "partial-body"):
                    # Something was sent, so the answer is a 408 in the AWS shape, then the close.
                    assert s.received.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), s.received[:200]
                    assert b"x-amzn-ErrorType: RequestTimeoutException\r\n" in s.received, s.received[:300]
                    assert b'"Type": "User"' in s.received
                else:
                    assert s.received == b"", (kind, s.received[:200])
        assert invoke(slow_gateway.port, 64).status == 200
    finally:
        for s in stalled:
            s.sock.close()


def test_a_body_that_trickles_in_is_still_bounded(slow_gateway: Gateway) -> None:
    """The body timeout is for the whole body, not between bytes: a client sending one byte a second is cut off."""
    with connect(slow_gateway.port) as sock:
        sock.sendall(f"POST {INVOKE} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n[".encode())
        started = time.monotonic()
        sock.settimeout(0.5)
        reply = None
        while reply is None and time.monotonic() - started < BODY_TIMEOUT + MARGIN:
            try:
                reply = read_reply(sock)
            except TimeoutError:
                sock.sendall(b"1,")  # still coming...
        assert reply is not None
        assert (reply.status, reply.headers["x-amzn-errortype"]) == (408, "RequestTimeoutException")
        assert BODY_TIMEOUT - 0.1 <= time.monotonic() - started <= BODY_TIMEOUT + MARGIN


# ---- the connection limit -----------------------------------------------------------------------------------

LIMIT = 50


@pytest.fixture
def limited_gateway(tmp_path: Path) -> Iterator[Gateway]:
    gateway = Gateway(FUNCTIONS, tmp_path / "limited", "--max-connections", str(LIMIT), "--header-timeout", "60")
    yield gateway
    gateway.stop()
    assert gateway.proc.returncode == 0, gateway.logs()


def test_the_longest_idle_keep_alive_connection_makes_room(limited_gateway: Gateway) -> None:
    idle = [open_stalled(limited_gateway.port, "idle") for _ in range(LIMIT)]  # oldest first
    try:
        newcomer = connect(limited_gateway.port)
        newcomer.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_reply(newcomer).status == 200
        # The oldest was closed for it; exactly that one.
        watch_until_closed(idle[:1], until=time.monotonic() + 5)
        assert idle[0].closed_at is not None and idle[0].received == b""
        assert none_readable(idle[1:]) == []
        newcomer.close()
    finally:
        for s in idle:
            s.sock.close()


def test_when_every_connection_is_busy_the_next_gets_503(limited_gateway: Gateway) -> None:
    busy = [open_stalled(limited_gateway.port, "partial-head") for _ in range(LIMIT)]
    try:
        refused = connect(limited_gateway.port)
        refused.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = read_reply(refused)
        assert (reply.status, reply.headers["x-amzn-errortype"], reply.headers["retry-after"]) == (
            503, "ServiceException", "1"
        )  # fmt: skip
        assert json.loads(reply.body) == {"Type": "Service", "Message": "Too many connections; retry shortly"}
        assert refused.recv(1) == b""  # and closed
        assert none_readable([s for s in busy]) == []  # no busy connection was sacrificed
    finally:
        for s in busy:
            s.sock.close()
    # Once they are gone, there is room again.
    deadline = time.monotonic() + 10
    while True:
        with connect(limited_gateway.port) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            if read_reply(sock).status == 200:
                break
        assert time.monotonic() < deadline, "connections closed by their clients were never released"


# ---- SIGTERM ------------------------------------------------------------------------------------------------


def test_sigterm_with_a_thousand_stalled_connections(tmp_path: Path) -> None:
    gateway = Gateway(FUNCTIONS, tmp_path / "term")
    stalled: list[Stalled] = []
    try:
        assert invoke(gateway.port, 0).status == 200
        stalled = [open_stalled(gateway.port, KINDS[i % len(KINDS)]) for i in range(1000)]
        # An invocation in flight is allowed to finish: SIGTERM once its function has started.
        offset = len(gateway.logs())
        in_flight: list[Reply] = []
        sleeper = threading.Thread(target=lambda: in_flight.append(_post(gateway.port, "sleeper", {"seconds": 0.8})))
        sleeper.start()
        assert wait_until(lambda: "[sleeper:$LATEST] START" in gateway.logs()[offset:], 30, 0.02), gateway.logs()
        started = time.monotonic()
        gateway.proc.send_signal(signal.SIGTERM)
        code = gateway.proc.wait(timeout=15)
        elapsed = time.monotonic() - started
        sleeper.join(10)
        print(f"\nSIGTERM with {len(stalled)} stalled connections and one invocation in flight: exit {code} "
              f"after {elapsed:.2f} s")  # fmt: skip
        assert code == 0, gateway.logs()
        assert elapsed < 5
        assert [(r.status, json.loads(r.body)) for r in in_flight] == [(200, {"slept": 0.8})]
        watch_until_closed(stalled, until=time.monotonic() + 5)
        assert all(s.closed_at is not None for s in stalled)
    finally:
        for s in stalled:
            s.sock.close()
        gateway.stop()


def _post(port: int, function: str, payload: object) -> Reply:
    with connect(port) as sock:
        sock.settimeout(30)
        body = json.dumps(payload).encode()
        path = f"/2015-03-31/functions/{function}/invocations"
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        return read_reply(sock)


# ---- refusing to start --------------------------------------------------------------------------------------


def _kambda_run(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "kambda", "run", str(FUNCTIONS), "--grpc-port", "0", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done, time.monotonic() - started


def test_a_taken_port_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        data_dir = tmp_path / "fresh" / "data"  # does not exist yet
        done, elapsed = _kambda_run("--port", str(port), "--data-dir", str(data_dir))
    assert done.returncode == 1, done
    assert elapsed < 10
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == f"kambda: cannot listen on 127.0.0.1:{port}: Address already in use", done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    # The data directory it created (to lock) is private to its user.
    assert data_dir.stat().st_mode & 0o777 == 0o700


def test_a_data_directory_in_use_is_refused(slow_gateway: Gateway) -> None:
    data_dir = slow_gateway.log_path.parent
    done, elapsed = _kambda_run("--port", str(free_port()), "--data-dir", str(data_dir))
    assert done.returncode == 1, done
    assert elapsed < 10
    assert done.stderr.strip().splitlines()[-1] == (
        f"kambda: the data directory {data_dir} is in use by another gateway (pid {slow_gateway.proc.pid}); "
        "give each its own --data-dir"
    )
    assert "Traceback" not in done.stderr + done.stdout
    assert invoke(slow_gateway.port, 0).status == 200  # the first one is unaffected
    assert re.fullmatch(r"\d+\n", (data_dir / "gateway.lock").read_text())
    assert os.stat(data_dir / "gateway.lock").st_mode & 0o777 == 0o600


def test_stalled_connections_to_the_runtime_interface_port_are_closed(slow_gateway: Gateway) -> None:
    """The gRPC port too: connections that never finish the HTTP/2 handshake are closed (after 10 s, not 120 s)
    and do not stop agents from being served."""
    match = re.search(r"runtime interface [\d.]+:(\d+)", slow_gateway.logs())
    assert match, slow_gateway.logs()
    grpc_port = int(match.group(1))
    stalled = []
    for i in range(300):
        sock = socket.create_connection(("127.0.0.1", grpc_port), timeout=5)
        if i % 2:
            sock.sendall(b"PRI * HTTP/2.0\r\n")  # half of the connection preface, then nothing
        stalled.append(sock)
    started = time.monotonic()
    try:
        assert all(invoke(slow_gateway.port, i).status == 200 for i in range(8))  # cold start: a new agent stream
        selector = selectors.DefaultSelector()
        for sock in stalled:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        open_ = set(stalled)
        while open_ and time.monotonic() - started < 10 + 2 * MARGIN:
            for key, _ in selector.select(timeout=0.5):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(65536)
                except (ConnectionResetError, BlockingIOError):
                    data = b""
                if not data:  # closed by the server (a GOAWAY frame may come first)
                    selector.unregister(sock)
                    open_.discard(sock)
        assert not open_, f"{len(open_)} stalled connections to the gRPC port still open"
        assert time.monotonic() - started >= 9, "closed before the handshake timeout: the check proves nothing"
    finally:
        for sock in stalled:
            sock.close()
