"""A minimal PICPIK client, as users write them: sign, post, poll, download."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx

from server.picpik.signature import sign


class PicpikClient:
    def __init__(
        self,
        http: httpx.Client,
        *,
        public_key: str | None = None,
        private_key: str | None = None,
    ) -> None:
        self.http = http
        self.public_key = public_key
        self.private_key = private_key

    def call(self, action: str, **params: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"Action": action, "request_uuid": str(uuid.uuid4()), **params}
        if self.public_key is not None:
            body["PublicKey"] = self.public_key
        if self.private_key is not None:
            body["Signature"] = sign(body, self.private_key)
        response = self.http.post("/", json=body)
        assert response.status_code == 200, response.text
        reply = response.json()
        assert reply["request_uuid"] == body["request_uuid"]
        assert reply["Action"] == action
        return reply

    def wait(self, task_id: str, timeout: float = 120.0) -> dict[str, Any]:
        """Poll ListTasksDetails until the task is Finished or Error; its TaskDetail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self.call("ListTasksDetails", TaskUIDList=[task_id])
            assert reply["RetCode"] == 0, reply
            detail = reply["TaskDetailList"][0]
            if detail["Status"] in ("Finished", "Error"):
                return detail
            time.sleep(0.05)
        raise TimeoutError(f"task {task_id} did not end within {timeout}s")

    def generate(self, **params: Any) -> dict[str, Any]:
        reply = self.call("GenerateImages", **params)
        assert reply["RetCode"] == 0, reply
        return self.wait(reply["TaskUID"])
