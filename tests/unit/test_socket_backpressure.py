"""A Runware socket whose client sends but never reads: the server stops reading it once
MAX_PENDING_FRAMES replies wait, instead of queueing replies without bound, and cuts it when
the client still reads nothing."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest

from server.keys import KeyStore
from server.limits import Limits
from server.runware import router
from server.runware.router import MAX_PENDING_FRAMES, RunwareConnection
from server.runware.sessions import SessionRegistry

PING = json.dumps([{"taskType": "ping", "ping": True}])


class DeafClient:
    """Floods pings and never reads a reply: every send blocks."""

    base_url = "ws://testserver/"

    def __init__(self) -> None:
        self.sent_messages = 0
        self.closed: int | None = None

    async def accept(self) -> None:
        return None

    async def receive(self) -> dict[str, Any]:
        self.sent_messages += 1
        await asyncio.sleep(0)
        return {"type": "websocket.receive", "text": PING}

    async def send_text(self, text: str) -> None:
        await asyncio.Event().wait()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = code


def test_a_client_that_never_reads_is_not_read_without_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(router, "IDLE_TIMEOUT_S", 0.3)
    client = DeafClient()
    limits = Limits(ws_messages_per_s=1e6, ws_burst=10**6)
    service = SimpleNamespace(limits=limits, keys=KeyStore())
    connection = RunwareConnection(client, service, SessionRegistry())  # type: ignore[arg-type]
    asyncio.run(asyncio.wait_for(connection.serve(), 10))
    assert client.closed == 1008
    # One reply is stuck in the writer, MAX_PENDING_FRAMES wait in the queue: then no more reads.
    assert client.sent_messages <= MAX_PENDING_FRAMES + 2
