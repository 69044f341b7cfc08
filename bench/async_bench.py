"""Asynchronous invocations per queue backend: durable enqueue rate (202s per second) and end-to-end delivery rate
to a no-op function, next to a bare aiohttp server's request rate measured in the same run with the same client.

    python bench/async_bench.py [--events 5000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from invoke_bench import BARE_SERVER, FUNCTION, free_port, wait_up

NATS_CONF = 'listen: "127.0.0.1:{port}"\nmax_payload: 8MB\njetstream {{ store_dir: "{store}" }}\n'


async def post_many(url: str, n: int, concurrency: int, headers: dict[str, str]) -> float:
    """Requests per second for `n` POSTs at `concurrency`."""
    counter = iter(range(n))

    async def worker(session: aiohttp.ClientSession) -> None:
        for _ in counter:
            async with session.post(url, data=b'{"k":"v"}', headers=headers) as r:
                await r.read()
                assert r.status in (200, 202), r.status

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return n / (time.perf_counter() - start)


async def invocations(base: str, session: aiohttp.ClientSession) -> float:
    async with session.get(f"{base}/metrics") as r:
        text = await r.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('kambda_invocations_total{function="noop"')
    )


async def _invocations_now(base: str) -> float:
    async with aiohttp.ClientSession() as session:
        return await invocations(base, session)


async def run_backend(backend: str, tmp: Path, events: int, concurrency: int) -> tuple[float, float]:
    functions = tmp / f"functions-{backend}"
    functions.mkdir()
    # Reserved concurrency 8 keeps the benchmark about the queue, not about 64 runtimes cold-starting on 2 cores.
    manifest = FUNCTION.format(name="noop").replace("  scaling:", "  concurrency: {reserved: 8}\n  scaling:")
    (functions / "noop.yaml").write_text(manifest)
    env = {**os.environ, "AWS_EC2_METADATA_DISABLED": "true"}
    procs = []
    extra: list[str] = []
    if backend == "nats":
        port = free_port()
        conf = tmp / "nats.conf"
        conf.write_text(NATS_CONF.format(port=port, store=tmp / "nats-store"))
        procs.append(
            subprocess.Popen(["nats-server", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
        extra = ["--queue", "nats", "--nats-url", f"nats://127.0.0.1:{port}"]
        await asyncio.sleep(0.5)
    gw_port = free_port()
    procs.append(
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kambda",
                "run",
                str(functions),
                "--port",
                str(gw_port),
                "--grpc-port",
                "0",
                "--data-dir",
                str(tmp / f"data-{backend}"),
                *extra,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    base = f"http://127.0.0.1:{gw_port}"
    try:
        await wait_up(f"{base}/readyz")
        await asyncio.sleep(1)
        url = f"{base}/2015-03-31/functions/noop/invocations"
        await post_many(url, 64, 8, {})  # warm: start the instances before measuring
        events_before = await _invocations_now(base)
        started = time.perf_counter()
        enqueue_rate = await post_many(url, events, concurrency, {"X-Amz-Invocation-Type": "Event"})
        async with aiohttp.ClientSession() as session:
            while await invocations(base, session) < events + events_before:
                await asyncio.sleep(0.05)
        delivery_rate = events / (time.perf_counter() - started)
        return enqueue_rate, delivery_rate
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(20)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        bare_port = free_port()
        bare = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(bare_port)])
        try:
            await wait_up(f"http://127.0.0.1:{bare_port}/")
            bare_url = f"http://127.0.0.1:{bare_port}/2015-03-31/functions/noop/invocations"
            bare_rate = await post_many(bare_url, args.events, args.concurrency, {})
        finally:
            bare.terminate()
            bare.wait(10)
        results = {b: await run_backend(b, tmp, args.events, args.concurrency) for b in ("sqlite", "nats")}
    print(f"{args.events} events, client concurrency {args.concurrency}; bare aiohttp: {bare_rate:.0f} requests/s")
    print(f"{'backend':<8}{'enqueued/s':>12}{'vs bare':>9}{'delivered/s':>13}")
    for backend, (enqueue_rate, delivery_rate) in results.items():
        print(f"{backend:<8}{enqueue_rate:>12.0f}{enqueue_rate / bare_rate:>8.2f}x{delivery_rate:>13.0f}")
    print("target: >= 2000 events/s enqueued on sqlite")


if __name__ == "__main__":
    asyncio.run(main())
