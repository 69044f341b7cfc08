"""The control-plane API's latency on the local backend (SigV4 on), next to a bare aiohttp server in the same run.

boto3 (signing as it always does) drives a real `kambda run --auth keys` and, as the baseline, a bare aiohttp
server that answers GetFunction with a fixed configuration: the ratio is what kambda's store, checks and rendering
cost over the HTTP round trip and boto3's own work. Prints a table; `docs/benchmarks.md` records the numbers.

    python bench/control_bench.py [--rounds 200] [--functions 50]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


BARE_SERVER = textwrap.dedent(
    """
    import json, sys
    from aiohttp import web

    CONFIG = json.dumps({"Configuration": {"FunctionName": "fn", "Version": "$LATEST", "State": "Active"},
                         "Code": {"RepositoryType": "S3"}, "Tags": {}})

    async def get(request):
        return web.Response(text=CONFIG, content_type="application/json")

    app = web.Application()
    app.router.add_get("/2015-03-31/functions/{name}", get)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
    """
)


def zipped(size: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", "def handler(event, context):\n    return event\n")
        archive.writestr("data.bin", os.urandom(size))
    return buffer.getvalue()


def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{url} not ready")


def p50_ms(call: Callable[[], Any], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def client(url: str, key: tuple[str, str]) -> Any:
    return boto3.client("lambda", endpoint_url=url, region_name="us-east-1", aws_access_key_id=key[0],
                        aws_secret_access_key=key[1], config=Config(retries={"total_max_attempts": 1}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--functions", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "functions").mkdir()
        made = subprocess.run([sys.executable, "-m", "kambda", "keys", "create", "--data-dir", str(root / "data")],
                              capture_output=True, text=True, check=True)  # fmt: skip
        key = json.loads(made.stdout)["AccessKey"]
        creds = (key["AccessKeyId"], key["SecretAccessKey"])
        bare_port, port = free_port(), free_port()
        bare = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(bare_port)])
        gateway = subprocess.Popen(
            [sys.executable, "-m", "kambda", "run", str(root / "functions"), "--port", str(port), "--grpc-port", "0",
             "--data-dir", str(root / "data"), "--auth", "keys"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_ready(f"http://127.0.0.1:{bare_port}/2015-03-31/functions/fn", bare)
            wait_ready(f"http://127.0.0.1:{port}/healthz", gateway)
            base, lam = client(f"http://127.0.0.1:{bare_port}", creds), client(f"http://127.0.0.1:{port}", creds)
            small, large = zipped(1024), zipped(5 * 1024 * 1024)
            for i in range(args.functions):
                lam.create_function(FunctionName=f"fn-{i}", Runtime="python3.11", Role="r", Handler="app.handler",
                                    Code={"ZipFile": small})  # fmt: skip
            counter = iter(range(10**6))

            def create_delete(code: bytes) -> Callable[[], None]:
                def run() -> None:
                    name = f"tmp-{next(counter)}"
                    lam.create_function(FunctionName=name, Runtime="python3.11", Role="r", Handler="app.handler",
                                        Code={"ZipFile": code})  # fmt: skip
                    lam.delete_function(FunctionName=name)

                return run

            def touch() -> None:
                lam.update_function_configuration(FunctionName="fn-1", Description=str(time.time()))

            rows = [
                (
                    "bare aiohttp, GetFunction (baseline)",
                    p50_ms(lambda: base.get_function(FunctionName="fn"), args.rounds),
                ),
                ("GetFunction", p50_ms(lambda: lam.get_function(FunctionName="fn-0"), args.rounds)),
                (f"ListFunctions ({args.functions} functions, one page)", p50_ms(lam.list_functions, args.rounds)),
                ("UpdateFunctionConfiguration (Description: no new version)", p50_ms(touch, args.rounds)),
                ("CreateFunction 1 KB zip + DeleteFunction", p50_ms(create_delete(small), args.rounds // 4)),
                ("CreateFunction 5 MB zip + DeleteFunction", p50_ms(create_delete(large), args.rounds // 10)),
            ]
        finally:
            gateway.terminate()
            bare.terminate()
            gateway.wait(15)
            bare.wait(15)
    baseline = rows[0][1]
    for label, value in rows:
        print(f"{label:60} p50 {value:8.2f} ms  ({value / baseline:5.1f}x the baseline)")


if __name__ == "__main__":
    main()
