"""The scaling decision, as a pure function of one version's state, its policy and the time.

    desired = ceil(active / per-instance concurrency), at least `provisioned`, at most the cap
    cap     = reserved concurrency, else max instances, else the gateway-wide limit
    start   = desired - (connected + starting), or the provisioned instances still missing if more (an on-demand
              instance cannot become a provisioned one: its runtime initialised as on-demand), at most `burst`
    stop    = idle instances whose idle window has passed, keeping `desired` (and provisioned) alive; an instance
              still starting counts as idle since it was asked for (a pod that never gets scheduled is withdrawn);
              provisioned instances are not in `idle_since`: they never expire
    stalled = instances whose runtime declined work it had not asked for: not capacity (so another is started
              for the work they gave back) but still instances (the cap counts them); stopped once stalled for
              the idle window, or at once when the cap leaves no room for the instance their work needs

The scaler loop (`scaler.py`) gathers the state, calls `decide` and applies the result through a backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Policy:
    provisioned: int = 0
    cap: int = 1000
    idle_seconds: float = 300.0
    burst: int = 1000
    per_instance: int = 1


@dataclass(frozen=True)
class State:
    active: int  # invocations running or queued
    connected: int  # instances connected (busy or idle)
    starting: int  # instances requested and not yet connected
    idle_since: tuple[tuple[str, float], ...] = ()  # idle or starting instances: (id, monotonic time since idle)
    stalled_since: tuple[tuple[str, float], ...] = ()  # connected but not capacity (counted in `connected`)
    provisioned: int = 0  # connected instances that are provisioned (counted in `connected`)


@dataclass(frozen=True)
class Decision:
    desired: int
    start: int = 0
    stop: tuple[str, ...] = ()


def decide(state: State, policy: Policy, now: float) -> Decision:
    cap = max(0, policy.cap)
    desired = min(cap, max(policy.provisioned, math.ceil(state.active / max(1, policy.per_instance))))
    total = state.connected + state.starting
    current = total - len(state.stalled_since)
    missing_provisioned = policy.provisioned - state.provisioned - state.starting
    start = min(max(0, desired - current, missing_provisioned), max(0, cap - total), max(0, policy.burst))
    # Idle instances beyond what is needed are kept warm until their idle window passes (execution-context
    # reuse); the oldest idle go first. Starting instances count as alive so a cold start in progress is
    # never mistaken for spare capacity to retire.
    keep = max(desired, policy.provisioned)
    removable = max(0, current - keep)
    expired = sorted(
        (since, instance_id) for instance_id, since in state.idle_since if now - since >= policy.idle_seconds
    )
    stop = tuple(instance_id for _, instance_id in expired[:removable])
    stalled = sorted((since, instance_id) for instance_id, since in state.stalled_since)
    blocked = max(0, desired - current - max(0, cap - total))  # needed, but the cap is taken (partly by stalled)
    stop += tuple(
        instance_id
        for i, (since, instance_id) in enumerate(stalled)
        if i < blocked or now - since >= policy.idle_seconds
    )
    return Decision(desired=desired, start=start, stop=stop)


def still_to_reconnect(left_running: list[str], connected: int) -> list[str]:
    """Of the instances a previous gateway left running (placeholders, for a backend that cannot name them), those
    still to come back: the agents that reconnected before this first look are among them already. Counting those
    twice kept a placeholder nobody would fill, and withdrawing it after the idle window scaled the Deployment down
    under the pod that had reconnected."""
    return left_running[connected:]
