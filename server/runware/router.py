"""Runware's transports: the WebSocket at /v1 (current task arrays and legacy picfinder objects
on one socket) and REST `POST /v1`.

The socket's receive loop never waits on the engine: authentication and pings are answered
inline, every other task runs in its own asyncio task and sends its frame when done, so a ping is
answered at once however busy the GPU is. Frames go out through one queue per socket, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

from server import jsonbody
from server.openapi import RUNWARE_OPENAPI
from server.runware.common import Caller, Reply
from server.runware.errors import Code, RunwareError
from server.runware.legacy.connection import LegacyProtocol
from server.runware.serving import RunwareService
from server.runware.sessions import Session, SessionRegistry
from server.runware.throttle import MessageBucket, frame_size, over_rate_error, oversized_items

log = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 120.0  # a socket with no message for this long is closed
# Backpressure: with this many frames waiting to be written (a client that sends but does not
# read), the socket is not read again until its queue is down to PENDING_LOW_WATER, so a ping
# flood cannot grow the server's memory; a client that reads nothing for IDLE_TIMEOUT_S is cut.
MAX_PENDING_FRAMES = 256
PENDING_LOW_WATER = 64
AUTH_TASK = "authentication"
# HTTP status of a REST reply with errors: the first code found in this order decides.
REST_STATUS: tuple[tuple[frozenset[Code], int], ...] = (
    (frozenset({Code.INVALID_API_KEY, Code.MISSING_API_KEY}), 401),
    (frozenset({Code.SERVER_BUSY, Code.RATE_LIMITED, Code.TOO_MANY_TASKS}), 429),
    (frozenset({Code.INTERNAL_ERROR, Code.OUT_OF_MEMORY, Code.INTERRUPTED}), 500),
)
REST_CLIENT_ERROR = 400


def _frame(
    data: list[dict[str, Any]] | None = None, errors: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {"errors": errors} if errors else {"data": data or []}


def _http_base(url: str) -> str:
    """A socket's base URL as the http(s) base that result URLs use."""
    if url.startswith("wss://"):
        return "https://" + url[len("wss://") :]
    if url.startswith("ws://"):
        return "http://" + url[len("ws://") :]
    return url


Render = Callable[[Reply], list[dict[str, Any]]]  # a task's reply -> the frames to send


def current_frames(reply: Reply) -> list[dict[str, Any]]:
    """The current protocol's frames for a task's reply: its errors, then its data."""
    frames = [_frame(errors=reply.errors)] if reply.errors else []
    return frames + ([_frame(reply.data)] if reply.data else [])


