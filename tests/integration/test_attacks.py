"""Attacks from inside a function on the local backend, run as root (the hardening issue's finding 8).

Each attack once worked: a function read the agent's memory and harvested every function's credential, pulled and
answered another function's invocation, bound a second listener on the gRPC port, appended to another function's
code (kept across a restart), raised its own memory limit, killed the gateway and filled the data directory. Here
every one is refused and the victim still answers its real caller. What an attack needs from the host (pids, ports,
paths) is found from outside, as root, and handed to the attacker in its event: it gets every advantage but access.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Gateway
from tests.integration.test_async import lambda_client
from tests.integration.test_hostile_runtimes import agent_of, children
from tests.workdir import code_file

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attack suite runs as root (CI does)")

ATTACKER = r"""
import errno, json, os, re, socket, threading

CREDENTIAL = re.compile(rb"[0-9a-f]{64}")


def outcome(action):
    try:
        result = action()
    except OSError as exc:
        return {"refused": errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno else type(exc).__name__}
    except Exception as exc:
        return {"refused": type(exc).__name__}
    return {"succeeded": result}


def read_memory(pid):
    found = set()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            if "rw" in line.split()[1] and end - start < 64 << 20:
                try:
                    mem.seek(start)
                    found.update(m.decode() for m in CREDENTIAL.findall(mem.read(end - start)))
                except OSError:
                    pass
    return sorted(found)


def other_processes():
    me = os.getpid()
    return {p: open(f"/proc/{p}/cmdline", "rb").read().decode(errors="replace")
            for p in os.listdir("/proc") if p.isdigit() and int(p) != me}


def harvest():
    found = []
    for pid in other_processes():
        try:
            found += read_memory(pid)
        except OSError:
            pass
    return found


