"""Gateway replicas on the real node: the cost of the forwarded hop, and the failover time.

    python bench/replicas_bench.py [--requests 500] [--rounds 3] [--failovers 3]

Installs the chart with 3 replicas and the NATS queue (tests/install.py, as the end-to-end tests do) and a no-op
Python function. Then, alternating in each round: sequential invocations sent straight to the function's owner
(the replica holding its bucket's Lease) and to a replica that forwards them to the owner; prints p50/p99 of each
and their ratio. Failover: a probe sends an invocation every 20 ms to a surviving replica while the owner's pod is
deleted with --grace-period=0 --force; the failover time is from the deletion until the function is served again:
the end of the first 20 probes in a row answered within 1 s, after the first probe the loss held up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kambda.gateway import ownership  # noqa: E402
from tests.e2e.conftest import lambda_client  # noqa: E402
from tests.install import Release, build_images  # noqa: E402
from tests.kube import Kube, eventually  # noqa: E402
from tests.workdir import function_manifest  # noqa: E402

KUBECONFIG = "/tmp/kambda-test-cluster/admin.kubeconfig"
BUCKETS = 8
NOOP = "def handler(event, context):\n    return {}\n"


def pods(kube: Kube, release: Release) -> dict[str, str]:
    return {
        p["metadata"]["name"]: p["status"]["podIP"]  # type: ignore[index]
        for p in release.pods("gateway")
        if p["status"].get("phase") == "Running" and p["status"].get("podIP")  # type: ignore[union-attr]
    }


def owner(kube: Kube, release: Release, namespace: str, function: str) -> str:
    bucket = ownership.bucket_of(f"{namespace}/{function}", BUCKETS)
    lease = kube.get("lease", f"{release.name}-gateway-bucket-{bucket}", release.system) or {}
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def timed(client: object, function: str) -> float:
    start = time.perf_counter()
    response = client.invoke(FunctionName=function, Payload=b"{}")  # type: ignore[attr-defined]
    response["Payload"].read()
    return (time.perf_counter() - start) * 1000


def served_again(probes: list[tuple[float, float, bool]], since: float, run: int = 20) -> float:
    """The end of the first `run` probes in a row started after `since` and answered within 1 s (as the end-to-end
    failover test measures it)."""
    streak = 0
    for start, end, ok in probes:
        streak = streak + 1 if ok and end - start <= 1.0 and start >= since else 0
        if streak == run:
            return end
    return float("inf")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--failovers", type=int, default=3)
    args = parser.parse_args()
    kube = Kube(KUBECONFIG)
    namespace = "bench-replicas"
    kube.kubectl("create", "namespace", namespace, check=False)
    release = Release(kube, build_images(), namespace, replicas=3)
    release.install()
    try:
        key = release.admin_key()
        kube.apply(function_manifest("noop", NOOP, scaling={"idleSeconds": 600}), namespace)
        assert eventually(lambda: len(pods(kube, release)) == 3 and owner(kube, release, namespace, "noop"), 120)
        clients = {name: lambda_client(f"http://{ip}:8080", key) for name, ip in pods(kube, release).items()}
        assert eventually(lambda: owner(kube, release, namespace, "noop") in clients, 60)
        home = owner(kube, release, namespace, "noop")
        other = next(name for name in clients if name != home)
        for _ in range(50):  # warm: an instance, connections, the forwarder's pool
            timed(clients[home], "noop")
            timed(clients[other], "noop")
        direct: list[float] = []
        forwarded: list[float] = []
        for _ in range(args.rounds):
            direct += [timed(clients[home], "noop") for _ in range(args.requests)]
            forwarded += [timed(clients[other], "noop") for _ in range(args.requests)]

        def p(values: list[float], q: float) -> float:
            return statistics.quantiles(values, n=100)[int(q) - 1]

        d50, f50 = statistics.median(direct), statistics.median(forwarded)
        print(f"sync invoke at the owner        p50 {d50:.2f} ms  p99 {p(direct, 99):.2f} ms")
        print(f"sync invoke at a non-owner      p50 {f50:.2f} ms  p99 {p(forwarded, 99):.2f} ms  "
              f"({f50 / d50:.2f}x; the hop adds {f50 - d50:.2f} ms)")  # fmt: skip

        failovers: list[float] = []
        for _ in range(args.failovers):
            assert eventually(lambda: len(pods(kube, release)) == 3, 120)
            home = owner(kube, release, namespace, "noop")
            survivors = {n: ip for n, ip in pods(kube, release).items() if n != home}
            probe = lambda_client(f"http://{next(iter(survivors.values()))}:8080", key, read_timeout=60)
            probes: list[tuple[float, float, bool]] = []
            killed = 0.0
            started = time.monotonic()
            while time.monotonic() - started < 30:
                if not killed and time.monotonic() - started > 2:
                    killed = time.monotonic()
                    kube.kubectl("delete", "pod", home, "-n", release.system, "--grace-period=0", "--force")
                t0 = time.monotonic()
                try:
                    timed(probe, "noop")
                    ok = True
                except Exception:
                    ok = False
                probes.append((t0, time.monotonic(), ok))
                time.sleep(0.02)
            slow = [(start, end) for start, end, ok in probes if end >= killed and (end - start > 1 or not ok)]
            served = served_again(probes, min(start for start, _ in slow)) if slow else killed
            failovers.append(served - killed)
            print(f"failover {len(failovers)}: served again after {failovers[-1]:.1f} s, last slow probe "
                  f"{(max(end for _, end in slow) - killed) if slow else 0.0:.1f} s after the deletion "
                  f"({sum(not ok for *_, ok in probes)} probes failed of {len(probes)})")  # fmt: skip
        print(json.dumps({"owner_p50_ms": round(d50, 2), "forwarded_p50_ms": round(f50, 2),
                          "failover_s": [round(f, 1) for f in failovers]}))  # fmt: skip
    finally:
        release.uninstall()


if __name__ == "__main__":
    main()
