"""End to end: `easel models pull` fetches a tiny checkpoint from a loopback HTTP server and checks
it against the server's .sha256 file, `easel models` lists it with the public ids that reach it,
and a real `easel serve` runs a Runware REST job on it. (Resuming, refusals and the command's
error output are tested in tests/unit/test_models_pull.py.)"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.e2e.server_process import ServerProcess, run_easel
from tests.file_server import Served, file_server
from tests.models import tiny

AIR_ID = "runware:100@1"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path]:
    """A tiny SD 1.x single-file checkpoint's bytes, and a models directory that has only its
    architecture config (the tiny widths are not SD 1.5's) and a manifest entry for it."""
    root = tmp_path_factory.mktemp("pull")
    pipe = tiny.tiny_sd1_pipeline(root / "tokenizers")
    body = tiny.save_single_file(pipe, root / "served.safetensors").read_bytes()
    models = root / "models"
    tiny.save_config_dir(pipe, models / "configs" / "tiny", like="sd15")
    (models / "manifest.toml").write_text(
        f'[models."checkpoints/tiny.safetensors"]\nconfig = "configs/tiny"\nids = ["{AIR_ID}"]\n'
    )
    return body, models


def test_pull_list_and_serve(checkpoint: tuple[bytes, Path], tmp_path: Path) -> None:
    body, models = checkpoint
    data = tmp_path / "data"
    digest = hashlib.sha256(body).hexdigest()
    served = Served(files={"/files/tiny-sd.safetensors": body})
    served.files["/files/tiny-sd.safetensors.sha256"] = f"{digest}  tiny-sd.safetensors\n".encode()
    where = ("--models-dir", str(models), "--data-dir", str(data))
    with file_server(served) as base:
        url = base + "/files/tiny-sd.safetensors"
        pulled = run_easel("models", "pull", url, "--as", "tiny", *where)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    out = pulled.stdout
    assert f"sha256 {digest} (verified against {url}.sha256)" in out, out
    assert (
        f"installed checkpoint (sd1) 'tiny' at {models / 'checkpoints' / 'tiny.safetensors'}" in out
    )
    assert AIR_ID in out and "restart `easel serve`" in out
    assert (models / "checkpoints" / "tiny.safetensors").read_bytes() == body

    listing = run_easel("models", *where)
    assert listing.returncode == 0, listing.stderr
    line = next(
        ln for ln in listing.stdout.splitlines() if ln.split()[:2] == ["checkpoint", "tiny"]
    )
    assert "checkpoints/tiny.safetensors" in line and AIR_ID in line and "PICPIK General" in line

    with ServerProcess(data, "--models-dir", str(models)) as server:
        task = {
            "taskType": "imageInference",
            "taskUUID": str(uuid.uuid4()),
            "model": AIR_ID,
            "positivePrompt": "a cat",
            "width": 64,
            "height": 64,
            "steps": 2,
            "seed": 7,
            "outputFormat": "PNG",
        }
        response = httpx.post(server.url + "/v1", content=json.dumps([task]), timeout=120)
        assert response.status_code == 200, response.text
        (item,) = response.json()["data"]
        assert item["status"] == "success" and item["seed"] == 7
        image = httpx.get(item["imageURL"], timeout=30)
        assert image.status_code == 200
        assert Image.open(io.BytesIO(image.content)).size == (64, 64)
    assert "model: tiny" in server.log()
