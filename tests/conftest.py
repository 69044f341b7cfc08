"""Shared fixtures: real gateway processes (with their agents and runtimes) on loopback ports."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ROOT / "tests" / "functions"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Gateway:
    """A `kambda run` subprocess: the whole local platform, exactly as a user starts it."""

    def __init__(self, directory: Path, data_dir: Path, *extra: str, new_session: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / "gateway.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kambda",
                "run",
                str(directory),
                "--port",
                str(self.port),
                "--grpc-port",
                "0",
                "--data-dir",
                str(data_dir),
                *extra,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=new_session,  # its own process group, for tests that signal the whole group
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"gateway not ready after {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        # Bytes as written: text mode would turn the "\r" awslambdaric puts between a traceback's lines into "\n".
        return self.log_path.read_bytes().decode(errors="replace")

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as r:
            text: str = r.read().decode()
            return text

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 when there are none)."""
        total = 0.0
        for line in self.metrics().splitlines():
            m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$", line)
            if not m or m.group(1) != name:
                continue
            found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(m.group(3))
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(FUNCTIONS, tmp_path_factory.mktemp("gateway"))
    yield gw
    gw.stop()
    assert gw.proc.returncode == 0, gw.logs()


@pytest.fixture(scope="session")
def lambda_client(gateway: Gateway):  # type: ignore[no-untyped-def]
    import boto3
    from botocore.config import Config

    return boto3.client(
        "lambda",
        endpoint_url=gateway.url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"total_max_attempts": 1}, read_timeout=900, max_pool_connections=64),
    )


def wait_until(predicate, timeout: float = 30, interval: float = 0.1) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


class NatsServer:
    """A real `nats-server` with JetStream, on a free loopback port, storing into a temporary directory."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "nats.conf"
        # Events carry up to 1 MiB of payload and destination records a function's response: allow 8 MiB messages.
        config.write_text(
            f'listen: "127.0.0.1:{self.port}"\nmax_payload: 8MB\njetstream {{ store_dir: "{directory / "store"}" }}\n'
        )
        self._log = open(directory / "nats.log", "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(["nats-server", "-c", str(config)], stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nats-server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._log.close()


# The Kubernetes fixtures (a real cluster, started once per session) serve tests/k8s and tests/e2e alike.
from tests.kube import kube, namespace, operator  # noqa: E402, F401
