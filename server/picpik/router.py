"""PICPIK's single endpoint: POST / with an Action-style JSON body, always answered HTTP 200."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from server.openapi import PICPIK_OPENAPI
from server.picpik.serving import PicpikService


def picpik_router(service: PicpikService, path: str = "/") -> APIRouter:
    router = APIRouter()

    @router.post(
        path,
        tags=["PICPIK"],
        summary="PICPIK action (GenerateImages, ListTasksDetails...)",
        openapi_extra=PICPIK_OPENAPI,
    )
    async def picpik_action(request: Request) -> JSONResponse:
        return JSONResponse(await service.handle(await request.body(), str(request.base_url)))

    return router
