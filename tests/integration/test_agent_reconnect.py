"""An agent's session survives a gateway that is down when it tries again, and connects once one listens.

This broke in the real-node suite: with the gateway process killed, the agent's next stream failed at once (the
channel fails fast while nothing listens) and its first write raised InvalidStateError, not AioRpcError; the
reconnect loop ended for good and the pod's agent lived on, never connecting again. Here the session runs against
a port where nothing listens for several attempts, then a real gateway (`kambda run`) is started on that port.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from grpc import aio

from kambda import credentials
from kambda.runtime.agent.main import CHANNEL_OPTIONS
from kambda.runtime.agent.session import Identity, Session
from tests.conftest import Gateway, free_port
from tests.workdir import function_manifest

KEY = b"the reconnect test's signing key"
ECHO = "def handler(event, context):\n    return event\n"


def test_a_session_keeps_trying_while_no_gateway_listens_then_connects(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "functions").mkdir()
    (tmp_path / "functions" / "echo.yaml").write_text(function_manifest("echo", ECHO))
    (tmp_path / "key").write_bytes(KEY)
    port = free_port()
    caplog.set_level(logging.INFO, logger="kambda.runtime.agent.session")

    async def scenario() -> None:
        identity = Identity("default/echo", "$LATEST", "reconnecting", credentials.credential_for(KEY, "default/echo"))
        async with aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
            session = Session(channel, identity, on_stop=lambda reason: None)
            run = asyncio.create_task(session.run())
            waiting = asyncio.create_task(session.next())  # a runtime in /next: Next is re-sent on every attempt
            # The race, made certain: a write still in flight (here: the lock held) while the new call fails
            # at once, so that the session's first write on it comes after its failure.
            async with session._write_lock:
                async with asyncio.timeout(10):  # until a new call has failed while its first write waits
                    while session._call is None or not session._call.done():
                        await asyncio.sleep(0.01)
            deadline = time.monotonic() + 30
            while caplog.text.count("reconnecting") < 3 and time.monotonic() < deadline:
                assert not run.done(), run.exception()
                await asyncio.sleep(0.05)
            assert caplog.text.count("reconnecting") >= 3, caplog.text
            assert not run.done() and not session.connected
            data = tmp_path / "data"
            gateway = await asyncio.to_thread(
                Gateway, tmp_path / "functions", data, "--grpc-port", str(port), "--signing-key-file",
                str(tmp_path / "key"),
            )  # fmt: skip
            try:
                deadline = time.monotonic() + 30
                while not session.connected and time.monotonic() < deadline:
                    assert not run.done(), run.exception()
                    await asyncio.sleep(0.05)
                assert session.connected, gateway.logs()
            finally:
                waiting.cancel()
                await session.close()
                run.cancel()
                await asyncio.gather(run, waiting, return_exceptions=True)
                await asyncio.to_thread(gateway.stop)

    asyncio.run(scenario())
