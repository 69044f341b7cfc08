"""Admission control: Lambda's concurrency limits, checked before an invocation is queued.

An invocation holds one unit of concurrency from acceptance until its answer, whether it is running or waiting for
a cold start. Below the caps nothing is refused (the request waits for an instance); at a cap the answer is an
immediate 429 with Lambda's Reason.
"""

from __future__ import annotations

RESERVED_LIMIT = "ReservedFunctionConcurrentInvocationLimitExceeded"
ACCOUNT_LIMIT = "ConcurrentInvocationLimitExceeded"


class Admission:
    def __init__(self, gateway_limit: int) -> None:
        self.gateway_limit = gateway_limit
        self.total = 0
        self.by_function: dict[str, int] = {}

    def resize(self, gateway_limit: int) -> None:
        """This replica's share of the gateway-wide limit changed (it owns more or fewer functions)."""
        self.gateway_limit = gateway_limit

    def try_acquire(self, function: str, reserved: int | None) -> str | None:
        """Take one unit for `function`; returns the throttle Reason instead when a cap is reached."""
        held = self.by_function.get(function, 0)
        if reserved is not None and held >= reserved:
            return RESERVED_LIMIT
        if self.total >= self.gateway_limit:
            return ACCOUNT_LIMIT
        self.by_function[function] = held + 1
        self.total += 1
        return None

    def release(self, function: str) -> None:
        held = self.by_function.get(function, 0) - 1
        if held <= 0:
            self.by_function.pop(function, None)
        else:
            self.by_function[function] = held
        self.total -= 1