class RunwareConnection:
    """One WebSocket client: its session, its outgoing queue, its running tasks. Both protocol
    generations share it: a JSON array is a current message, a JSON object a legacy one."""

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
        self.legacy = LegacyProtocol(self)
        self.limits = service.limits
        self.bucket = MessageBucket(self.limits.ws_messages_per_s, self.limits.ws_burst)

    def send(self, frame: dict[str, Any]) -> None:
        self.outgoing.put_nowait(frame)

    async def serve(self) -> None:
        await self.socket.accept()
        writer = asyncio.get_running_loop().create_task(self._write())
        try:
            while True:
                if self.outgoing.qsize() >= MAX_PENDING_FRAMES and not await self._drained(writer):
                    await self.socket.close(code=1008, reason="replies are not being read")
                    return
                try:
                    message = await asyncio.wait_for(self.socket.receive(), IDLE_TIMEOUT_S)
                except TimeoutError:
                    await self.socket.close(code=1000, reason="idle")
                    return
                if message["type"] == "websocket.disconnect":
                    return
                text = self._text(message)
                if text is not None:
                    self._dispatch(text)
        except (WebSocketDisconnect, RuntimeError):
            return
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            if self.session is not None:
                self.sessions.detach(self.session, self.send)
                self.sessions.keep(self.session, self._take_outgoing())

    async def _drained(self, writer: asyncio.Task[None]) -> bool:
        """Wait until the client has read enough replies to go on reading from it; False when
        it does not within IDLE_TIMEOUT_S, or the socket is gone."""
        deadline = asyncio.get_running_loop().time() + IDLE_TIMEOUT_S
        while self.outgoing.qsize() > PENDING_LOW_WATER:
            if writer.done() or asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def _take_outgoing(self) -> list[dict[str, Any]]:
        """Empty the outgoing queue: the frames not yet written, in order."""
        frames = []
        while not self.outgoing.empty():
            frames.append(self.outgoing.get_nowait())
        return frames

    async def _write(self) -> None:
        while True:
            frame = await self.outgoing.get()
            try:
                await self.socket.send_text(json.dumps(frame))
            except Exception:
                if self.session is not None:
                    self.sessions.keep(self.session, [frame])
                raise

    # --- shared by both protocol generations ---

    def open_session(
        self, api_key: Any, resume_id: Any, reply: Callable[[str], dict[str, Any]]
    ) -> Session:
        """Authenticate and attach this socket to a session (resumed when it names a live one
        of the same key); RunwareError for a bad key. `reply(session_id)`, the protocol's
        answer, goes out before any frame the session kept while no socket was attached."""
        owner = self.service.authenticate(api_key)
        if self.session is not None:
            self.sessions.detach(self.session, self.send)
        self.session = self.sessions.open(owner, self.send, resume_id)
        pending = self._take_outgoing()
        self.send(reply(self.session.session_id))
        for frame in pending:
            self.send(frame)
        return self.session

    def start(self, task: Any, render: Render) -> None:
        """Run a task in the background; its frames go to the session (kept for a resume if
        the socket is gone by then)."""
        if self.session is None and self.service.keys.open:
            self.session = self.sessions.open("", self.send)
        if self.session is None:
            task_type = task.get("taskType") if isinstance(task, dict) else None
            task_uuid = task.get("taskUUID") if isinstance(task, dict) else None
            error = RunwareError(
                Code.MISSING_API_KEY, "authenticate first: send an authentication task", "apiKey"
            )
            for frame in render(Reply(errors=[error.item(task_type, task_uuid)])):
                self.send(frame)
            return
        session = self.session

        def push(reply: Reply) -> None:
            for frame in render(reply):
                self._session_for(session).send(frame)

        # An async task's progress and result are pushed on this socket (server/runware/progress.py)
        caller = dataclasses.replace(self.service.caller(session.owner, self.base_url), push=push)

        async def run() -> None:
            push(await self.service.run(task, caller))

        running = asyncio.get_running_loop().create_task(run())
        self.tasks.add(running)
        running.add_done_callback(self.tasks.discard)

    def _session_for(self, started: Session) -> Session:
        """Where a task's frames go: the socket's session now when it is the same key's (the
        client may have authenticated again, or resumed another session, while the task ran:
        the old session is detached and would keep them), else the one the task started in."""
        current = self.session
        return current if current is not None and current.owner == started.owner else started

    # --- limits (server/runware/throttle.py) ---

    def _text(self, message: Mapping[str, Any]) -> str | None:
        """A received frame's text; None, once it has been answered with payloadTooLarge, when
        it is over the limits' ws_max_frame_bytes."""
        text, data = message.get("text"), message.get("bytes")
        size = frame_size(text, data)
        if text is None:
            text = (data or b"").decode("utf-8", "replace")
        if size <= self.limits.ws_max_frame_bytes:
            return text
        if text.lstrip()[:1] == "{":
            self.legacy.refuse_oversized(text, size)
        else:
            self.send(_frame(errors=oversized_items(text, size, self.limits)))
        return None

    # --- current protocol ---

    def _dispatch(self, text: str) -> None:
        try:
            message = jsonbody.loads(text)
        except ValueError:
            self.bucket.take()
            error = RunwareError(Code.INVALID_MESSAGE, "not JSON")
            self.send(_frame(errors=[error.item(None, None)]))
            return
        if isinstance(message, dict):
            self.legacy.handle(message, self.bucket.take())
            return
        if not isinstance(message, list):
            self.bucket.take()
            error = RunwareError(Code.INVALID_MESSAGE, "a message must be a JSON array of tasks")
            self.send(_frame(errors=[error.item(None, None)]))
            return
        if not message:
            self.bucket.take()
        for task in message:
            task_type = task.get("taskType") if isinstance(task, dict) else None
            admitted = self.bucket.take()
            if task_type == "ping":  # answered over the rate too (server/runware/throttle.py)
                self.send(_frame([{"taskType": "ping", "pong": True}]))
            elif not admitted:
                task_uuid = task.get("taskUUID") if isinstance(task, dict) else None
                item = over_rate_error(self.limits).item(
                    task_type if isinstance(task_type, str) else None,
                    task_uuid if isinstance(task_uuid, str) else None,
                )
                self.send(_frame(errors=[item]))
            elif task_type == AUTH_TASK:
                self._authenticate(task)
            else:
                self.start(task, current_frames)

    def _authenticate(self, task: dict[str, Any]) -> None:
        # The auth item has no taskUUID and comes first: the SDKs look for it in data[0].
        def reply(session_id: str) -> dict[str, Any]:
            return _frame([{"taskType": AUTH_TASK, "connectionSessionUUID": session_id}])

        try:
            self.open_session(task.get("apiKey"), task.get("connectionSessionUUID"), reply)
        except RunwareError as error:
            self.send(_frame(errors=[error.item(AUTH_TASK, None)]))


def runware_router(service: RunwareService, sessions: SessionRegistry) -> APIRouter:
    router = APIRouter()

    @router.websocket("/v1")
    async def runware_socket(socket: WebSocket) -> None:
        await RunwareConnection(socket, service, sessions).serve()

    @router.post(
        "/v1",
        tags=["Runware"],
        summary="Runware tasks over REST (a JSON array)",
        openapi_extra=RUNWARE_OPENAPI,
    )
    async def runware_rest(request: Request) -> JSONResponse:
        return await _rest(service, request)

    return router


async def _rest(service: RunwareService, request: Request) -> JSONResponse:
    try:
        body = jsonbody.loads(await request.body())
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
