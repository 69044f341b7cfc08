"""Writes on a gRPC stream, which allows one outstanding write at a time (else GRPC_CALL_ERROR_TOO_MANY_OPERATIONS).

Both ends of the runtime interface write to one stream from several tasks (an assignment, a Stop, a result, a
Decline), so writes queue on a lock. A write is always finished, even when the task that asked for it is cancelled:
a gRPC write cancelled half-way cancels the whole call, which would take down a stream another task still uses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def write_whole(
    lock: asyncio.Lock,
    write: Callable[[], Awaitable[None]],
    *,
    on_failure: Callable[[BaseException], None] = lambda exc: None,
) -> None:
    """Run `write()` alone and to its end; a failure is reported to `on_failure` and raised."""
    async with lock:
        task = asyncio.ensure_future(write())
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                await asyncio.wait([task])  # finish it under the lock, then let the cancellation through
            if not task.cancelled() and task.exception() is not None:
                on_failure(task.exception())  # type: ignore[arg-type]
            raise
        except Exception as exc:
            on_failure(exc)
            raise
