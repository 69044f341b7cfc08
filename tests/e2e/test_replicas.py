"""Three gateway replicas in pods on the real node, the NATS queue on a NATS JetStream beside them: any replica
serves any request (the owner of a function runs it, the others forward), limits hold across replicas, and a
replica killed under load loses only what ran on it (gateway/leases.py, placement.py, peering.py)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from kambda.gateway import ownership
from tests.e2e.conftest import Platform, host_pids, installed, lambda_client, peak_during
from tests.install import Images
from tests.kube import Kube, eventually
from tests.workdir import function_manifest

REPLICAS = 3
BUCKETS = 8  # the chart's default gateway.replicaBuckets
HTTP_PORT = 8080  # the chart's default gateway.httpPort (the container's port)


@pytest.fixture(scope="module")
def platform(kube: Kube, namespace: str, images: Images) -> Iterator[Platform]:
    with installed(kube, namespace, images, replicas=REPLICAS) as platform:
        assert eventually(lambda: settled(platform), timeout=90), leases(platform)
        yield platform


def leases(platform: Platform) -> dict[str, str]:
    """Lease name -> holder, of this release's gateway."""
    items = platform.kube.list(
        "leases", platform.release.system, f"kambda.dev/gateway-lease={platform.release.name}-gateway"
    )
    return {item["metadata"]["name"]: item["spec"].get("holderIdentity") or "" for item in items}


def gateway_pods(platform: Platform) -> dict[str, str]:
    """Running gateway pod name -> pod IP."""
    return {
        p["metadata"]["name"]: p["status"]["podIP"]  # type: ignore[index]
        for p in platform.release.pods("gateway")
        if p["status"].get("podIP") and p["status"].get("phase") == "Running"  # type: ignore[union-attr]
    }


def settled(platform: Platform) -> bool:
    """Every bucket held, by the running replicas only, each holding its fair share or one less."""
    held = leases(platform)
    pods = set(gateway_pods(platform))
    holders = Counter(held.get(f"{platform.release.name}-gateway-bucket-{b}", "") for b in range(BUCKETS))
    return len(pods) == REPLICAS and set(holders) == pods and max(holders.values()) - min(holders.values()) <= 1


def owner_of(platform: Platform, function: str) -> str:
    bucket = ownership.bucket_of(f"{platform.namespace}/{function}", BUCKETS)
    return leases(platform)[f"{platform.release.name}-gateway-bucket-{bucket}"]


def replica_clients(platform: Platform) -> dict[str, Any]:
    """A client per replica, straight to its pod (the host reaches pod IPs): requests land where the test says."""
    return {
        name: lambda_client(f"http://{ip}:{HTTP_PORT}", platform.key) for name, ip in gateway_pods(platform).items()
    }


def scrape(platform: Platform, replica: str) -> str:
    """The /metrics text of one replica, straight from its pod."""
    import urllib.request

    with urllib.request.urlopen(f"http://{gateway_pods(platform)[replica]}:{HTTP_PORT}/metrics", timeout=10) as r:
        return r.read().decode()


def metric(text: str, name: str, function: str, **labels: str) -> float:
    """Sample `name` of `function` in a /metrics text, summed over the labels not given."""
    wanted = [f'function="{function}"', *(f'{k}="{v}"' for k, v in labels.items())]
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and all(w in line for w in wanted)
    )


def placements(platform: Platform, function: str) -> dict[str, dict[str, float]]:
    """Per replica, of `function`: invocations it accepted and ran itself ("here") or forwarded ("forwarded")
    (kambda_invocation_placements), and invocations it ran, whoever accepted them ("ran", kambda_invocations)."""
    out: dict[str, dict[str, float]] = {}
    for name in gateway_pods(platform):
        text = scrape(platform, name)
        out[name] = {
            "here": metric(text, "kambda_invocation_placements_total", function, placement="here"),
            "forwarded": metric(text, "kambda_invocation_placements_total", function, placement="forwarded"),
            "ran": metric(text, "kambda_invocations_total", function),
        }
    return out


def connected_and_started(platform: Platform, replica: str, function: str) -> tuple[float, float]:
    """Instances of `function` connected to `replica` now, and how many it has asked a backend for so far."""
    text = scrape(platform, replica)
    connected = sum(metric(text, "kambda_instances", function, state=s) for s in ("idle", "busy", "stalled"))
    return connected, metric(text, "kambda_instances_started_total", function)


def deploy(platform: Platform, name: str, code: str, **spec: Any) -> None:
    platform.apply(function_manifest(name, code, **spec))
    assert eventually(lambda: platform.ready(name, "1"), timeout=60), platform.operator_logs()
    platform.wait_served(name)


