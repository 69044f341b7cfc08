"""A soak: a real `kambda run` gateway under mixed load for `--minutes` (default 10), watched for leaks and for
anything lost or wrong.

All at once, for the whole run:
- sync invokes over keep-alive connections — an echo, a function that always raises, a sleeper — every answer
  checked against what was sent;
- async events at a fixed rate: most to a function that succeeds, a known share to one that always fails (one
  retry, then the dead-letter queue); both report every attempt (request id and payload nonce) to a small loopback
  recorder run by this script, so deliveries are counted outside the gateway;
- abusive traffic (`soak_abuse.py`): malformed HTTP, bad and 100,000-deep JSON, oversized bodies and headers, and
  connections that stall mid-request and are then dropped (with a FIN or a reset).

Every minute it prints the RSS and open fds of the gateway and of its local agent, the data directory's size and
growth, and the totals. At the end it waits for every event to settle and accounts for each exactly once:
succeeded or dead-lettered as intended (status API and dead-letter listing) with the attempts the recorder saw.
Exits 1 if anything was lost, wrong or delivered twice, or the gateway died.

    python bench/soak.py [--minutes 10] [--queue sqlite|nats] [--concurrency 4] [--events-per-second 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
from invoke_bench import free_port, wait_up
from soak_abuse import AbuseTotals, abuse, stalls
from soak_procs import Sample, largest_files, sample

ROOT = Path(__file__).resolve().parent.parent
PATH = "/2015-03-31/functions/{}/invocations"
DOOMED_RETRIES = 1  # so a dead-lettered event was attempted exactly twice
RECORD = """
        import json, os, urllib.request

        OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({{}}))  # loopback, never a proxy

        def record(context, event):
            body = json.dumps({{"fn": "{name}", "id": context.aws_request_id, "nonce": event["nonce"]}}).encode()
            OPENER.open(urllib.request.Request(os.environ["RECORDER"], data=body, method="POST"), timeout=10).read()
