"""`easel keys` against a real `easel serve`: keys created on the command line let their
clients in on both protocols, `list` shows their usage, and a revoke takes effect on the
running server without a restart."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx

from server.picpik.errors import RetCode
from server.picpik.signature import sign
from tests.e2e.server_process import ServerProcess, run_easel

RELOAD_WAIT_S = 10.0


def _easel_keys(data_dir: Path, *args: str) -> str:
    done = run_easel("keys", "--data-dir", str(data_dir), *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _inference() -> list[dict]:
    return [
        {
            "taskType": "imageInference",
            "taskUUID": str(uuid.uuid4()),
            "positivePrompt": "a cat",
            "model": "easel-demo",
            "width": 64,
            "height": 64,
            "steps": 2,
            "includeCost": True,
        }
    ]


def _picpik(url: str, public: str, private: str, action: str, **fields: object) -> dict:
    body = {"Action": action, "PublicKey": public, **fields}
    body["Signature"] = sign(body, private)
    return httpx.post(url + "/", json=body, timeout=60).json()


def test_keys_made_by_the_cli_guard_a_running_server(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    runware = json.loads(_easel_keys(data_dir, "create", "runware", "--name", "bot", "--json"))
    picpik = json.loads(_easel_keys(data_dir, "create", "picpik", "--name", "shop", "--json"))
    with ServerProcess(data_dir) as server:  # no --keys-file: DATA_DIR/keys.json is used
        headers = {"Authorization": f"Bearer {runware['apiKey']}"}
        reply = httpx.post(server.url + "/v1", json=_inference(), headers=headers, timeout=120)
        assert reply.status_code == 200, reply.text
        cost = reply.json()["data"][0]["cost"]
        anonymous = httpx.post(server.url + "/v1", json=_inference(), timeout=60)
        assert anonymous.status_code == 401
        public, private = picpik["PublicKey"], picpik["PrivateKey"]
        assert _picpik(server.url, public, private, "GetCreditBalance")["RetCode"] == 0

        listing = _easel_keys(data_dir, "list")
        assert f"${cost:.4f}" in listing and "0 credits" in listing
        assert runware["apiKey"] not in listing

        _easel_keys(data_dir, "revoke", "bot")
        _easel_keys(data_dir, "revoke", public)
        deadline = time.monotonic() + RELOAD_WAIT_S
        while True:
            status = httpx.post(server.url + "/v1", json=_inference(), headers=headers).status_code
            refused = _picpik(server.url, public, private, "ListModels")["RetCode"]
            if status == 401 and refused == RetCode.AUTH_UNKNOWN_KEY:
                break
            assert time.monotonic() < deadline, (status, refused)
            time.sleep(0.2)
        assert "keys file reloaded: 0 key(s)" in server.log()