SPREAD = "import socket\n\ndef handler(event, context):\n    return {'i': event.get('i'), 'at': socket.gethostname()}\n"


def test_1_any_replica_serves_and_2000_invocations_all_succeed(platform: Platform) -> None:
    deploy(platform, "spread", SPREAD, scaling={"idleSeconds": 60})
    clients = replica_clients(platform)
    assert len(clients) == REPLICAS
    names = sorted(clients)
    before = placements(platform, "spread")

    def call(i: int) -> int:
        client = clients[names[i % REPLICAS]]  # a third of them on each replica
        response = client.invoke(FunctionName="spread", Payload=json.dumps({"i": i}))
        body = json.loads(response["Payload"].read())
        assert "FunctionError" not in response, body
        return int(body["i"])

    with ThreadPoolExecutor(8) as pool:
        answered = list(pool.map(call, range(2000)))
    assert answered == list(range(2000))

    after = placements(platform, "spread")
    ran = {n: after[n]["ran"] - before.get(n, {}).get("ran", 0) for n in after}
    sent_on = {n: after[n]["forwarded"] - before.get(n, {}).get("forwarded", 0) for n in after}
    owner = owner_of(platform, "spread")
    # One owner ran all 2,000; each other replica forwarded its third to it.
    assert ran == {n: (2000.0 if n == owner else 0.0) for n in names}, (ran, owner)
    assert all(sent_on[n] >= 666 for n in names if n != owner), sent_on
    # The owner's agents: every pod of the function is connected to it, so the others scaled nothing.
    assert platform.pods("spread", "1")
    # A payload near Lambda's 6 MB limit, through each replica: the forwarded hop and the agent's stream to the
    # owner (a redirected one) carry it whole.
    big = json.dumps({"i": -1, "pad": "x" * (5 * 1024 * 1024)})
    for client in clients.values():
        response = client.invoke(FunctionName="spread", Payload=big)
        assert json.loads(response["Payload"].read())["i"] == -1 and "FunctionError" not in response


CAPPED = """\
import time

def handler(event, context):
    started = time.time()
    time.sleep(1)
    return {'start': started, 'end': time.time()}
"""


def test_2_reserved_concurrency_holds_across_replicas(platform: Platform) -> None:
    deploy(platform, "capped3", CAPPED, concurrency={"reserved": 3}, scaling={"idleSeconds": 30})
    clients = list(replica_clients(platform).values())

    def call(i: int) -> tuple[float, float] | str:
        try:
            response = clients[i % len(clients)].invoke(FunctionName="capped3", Payload=b"{}")
        except clients[0].exceptions.TooManyRequestsException as exc:
            return str(exc.response["Reason"])
        body = json.loads(response["Payload"].read())
        return float(body["start"]), float(body["end"])

    def burst() -> list[tuple[float, float] | str]:
        with ThreadPoolExecutor(30) as pool:
            return list(pool.map(call, range(30)))

    results, peak_pods = peak_during(lambda: len(platform.pods("capped3")), burst)
    runs = [r for r in results if isinstance(r, tuple)]
    refused = [r for r in results if isinstance(r, str)]
    assert runs and refused, results
    assert set(refused) == {"ReservedFunctionConcurrentInvocationLimitExceeded"}
    # At most 3 executions at any moment, from the function's own clock.
    edges = sorted([(start, 1) for start, _ in runs] + [(end, -1) for _, end in runs], key=lambda e: (e[0], e[1]))
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    assert most <= 3, runs
    assert peak_pods <= 3 and platform.replicas("capped3", "1") <= 3


# Events go to a function of their own with few instances: every replica's deliverer takes up to 64 at once, and
# unbounded they would start a pod each on this 2-core node.
SINK_SCALING = {"idleSeconds": 30, "maxInstances": 4}


def test_3_async_events_accepted_by_every_replica_are_all_delivered(platform: Platform) -> None:
    deploy(platform, "sink", SPREAD, scaling=SINK_SCALING)
    clients = list(replica_clients(platform).values())

    def send(i: int) -> str:
        response = clients[i % len(clients)].invoke(
            FunctionName="sink", InvocationType="Event", Payload=json.dumps({"i": i})
        )
        assert response["StatusCode"] == 202
        return str(response["ResponseMetadata"]["RequestId"])

    with ThreadPoolExecutor(8) as pool:
        request_ids = list(pool.map(send, range(300)))

    def delivered() -> bool:
        return all(platform.api_get(f"/v1/invocations/{rid}")["State"] == "succeeded" for rid in request_ids)

    assert eventually(delivered, timeout=120, interval=1.0), platform.gateway_logs()[-4000:]


