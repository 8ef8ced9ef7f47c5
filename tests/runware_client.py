"""A minimal Runware client for in-process tests: task arrays over REST or the WebSocket."""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image


def task(task_type: str, **fields: Any) -> dict[str, Any]:
    return {"taskType": task_type, "taskUUID": str(uuid.uuid4()), **fields}


def rest(client: TestClient, *tasks: dict[str, Any], api_key: str | None = None):
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return client.post("/v1", content=json.dumps(list(tasks)), headers=headers)


def fetch(client: TestClient, url: str) -> np.ndarray:
    response = client.get(url)
    assert response.status_code == 200, url
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def receive_for(socket: Any, task_uuid: str, count: int = 1) -> list[dict[str, Any]]:
    """Read frames until `count` items (data or errors) for the task have arrived."""
    items: list[dict[str, Any]] = []
    while len(items) < count:
        frame = socket.receive_json()
        for item in frame.get("data", []) + frame.get("errors", []):
            if item.get("taskUUID") == task_uuid:
                items.append(item)
    return items
