"""The rules of function ownership among gateway replicas (gateway/ownership.py), and the Ownership state."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from kambda.gateway import ownership
from kambda.gateway.leases import Ownership, Peer
from kambda.gateway.ownership import Observed, plan

DURATION = 10.0


def lease(holder: str, changed_at: float = 0.0) -> Observed:
    return Observed(holder=holder, address="", resource_version="1", changed_at=changed_at, duration=DURATION)


def test_buckets_are_stable_and_spread() -> None:
    functions = [f"default/fn-{i}" for i in range(800)]
    buckets = [ownership.bucket_of(f, 8) for f in functions]
    assert buckets == [ownership.bucket_of(f, 8) for f in functions]
    counts = [buckets.count(b) for b in range(8)]
    assert min(counts) > 60, counts  # 100 each on average


def test_a_lone_replica_takes_every_free_bucket() -> None:
    decided = plan("a", dict.fromkeys(range(8)), {"a"}, now=0.0, mine=set())
    assert sorted(decided.take) == list(range(8)) and decided.give == ()


def test_a_replica_takes_only_its_fair_share_and_nothing_held() -> None:
    buckets: dict[int, Observed | None] = {b: (lease("a") if b < 3 else None) for b in range(8)}
    decided = plan("b", buckets, {"a", "b", "c"}, now=1.0, mine=set())
    assert len(decided.take) == 3 and not set(decided.take) & {0, 1, 2}


def test_an_expired_lease_is_free_and_a_fresh_one_is_not() -> None:
    buckets: dict[int, Observed | None] = {0: lease("dead", changed_at=0.0), 1: lease("a", changed_at=5.0)}
    assert plan("b", buckets, {"a", "b"}, now=DURATION - 0.1, mine=set()).take == ()
    assert plan("b", buckets, {"a", "b"}, now=DURATION, mine=set()).take == (0,)


def test_a_predecessors_leases_under_the_same_name_are_neither_kept_nor_taken_before_they_expire() -> None:
    """A restarted process (same pod name) holds nothing yet: what its predecessor held waits for expiry."""
    held: dict[int, Observed | None] = {b: lease("a", changed_at=0.0) for b in range(4)}
    assert plan("a", held, {"a"}, now=1.0, mine=set()) == ownership.Plan()
    assert sorted(plan("a", held, {"a"}, now=DURATION, mine=set()).take) == [0, 1, 2, 3]


def test_extras_go_back_only_to_a_member_that_has_less() -> None:
    held: dict[int, Observed | None] = {b: lease("a") for b in range(8)}
    # b has joined: a holds 8 of a fair 4 and gives back 4
    assert len(plan("a", held, {"a", "b"}, now=1.0, mine=set(range(8))).give) == 4
    # a member a does not know of yet changes nothing; nor do two members that each hold their share
    assert plan("a", held, {"a"}, now=1.0, mine=set(range(8))).give == ()
    even: dict[int, Observed | None] = {b: lease("a" if b < 4 else "b") for b in range(8)}
    assert plan("a", even, {"a", "b"}, now=1.0, mine=set(range(4))) == ownership.Plan()


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5), st.integers(1, 24), st.randoms(use_true_random=False))
def test_replicas_that_follow_the_plan_settle_with_every_bucket_owned_once(members: int, count: int, rnd) -> None:
    """Replicas step in a random order, each seeing the others' writes: in a few rounds every bucket has exactly
    one holder, each within its fair share, and another round changes nothing."""
    names = [f"r{i}" for i in range(members)]
    buckets: dict[int, Observed | None] = dict.fromkeys(range(count))
    share = ownership.fair_share(count, members)

    def round_() -> bool:
        changed = False
        for name in rnd.sample(names, len(names)):
            held = {b for b, lease_ in buckets.items() if lease_ is not None and lease_.holder == name}
            decided = plan(name, buckets, set(names), now=1.0, mine=held)
            for b in decided.give:
                buckets[b] = None
                changed = True
            for b in decided.take:
                current = buckets[b]
                if current is None or current.expired(1.0):
                    buckets[b] = lease(name, changed_at=1.0)
                    changed = True
        return changed

    for _ in range(4 * members + 4):
        if not round_():
            break
    assert not round_()
    holders = [lease_.holder for lease_ in buckets.values() if lease_ is not None]
    assert len(holders) == count
    assert all(holders.count(name) <= share for name in names)


def test_ownership_lapses_before_a_contender_could_take_the_bucket() -> None:
    now = [100.0]
    me = Peer("a", "10.0.0.1:8080", "10.0.0.1:9090")
    other = Peer("b", "10.0.0.2:8080", "10.0.0.2:9090")
    state = Ownership(me, 2, clock=lambda: now[0])
    fn = next(f"default/f{i}" for i in range(100) if ownership.bucket_of(f"default/f{i}", 2) == 0)
    seen: list[tuple[set[int], set[int]]] = []
    state.on_change(lambda gained, lost: seen.append((gained, lost)))

    async def scenario() -> None:
        state._update({1: other}, {0: 100.0}, DURATION)
        assert state.owner(fn) == me and state.is_mine(fn)
        now[0] = 100.0 + DURATION * ownership.SAFETY  # not renewed since: no longer trusted as ours
        assert not state.is_mine(fn) and state.owner(fn) is None
        assert state.share(1000) == 0

    asyncio.run(scenario())
    assert seen == [({0}, set())]


def test_a_lone_gateway_owns_everything_and_all_of_the_limit() -> None:
    state = Ownership.alone()
    assert state.is_mine("default/anything") and state.owner("ns/f") == state.me
    assert state.share(1000) == 1000


def test_the_shares_of_the_limit_add_up_to_it() -> None:
    me = Peer("a", "h:1", "h:2")
    parts = []
    for held in ({0, 1, 2}, {3, 4, 5}, {6, 7}):
        state = Ownership(me, 8, clock=lambda: 0.0)
        state._mine, state._duration = dict.fromkeys(held, 0.0), DURATION
        parts.append(state.share(1001))
    assert sum(parts) == 1001
