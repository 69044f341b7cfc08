"""The replicated event queue: NATS JetStream, for gateways that run as several replicas.

- Events: a work-queue stream (`KAMBDA_EVENTS`, subject `kambda.events.<function>`) consumed through one durable
  pull consumer shared by every gateway, so each event goes to one of them. A message carries the whole event,
  counters included. Rescheduling publishes the updated event and then acknowledges the old message; an event that
  is not due yet is handed back with `nak(delay)`. While an event is delivered its message is kept leased with
  `in_progress()`; a gateway that dies stops doing that, and the event is redelivered after `lease_seconds`.
- Statuses: a key-value bucket whose TTL is the result retention and whose `max_bytes` (discarding the oldest
  statuses) is its size budget; the server enforces both. The limits are applied to an existing bucket at open and
  whenever the retention passed to `purge` differs. A status rewritten as its event progresses moves to the end, so
  what is discarded first are statuses of long-finished events; only a status older than every other one in a full
  bucket — a `queued` event that waited longer than the bucket's whole turnover — can go while its event still
  waits (the event itself is safe in the work queue, and its next state writes the status again).
  Dead letters: a key-value bucket without limits.

The NATS server must accept messages of a few MiB (`max_payload`), as events carry payloads of up to 1 MiB and
destination records carry the function's response.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import KeyNotFoundError, NoKeysError, NotFoundError
from nats.js.kv import KeyValue

from .. import retention as limits
from ..queueing import (
    FAILED,
    QUEUED,
    RUNNING,
    DeadLetter,
    Event,
    FunctionQueueStats,
    QueueStats,
    Status,
    decode_event,
    encode,
)
from ..retention import Retention

STREAM = "KAMBDA_EVENTS"
SUBJECT = "kambda.events"
CONSUMER = "kambda-deliverer"
STATUS_BUCKET = "kambda_status"
DEAD_BUCKET = "kambda_dlq"
FETCH_WAIT = 1.0  # a claim waits this long for new events (they arrive at once when published)


class JetStreamQueue:
    blocking_claim = True

    def __init__(
        self,
        url: str,
        *,
        lease_seconds: float = 30.0,
        status_retention: float = 24 * 3600.0,
        status_max_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self._url = url
        self._lease = lease_seconds
        self._retention = Retention(status_retention, status_max_bytes)
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._statuses: KeyValue | None = None
        self._dead: KeyValue | None = None
        self._leased: dict[str, Msg] = {}  # request id -> the message being delivered
        self._keeper: asyncio.Task[None] | None = None

    @property
    def js(self) -> JetStreamContext:
        assert self._js is not None, "queue not open"
        return self._js

    async def open(self) -> None:
        self._nc = await nats.connect(self._url, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
        self._js = self._nc.jetstream()
        config = api.StreamConfig(
            name=STREAM,
            subjects=[f"{SUBJECT}.>"],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE,
            duplicate_window=120,
        )
        try:
            await self.js.stream_info(STREAM)
        except NotFoundError:
            await self.js.add_stream(config)
        self._sub = await self.js.pull_subscribe(
            f"{SUBJECT}.>",
            durable=CONSUMER,
            stream=STREAM,
            config=api.ConsumerConfig(
                ack_policy=api.AckPolicy.EXPLICIT, ack_wait=self._lease, max_deliver=-1, max_ack_pending=100_000
            ),
        )
        self._statuses = await self._bucket(STATUS_BUCKET, ttl=self._retention.max_age)
        await self._limit_statuses(self._retention)
        self._dead = await self._bucket(DEAD_BUCKET, ttl=None)
        self._keeper = asyncio.create_task(self._keep_leases())

    async def _bucket(self, name: str, ttl: float | None) -> KeyValue:
        try:
            return await self.js.key_value(name)
        except NotFoundError:
            return await self.js.create_key_value(bucket=name, ttl=ttl, history=1)

    async def _limit_statuses(self, retention: Retention) -> None:
        """Give the status bucket's stream the limits of `retention`, if it has others (an older or new bucket)."""
        stream = f"KV_{STATUS_BUCKET}"
        config = (await self.js.stream_info(stream)).config
        current = limits.BucketLimits(
            max_age=config.max_age or 0.0,
            max_bytes=config.max_bytes if config.max_bytes is not None else -1,
            discard_old=config.discard == api.DiscardPolicy.OLD,
            duplicate_window=config.duplicate_window,
        )
        wanted = limits.status_bucket_limits(current, retention)
        if wanted is not None:
            await self.js.update_stream(
                config.evolve(
                    max_age=wanted.max_age,
                    max_bytes=wanted.max_bytes,
                    discard=api.DiscardPolicy.OLD,
                    duplicate_window=wanted.duplicate_window,
                )
            )
        self._retention = retention

    async def close(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        if self._nc is not None:
            await self._nc.close()  # not drain(): the deliverer has stopped, a pending fetch has nobody to serve
            self._nc = None

    async def _keep_leases(self) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            for msg in list(self._leased.values()):
                with contextlib.suppress(Exception):
                    await msg.in_progress()

    # ---- writes ----------------------------------------------------------------------------------------------

    async def _publish(self, event: Event) -> None:
        # Identical publishes of one state are deduplicated by the server; any change of state is a new message.
        e = event
        msg_id = f"{e.request_id}:{e.enqueued_at}:{e.attempts}:{e.retries}:{e.throttles}:{e.not_before}"
        await self.js.publish(f"{SUBJECT}.{e.function}", encode(e), headers={"Nats-Msg-Id": msg_id})

    async def _put_status(self, status: Status) -> None:
        assert self._statuses is not None
        await self._statuses.put(status.request_id, encode(status))

    async def enqueue(self, event: Event) -> None:
        now = time.time()
        status = Status(event.request_id, event.function, event.qualifier, QUEUED, event.enqueued_at, now)
        # The status first, the event after it: once the event is published another replica may deliver it and
        # write `running` and `succeeded` at once, and a `queued` still on its way (written concurrently, as it
        # once was) then overwrote them for good. Ordered, every later state is written after this one is stored.
        await self._put_status(status)
        try:
            await self._publish(event)
        except BaseException:
            with contextlib.suppress(Exception):  # never queued: no status saying it is
                await self._statuses.delete(event.request_id)  # type: ignore[union-attr]
            raise

    async def claim(self, limit: int, now: float) -> list[Event]:
        assert self._sub is not None
        if limit <= 0:
            return []
        try:
            messages = await self._sub.fetch(batch=limit, timeout=FETCH_WAIT)
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        due: list[Event] = []
        for msg in messages:
            event = decode_event(msg.data)
            if event.not_before > now:
                await msg.nak(delay=event.not_before - now)
                continue
            self._leased[event.request_id] = msg
            due.append(event)
        await asyncio.gather(
            *(self._put_status(Status(e.request_id, e.function, e.qualifier, RUNNING, e.enqueued_at, now)) for e in due)
        )
        return due

    def next_due(self) -> float | None:
        return None  # the server holds not-yet-due events back itself (nak with delay)

    async def _release(self, event: Event) -> None:
        msg = self._leased.pop(event.request_id, None)
        if msg is not None:
            await msg.ack()

    async def succeed(self, event: Event, status: Status) -> None:
        await self._put_status(status)
        await self._release(event)

    async def reschedule(self, event: Event, status: Status) -> None:
        # The status, then the updated event, then the old one acknowledged: a crash in between duplicates, never
        # loses; and a replica that delivers the new event writes its states after this one (as in `enqueue`).
        await self._put_status(status)
        await self._publish(event)
        await self._release(event)

    async def dead_letter(self, event: Event, record: DeadLetter, status: Status) -> None:
        assert self._dead is not None
        await self._dead.put(record.request_id, encode(record))
        await self._put_status(status)
        await self._release(event)

    # ---- status and the DLQ ----------------------------------------------------------------------------------

    async def _get(self, bucket: KeyValue | None, key: str) -> dict[str, Any] | None:
        assert bucket is not None
        try:
            entry = await bucket.get(key)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        data: dict[str, Any] = json.loads(entry.value)
        return data

    async def status(self, request_id: str) -> Status | None:
        data = await self._get(self._statuses, request_id)
        return Status(**data) if data else None

    async def get_dead(self, request_id: str) -> DeadLetter | None:
        data = await self._get(self._dead, request_id)
        if not data:
            return None
        data["payload"] = data["payload"].encode()
        return DeadLetter(**data)

    async def _dead_keys(self) -> list[str]:
        assert self._dead is not None
        try:
            return sorted(await self._dead.keys())
        except NoKeysError:
            return []

    async def list_dead(
        self, function: str | None, marker: str | None, limit: int
    ) -> tuple[list[DeadLetter], str | None]:
        page: list[DeadLetter] = []
        for key in await self._dead_keys():
            if marker is not None and key <= marker:
                continue
            dead = await self.get_dead(key)
            if dead is None or (function and dead.function != function):
                continue
            if len(page) == limit:
                return page, page[-1].request_id
            page.append(dead)
        return page, None

    async def delete_dead(self, request_id: str) -> bool:
        assert self._dead is not None
        if await self.get_dead(request_id) is None:
            return False
        await self._dead.delete(request_id)
        status = await self.status(request_id)
        if status is not None:
            status.state = FAILED
            await self._put_status(status)
        return True

    async def redrive(self, request_id: str, now: float) -> bool:
        dead = await self.get_dead(request_id)
        if dead is None:
            return False
        await self.enqueue(Event(dead.request_id, dead.function, dead.qualifier, dead.payload, enqueued_at=now))
        assert self._dead is not None
        await self._dead.delete(request_id)
        return True

    async def stats(self) -> QueueStats:
        info = await self.js.stream_info(STREAM, subjects_filter=f"{SUBJECT}.>")
        stats = QueueStats()
        for subject, depth in (info.state.subjects or {}).items():
            function = subject.removeprefix(f"{SUBJECT}.")
            oldest: float | None = None
            with contextlib.suppress(Exception):
                first = await self.js.get_msg(STREAM, seq=1, subject=subject, next=True)
                if first.data:
                    oldest = decode_event(first.data).enqueued_at
            stats.functions[function] = FunctionQueueStats(depth, oldest)
        stats.dead_letters = len(await self._dead_keys())
        return stats

    async def purge(self, retention: Retention, now: float) -> int:
        if retention != self._retention:
            await self._limit_statuses(retention)
        return 0  # the server enforces the bucket's limits itself
