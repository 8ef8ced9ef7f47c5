"""Parity: an imageInference gives the pixels of the equivalent PICPIK request and of the direct
diffusers call (same model, seeds seed + i, same scheduler; PNG output is lossless)."""

from __future__ import annotations

import base64
import io

import numpy as np
from diffusers import (
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
)
from PIL import Image

from tests.parity import assert_same_images, seeded_generators
from tests.parity import png_data_uri as data_uri
from tests.picpik_client import PicpikClient
from tests.runware_client import fetch, receive_for, rest, task


def test_txt2img_matches_picpik_and_diffusers(make_client, reference) -> None:
    client = make_client()
    inference = task(
        "imageInference",
        positivePrompt="a red fox",
        negativePrompt="blurry",
        model="easel-demo",
        width=64,
        height=128,
        steps=6,
        CFGScale=5.0,
        seed=1234,
        numberResults=2,
        scheduler="EulerDiscreteScheduler",
        outputFormat="PNG",
    )
    response = rest(client, inference)
    assert response.status_code == 200, response.text
    items = response.json()["data"]
    assert [item["seed"] for item in items] == [1234, 1235]
    assert all(item["taskUUID"] == inference["taskUUID"] for item in items)
    assert all(not {"code", "error", "errorId"} & set(item) for item in items)
    runware = [fetch(client, item["imageURL"]) for item in items]

    picpik = PicpikClient(client)
    detail = picpik.generate(
        MainModel={"ModelCode": "easel-demo", "InferenceParams": {"Steps": 6, "CFGScale": 5}},
        PositivePrompts=["a red fox"],
        NegativePrompts=["blurry"],
        Width=64,
        Height=128,
        Seed=1234,
        BatchSize=2,
    )
    picpik_images = [fetch(client, url) for url in detail["ImgList"]]
    assert len(picpik_images) == 2
    for a, b in zip(runware, picpik_images, strict=True):
        assert np.array_equal(a, b)

    pipe = StableDiffusionPipeline(**reference.components)
    pipe.scheduler = EulerDiscreteScheduler.from_config(reference.scheduler.config)
    direct = pipe(
        prompt="a red fox",
        negative_prompt="blurry",
        width=64,
        height=128,
        num_inference_steps=6,
        guidance_scale=5.0,
        num_images_per_prompt=2,
        generator=seeded_generators(1234, 2),
    ).images
    assert_same_images(runware, direct)


def test_websocket_scheduler_name_and_clip_skip_match_diffusers(make_client, reference) -> None:
    client = make_client()
    inference = task(
        "imageInference",
        positivePrompt="a lighthouse",
        model="easel-demo",
        width=64,
        height=64,
        steps=6,
        seed=7,
        scheduler="DPM++ 2M Karras",
        clipSkip=1,  # Runware counts skipped layers: 1 = the penultimate layer
        outputFormat="PNG",
    )
    with client.websocket_connect("/v1?sdk=js&version=1") as socket:
        socket.send_json([{"taskType": "authentication", "apiKey": "anything"}])
        auth = socket.receive_json()["data"][0]
        assert auth["taskType"] == "authentication" and "taskUUID" not in auth
        socket.send_json([inference])
        (item,) = receive_for(socket, inference["taskUUID"])
    pipe = StableDiffusionPipeline(**reference.components)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        reference.scheduler.config, use_karras_sigmas=True
    )
    direct = pipe(
        prompt="a lighthouse",
        width=64,
        height=64,
        num_inference_steps=6,
        guidance_scale=7.0,
        generator=seeded_generators(7, 1),
        clip_skip=1,
    ).images
    assert_same_images([fetch(client, item["imageURL"])], direct)


def test_img2img_from_an_uploaded_image_matches_diffusers(make_client, reference) -> None:
    client = make_client()
    rng = np.random.default_rng(3)
    source = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    upload = task("imageUpload", image=data_uri(source))
    uploaded = rest(client, upload).json()["data"][0]
    assert set(uploaded) >= {"taskType", "taskUUID", "imageUUID", "imageURL"}
    inference = task(
        "imageInference",
        positivePrompt="a watercolor",
        model="easel-demo",
        seedImage=uploaded["imageUUID"],
        strength=0.6,
        width=64,
        height=64,
        steps=5,
        seed=11,
        scheduler="EulerDiscreteScheduler",
        outputType="base64Data",
        outputFormat="PNG",
    )
    (item,) = rest(client, inference).json()["data"]
    pipe = StableDiffusionImg2ImgPipeline(**reference.components)
    pipe.scheduler = EulerDiscreteScheduler.from_config(reference.scheduler.config)
    direct = pipe(
        prompt="a watercolor",
        image=source,
        strength=0.6,
        num_inference_steps=5,
        guidance_scale=7.0,
        generator=seeded_generators(11, 1),
    ).images
    got = np.asarray(
        Image.open(io.BytesIO(base64.b64decode(item["imageBase64Data"]))).convert("RGB")
    )
    assert_same_images([got], direct)
