"""What the cluster tests send and check, over real sockets."""

from __future__ import annotations

import io
import time

import httpx
import numpy as np
from PIL import Image

from tests.picpik_client import PicpikClient

# Long enough (several seconds on 2 CPU cores) to be caught mid-run.
LONG_JOB = dict(
    MainModel={"ModelCode": "easel-demo", "InferenceParams": {"Steps": 100}},
    Width=192,
    Height=192,
)


def picpik(url: str) -> PicpikClient:
    return PicpikClient(httpx.Client(base_url=url, timeout=60))


def download(url: str) -> np.ndarray:
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200, url
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def wait_running(client: PicpikClient, task_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        detail = client.call("ListTasksDetails", TaskUIDList=[task_id])["TaskDetailList"][0]
        assert detail["Status"] not in ("Finished", "Error"), detail
        if detail["Progress"] > 0:
            return
        time.sleep(0.05)
    raise TimeoutError(f"task {task_id} did not start")
