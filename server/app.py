"""The FastAPI application: front ends over one engine, task store and result store.

Everything long-lived is created in build_app and started by the lifespan, so importing this
module has no side effects and tests can build as many apps as they like.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from pipelines.engine import Engine
from server.access import Admission
from server.body_limit import BodyLimit
from server.dispatch import Backend, Dispatcher, local_backend
from server.docs_routes import install_docs
from server.keys import KeyStore
from server.openapi import API_DESCRIPTION, API_TAGS
from server.openapi import install as install_openapi
from server.operator_routes import add_operator_routes
from server.outbound import Outbound, OutboundPolicy
from server.picpik.router import picpik_router
from server.picpik.serving import PicpikService
from server.playground import playground_router
from server.results import MEDIA_TYPES, RESULTS_ROUTE, ResultStore, is_image_id
from server.runware.common import PROTOCOL as RUNWARE
from server.runware.router import runware_router
from server.runware.serving import RunwareService
from server.runware.sessions import SessionRegistry
from server.settings import Settings
from server.taskstore import TaskStore

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 600.0
DELIVERY_DRAIN_S = 10.0  # at shutdown, webhooks / uploads under way may take this long


@dataclass
class Services:
    """What the routes share; exposed on app.state.services for tests and tools."""

    settings: Settings
    engine: Engine  # the model catalogue (and, on one machine, the jobs' runner)
    store: TaskStore
    results: ResultStore
    dispatcher: Dispatcher
    keys: KeyStore
    outbound: Outbound


def sweep_expired(services: Services) -> int:
    """Delete task records and images older than the retention time; how many tasks went."""
    before = time.time() - services.settings.retention_hours * 3600
    expired = [r for r in services.store.expired(before) if r.status.ended]
    for record in expired:
        for image_id in record.image_ids:
            services.results.delete(image_id)
        services.store.delete(record.task_id)
    return len(expired)


def build_app(
    settings: Settings,
    engine: Engine,
    keys: KeyStore | None = None,
    backend: Backend | None = None,
) -> FastAPI:
    """The app over one engine; backend None: a single machine (local_backend)."""
    backend = backend or local_backend(settings, engine)
    store, results, dispatcher = backend.store, backend.results, backend.dispatcher
    limits = settings.limits
    outbound = Outbound(
        OutboundPolicy.from_strings(settings.url_allow, max_bytes=limits.max_image_bytes)
    )
    services = Services(settings, engine, store, results, dispatcher, keys or KeyStore(), outbound)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Tasks a crash or shutdown left unfinished run again (single server: the journal)
        # or run on (cluster: the queues); a re-run's webhook / upload goes out as it ends.
        dispatcher.on_recovered(RUNWARE, runware.resume_delivery)
        await dispatcher.start()
        sweeper = asyncio.get_running_loop().create_task(_sweep_forever(services))
        try:
            yield
        finally:
            # uvicorn has stopped accepting and let in-flight requests end; the running batch
            # may finish within the grace period, what still waits stays for the next start.
            sweeper.cancel()
            await dispatcher.stop()
            await runware.drain(DELIVERY_DRAIN_S)
            await outbound.aclose()
            store.close()

    app = FastAPI(
        title="easel",
        version="0.1.0",
        description=API_DESCRIPTION,
        openapi_tags=API_TAGS,
        lifespan=lifespan,
        docs_url=None,  # server/docs_routes.py serves /docs without a CDN
        redoc_url=None,
    )
    app.state.services = services
    app.state.on_shutdown_signal = dispatcher.drain  # server.operator_routes.run_server
    admission = Admission(services.keys, store)  # one per app: both protocols share the buckets
    picpik = PicpikService(
        engine,
        dispatcher,
        store,
        services.keys,
        settings.public_url,
        admission=admission,
        limits=limits,
    )
    app.include_router(picpik_router(picpik))
    runware = RunwareService(
        engine,
        dispatcher,
        store,
        results,
        services.keys,
        outbound,
        settings.public_url,
        admission=admission,
        limits=limits,
    )
    app.include_router(runware_router(runware, SessionRegistry()))
    app.include_router(playground_router())  # GET / (PICPIK keeps POST /)
    app.add_middleware(BodyLimit, max_body_bytes=limits.max_body_bytes)
    install_openapi(app)  # the request bodies' schemas (server/openapi.py)
    install_docs(app)

    @app.get(RESULTS_ROUTE + "/{file_name}", tags=["results"], response_model=None)
    async def result_image(file_name: str) -> Response:
        image_id, _, extension = file_name.rpartition(".")
        found = await asyncio.to_thread(results.read, image_id) if is_image_id(image_id) else None
        if found is None or found[1].value != extension:
            return JSONResponse({"error": "image not found"}, status_code=404)
        data, image_format = found
        return Response(data, media_type=MEDIA_TYPES[image_format])

    @app.get("/engine/stats", tags=["health"])
    async def engine_stats() -> dict[str, object]:
        """The engine's own measurements: batch sizes, joins, overhead per job (benchmarks)."""
        return dispatcher.stats()

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    add_operator_routes(app, dispatcher, backend.metrics)  # /metrics, /readyz, /engine/status
    return app


async def _sweep_forever(services: Services) -> None:
    while True:
        try:
            swept = await asyncio.to_thread(sweep_expired, services)
            if swept:
                log.info("swept %d expired task(s)", swept)
        except Exception:
            log.exception("sweeping expired results failed")
        await asyncio.sleep(SWEEP_INTERVAL_S)
