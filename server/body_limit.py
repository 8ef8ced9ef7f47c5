"""The request body limit (Limits.max_body_bytes), counted as the body streams in.

A pure ASGI middleware: a declared Content-Length over the limit is refused before a byte of the
body is read; a body without one (chunked) is passed on chunk by chunk and counted, and the
chunk that goes over the limit is never handed to the app, so at most the limit (plus the chunk
being counted) is ever held. The refusal is in the protocol's own format:

- PICPIK `POST /`: HTTP 200 with RetCode REQUEST_TOO_LARGE (the Action and request_uuid are in
  the body that was not read, so they are empty);
- Runware `POST /v1`: HTTP 413 with `{"errors": [{"code": "payloadTooLarge", ...}]}`;
- anything else: HTTP 413 with `{"error": ...}`.

The server stops reading the body where it refused it; uvicorn then closes the connection after
the answer (the unread rest of the body cannot be skipped on a kept-alive connection).

It must sit inside Starlette's ServerErrorMiddleware (app.add_middleware does that): a body that
goes over the limit mid-stream surfaces in the app as _TooLarge, which this middleware catches
on its way out.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from server.limits import describe_bytes
from server.picpik.errors import RetCode
from server.runware.errors import Code

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Refusal = tuple[int, dict[str, Any]]  # HTTP status, JSON body


def _picpik(message: str) -> Refusal:
    body = {"RetCode": int(RetCode.REQUEST_TOO_LARGE), "Action": "", "Message": message}
    return 200, body | {"request_uuid": ""}


def _runware(message: str) -> Refusal:
    return 413, {"errors": [{"code": Code.PAYLOAD_TOO_LARGE.value, "message": message}]}


def _other(message: str) -> Refusal:
    return 413, {"error": message}


# Path -> how a body over the limit is refused there (PICPIK's endpoint is the root).
REFUSALS: dict[str, Callable[[str], Refusal]] = {"/": _picpik, "/v1": _runware}


class _TooLarge(Exception):
    """Raised into the app from `receive` when the body goes over the limit."""


class BodyLimit:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._refuse(scope, send, declared)
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except _TooLarge:
            if started:
                raise
            await self._refuse(scope, send, None)

    async def _refuse(self, scope: Scope, send: Send, declared: int | None) -> None:
        """Answer the refusal; `declared`: the Content-Length, when the body had one."""
        size = "larger" if declared is None else f"{declared} bytes, more"
        message = (
            f"the request body is {size} than this server's limit of "
            f"{describe_bytes(self.max_body_bytes)}"
        )
        status, body = REFUSALS.get(scope.get("path", ""), _other)(message)
        payload = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None
