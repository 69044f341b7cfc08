"""Runtimes that misbehave, from inside real sandboxes of a real `kambda run`: they must hurt only themselves.

Each case is an input that broke the shared agent once (the hardening issue's findings 1, 5, 6 and 7): malformed
Runtime API requests and an endless chunk while another function is invoked in a loop, a runtime that answers and
never asks again, a late init error, an oversized error, and processes and cgroups outliving their agent.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Gateway, wait_until
from tests.integration.test_async import lambda_client
from tests.workdir import code_file

HOSTILE = r'''#!/usr/bin/env python3
"""A custom runtime that, for each invocation, sends the Runtime API the malformed requests the event names."""
import http.client, json, os, socket, time

HOST, PORT = os.environ["AWS_LAMBDA_RUNTIME_API"].split(":")
BASE = "/2018-06-01/runtime/invocation"


def raw(data, endless=False):
    """Send `data` on a fresh connection; return the status line the agent answers (or how it ended)."""
    s = socket.create_connection((HOST, int(PORT)), timeout=30)
    try:
        s.sendall(data)
        if endless:
            block = b"x" * (1 << 20)
            try:
                for _ in range(300):
                    s.sendall(block)
            except OSError:
                pass
        answer = b""
        while b"\r\n" not in answer:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer.split(b"\r\n", 1)[0].decode() or "closed"
    except OSError as exc:
        return type(exc).__name__
    finally:
        s.close()


def attacks(rid):
    post = f"POST {BASE}/{rid}/response HTTP/1.1\r\n"
    return {
        "negative-chunk": (post + "Transfer-Encoding: chunked\r\n\r\n-6\r\nabcdef\r\n0\r\n\r\n").encode(),
        "negative-length": (post + "Content-Length: -99999999\r\n\r\n").encode(),
        "overflowing-length": (post + "Content-Length: 99999999999999999999\r\n\r\n").encode(),
        "cl-and-te": (post + "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").encode(),
        "duplicate-length": (post + "Content-Length: 1\r\nContent-Length: 2\r\n\r\nab").encode(),
        "obs-fold": (post + "X-A: a\r\n b\r\nContent-Length: 0\r\n\r\n").encode(),
        "endless-chunk": (post + "Transfer-Encoding: chunked\r\n\r\nffffffffff\r\n").encode(),
    }


def late_init_error():
    conn = http.client.HTTPConnection(HOST, int(PORT), timeout=30)
    conn.request("POST", "/2018-06-01/runtime/init/error", body=b'{"errorType":"Late","errorMessage":"late"}')
    return conn.getresponse().status


conn = http.client.HTTPConnection(HOST, int(PORT), timeout=900)
while True:
    conn.request("GET", BASE + "/next")
    response = conn.getresponse()
    event = json.loads(response.read())
    rid = response.getheader("Lambda-Runtime-Aws-Request-Id")
    if event.get("mode") == "attacks":
        table = attacks(rid)
        result = {name: raw(table[name], endless=name == "endless-chunk") for name in event["attacks"]}
    elif event.get("mode") == "late-init-error":
        result = {"status": late_init_error()}
    elif event.get("mode") == "huge-error":
        body = json.dumps({"errorType": "Big", "errorMessage": "e" * (7 * 1024 * 1024)}).encode()
        conn.request("POST", f"{BASE}/{rid}/error", body=body)
        conn.getresponse().read()
        continue
    else:
        result = {"echo": event}
    conn.request("POST", f"{BASE}/{rid}/response", body=json.dumps(result).encode())
    conn.getresponse().read()
    if event.get("mode") == "never-ask-again":
        time.sleep(3600)
'''

FUNCTIONS = f"""
apiVersion: kambda.dev/v1alpha1
kind: Function
metadata: {{name: hostile}}
spec:
  runtime: provided
  handler: none
  timeoutSeconds: 60
  scaling: {{idleSeconds: 2}}
  code:
    files:
      bootstrap: |
{code_file(HOSTILE, 8)}
---
apiVersion: kambda.dev/v1alpha1
kind: Function
metadata: {{name: echo}}
spec:
  runtime: python3.11
  handler: app.handler
  code:
    files:
      app.py: |
        def handler(event, context):
            return event
