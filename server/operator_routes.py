"""What operators watch: GET /metrics, /readyz, /engine/status and the /engine/events stream.

- /metrics: Prometheus text, the server's task metrics (server.metrics) with the dispatcher's
  (the local engine's, or the cluster's queue and workers).
- /readyz: 200 {"status": "ready"} once a job can start without waiting for a model to load,
  else 503 {"status": "not ready", "reason": ...} (/healthz only says the process is up).
- /engine/status: the engine's status (server.status); /engine/events: the same as Server-Sent
  Events (`event: status`), one at connect and then every EVENT_INTERVAL_S.

An event stream never ends by itself, and uvicorn waits for open responses before it stops: the
streams end when the server starts shutting down (run_server tells them), or when the client
goes away (Starlette cancels the response on its disconnect).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from types import FrameType
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.dispatch import Dispatcher
from server.metrics import MetricsScope, ServerMetrics, combined

EVENT_INTERVAL_S = 0.5
_TICK_S = 0.1  # how soon a stream notices the server is shutting down
_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
STATUS_EXAMPLE = {
    "ready": True,
    "queue": {"jobs": 3, "images": 6},
    "devices": [
        {
            "device": "cuda:0",
            "models": ["easel-demo"],
            "batch": {"model": "easel-demo", "jobs": 2, "images": 4, "progress": 0.35},
        }
    ],
    "images_per_second": 5.2,
}


class EventStreams:
    """Ends the open /engine/events streams when the server shuts down."""

    def __init__(self) -> None:
        self._closed = False
        self._stopping: Callable[[], bool] = lambda: False

    def end_when(self, stopping: Callable[[], bool]) -> None:
        """Streams end once stopping() is true (uvicorn's Server.should_exit)."""
        self._stopping = stopping

    def close(self) -> None:
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed or self._stopping()

    async def events(self, dispatcher: Dispatcher) -> AsyncIterator[str]:
        while not self.closed:
            status = await dispatcher.status()
            yield f"event: status\ndata: {json.dumps(status)}\n\n"
            for _ in range(round(EVENT_INTERVAL_S / _TICK_S)):
                if self.closed:
                    return
                await asyncio.sleep(_TICK_S)


def add_operator_routes(app: FastAPI, dispatcher: Dispatcher, metrics: ServerMetrics) -> None:
    streams = EventStreams()
    app.state.event_streams = streams
    app.add_middleware(MetricsScope, metrics=metrics)  # error replies count into `metrics`
    registry = combined([metrics.registry, *dispatcher.metrics()])

    # /metrics (Prometheus text) and /engine/events (an endless stream) are left out of the
    # OpenAPI document: neither has a JSON answer to describe (the API description names them).
    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        """Prometheus metrics (text exposition format)."""
        body = await asyncio.to_thread(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/readyz",
        tags=["health"],
        response_model=None,
        responses={
            200: {"content": {"application/json": {"example": {"status": "ready"}}}},
            503: {
                "description": "No model is loaded yet",
                "content": {
                    "application/json": {
                        "example": {"status": "not ready", "reason": "loading easel-demo"}
                    }
                },
            },
        },
    )
    async def readyz() -> JSONResponse:
        """200 once a model is loaded (a job starts without waiting for a load), else 503."""
        reason = await dispatcher.readiness()
        if reason is None:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)

    @app.get(
        "/engine/status",
        tags=["health"],
        responses={200: {"content": {"application/json": {"example": STATUS_EXAMPLE}}}},
    )
    async def engine_status() -> dict[str, Any]:
        """The queue, each device's models and running batch, and images per second."""
        return await dispatcher.status()

    @app.get("/engine/events", include_in_schema=False)
    async def engine_events() -> StreamingResponse:
        """/engine/status as Server-Sent Events (`event: status`), every 0.5 s."""
        return StreamingResponse(
            streams.events(dispatcher), media_type="text/event-stream", headers=_STREAM_HEADERS
        )


def run_server(app: FastAPI, *, json_logs: bool = False, **options: Any) -> int:
    """uvicorn.run(app, **options), except that a shutdown signal at once calls
    app.state.on_shutdown_signal (the dispatcher's drain: while uvicorn waits for the requests
    under way, a batch starts only for a request still waiting for one) and ends the event
    streams; with json_logs, uvicorn's loggers are left to the root logger (server.logs). The
    exit status: 0, or 3 when the server did not start (uvicorn's STARTUP_FAILURE)."""
    import uvicorn

    if json_logs:
        options["log_config"] = None
    on_signal: Callable[[], None] | None = getattr(app.state, "on_shutdown_signal", None)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            if on_signal is not None:
                _call_in_loop(on_signal)

    server = Server(uvicorn.Config(app, **options))
    streams = getattr(app.state, "event_streams", None)
    if isinstance(streams, EventStreams):
        streams.end_when(lambda: server.should_exit)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    return 0 if server.started else 3


def _call_in_loop(callback: Callable[[], None]) -> None:
    """Run callback in the event loop (a signal handler interrupts the loop's thread at any
    point, so it only schedules); at once when no loop runs yet."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        callback()
        return
    loop.call_soon_threadsafe(callback)