def steal(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\n\r\n")
    data = s.recv(65536)
    s.close()
    if not data:
        raise ConnectionRefusedError(errno.ECONNRESET, "closed unserved")
    return data.decode(errors="replace")[:200]


def listen_beside(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", port))
    s.listen()
    return "listening"


def fill(path, limit):
    written = 0
    try:
        with open(path, "wb") as f:
            block = b"\0" * (1 << 20)
            while written < limit:
                f.write(block)
                f.flush()
                written += len(block)
    except OSError as exc:
        os.unlink(path)
        return {"stopped_at": written, "errno": errno.errorcode.get(exc.errno)}
    os.unlink(path)
    return {"stopped_at": written, "errno": None}


def threads(limit):
    release = threading.Event()
    started = []
    try:
        while len(started) < limit:
            t = threading.Thread(target=release.wait, daemon=True)
            t.start()
            started.append(t)
    except RuntimeError:
        pass
    release.set()
    return len(started)


def append(path):
    with open(path, "a") as f:
        f.write("\ndef handler(event, context):\n    return 'pwned'\n")
    return "appended"


def write(path, data):
    with open(path, "w") as f:
        f.write(data)
    return "written"


def handler(event, context):
    t = event
    return {
        "processes": list(other_processes().values()),
        "harvest": outcome(harvest),
        "agent_memory": outcome(lambda: read_memory(t["agent_pid"])),
        "kill_gateway": outcome(lambda: os.kill(t["gateway_pid"], 9)),
        "kill_agent": outcome(lambda: os.kill(t["agent_pid"], 9)),
        "second_grpc_listener": outcome(lambda: listen_beside(t["grpc_port"])),
        "steal_invocation": outcome(lambda: steal(t["victim_api_port"])),
        "append_victim_code": outcome(lambda: append(t["victim_code"] + "/app.py")),
        "append_own_code": outcome(lambda: append("/var/task/app.py")),
        "raise_memory_limit": outcome(lambda: write(t["memory_limit_file"], str(4 << 30))),
        "write_data_dir": outcome(lambda: write(t["data_dir"] + "/junk", "x" * (1 << 20))),
        "list_data_dir": outcome(lambda: os.listdir(t["data_dir"])),
        "read_queue": outcome(lambda: open(t["queue_file"], "rb").read(100).hex()),
        "read_victim_code": outcome(lambda: open(t["victim_code"] + "/app.py").read()),
        "read_signing_key": outcome(lambda: read_memory(t["gateway_pid"])),  # the local key lives only there
        "read_gateway_environ": outcome(lambda: open(f"/proc/{t['gateway_pid']}/environ", "rb").read().hex()),
        "write_etc": outcome(lambda: write("/etc/kambda-was-here", "x")),
        "setuid_root": outcome(lambda: os.setuid(0)),
        "fill_tmp": fill("/tmp/fill", 2 << 30),
        "fill_shm": fill("/dev/shm/fill", 2 << 30),
        "threads": threads(4000),
        "environment": dict(os.environ),
    }
"""

FUNCTIONS = f"""
apiVersion: kambda.dev/v1alpha1
kind: Function
metadata: {{name: attacker}}
spec:
  runtime: python3.11
  handler: app.handler
  memoryMB: 1024
  timeoutSeconds: 120
  ephemeralStorage: {{size: 600}}
  code:
    files:
      app.py: |
{code_file(ATTACKER, 8)}
---
apiVersion: kambda.dev/v1alpha1
kind: Function
metadata: {{name: victim}}
spec:
  runtime: python3.11
  handler: app.handler
  code:
    files:
      app.py: |
        import time

        def handler(event, context):
            time.sleep(event.get("sleep", 0))
            return {{"victim": event}}
"""
CREDENTIAL = re.compile(rb'"credential": "([0-9a-f]{64})"')


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Path]]:
    root = tmp_path_factory.mktemp("attacks")
    (root / "functions").mkdir()
    (root / "functions" / "functions.yaml").write_text(FUNCTIONS)
    gateway = Gateway(root / "functions", root / "data")
    yield gateway, root
    gateway.stop()


def invoke(gateway: Gateway, name: str, payload: object) -> Any:
    response = lambda_client(gateway.url).invoke(FunctionName=name, Payload=json.dumps(payload).encode())
    assert "FunctionError" not in response, response["Payload"].read()
    return json.loads(response["Payload"].read())


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def runtime_of(agent: int, function: str) -> int:
    """The runtime process (inside its sandbox) of `function`, found from outside."""
    stack = children(agent)
    while stack:
        pid = stack.pop()
        try:
            if environ(pid).get("AWS_LAMBDA_FUNCTION_NAME") == function:
                return pid
        except OSError:
            pass
        stack += children(pid)
    raise AssertionError(f"no runtime of {function}")


def harvest_from_outside(agent: int) -> set[str]:
    """What root outside the sandboxes reads from the agent's memory: the attack is real if this finds credentials."""
    found: set[str] = set()
    with open(f"/proc/{agent}/maps") as maps, open(f"/proc/{agent}/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if "rw" in fields[1] and end - start < 64 << 20:
                try:
                    mem.seek(start)
                    found.update(m.decode() for m in CREDENTIAL.findall(mem.read(end - start)))
                except OSError:
                    pass
    return found


def memory_limit_file(pid: int) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"
    raise AssertionError("the runtime is in no memory cgroup")


def test_every_attack_from_inside_a_function_is_refused(platform: tuple[Gateway, Path]) -> None:
    gateway, root = platform
    assert invoke(gateway, "victim", {"warm": 1}) == {"victim": {"warm": 1}}
    agent = agent_of(gateway)
    victim = runtime_of(agent, "victim")
    credentials = harvest_from_outside(agent)
    assert credentials, "root outside cannot find credentials in the agent's memory: the attack would prove nothing"
    limit_file = memory_limit_file(victim)
    assert Path(limit_file).exists()
    victim_code = next(p.parent for p in (root / "data" / "code").glob("*/app.py") if "victim" in p.read_text())
    queue_file = next(p for p in (root / "data").iterdir() if p.is_file() and p.stat().st_size > 0)
    assert victim_code.stat().st_mode & 0o004 and queue_file.read_bytes()  # what the attacker must not read exists
    targets = {
        "agent_pid": agent,
        "gateway_pid": gateway.proc.pid,
        "grpc_port": grpc_port(gateway),
        "victim_api_port": int(environ(victim)["AWS_LAMBDA_RUNTIME_API"].rsplit(":", 1)[1]),
        "victim_code": str(victim_code),
        "memory_limit_file": limit_file,
        "data_dir": str(root / "data"),
        "queue_file": str(queue_file),
    }
    # The victim is busy answering its real caller while the attacker tries to take its work.
    victim_answer: dict[str, Any] = {}
    caller = threading.Thread(target=lambda: victim_answer.update(invoke(gateway, "victim", {"sleep": 0.5, "n": 2})))
    caller.start()
    result = invoke(gateway, "attacker", targets)
    caller.join()
    assert victim_answer == {"victim": {"sleep": 0.5, "n": 2}}

    assert all("kambda" not in p and "grpc" not in p for p in result["processes"]), result["processes"]
    assert result["harvest"] == {"succeeded": []} or "refused" in result["harvest"]
    for attack in ("agent_memory", "kill_gateway", "kill_agent", "second_grpc_listener", "steal_invocation",
                   "append_victim_code", "append_own_code", "raise_memory_limit", "write_data_dir", "write_etc",
                   "setuid_root", "list_data_dir", "read_queue", "read_victim_code", "read_signing_key",
                   "read_gateway_environ"):  # fmt: skip
        assert "refused" in result[attack], (attack, result[attack])
    assert result["second_grpc_listener"]["refused"] == "EADDRINUSE"
    # /tmp is the size the Function asked for (ephemeralStorage 600 MB; Lambda's default is 512).
    assert result["fill_tmp"]["errno"] == "ENOSPC" and 512 << 20 < result["fill_tmp"]["stopped_at"] <= 600 << 20
    assert result["fill_shm"]["errno"] == "ENOSPC" and result["fill_shm"]["stopped_at"] <= 64 << 20
    assert result["threads"] < 1024
    assert not credentials & set(re.findall(r"[0-9a-f]{64}", json.dumps(result["environment"])))

    # Nothing the attacker did stuck: the platform runs on, the victim's code is its own.
    assert gateway.proc.poll() is None and agent_of(gateway) == agent
    assert Path(limit_file).read_text().strip() == str(128 << 20)
    assert invoke(gateway, "victim", {"after": 1}) == {"victim": {"after": 1}}
    assert not (root / "data" / "junk").exists()


def grpc_port(gateway: Gateway) -> int:
    match = re.search(r"runtime interface [\d.]+:(\d+)", gateway.logs())
    assert match, gateway.logs()
    return int(match.group(1))


def test_no_credential_in_any_command_line_or_runtime_environment(platform: tuple[Gateway, Path]) -> None:
    gateway, _ = platform
    invoke(gateway, "victim", {"n": 3})
    agent = agent_of(gateway)
    credentials = harvest_from_outside(agent)
    assert credentials
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_text(errors="replace")
        except OSError:
            continue
        assert not any(c in cmdline for c in credentials), f"a credential is in the command line of {entry}"
    runtime = environ(runtime_of(agent, "victim"))
    assert not any(c in value for value in runtime.values() for c in credentials)


def test_tampered_code_is_replaced_on_restart(tmp_path: Path) -> None:
    """The code cache outlives the gateway; a file changed in it once ran under the old digest after a restart."""
    (tmp_path / "functions").mkdir()
    (tmp_path / "functions" / "functions.yaml").write_text(FUNCTIONS)
    first = Gateway(tmp_path / "functions", tmp_path / "data")
    try:
        assert invoke(first, "victim", {"n": 1}) == {"victim": {"n": 1}}
    finally:
        first.stop()
    app = next(p for p in (tmp_path / "data" / "code").glob("*/app.py") if "victim" in p.read_text())
    app.write_text("def handler(event, context):\n    return 'tampered'\n")
    second = Gateway(tmp_path / "functions", tmp_path / "data")
    try:
        assert invoke(second, "victim", {"n": 2}) == {"victim": {"n": 2}}
    finally:
        second.stop()


def test_a_second_gateway_on_a_busy_grpc_port_fails_at_start(platform: tuple[Gateway, Path], tmp_path: Path) -> None:
    gateway, root = platform
    port = grpc_port(gateway)
    with pytest.raises(RuntimeError, match="exited with") as failure:
        Gateway(root / "functions", tmp_path / "data", "--grpc-port", str(port))
    assert f":{port} is in use" in str(failure.value)
    assert "Traceback" not in str(failure.value)