---
apiVersion: kambda.dev/v1alpha1
kind: Function
metadata: {{name: spawner}}
spec:
  runtime: provided
  handler: none
  code:
    files:
      bootstrap: |
        #!/bin/sh
        # Leaves a background process behind, in its own process group, as a careless runtime would.
        setsid sleep 4242.5 &
        API="http://${{AWS_LAMBDA_RUNTIME_API}}/2018-06-01/runtime"
        H="/tmp/headers"
        while true; do
          EVENT=$(curl -sS -D "$H" "$API/invocation/next")
          ID=$(grep -i '^Lambda-Runtime-Aws-Request-Id:' "$H" | cut -d: -f2 | tr -d '[:space:]')
          curl -sS -X POST "$API/invocation/$ID/response" -d '"spawned"' >/dev/null
        done
"""
ATTACKS = {
    "negative-chunk": "400",
    "negative-length": "400",
    "overflowing-length": "400",
    "cl-and-te": "400",
    "duplicate-length": "400",
    "obs-fold": "400",
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("hostile")
    (root / "functions").mkdir()
    (root / "functions" / "functions.yaml").write_text(FUNCTIONS)
    gateway = Gateway(root / "functions", root / "data")
    yield gateway
    gateway.stop()


def invoke(gateway: Gateway, name: str, payload: object) -> tuple[dict[str, Any], Any]:
    response = lambda_client(gateway.url).invoke(FunctionName=name, Payload=json.dumps(payload).encode())
    return response, json.loads(response["Payload"].read())


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def agent_of(gateway: Gateway) -> int:
    for pid in children(gateway.proc.pid):
        try:
            if b"kambda.runtime.agent" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    raise AssertionError("no agent process under the gateway")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_malformed_runtime_requests_hurt_only_that_runtime(hostile: Gateway) -> None:
    """A chunk size of -6 once spun the agent at 100 % CPU, -99999999 grew it by GBs, `ffffffffff` buffered 1.5 GB:
    every other function stopped being served. Now each gets a 4xx while `echo` goes on answering promptly."""
    invoke(hostile, "echo", {"warm": True})
    invoke(hostile, "hostile", {"warm": True})
    agent = agent_of(hostile)
    rss_before = rss_kib(agent)
    latencies: list[float] = []
    stop = threading.Event()

    def echo_loop() -> None:
        client = lambda_client(hostile.url)
        while not stop.is_set():
            started = time.monotonic()
            body = json.loads(client.invoke(FunctionName="echo", Payload=b'{"n": 1}')["Payload"].read())
            assert body == {"n": 1}
            latencies.append(time.monotonic() - started)

    thread = threading.Thread(target=echo_loop)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while len(latencies) < 20 and time.monotonic() < deadline:  # attack for as long as echo needs to be measured
            response, result = invoke(hostile, "hostile", {"mode": "attacks", "attacks": list(ATTACKS)})
            # An endless chunk is a response over the limit: the agent stops reading at its drain limit, the
            # runtime gets a 413 and the caller Lambda's error for it.
            endless, endless_result = invoke(hostile, "hostile", {"mode": "attacks", "attacks": ["endless-chunk"]})
    finally:
        stop.set()
        thread.join()
    assert "FunctionError" not in response, result
    assert {name: status.split(" ")[1] for name, status in result.items()} == ATTACKS
    assert endless["FunctionError"] == "Unhandled"
    assert endless_result["errorType"] == "Function.ResponseSizeTooLarge"
    assert len(latencies) >= 20, "echo was barely invoked while the attacks ran: the check proves nothing"
    assert max(latencies) < 2.0, f"echo stalled for {max(latencies):.2f} s while a runtime attacked the agent"
    growth_mb = (rss_kib(agent) - rss_before) / 1024
    assert growth_mb < 40, f"the agent grew by {growth_mb:.0f} MB"
    assert invoke(hostile, "hostile", {"after": 1})[1] == {"echo": {"after": 1}}


def test_work_goes_only_to_a_runtime_that_asked(hostile: Gateway) -> None:
    """A runtime that answers and never calls /next again once got the next invocation anyway; its caller waited for
    Sandbox.Timedout. Now the invocation goes to another instance and the stalled one is retired."""
    assert invoke(hostile, "hostile", {"mode": "never-ask-again"})[1] == {"echo": {"mode": "never-ask-again"}}
    started = time.monotonic()
    response, result = invoke(hostile, "hostile", {"second": True})
    assert result == {"echo": {"second": True}} and "FunctionError" not in response
    assert time.monotonic() - started < 3.0
    assert wait_until(lambda: hostile.metric("kambda_instances", function="hostile", state="stalled") == 0, timeout=20)
    assert hostile.metric("kambda_instances_stopped_total", function="hostile") >= 1


def test_init_error_during_an_invocation_is_refused(hostile: Gateway) -> None:
    assert invoke(hostile, "hostile", {"mode": "late-init-error"})[1] == {"status": 403}


def test_an_oversized_error_reaches_the_caller_as_a_clear_error(hostile: Gateway) -> None:
    """A 7 MB /error once reset the connection and the caller got `Unhandled` with an empty body."""
    response, result = invoke(hostile, "hostile", {"mode": "huge-error"})
    assert response["FunctionError"] == "Unhandled"
    assert result["errorType"] == "Function.ResponseSizeTooLarge"
    assert result["errorMessage"].startswith("Error payload size (")
    assert "exceeded maximum allowed payload size" in result["errorMessage"]
    assert invoke(hostile, "hostile", {"after": 2})[1] == {"echo": {"after": 2}}


def sleepers() -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/cmdline").read_bytes() == b"sleep\x004242.5\x00":
                    found.append(int(entry))
            except OSError:
                continue
    return found


def agent_cgroups(pid: int) -> list[Path]:
    """The agent's cgroup parents that still exist (the agent is in this test's cgroups, as its gateway is)."""
    found = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        for controller in ("memory", "pids"):
            if controller in controllers.split(","):
                base = Path("/sys/fs/cgroup") / controller / path.lstrip("/")
            elif hierarchy == "0" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
                base = Path("/sys/fs/cgroup") / path.lstrip("/")
            else:
                continue
            if (base / f"kambda-agent-{pid}").is_dir():
                found.append(base / f"kambda-agent-{pid}")
    return found


@pytest.mark.parametrize("how", ["agent-sigkill", "agent-sigterm", "group-sigint"])
def test_nothing_of_a_sandbox_outlives_its_agent(how: str, tmp_path: Path) -> None:
    """Runtime processes once survived the agent's SIGKILL with PPID 1 for minutes, and memory cgroups were left
    behind on every stop after a SIGKILL, a SIGTERM or a SIGINT to the process group."""
    (tmp_path / "functions").mkdir()
    (tmp_path / "functions" / "functions.yaml").write_text(FUNCTIONS)
    gateway = Gateway(tmp_path / "functions", tmp_path / "data", new_session=True)
    proc = gateway.proc
    try:
        before = set(sleepers())
        assert invoke(gateway, "spawner", {})[1] == "spawned"
        assert wait_until(lambda: set(sleepers()) - before, timeout=10), "the runtime's child never started"
        agent = agent_of(gateway)
        assert agent_cgroups(agent), "the agent made no cgroups: there would be nothing to leak"
        if how == "agent-sigkill":
            os.kill(agent, signal.SIGKILL)
        elif how == "agent-sigterm":
            os.kill(agent, signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal that ran `kambda run`
        assert wait_until(lambda: not (set(sleepers()) - before), timeout=10), "the runtime's child outlived its agent"
        if how == "group-sigint":
            assert proc.wait(15) == 0
        elif how == "agent-sigkill":
            # The next agent (started for the next invocation) sweeps what the dead one could not clean up.
            assert invoke(gateway, "echo", {"again": 1})[1] == {"again": 1}
        assert wait_until(lambda: not agent_cgroups(agent), timeout=10), agent_cgroups(agent)
    finally:
        gateway.stop()
