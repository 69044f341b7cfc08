"""Invoke latency, throughput and cold starts through the gateway, next to a bare aiohttp server in the same run.

Both servers run as subprocesses on loopback and are driven by the same aiohttp client from this process, so the
ratios compare like with like on a noisy machine. Prints a table; `docs/benchmarks.md` records the numbers.

    python bench/invoke_bench.py [--requests 2000] [--seconds 5] [--cold 15]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import aiohttp

BARE_SERVER = textwrap.dedent(
    """
    import sys
    from aiohttp import web

    async def echo(request):
        return web.Response(body=await request.read(), content_type="application/json")

    app = web.Application()
    app.router.add_post("/2015-03-31/functions/{name}/invocations", echo)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
    """
)

FUNCTION = """\
apiVersion: kambda.dev/v1alpha1
kind: Function
metadata: {{name: {name}}}
spec:
  runtime: python3.11
  handler: app.handler
  scaling: {{idleSeconds: 600}}
  code:
    files:
      app.py: |
        def handler(event, context):
            return event
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def wait_up(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as r:
                    if r.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


BODY = b'{"k":"v"}'


def signed_headers(url: str, key_id: str, secret: str) -> dict[str, str]:
    """SigV4 headers for POST `url` with BODY, made once: valid for the 5 minutes of allowed skew, so the timed
    loops replay them and measure the gateway's verification, not the client's signing."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method="POST", url=url, data=BODY, headers={"Content-Type": "application/octet-stream"})
    SigV4Auth(Credentials(key_id, secret), "lambda", "us-east-1").add_auth(request)
    return dict(request.headers.items())


async def latency(url: str, n: int, headers: dict[str, str] | None = None) -> list[float]:
    samples = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for i in range(n + n // 10):
            start = time.perf_counter()
            async with session.post(url, data=BODY, headers=headers) as r:
                await r.read()
                assert r.status == 200, r.status
            if i >= n // 10:  # the first 10 % warm up connections and instances
                samples.append(time.perf_counter() - start)
    return samples


async def throughput(url: str, concurrency: int, seconds: float, headers: dict[str, str] | None = None) -> float:
    done = 0
    stop = time.monotonic() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done
        while time.monotonic() < stop:
            async with session.post(url, data=BODY, headers=headers) as r:
                await r.read()
                assert r.status == 200, r.status
            done += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        warm_stop, stop = stop, time.monotonic() + 1.0
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))  # warm-up second
        done, stop = 0, time.monotonic() + seconds
        started = time.monotonic()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        del warm_stop
        return done / (time.monotonic() - started)


async def cold_starts(base: str, names: list[str]) -> list[float]:
    samples = []
    async with aiohttp.ClientSession() as session:
        for name in names:
            start = time.perf_counter()
            async with session.post(f"{base}/2015-03-31/functions/{name}/invocations", data=b"{}") as r:
                await r.read()
                assert r.status == 200
            samples.append(time.perf_counter() - start)
    return samples


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--cold", type=int, default=15)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        fdir = Path(tmp) / "functions"
        fdir.mkdir()
        cold_names = [f"cold-{i}" for i in range(args.cold)]
        for name in ["noop", *cold_names]:
            (fdir / f"{name}.yaml").write_text(FUNCTION.format(name=name))
        bare_port, gw_port, auth_port = free_port(), free_port(), free_port()
        from kambda import accesskeys

        key = accesskeys.KeyFile.in_data_dir(Path(tmp) / "auth-data").create("bench", (accesskeys.ALLOW_ALL,))
        env = {**os.environ, "AWS_EC2_METADATA_DISABLED": "true"}
        bare = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(bare_port)], env=env)
        gateway = subprocess.Popen(
            [sys.executable, "-m", "kambda", "run", str(fdir), "--port", str(gw_port), "--grpc-port", "0",
             "--data-dir", str(Path(tmp) / "data")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        # The same platform, authenticating: every request SigV4-verified and authorised by the key's policy.
        authed = subprocess.Popen(
            [sys.executable, "-m", "kambda", "run", str(fdir), "--port", str(auth_port), "--grpc-port", "0",
             "--data-dir", str(Path(tmp) / "auth-data"), "--auth", "keys"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            bare_url = f"http://127.0.0.1:{bare_port}/2015-03-31/functions/noop/invocations"
            gw_base = f"http://127.0.0.1:{gw_port}"
            gw_url = f"{gw_base}/2015-03-31/functions/noop/invocations"
            await wait_up(f"http://127.0.0.1:{bare_port}/")
            await wait_up(f"{gw_base}/readyz")
            await wait_up(f"http://127.0.0.1:{auth_port}/readyz")
            await asyncio.sleep(1)  # let the local agents finish starting
            auth_url = f"http://127.0.0.1:{auth_port}/2015-03-31/functions/noop/invocations"
            signed = signed_headers(auth_url, key.access_key_id, key.secret_access_key)

            cold = await cold_starts(gw_base, cold_names)
            bare_lat = await latency(bare_url, args.requests)
            gw_lat = await latency(gw_url, args.requests)
            bare_rps = await throughput(bare_url, args.concurrency, args.seconds)
            gw_rps = await throughput(gw_url, args.concurrency, args.seconds)
            auth_lat = await latency(auth_url, args.requests, signed)
            auth_rps = await throughput(auth_url, args.concurrency, args.seconds, signed)
        finally:
            for proc in (bare, gateway, authed):
                proc.terminate()
                proc.wait(15)

    ms = 1000
    rows = [
        ("p50 latency, c=1 (ms)", pct(bare_lat, 0.5) * ms, pct(gw_lat, 0.5) * ms),
        ("p99 latency, c=1 (ms)", pct(bare_lat, 0.99) * ms, pct(gw_lat, 0.99) * ms),
        (f"requests/s, c={args.concurrency}", bare_rps, gw_rps),
    ]
    print(f"{'metric':<26}{'bare aiohttp':>14}{'kambda':>12}{'ratio':>9}")
    for label, bare_v, gw_v in rows:
        print(f"{label:<26}{bare_v:>14.2f}{gw_v:>12.2f}{gw_v / bare_v:>8.2f}x")
    print(f"cold start (zero -> first response), p50 of {len(cold)}: {statistics.median(cold) * ms:.1f} ms "
          f"(min {min(cold) * ms:.1f}, max {max(cold) * ms:.1f})")  # fmt: skip
    print(f"with SigV4 + policy: p50 {pct(auth_lat, 0.5) * ms:.2f} ms (anonymous {pct(gw_lat, 0.5) * ms:.2f}), "
          f"{auth_rps:.0f} requests/s (anonymous {gw_rps:.0f})")  # fmt: skip
    print(f"targets: p50 <= 2.5x bare, rps >= 0.35x bare, cold start <= 150 ms; cores: {os.cpu_count()}")


if __name__ == "__main__":
    asyncio.run(main())
