"""Runware's transports: the WebSocket at /v1 (current task arrays and legacy picfinder objects
on one socket) and REST `POST /v1`.

The socket's receive loop never waits on the engine: authentication and pings are answered
inline, every other task runs in its own asyncio task and sends its frame when done, so a ping is
answered at once however busy the GPU is. Frames go out through one queue per socket, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

from server.runware.common import Caller
from server.runware.errors import Code, RunwareError
from server.runware.legacy.connection import LegacyConnection
from server.runware.serving import RunwareService
from server.runware.sessions import Session, SessionRegistry

log = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 120.0  # a socket with no message for this long is closed
AUTH_TASK = "authentication"
# HTTP status of a REST reply with errors: the first code found in this order decides.
REST_STATUS: tuple[tuple[frozenset[Code], int], ...] = (
    (frozenset({Code.INVALID_API_KEY, Code.MISSING_API_KEY}), 401),
    (frozenset({Code.SERVER_BUSY}), 429),
    (frozenset({Code.INTERNAL_ERROR, Code.OUT_OF_MEMORY, Code.INTERRUPTED}), 500),
)
REST_CLIENT_ERROR = 400


def _frame(data: list[dict[str, Any]] | None = None, errors: list[dict[str, Any]] | None = None):
    return {"errors": errors} if errors else {"data": data or []}


def _http_base(url: str) -> str:
    """A socket's base URL as the http(s) base that result URLs use."""
    if url.startswith("wss://"):
        return "https://" + url[len("wss://") :]
    if url.startswith("ws://"):
        return "http://" + url[len("ws://") :]
    return url


class RunwareConnection:
    """One WebSocket client: its session, its outgoing queue, its running tasks."""

    def __init__(
        self, socket: WebSocket, service: RunwareService, sessions: SessionRegistry
    ) -> None:
        self.socket = socket
        self.service = service
        self.sessions = sessions
        self.base_url = _http_base(str(socket.base_url))
        self.outgoing: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.session: Session | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.legacy = LegacyConnection(service, self.send, self.base_url)

    def send(self, frame: dict[str, Any]) -> None:
        self.outgoing.put_nowait(frame)

    async def serve(self) -> None:
        await self.socket.accept()
        writer = asyncio.get_running_loop().create_task(self._write())
        try:
            while True:
                try:
                    message = await asyncio.wait_for(self.socket.receive(), IDLE_TIMEOUT_S)
                except TimeoutError:
                    await self.socket.close(code=1000, reason="idle")
                    return
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                if text is None and message.get("bytes") is not None:
                    text = message["bytes"].decode("utf-8", "replace")
                self._dispatch(text or "")
        except (WebSocketDisconnect, RuntimeError):
            return
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            if self.session is not None:
                self.sessions.detach(self.session, self._session_sender)
                unsent = []
                while not self.outgoing.empty():
                    unsent.append(self.outgoing.get_nowait())
                self.sessions.keep(self.session, unsent)
            self.legacy.close()

    async def _write(self) -> None:
        while True:
            frame = await self.outgoing.get()
            try:
                await self.socket.send_text(json.dumps(frame))
            except Exception:
                if self.session is not None:
                    self.sessions.keep(self.session, [frame])
                raise

    def _session_sender(self, frame: dict[str, Any]) -> None:
        self.send(frame)

    # --- messages ---

    def _dispatch(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            self.send(
                _frame(errors=[RunwareError(Code.INVALID_MESSAGE, "not JSON").item(None, None)])
            )
            return
        if isinstance(message, dict):
            self.legacy.handle(message)
            return
        if not isinstance(message, list):
            error = RunwareError(Code.INVALID_MESSAGE, "a message must be a JSON array of tasks")
            self.send(_frame(errors=[error.item(None, None)]))
            return
        for task in message:
            task_type = task.get("taskType") if isinstance(task, dict) else None
            if task_type == AUTH_TASK:
                self._authenticate(task)
            elif task_type == "ping":
                self.send(_frame([{"taskType": "ping", "pong": True}]))
            else:
                self._start(task)

    def _authenticate(self, task: dict[str, Any]) -> None:
        try:
            owner = self.service.authenticate(task.get("apiKey"))
        except RunwareError as error:
            self.send(_frame(errors=[error.item(AUTH_TASK, None)]))
            return
        if self.session is not None:
            self.sessions.detach(self.session, self._session_sender)
        self.session = self.sessions.open(
            owner, self._session_sender, task.get("connectionSessionUUID")
        )
        # The auth item first, before any flushed frame: the SDKs look for it in data[0].
        auth = _frame([{"taskType": AUTH_TASK, "connectionSessionUUID": self.session.session_id}])
        pending = []
        while not self.outgoing.empty():
            pending.append(self.outgoing.get_nowait())
        self.send(auth)
        for frame in pending:
            self.send(frame)

    def _start(self, task: Any) -> None:
        if self.session is None and self.service.keys.empty:
            self.session = self.sessions.open("", self._session_sender)
        if self.session is None:
            task_type = task.get("taskType") if isinstance(task, dict) else None
            task_uuid = task.get("taskUUID") if isinstance(task, dict) else None
            error = RunwareError(
                Code.MISSING_API_KEY, "authenticate first: send an authentication task", "apiKey"
            )
            self.send(_frame(errors=[error.item(task_type, task_uuid)]))
            return
        session = self.session
        caller = self.service.caller(session.owner, self.base_url)

        async def run() -> None:
            reply = await self.service.run(task, caller)
            if reply.errors:
                session.send(_frame(errors=reply.errors))
            if reply.data:
                session.send(_frame(reply.data))

        running = asyncio.get_running_loop().create_task(run())
        self.tasks.add(running)
        running.add_done_callback(self.tasks.discard)


def runware_router(service: RunwareService, sessions: SessionRegistry) -> APIRouter:
    router = APIRouter()

    @router.websocket("/v1")
    async def runware_socket(socket: WebSocket) -> None:
        await RunwareConnection(socket, service, sessions).serve()

    @router.post("/v1", tags=["Runware"], summary="Runware tasks over REST (a JSON array)")
    async def runware_rest(request: Request) -> JSONResponse:
        return await _rest(service, request)

    return router


async def _rest(service: RunwareService, request: Request) -> JSONResponse:
    try:
        body = json.loads(await request.body())
    except ValueError:
        error = RunwareError(Code.INVALID_MESSAGE, "the body is not JSON")
        return JSONResponse(_frame(errors=[error.item(None, None)]), status_code=400)
    tasks = body if isinstance(body, list) else [body]
    auth = next((t for t in tasks if isinstance(t, dict) and t.get("taskType") == AUTH_TASK), None)
    api_key = auth.get("apiKey") if auth is not None else _bearer(request)
    try:
        owner = service.authenticate(api_key)
    except RunwareError as error:
        return JSONResponse(_frame(errors=[error.item(AUTH_TASK, None)]), status_code=401)
    caller: Caller = service.caller(owner, str(request.base_url))
    work = [t for t in tasks if t is not auth]
    replies = await asyncio.gather(*(service.run(task, caller) for task in work))
    data = [item for reply in replies for item in reply.data]
    errors = [item for reply in replies for item in reply.errors]
    if not errors:
        return JSONResponse({"data": data})
    body_out: dict[str, Any] = {"errors": errors}
    if data:
        body_out["data"] = data
    return JSONResponse(body_out, status_code=_rest_status(errors))


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _rest_status(errors: list[dict[str, Any]]) -> int:
    codes = {item.get("code") for item in errors}
    for group, status in REST_STATUS:
        if codes & {c.value for c in group}:
            return status
    return REST_CLIENT_ERROR
