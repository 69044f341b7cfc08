"""Function ownership among gateway replicas, kept in Leases on the real API server (gateway/leases.py): every
bucket gets exactly one owner, a dead replica's buckets move after the lease duration (and it stops trusting them
first), a stopping replica's move at once, and contenders racing for the same buckets never both own one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from kubernetes_asyncio import client, config

from kambda.gateway import ownership
from kambda.gateway.leases import LeaseKeeper, Ownership, Peer
from tests.kube import Kube

BUCKETS = 8
DURATION = 2.0  # where the test waits for leases to expire
SETTLED = 8.0  # where it checks that all buckets are held after several sequential steps (a busy API server)


@pytest.fixture
async def api(kube: Kube) -> AsyncIterator[client.ApiClient]:
    await config.load_kube_config(config_file=kube.kubeconfig)
    async with client.ApiClient() as api:
        yield api


def replica(
    api: client.ApiClient, namespace: str, prefix: str, name: str, duration: float = DURATION
) -> tuple[Ownership, LeaseKeeper]:
    state = Ownership(Peer(name, f"10.0.0.{len(name)}:8080", f"10.0.0.{len(name)}:9090"), BUCKETS)
    return state, LeaseKeeper(api, namespace, prefix, state, duration=duration)


def assert_one_owner_each(states: list[Ownership]) -> None:
    held = [state.held() for state in states]
    for i, mine in enumerate(held):
        for other in held[i + 1 :]:
            assert not mine & other, held
    assert set().union(*held) == set(range(BUCKETS)), held


async def settle(keepers: list[LeaseKeeper], rounds: int = 6) -> None:
    for _ in range(rounds):
        for keeper in keepers:
            await keeper.step()


async def test_three_replicas_share_every_bucket_and_agree_on_the_owners(api: client.ApiClient, namespace: str) -> None:
    replicas = [replica(api, namespace, "share", name, SETTLED) for name in ("a", "bb", "ccc")]
    states, keepers = [s for s, _ in replicas], [k for _, k in replicas]
    await settle(keepers)
    assert_one_owner_each(states)
    assert sorted(len(s.held()) for s in states) == [2, 3, 3]
    for function in (f"{namespace}/fn-{i}" for i in range(20)):
        owners = {(s.owner(function) or Peer("none", "", "")).identity for s in states}
        assert len(owners) == 1 and owners != {"none"}, owners
    leases = await client.CoordinationV1Api(api).list_namespaced_lease(namespace)
    names = {lease.metadata.name for lease in leases.items}
    assert {f"share-bucket-{b}" for b in range(BUCKETS)} | {"share-member-a", "share-member-bb"} <= names


async def test_a_dead_replicas_buckets_move_after_the_lease_duration(api: client.ApiClient, namespace: str) -> None:
    replicas = [replica(api, namespace, "dead", name) for name in ("a", "bb", "ccc")]
    states, keepers = [s for s, _ in replicas], [k for _, k in replicas]
    await settle(keepers)
    dead_state, survivors = states[0], states[1:]
    lost = dead_state.held()
    assert lost
    died = time.monotonic()  # a renews no more
    taken_at = None
    while time.monotonic() - died < 5 * DURATION:
        for keeper in keepers[1:]:
            await keeper.step()
        held_by_survivors = set().union(*(s.held() for s in survivors))
        if lost <= held_by_survivors:
            taken_at = time.monotonic()
            break
        assert not lost & held_by_survivors or dead_state.held() == set(), "taken while the dead one trusted it"
        await asyncio.sleep(DURATION / 10)
    assert taken_at is not None, "the dead replica's buckets were never taken over"
    # Nobody took them before the lease had run out; the dead one had stopped counting them as its own before.
    assert taken_at - died >= DURATION * ownership.SAFETY
    assert taken_at - died <= DURATION + 2 * keepers[1].interval + 1.0
    assert dead_state.held() == set()
    assert_one_owner_each(survivors)


async def test_a_stopping_replica_hands_over_at_once(api: client.ApiClient, namespace: str) -> None:
    replicas = [replica(api, namespace, "stop", name, SETTLED) for name in ("a", "bb")]
    states, keepers = [s for s, _ in replicas], [k for _, k in replicas]
    await settle(keepers)
    lost: list[set[int]] = []
    states[0].on_change(lambda gained, gone: lost.append(gone))
    given = states[0].held()
    assert given
    released = time.monotonic()
    await keepers[0].release()
    assert lost == [given] and states[0].held() == set()
    await keepers[1].step()  # sees the member gone and the buckets free: takes them, no expiry to wait for
    assert states[1].held() == set(range(BUCKETS))
    assert time.monotonic() - released < SETTLED * ownership.SAFETY
    # The one that left keeps observing: it now knows where to forward.
    await keepers[0].step()
    assert states[0].owner(f"{namespace}/any") == states[1].me


async def test_contenders_never_both_own_a_bucket(api: client.ApiClient, namespace: str) -> None:
    replicas = [replica(api, namespace, "race", name, SETTLED) for name in ("a", "bb", "ccc", "dddd")]
    states, keepers = [s for s, _ in replicas], [k for _, k in replicas]
    for _ in range(8):  # all at once: every create and takeover races the others
        await asyncio.gather(*(keeper.step() for keeper in keepers))
        held = [s.held() for s in states]
        for i, mine in enumerate(held):
            for other in held[i + 1 :]:
                assert not mine & other, held
    assert_one_owner_each(states)


async def test_a_replica_with_another_bucket_count_takes_nothing(api: client.ApiClient, namespace: str) -> None:
    """With another count a function hashes to another bucket: two replicas could both own it. The newcomer waits."""
    state, keeper = replica(api, namespace, "count", "a", SETTLED)
    await settle([keeper])
    assert state.held() == set(range(BUCKETS))
    other = Ownership(Peer("bb", "10.0.0.9:8080", "10.0.0.9:9090"), BUCKETS * 2)
    other_keeper = LeaseKeeper(api, namespace, "count", other, duration=SETTLED)
    for _ in range(3):  # buckets 8-15 of its count are free: only the disagreement stops it from taking them
        await other_keeper.step()
        await keeper.step()
    assert other.held() == set() and state.held() == set(range(BUCKETS))


async def test_the_member_lease_of_a_replica_gone_for_good_is_deleted(api: client.ApiClient, namespace: str) -> None:
    replicas = [replica(api, namespace, "gone", name) for name in ("a", "bb")]
    keepers = [k for _, k in replicas]
    await settle(keepers)
    leases = client.CoordinationV1Api(api)

    async def members() -> set[str]:
        listed = await leases.list_namespaced_lease(namespace)
        return {item.metadata.name for item in listed.items if item.metadata.name.startswith("gone-member-")}

    assert await members() == {"gone-member-a", "gone-member-bb"}
    died = time.monotonic()  # "a" stops renewing; "bb" goes on
    while "gone-member-a" in await members():
        assert time.monotonic() - died < (leases_gone_after() + 2) * DURATION, "never collected"
        await keepers[1].step()
        await asyncio.sleep(DURATION / 4)
    assert time.monotonic() - died >= leases_gone_after() * DURATION * 0.9
    assert await members() == {"gone-member-bb"}


def leases_gone_after() -> float:
    from kambda.gateway.leases import GONE_AFTER

    return float(GONE_AFTER)