"""
FUNCTIONS = {
    "echo": "def handler(event, context):\n    return event\n",
    "boom": "def handler(event, context):\n    raise ValueError('boom ' + event['nonce'])\n",
    "sleeper": (
        "import time\n\ndef handler(event, context):\n    time.sleep(event['ms'] / 1000)\n"
        "    return {'slept': event['ms'], 'nonce': event['nonce']}\n"
    ),
}
MANIFEST = """\
apiVersion: kambda.dev/v1alpha1
kind: Function
metadata: {{name: {name}}}
spec:
  runtime: python3.11
  handler: app.handler
  timeoutSeconds: 10
  scaling: {{idleSeconds: 60}}
{extra}  code:
    files:
      app.py: |
{code}
"""


def write_functions(directory: Path, recorder: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, code in FUNCTIONS.items():
        body = "\n".join("        " + line for line in code.splitlines())
        (directory / f"{name}.yaml").write_text(MANIFEST.format(name=name, extra="", code=body))
    env = f'  environment: {{RECORDER: "{recorder}"}}\n'
    recorded = RECORD.format(name="recorded") + (
        "\n        def handler(event, context):\n            record(context, event)\n"
        "            return {'ok': event['nonce']}\n"
    )
    doomed = RECORD.format(name="doomed") + (
        "\n        def handler(event, context):\n            record(context, event)\n"
        "            raise RuntimeError('doomed ' + event['nonce'])\n"
    )
    # Reserved concurrency keeps the async side from starting dozens of runtimes on two cores.
    (directory / "recorded.yaml").write_text(
        MANIFEST.format(name="recorded", extra=env + "  concurrency: {reserved: 4}\n", code=recorded.strip("\n"))
    )
    (directory / "doomed.yaml").write_text(
        MANIFEST.format(
            name="doomed",
            extra=env + f"  concurrency: {{reserved: 2}}\n  async: {{maxRetryAttempts: {DOOMED_RETRIES}}}\n",
            code=doomed.strip("\n"),
        )
    )


# ---- the recorder: every attempt the functions make, as they report it ----------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.attempts: dict[str, list[tuple[str, str]]] = defaultdict(list)  # request id -> [(function, nonce)]

    async def record(self, request: web.Request) -> web.Response:
        data = await request.json()
        self.attempts[data["id"]].append((data["fn"], data["nonce"]))
        return web.Response(status=204)

    async def start(self) -> tuple[web.AppRunner, str]:
        app = web.Application()
        app.router.add_post("/record", self.record)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner, f"http://127.0.0.1:{port}/record"


# ---- load -------------------------------------------------------------------------------------------------------


@dataclass
class Totals:
    sync: Counter[str] = field(default_factory=Counter)  # ok | function-error | mismatch | status-NNN | transport
    sync_examples: list[str] = field(default_factory=list)
    sent: dict[str, tuple[str, str]] = field(default_factory=dict)  # request id -> (function, nonce) of each 202
    refused: Counter[str] = field(default_factory=Counter)  # async sends without a 202

    @property
    def sync_wrong(self) -> int:
        return sum(n for verdict, n in self.sync.items() if verdict not in ("ok", "function-error"))

    def sync_verdict(self, verdict: str, detail: str) -> None:
        self.sync[verdict] += 1
        if verdict not in ("ok", "function-error") and len(self.sync_examples) < 10:
            self.sync_examples.append(f"{verdict}: {detail}"[:300])


def check_sync(function: str, sent: dict[str, Any], status: int, function_error: str | None, body: bytes) -> str:
    """What a sync answer was: ok, the expected function error, or wrong (mismatch / an unexpected status)."""
    if status != 200:
        return f"status-{status}"
    try:
        answer = json.loads(body)
    except ValueError:
        return "mismatch"
    if function == "boom":
        good = (
            function_error == "Unhandled"
            and isinstance(answer, dict)
            and answer.get("errorType") == "ValueError"
            and answer.get("errorMessage") == f"boom {sent['nonce']}"
        )
        return "function-error" if good else "mismatch"
    if function_error is not None:
        return "mismatch"
    expected = sent if function == "echo" else {"slept": sent["ms"], "nonce": sent["nonce"]}
    return "ok" if answer == expected else "mismatch"


async def sync_worker(
    session: aiohttp.ClientSession, base: str, seed: int, totals: Totals, stop: asyncio.Event
) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        function = rng.choices(["echo", "boom", "sleeper"], [7, 2, 1])[0]
        payload: dict[str, Any] = {"nonce": uuid.uuid4().hex}
        if function == "echo":
            payload["pad"] = "x" * rng.randint(0, 4096)
            payload["nested"] = {"list": [1, 2.5, None, True, "é"], "n": rng.randint(0, 1 << 40)}
        elif function == "sleeper":
            payload["ms"] = rng.randint(1, 50)
        try:
            async with session.post(base + PATH.format(function), json=payload) as r:
                body = await r.read()
                verdict = check_sync(function, payload, r.status, r.headers.get("X-Amz-Function-Error"), body)
                totals.sync_verdict(verdict, f"{function} {r.status} {body[:200]!r}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            totals.sync_verdict("transport", f"{function}: {exc!r}")


async def async_sender(
    session: aiohttp.ClientSession, base: str, per_second: float, doomed_every: int, totals: Totals, stop: asyncio.Event
) -> None:
    loop = asyncio.get_running_loop()
    next_at, n = loop.time(), 0
    while not stop.is_set():
        function = "doomed" if n % doomed_every == doomed_every - 1 else "recorded"
        nonce = uuid.uuid4().hex
        n += 1
        try:
            async with session.post(
                base + PATH.format(function),
                json={"nonce": nonce, "n": n},
                headers={"X-Amz-Invocation-Type": "Event"},
            ) as r:
                await r.read()
                request_id = r.headers.get("x-amzn-RequestId")
                if r.status == 202 and request_id:
                    totals.sent[request_id] = (function, nonce)
                else:
                    totals.refused[f"status-{r.status}"] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            totals.refused[type(exc).__name__] += 1
        next_at += 1 / per_second
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, next_at - loop.time()))


# ---- the end: every event accounted for -------------------------------------------------------------------------


@dataclass
class Accounting:
    succeeded: int = 0
    dead_lettered: int = 0
    lost: int = 0  # never settled: no final status (and, for doomed events, no dead letter)
    wrong: int = 0  # settled the wrong way, or a payload that is not the one sent
    duplicated: int = 0  # attempted more often than its function's retries explain
    unknown_deliveries: int = 0  # the recorder saw an id that never got a 202 (e.g. a send that timed out)
    examples: list[str] = field(default_factory=list)

    def note(self, kind: str, request_id: str, detail: str) -> None:
        if len(self.examples) < 15:
            self.examples.append(f"{kind} {request_id}: {detail}")


def account(
    sent: dict[str, tuple[str, str]],
    states: dict[str, str],
    dead: Counter[str],
    attempts: dict[str, list[tuple[str, str]]],
) -> Accounting:
    """Each sent event exactly once: succeeded (recorded) or dead-lettered (doomed), as the recorder saw it."""
    result = Accounting(unknown_deliveries=len(set(attempts) - set(sent)))
    for request_id, (function, nonce) in sent.items():
        state, seen = states.get(request_id), attempts.get(request_id, [])
        if any(attempt != (function, nonce) for attempt in seen):
            result.wrong += 1
            result.note("wrong", request_id, f"ran with {seen}, sent {function} {nonce}")
            continue
        if function == "recorded":
            if state is None:
                result.lost += 1
                result.note("lost", request_id, f"no final status, {len(seen)} attempts recorded")
            elif state != "succeeded" or dead[request_id] or not seen:
                result.wrong += 1
                result.note("wrong", request_id, f"{state}, dead letters {dead[request_id]}, attempts {len(seen)}")
            else:
                result.succeeded += 1
                if len(seen) > 1:  # it never fails, so one attempt is all it ever needs
                    result.duplicated += 1
                    result.note("duplicated", request_id, f"{len(seen)} attempts")
        else:
            if state is None and not dead[request_id]:
                result.lost += 1
                result.note("lost", request_id, f"no final status and no dead letter, {len(seen)} attempts")
            elif state != "dead-lettered" or dead[request_id] != 1 or len(seen) < 1 + DOOMED_RETRIES:
                result.wrong += 1
                result.note("wrong", request_id, f"{state}, dead letters {dead[request_id]}, attempts {len(seen)}")
            else:
                result.dead_lettered += 1
                if len(seen) > 1 + DOOMED_RETRIES:
                    result.duplicated += 1
                    result.note("duplicated", request_id, f"{len(seen)} attempts")
    return result


FINAL = ("succeeded", "failed", "dead-lettered")


async def settle(session: aiohttp.ClientSession, base: str, ids: list[str], timeout: float) -> dict[str, str]:
    """Final states of the events, polled until all are final or `timeout` passes (the rest are left out)."""
    states: dict[str, str] = {}
    pending = list(ids)
    gate = asyncio.Semaphore(16)
    deadline = time.monotonic() + timeout

    async def one(request_id: str) -> None:
        async with gate, session.get(f"{base}/v1/invocations/{request_id}") as r:
            if r.status == 200:
                state = (await r.json())["State"]
                if state in FINAL:
                    states[request_id] = state
            else:
                await r.read()

    while pending and time.monotonic() < deadline:
        await asyncio.gather(*(one(i) for i in pending), return_exceptions=True)
        pending = [i for i in pending if i not in states]
        if pending:
            await asyncio.sleep(1)
    return states


async def dead_letters(session: aiohttp.ClientSession, base: str) -> Counter[str]:
    found: Counter[str] = Counter()
    marker: str | None = None
    while True:
        query = {"MaxItems": "1000", **({"Marker": marker} if marker else {})}
        async with session.get(f"{base}/v1/dead-letters", params=query) as r:
            page = await r.json()
        found.update(d["RequestId"] for d in page["DeadLetters"])
        marker = page.get("NextMarker")
        if not marker:
            return found


# ---- reporting ----------------------------------------------------------------------------------------------------


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def report_line(s: Sample, previous: Sample, totals: Totals, recorder: Recorder, abused: AbuseTotals) -> str:
    minutes = max((s.at - previous.at) / 60, 1e-9)
    delivered = Counter(attempts[0][0] for attempts in recorder.attempts.values() if attempts)
    return (
        f"[{s.at / 60:5.1f} min] gateway {mb(s.gateway_rss)} {s.gateway_fds} fds | agent {mb(s.agent_rss)} "
        f"{s.agent_fds} fds | {s.runtimes} procs under it {mb(s.runtimes_rss)} | data {mb(s.data_bytes)} "
        f"({(s.data_bytes - previous.data_bytes) / 1e6 / minutes:+.2f} MB/min) | sync {sum(totals.sync.values())} "
        f"(fn errors {totals.sync['function-error']}, wrong {totals.sync_wrong}) | async sent {len(totals.sent)} "
        f"ran {delivered['recorded']}+{delivered['doomed']} refused {sum(totals.refused.values())} | abuse "
        f"{abused.requests} (wrong {abused.wrong}), stalls {sum(abused.stalled.values())}"
    )


def summary(samples: list[Sample]) -> list[str]:
    """Start, after the first minute, end and peak of each measure, and its drift per minute from the first minute
    on (the first minute starts runtimes and fills SQLite's WAL, which is growth but not a leak)."""
    first, last = samples[0], samples[-1]
    steady = next((s for s in samples if s.at >= 60), first)
    if last.at - steady.at < 60:  # too short a run for a drift after the first minute: take it from the start
        steady = first
    minutes = max((last.at - steady.at) / 60, 1e-9)
    lines = [f"{'':<20}{'start':>9}{'1 min':>9}{'end':>9}{'peak':>9}{'drift/min':>12}"]
    for label, key, scale in [
        ("gateway RSS (MB)", "gateway_rss", 1e6),
        ("gateway open fds", "gateway_fds", 1),
        ("agent RSS (MB)", "agent_rss", 1e6),
        ("agent open fds", "agent_fds", 1),
        ("procs under agent", "runtimes", 1),
        ("their RSS (MB)", "runtimes_rss", 1e6),
        ("data dir (MB)", "data_bytes", 1e6),
    ]:
        values = [getattr(s, key) / scale for s in samples]
        at_one = getattr(steady, key) / scale
        drift = (values[-1] - at_one) / minutes
        lines.append(f"{label:<20}{values[0]:>9.1f}{at_one:>9.1f}{values[-1]:>9.1f}{max(values):>9.1f}{drift:>+12.2f}")
    return lines


# ---- the run ------------------------------------------------------------------------------------------------------


@dataclass
class Platform:
    gateway: subprocess.Popen[bytes]
    base: str
    port: int
    data: list[Path]
    log: Path
    nats: subprocess.Popen[bytes] | None = None

    def stop(self) -> int | None:
        code = None
        for proc in (self.gateway, self.nats):
            if proc is None:
                continue
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc is self.gateway:
                code = proc.returncode
        return code


async def start_platform(tmp: Path, functions: Path, queue: str, retry_delay: float) -> Platform:
    env = {**os.environ, "AWS_EC2_METADATA_DISABLED": "true"}
    data, extra, nats = [tmp / "data"], [], None
    if queue == "nats":
        nats_port = free_port()
        conf = tmp / "nats.conf"
        conf.write_text(f'listen: "127.0.0.1:{nats_port}"\nmax_payload: 8MB\njetstream {{ store_dir: "{tmp}/nats" }}\n')
        nats = subprocess.Popen(["nats-server", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        data.append(tmp / "nats")
        extra = ["--queue", "nats", "--nats-url", f"nats://127.0.0.1:{nats_port}"]
        await wait_port(nats_port)
    port = free_port()
    log = tmp / "gateway.log"
    gateway = subprocess.Popen(
        [sys.executable, "-m", "kambda", "run", str(functions), "--port", str(port), "--grpc-port", "0",
         "--data-dir", str(data[0]), "--retry-base-delay", str(retry_delay), "--throttle-base-delay", "0.2", *extra],
        env=env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    platform = Platform(gateway, f"http://127.0.0.1:{port}", port, data, log, nats)
    try:
        await wait_up(f"{platform.base}/readyz", timeout=60)
    except RuntimeError:
        platform.stop()
        raise
    return platform


async def wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {port}") from None
            await asyncio.sleep(0.05)


async def warm_up(session: aiohttp.ClientSession, base: str) -> None:
    """One call each, so the first sample is taken with every sync function's runtime started."""
    for function, payload in [("echo", {"nonce": "w"}), ("boom", {"nonce": "w"}), ("sleeper", {"nonce": "w", "ms": 1})]:
        async with session.post(base + PATH.format(function), json=payload) as r:
            await r.read()


async def run(args: argparse.Namespace, tmp: Path) -> int:
    recorder = Recorder()
    runner, recorder_url = await recorder.start()
    functions = tmp / "functions"
    write_functions(functions, recorder_url)
    platform = await start_platform(tmp, functions, args.queue, args.retry_base_delay)
    totals, abused = Totals(), AbuseTotals()
    samples: list[Sample] = []
    stop = asyncio.Event()
    died = False
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=args.concurrency + 2)  # keep-alive, reused across calls
    try:
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            await warm_up(session, platform.base)
            started = time.monotonic()
            samples.append(sample(0.0, platform.gateway.pid, platform.data))
            print(f"soak: {args.minutes:g} min, queue {args.queue}, {args.concurrency} sync workers, "
                  f"{args.events_per_second:g} events/s (1 in {args.doomed_every} doomed), "
                  f"{args.abuse_per_second:g} abusive requests/s, {args.stalls} stalled connections; "
                  f"gateway pid {platform.gateway.pid}, data in {tmp}", flush=True)  # fmt: skip
            load = [
                *(
                    asyncio.create_task(sync_worker(session, platform.base, seed, totals, stop))
                    for seed in range(args.concurrency)
                ),
                asyncio.create_task(
                    async_sender(session, platform.base, args.events_per_second, args.doomed_every, totals, stop)
                ),
                asyncio.create_task(abuse(platform.base, platform.port, args.abuse_per_second, abused, stop)),
                asyncio.create_task(stalls(platform.port, args.stalls, abused, stop)),
            ]
            end = started + args.minutes * 60
            while (now := time.monotonic()) < end:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(args.report_seconds, end - now))
                if platform.gateway.poll() is not None:
                    died = True
                    print(f"the gateway exited with {platform.gateway.returncode}", flush=True)
                    break
                samples.append(sample(time.monotonic() - started, platform.gateway.pid, platform.data))
                print(report_line(samples[-1], samples[-2], totals, recorder, abused), flush=True)
            stop.set()
            await asyncio.gather(*load, return_exceptions=True)
            accounting = Accounting()
            if not died:
                print(f"load stopped; waiting for {len(totals.sent)} events to settle", flush=True)
                states = await settle(session, platform.base, list(totals.sent), timeout=args.settle_seconds)
                dead = await dead_letters(session, platform.base)
                accounting = account(totals.sent, states, dead, recorder.attempts)
                samples.append(sample(time.monotonic() - started, platform.gateway.pid, platform.data))
    finally:
        code = platform.stop()
        await runner.cleanup()
    files = largest_files(*platform.data)
    return print_summary(args, samples, totals, abused, accounting, died, code, platform.log, files)


def print_summary(
    args: argparse.Namespace,
    samples: list[Sample],
    totals: Totals,
    abused: AbuseTotals,
    accounting: Accounting,
    died: bool,
    exit_code: int | None,
    log: Path,
    files: list[tuple[str, int]],
) -> int:
    print("\n=== soak summary ===")
    print("\n".join(summary(samples)))
    print("largest data files: " + ", ".join(f"{name} {mb(size)}" for name, size in files))
    sync_total = sum(totals.sync.values())
    print(f"sync calls {sync_total}: ok {totals.sync['ok']}, expected function errors {totals.sync['function-error']}, "
          f"wrong {totals.sync_wrong} {dict(totals.sync)}")  # fmt: skip
    print(f"async events sent {len(totals.sent)} (refused {sum(totals.refused.values())} {dict(totals.refused)}): "
          f"succeeded {accounting.succeeded}, dead-lettered {accounting.dead_lettered}, lost {accounting.lost}, "
          f"wrong {accounting.wrong}, duplicated {accounting.duplicated}, deliveries of unknown ids "
          f"{accounting.unknown_deliveries}")  # fmt: skip
    kinds: dict[str, dict[str, int]] = defaultdict(dict)
    for (kind, answer), n in sorted(abused.outcomes.items()):
        kinds[kind][answer] = n
    print(f"abusive requests {abused.requests} (wrong {abused.wrong}): {dict(kinds)}")
    print(f"stalled connections {sum(abused.stalled.values())}: {dict(abused.stalled)}")
    print(f"gateway exit code {exit_code}")
    for example in [*totals.sync_examples, *accounting.examples, *abused.examples]:
        print("  " + example)
    failures = {
        "gateway died": died,
        "gateway did not exit cleanly": exit_code not in (0, None) and not died,
        "sync answers wrong": totals.sync_wrong > 0,
        "async sends refused": sum(totals.refused.values()) > 0,
        "events lost": accounting.lost > 0,
        "events wrong": accounting.wrong > 0,
        "events duplicated": accounting.duplicated > 0 and not args.allow_duplicates,
        "abusive requests answered wrongly": abused.wrong > 0,
    }
    failed = [reason for reason, bad in failures.items() if bad]
    if failed:
        print("FAILED: " + ", ".join(failed))
        print("gateway log tail:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))
        return 1
    print("OK: nothing lost or wrong")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--queue", choices=("sqlite", "nats"), default="sqlite")
    parser.add_argument("--concurrency", type=int, default=4, help="sync workers, each on a keep-alive connection")
    parser.add_argument("--events-per-second", type=float, default=20.0)
    parser.add_argument("--doomed-every", type=int, default=5, help="every n-th event goes to the failing function")
    parser.add_argument("--abuse-per-second", type=float, default=3.0)
    parser.add_argument("--stalls", type=int, default=8, help="stalled connections held open at any time")
    parser.add_argument("--report-seconds", type=float, default=60.0)
    parser.add_argument("--settle-seconds", type=float, default=120.0, help="how long events may take to finish")
    parser.add_argument("--retry-base-delay", type=float, default=0.5, help="the gateway's async retry delay")
    parser.add_argument("--allow-duplicates", action="store_true", help="delivery is at-least-once; report only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kambda-soak-") as tmp:
        return asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
