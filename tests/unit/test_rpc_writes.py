"""The gateway's writes on one runtime stream: one at a time, and a failed write ends the stream.

gRPC refuses a second outstanding write on a call (GRPC_CALL_ERROR_TOO_MANY_OPERATIONS): a response that triggered
the next assignment while a Stop was being written once broke the stream, and its instance ran on unseen.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kambda.gateway import rpc
from kambda.runtime.rpc import runtime_pb2 as pb


class OneWriteAtATime:
    """A servicer context that fails like gRPC when a second write starts before the first completed."""

    def __init__(self, *, fail_on: int | None = None) -> None:
        self.writing = False
        self.written: list[pb.GatewayMessage] = []
        self.fail_on = fail_on

    async def write(self, message: pb.GatewayMessage) -> None:
        if self.writing:
            raise RuntimeError("GRPC_CALL_ERROR_TOO_MANY_OPERATIONS")
        self.writing = True
        try:
            await asyncio.sleep(0.01)
            if self.fail_on is not None and len(self.written) == self.fail_on:
                raise ConnectionError("stream broken")
            self.written.append(message)
        finally:
            self.writing = False


def stop(reason: str) -> pb.GatewayMessage:
    return pb.GatewayMessage(stop=pb.Stop(reason=reason))


async def test_concurrent_writes_are_serialised() -> None:
    context: Any = OneWriteAtATime()
    write = rpc._serialised_writer(context)
    await asyncio.gather(*(write(stop(str(i))) for i in range(5)))
    assert [m.stop.reason for m in context.written] == ["0", "1", "2", "3", "4"]


async def test_a_failed_write_ends_the_stream() -> None:
    context: Any = OneWriteAtATime(fail_on=0)

    async def session() -> None:
        write = rpc._serialised_writer(context)
        with pytest.raises(ConnectionError):
            await write(stop("first"))
        await asyncio.sleep(10)  # the servicer would go on reading the agent's messages

    task = asyncio.create_task(session())
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert task.cancelled()