def test_4_scaling_from_and_to_zero_has_one_writer(platform: Platform) -> None:
    deploy(platform, "bursty", CAPPED, scaling={"idleSeconds": 5})
    assert platform.replicas("bursty", "1") == 0
    clients = list(replica_clients(platform).values())

    def call(i: int) -> str:
        response = clients[i % len(clients)].invoke(FunctionName="bursty", Payload=b"{}")
        return "error" if "FunctionError" in response else "ok"

    def burst() -> list[str]:
        with ThreadPoolExecutor(6) as pool:  # a demand of 6, sent to all three replicas
            return list(pool.map(call, range(6)))

    results, peak_replicas = peak_during(lambda: platform.replicas("bursty", "1"), burst)
    assert results == ["ok"] * 6
    assert 1 <= peak_replicas <= 6  # never beyond the demand, however many replicas saw it
    assert eventually(lambda: platform.replicas("bursty", "1") == 0 and not platform.pods("bursty"), timeout=90)

    # The API server's view: every write of the scale came from one replica, the owner.
    writes = [w for w in platform.kube.scale_writes(platform.namespace, "bursty-v1")
              if (w.get("responseStatus") or {}).get("code", 200) < 300]  # fmt: skip
    assert len(writes) >= 2, writes  # up, and back down to zero
    sources = {w["sourceIPs"][0] for w in writes}
    assert sources == {gateway_pods(platform)[owner_of(platform, "bursty")]}, sources


def served_again(results: list[tuple[float, float, str]], since: float, run: int = 20) -> float:
    """The end of the first `run` requests in a row started after `since` that were each answered within 1 s: when
    a function is served normally again. Infinity if never."""
    after = sorted((r for r in results if r[1] >= since), key=lambda r: r[0])
    streak = 0
    for start, end, outcome in after:
        streak = streak + 1 if outcome == "ok" and end - start <= 1.0 and start >= since else 0
        if streak == run:
            return end
    return float("inf")


class Load:
    """Sync invocations of `function` through the Service at a fixed concurrency until stopped, as a client with the
    SDK's standard retries sends them; every request's start, end and outcome is kept."""

    def __init__(self, platform: Platform, function: str, concurrency: int = 8) -> None:
        self.client = lambda_client(platform.url, platform.key, attempts=3, read_timeout=60)
        self.function = function
        self.results: list[tuple[float, float, str]] = []  # (start, end, "ok" or the error)
        self.retried = 0  # requests that succeeded only on an SDK retry (reported, not hidden)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(concurrency)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                response = self.client.invoke(FunctionName=self.function, Payload=b'{"i": 1}')
                outcome = "FunctionError" if "FunctionError" in response else "ok"
                response["Payload"].read()
                if response["ResponseMetadata"].get("RetryAttempts"):
                    self.retried += 1
            except Exception as exc:  # a failed request is what this counts
                outcome = f"{type(exc).__name__}: {exc}"
            self.results.append((start, time.monotonic(), outcome))

    def failures(self) -> list[tuple[float, float, str]]:
        return [r for r in self.results if r[2] != "ok"]


def test_5_a_rolling_upgrade_under_load_fails_no_request(platform: Platform) -> None:
    deployment = f"deployment/{platform.release.name}-gateway"
    system = platform.release.system
    deploy(platform, "spread", SPREAD, scaling={"idleSeconds": 60})
    before = set(gateway_pods(platform))
    with Load(platform, "spread") as load:
        assert eventually(lambda: len(load.results) > 50, timeout=30)  # under load before the upgrade starts
        started = time.monotonic()
        platform.kube.kubectl("rollout", "restart", deployment, "-n", system)
        platform.kube.kubectl("rollout", "status", deployment, "-n", system, "--timeout=300s", timeout=320)
        print(f"rollout of {REPLICAS} replicas: {time.monotonic() - started:.0f} s")
        assert eventually(lambda: settled(platform) and not set(gateway_pods(platform)) & before, timeout=120)
        count = len(load.results)
        assert eventually(lambda: len(load.results) > count + 50, timeout=30)  # and still served after it
    print(f"rolling upgrade: {len(load.results)} requests at concurrency 8, {len(load.failures())} failed, "
          f"{load.retried} answered on an SDK retry")  # fmt: skip
    assert load.failures() == [], load.failures()[:5]


