"""The agent's session in-process: invocations are never lost between the stream and the runtime's /next.

The gRPC stub is the only I/O and is never reached here: the session is not connected, so what it would send is
dropped, exactly as while the gateway is unreachable.
"""

from __future__ import annotations

import asyncio
from typing import Any

from kambda.runtime.agent import session
from kambda.runtime.rpc import runtime_pb2 as pb


class Channel:
    """What the generated stub binds its methods to when it is made (these tests never call them)."""

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return None

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:  # the warm pools' Wait
        return None


def new_session() -> session.Session:
    identity = session.Identity("default/f", "$LATEST", "i", "credential")
    return session.Session(Channel(), identity, on_stop=lambda reason: None)  # type: ignore[arg-type]


def arrival(request_id: str) -> pb.GatewayMessage:
    return pb.GatewayMessage(invocation=pb.Invocation(request_id=request_id))


async def test_an_invocation_handed_to_a_next_cancelled_in_the_same_step_is_kept() -> None:
    """The runtime's /next was cancelled (its connection died) just after the invocation was handed to it."""
    s = new_session()
    waiting = asyncio.create_task(s.next())
    await asyncio.sleep(0)  # the /next now waits
    s._dispatch(arrival("r1"))
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert waiting.cancelled()
    successor = await asyncio.wait_for(s.next(), 1)  # the next runtime gets it
    assert successor.request_id == "r1"


async def test_an_invocation_nobody_asks_for_is_declined(monkeypatch: Any) -> None:
    monkeypatch.setattr(session, "DECLINE_AFTER", 0.05)
    s = new_session()
    sent: list[pb.AgentMessage] = []

    async def send(message: pb.AgentMessage) -> None:
        sent.append(message)

    monkeypatch.setattr(s, "_send", send)
    s._dispatch(arrival("r1"))
    for _ in range(100):
        if sent:
            break
        await asyncio.sleep(0.01)
    assert [m.decline.request_id for m in sent] == ["r1"]
    assert not s._inbox
