"""End to end: a real `easel serve` process, a real socket, a signed client over HTTP."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import httpx
from PIL import Image

from tests.e2e.server_process import ServerProcess, free_port, run_easel
from tests.models.tiny import SD1_LORA, write_fake_safetensors
from tests.picpik_client import PicpikClient


def _download_all(client: PicpikClient, detail: dict) -> list[Image.Image]:
    images = []
    for url in detail["ImgList"]:
        assert url.startswith("http://127.0.0.1:")
        response = httpx.get(url, timeout=30)
        assert response.status_code == 200
        assert response.content[:8] == b"\x89PNG\r\n\x1a\n"
        images.append(Image.open(io.BytesIO(response.content)))
    return images


def test_generate_poll_download_and_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"picpik": [{"public_key": "pub", "private_key": "priv"}]}))
    with ServerProcess(data_dir, "--keys-file", str(keys_file)) as server:
        log = server.log()
        assert f"listening on http://127.0.0.1:{server.port}" in log
        assert "easel-demo" in log  # the models it found
        with httpx.Client(base_url=server.url, timeout=30) as http:
            client = PicpikClient(http, public_key="pub", private_key="priv")
            detail = client.generate(
                MainModel={"ModelCode": "PICPIK General", "InferenceParams": {"Steps": 6}},
                PositivePrompts=["a cat on the sofa"],
                Width=72,
                Height=64,
                BatchSize=3,
                Seed=11,
            )
            assert detail["Status"] == "Finished"
            assert detail["Seed"] == 11
            images = _download_all(client, detail)
            assert len(images) == 3
            assert all(image.size == (72, 64) for image in images)
            unsigned = PicpikClient(http).call("ListModels")
            assert unsigned["RetCode"] != 0
    # A restart keeps finished tasks and their images.
    with ServerProcess(data_dir, "--keys-file", str(keys_file)) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            client = PicpikClient(http, public_key="pub", private_key="priv")
            reply = client.call("ListTasksDetails", TaskUIDList=[detail["TaskUID"]])
            after = reply["TaskDetailList"][0]
            assert after["Status"] == "Finished"
            assert after["Seed"] == 11
            assert len(after["ImgList"]) == 3
            assert [im.tobytes() for im in _download_all(client, after)] == [
                im.tobytes() for im in images
            ]


def test_refuses_an_open_server_on_a_public_address(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "data")
    result = run_easel(
        "serve", "--host", "0.0.0.0", "--port", str(free_port()), "--data-dir", data_dir
    )
    assert result.returncode == 2
    assert "--insecure" in result.stderr


def test_environment_variables_configure_the_server(tmp_path: Path) -> None:
    port = free_port()
    server = ServerProcess(
        tmp_path / "ignored",
        env={
            "EASEL_PORT": str(port),
            "EASEL_DATA_DIR": str(tmp_path / "env-data"),
            "EASEL_PUBLIC_URL": "https://images.example.test",
        },
    )
    server.args = [sys.executable, "-m", "server.cli", "serve"]
    server.port, server.url = port, f"http://127.0.0.1:{port}"
    with server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            client = PicpikClient(http)
            detail = client.generate(
                PositivePrompts=["x"],
                Width=64,
                Height=64,
                MainModel={"InferenceParams": {"Steps": 6}},
            )
            assert detail["ImgList"][0].startswith("https://images.example.test/results/")
    assert (tmp_path / "env-data" / "tasks.sqlite3").exists()


def test_easel_models_lists_the_catalogue(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_fake_safetensors(models / "Lora" / "watercolor.safetensors", SD1_LORA)
    (models / "checkpoints").mkdir()
    (models / "checkpoints" / "old.ckpt").write_bytes(b"not loaded")
    listing = ("models", "--data-dir", str(tmp_path / "data"), "--models-dir", str(models))
    result = run_easel(*listing)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    demo = next(line for line in lines if "easel-demo" in line)
    assert demo.startswith("checkpoint") and "PICPIK General" in demo
    assert any(line.startswith("lora") and "watercolor" in line for line in lines)
    assert "old.ckpt" in result.stderr and "--allow-pickle" in result.stderr

    (models / "manifest.toml").write_text('[aliases]\n"PICPIK Anime" = "missing"\n')
    broken = run_easel(*listing)
    assert broken.returncode == 2
    assert "manifest.toml" in broken.stderr and "missing" in broken.stderr