@pytest.mark.parametrize("how", ["force-deleted", "crashed"])
def test_6_the_owner_lost_under_load_loses_only_its_in_flight_requests(platform: Platform, how: str) -> None:
    """force-deleted: `kubectl delete pod --grace-period=0 --force`, its network namespace gone with it (no FIN
    reaches its agents or peers). crashed: first a SIGKILL of its process (nothing handed over, its leases must
    expire), then the same deletion, so it does not come back in the same pod."""
    deploy(platform, "spread", SPREAD, scaling={"idleSeconds": 60})
    deploy(platform, "sink", SPREAD, scaling=SINK_SCALING)
    owner = owner_of(platform, "spread")
    async_client = lambda_client(platform.url, platform.key, attempts=3)
    acked: list[str] = []
    sending = threading.Event()

    unacked: list[str] = []  # sends that got no 202 (the producer sends those again, as a real one would)

    def send_events() -> None:
        for i in range(1000):
            if i == 500:
                sending.set()  # half before the kill, half across and after it
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    response = async_client.invoke(
                        FunctionName="sink", InvocationType="Event", Payload=json.dumps({"i": i})
                    )
                except Exception as exc:  # never acknowledged: nothing was promised, so it is sent again
                    unacked.append(f"{type(exc).__name__}: {exc}")
                    continue
                assert response["StatusCode"] == 202
                acked.append(str(response["ResponseMetadata"]["RequestId"]))
                break

    with Load(platform, "spread") as load:
        assert eventually(lambda: len(load.results) > 50, timeout=30)
        function_pods = {p["metadata"]["name"] for p in platform.pods("spread", "1")}
        started_before = {r: connected_and_started(platform, r, "spread")[1] for r in gateway_pods(platform)}
        sender = threading.Thread(target=send_events)
        sender.start()
        assert sending.wait(120)
        pids = host_pids("kambda", "gateway", f"--identity={owner}")
        assert len(pids) == 1, pids
        killed = time.monotonic()
        if how == "crashed":
            os.kill(pids[0], signal.SIGKILL)
        platform.kube.kubectl("delete", "pod", owner, "-n", platform.release.system, "--grace-period=0", "--force")
        assert eventually(lambda: time.monotonic() - killed > 20, timeout=30)  # 20 s of load across the kill
        sender.join()
    failures = load.failures()
    in_flight = [r for r in load.results if r[0] <= killed <= r[1]]
    # Recovery: from the kill until the function is served again — the end of the first run of 20 requests in a
    # row, all answered within 1 s. (A later blip, when the replacement replica joins and takes over its share of
    # the buckets in a planned hand-over, is reported as the last disturbance, not as the failover.)
    slow = [(start, end) for start, end, ok in load.results if end >= killed and (end - start > 1 or ok != "ok")]
    # Counted from the first request the loss held up (a deleted pod may serve a moment longer), to the first run
    # of normal answers after it.
    recovery = (served_again(load.results, min(start for start, _ in slow)) - killed) if slow else 0.0
    last = (max(end for _, end in slow) - killed) if slow else 0.0
    print(f"failover ({how}): {len(failures)} failed of {len(load.results)}, {len(in_flight)} in flight at the kill, "
          f"{load.retried} answered on an SDK retry, served again after {recovery:.1f} s (last slow request "
          f"{last:.1f} s after it); {len(unacked)} event sends unacknowledged and sent again")  # fmt: skip
    assert len(failures) <= len(in_flight), failures[:5]
    assert recovery <= 15.0, recovery
    assert owner not in gateway_pods(platform)
    # The function's pods outlived their owner: their agents reconnected to the new one, which serves with them
    # (it has more instances connected than it started since the kill).
    new_owner = owner_of(platform, "spread")
    assert new_owner != owner
    surviving = function_pods & {p["metadata"]["name"] for p in platform.pods("spread", "1")}
    assert surviving, function_pods

    def reconnected() -> bool:
        connected, started = connected_and_started(platform, new_owner, "spread")
        return connected > started - started_before.get(new_owner, 0.0)  # a new replica may be the new owner

    assert eventually(reconnected, timeout=30), (connected_and_started(platform, new_owner, "spread"), surviving)
    # Every event the platform acknowledged is delivered, the dead replica's claimed ones included.
    assert len(acked) == 1000

    pending = list(acked)

    def delivered() -> bool:
        pending[:] = [rid for rid in pending if platform.api_get(f"/v1/invocations/{rid}")["State"] != "succeeded"]
        return not pending

    def undelivered() -> str:
        statuses = [platform.api_get(f"/v1/invocations/{rid}") for rid in pending[:200]]
        return f"{len(pending)} not delivered: {Counter(s['State'] for s in statuses)}; e.g. {statuses[:3]}"

    assert eventually(delivered, timeout=180, interval=2.0), undelivered() + platform.gateway_logs()[-3000:]
