from __future__ import annotations

from kambda.gateway.admission import ACCOUNT_LIMIT, RESERVED_LIMIT, Admission


def test_reserved_limit_is_per_function() -> None:
    a = Admission(gateway_limit=100)
    assert [a.try_acquire("f", 2) for _ in range(3)] == [None, None, RESERVED_LIMIT]
    assert a.try_acquire("g", 2) is None
    a.release("f")
    assert a.try_acquire("f", 2) is None


def test_gateway_limit() -> None:
    a = Admission(gateway_limit=2)
    assert [a.try_acquire(f, None) for f in "abc"] == [None, None, ACCOUNT_LIMIT]
    a.release("a")
    assert a.total == 1 and a.try_acquire("c", None) is None


def test_reserved_zero_disables() -> None:
    assert Admission(10).try_acquire("f", 0) == RESERVED_LIMIT
