"""Where an invocation goes among replicas (gateway/placement.py), in-process: the owners are an Ownership state
set as its LeaseKeeper would set it, the other replicas a Forwarder double that records where it was sent."""

from __future__ import annotations

import asyncio

import pytest

from kambda.gateway.admission import Admission
from kambda.gateway.dispatching import Dispatcher, Invocation, Outcome
from kambda.gateway.invoking import Invoker
from kambda.gateway.leases import Ownership, Peer
from kambda.gateway.metrics import Metrics
from kambda.gateway.placement import NoOwner, NotOwner, NotYet, Placement
from kambda.gateway.registry import FunctionVersion
from tests.unit.test_dispatching import version

ME = Peer("me", "10.0.0.1:8080", "10.0.0.1:9090")
B = Peer("b", "10.0.0.2:8080", "10.0.0.2:9090")
C = Peer("c", "10.0.0.3:8080", "10.0.0.3:9090")


class Forwarder:
    def __init__(self, refuse: set[str] | None = None) -> None:
        self.sent: list[str] = []
        self._refuse = refuse or set()

    async def run(self, peer: Peer, version: FunctionVersion, invocation: Invocation) -> Outcome:
        self.sent.append(peer.identity)
        if peer.identity in self._refuse:
            raise NotOwner(f"{peer.identity} does not own it")
        return Outcome(b'"ok"', None)


def setup(forwarder: Forwarder, wait: float = 5.0) -> tuple[Ownership, Placement, FunctionVersion]:
    state = Ownership(ME, 1)
    metrics = Metrics()
    invoker = Invoker(Dispatcher(on_demand=lambda key: None), metrics, Admission(10))
    return state, Placement(state, invoker, forwarder, metrics, wait=wait), version()


def owners(state: Ownership, peer: Peer | None) -> None:
    state._update({0: peer} if peer is not None else {}, {}, 10.0)


def invocation() -> Invocation:
    return Invocation(request_id="r", payload=b"{}", invoked_arn="arn")


async def test_a_function_owned_elsewhere_is_forwarded_to_its_owner() -> None:
    forwarder = Forwarder()
    state, placement, fv = setup(forwarder)
    owners(state, B)
    assert (await placement.run(fv, invocation())).payload == b'"ok"'
    assert forwarder.sent == ["b"]


async def test_a_refusal_goes_straight_to_an_owner_already_known_to_be_new() -> None:
    forwarder = Forwarder(refuse={"b"})
    state, placement, fv = setup(forwarder, wait=0.5)
    owners(state, B)
    original = forwarder.run

    async def run_and_move(peer: Peer, version: FunctionVersion, inv: Invocation) -> Outcome:
        if peer.identity == "b":
            owners(state, C)  # the owners changed while the forward was on its way
        return await original(peer, version, inv)

    forwarder.run = run_and_move  # type: ignore[method-assign]
    await asyncio.wait_for(placement.run(fv, invocation()), 0.2)  # no wait for a change it already saw
    assert forwarder.sent == ["b", "c"]


async def test_unrelated_changes_of_owners_do_not_use_up_the_wait_for_one() -> None:
    forwarder = Forwarder()
    state, placement, fv = setup(forwarder)
    owners(state, None)
    running = asyncio.create_task(placement.run(fv, invocation()))
    for i in range(3 * 10):  # more changes than the attempts allowed, none of them naming an owner
        state._update({1 + i: B}, {}, 10.0)
        await asyncio.sleep(0)
    assert not running.done()
    owners(state, C)
    assert (await asyncio.wait_for(running, 1.0)).payload == b'"ok"'
    assert forwarder.sent == ["c"]


async def test_no_owner_within_the_wait_is_no_owner() -> None:
    state, placement, fv = setup(Forwarder(), wait=0.2)
    owners(state, None)
    with pytest.raises(NoOwner):
        await placement.run(fv, invocation())


async def test_owners_that_keep_refusing_are_given_up_on() -> None:
    forwarder = Forwarder(refuse={"b"})
    state, placement, fv = setup(forwarder, wait=0.3)
    owners(state, B)
    with pytest.raises(NoOwner):
        await placement.run(fv, invocation())
    # Refused, waited the whole window for the owners to change, asked once more after it, and gave up.
    assert forwarder.sent == ["b", "b"]


async def test_an_owner_that_does_not_know_the_version_yet_is_asked_again_shortly() -> None:
    forwarder = Forwarder()
    state, placement, fv = setup(forwarder, wait=20.0)
    owners(state, B)
    original = forwarder.run
    calls = [0]

    async def behind_once(peer: Peer, version: FunctionVersion, inv: Invocation) -> Outcome:
        calls[0] += 1
        if calls[0] == 1:
            forwarder.sent.append(peer.identity)
            raise NotYet("version 1 is not known here")
        return await original(peer, version, inv)

    forwarder.run = behind_once  # type: ignore[method-assign]
    # Not a wait for the owners to change (they do not): asked again within a moment.
    await asyncio.wait_for(placement.run(fv, invocation()), 2.0)
    assert forwarder.sent == ["b", "b"]
