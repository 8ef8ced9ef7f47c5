"""Runware requests through the in-process app: errors routed to their task, delivery options,
uploads, async delivery with getResponse, authentication and session resume."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import numpy as np
import pytest
from PIL import Image

from pipelines.preprocessors import preprocess
from server.keys import KeyStore
from tests.parity import png_data_uri as data_uri
from tests.runware_client import fetch, receive_for, rest, task

SMALL = {"model": "easel-demo", "width": 64, "height": 64, "steps": 2}
WHITE = data_uri(Image.new("RGB", (64, 64), "white"))


def _inference(**fields: Any) -> dict[str, Any]:
    return task("imageInference", **{"positivePrompt": "a cat", **SMALL, **fields})


def _noise(seed: int = 0, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


# --- errors ---


@pytest.mark.parametrize(
    ("fields", "code", "parameter"),
    [
        ({"width": 7}, "invalidParameter", "width"),
        ({"steps": 0}, "invalidParameter", "steps"),
        ({"model": "civitai:1@1"}, "unknownModel", "model"),
        ({"positivePrompt": None}, "missingParameter", "positivePrompt"),
        ({"positivePrompt": ""}, "invalidParameter", "positivePrompt"),
        ({"maskImage": "x"}, "missingParameter", "seedImage"),
        ({"seedImage": "not an image"}, "invalidImage", "seedImage"),
        ({"scheduler": "NoSuchScheduler"}, "invalidParameter", None),
        ({"lora": [{"model": "nope", "weight": 1}]}, "unknownModel", "lora[0].model"),
        ({"checkNSFW": True}, "modelUnavailable", None),  # no safety checker installed
        ({"outputFormat": "GIF"}, "invalidParameter", "outputFormat"),
        (
            {
                "seedImage": WHITE,
                "maskImage": WHITE,
                "refiner": {"model": "easel-demo", "startStep": 1},
            },
            "invalidParameter",
            None,
        ),
    ],
)
def test_bad_fields_are_errors_of_their_task(make_client, fields, code, parameter) -> None:
    client = make_client()
    bad = _inference(**fields)
    response = rest(client, bad)
    assert response.status_code == 400, response.text
    body = response.json()
    assert "data" not in body
    (error,) = body["errors"]
    assert error["taskUUID"] == bad["taskUUID"]
    assert error["taskType"] == "imageInference"
    assert error["code"] == code, error
    assert error["message"]
    if parameter is not None:
        assert error["parameter"] == parameter


def test_one_bad_task_does_not_lose_the_others(make_client) -> None:
    client = make_client()
    good, bad = _inference(seed=1), _inference(width=3)
    body = rest(client, good, bad).json()
    assert [item["taskUUID"] for item in body["data"]] == [good["taskUUID"]]
    assert [item["taskUUID"] for item in body["errors"]] == [bad["taskUUID"]]


def test_reused_task_uuid_is_a_conflict(make_client) -> None:
    client = make_client()
    first = _inference()
    assert rest(client, first).status_code == 200
    (error,) = rest(client, first).json()["errors"]
    assert error["code"] == "conflictTaskUUID" and error["taskUUID"] == first["taskUUID"]


def test_unknown_and_not_yet_served_task_types(make_client) -> None:
    client = make_client()
    unknown, later = task("makeCoffee"), task("photoMaker", positivePrompt="x")
    errors = rest(client, unknown, later).json()["errors"]
    assert [e["code"] for e in errors] == ["unknownTaskType", "unsupportedTaskType"]
    assert [e["taskUUID"] for e in errors] == [unknown["taskUUID"], later["taskUUID"]]


def test_malformed_messages_on_the_socket(make_client) -> None:
    with make_client().websocket_connect("/v1") as socket:
        socket.send_text("{not json")
        assert socket.receive_json()["errors"][0]["code"] == "invalidMessage"
        socket.send_json("a string")
        assert socket.receive_json()["errors"][0]["code"] == "invalidMessage"
        socket.send_json([{"taskType": "ping", "ping": True}])
        assert socket.receive_json() == {"data": [{"taskType": "ping", "pong": True}]}


# --- outputs ---


@pytest.mark.parametrize(
    ("output_format", "media_type", "pil_format"),
    [("PNG", "image/png", "PNG"), ("JPG", "image/jpeg", "JPEG"), ("WEBP", "image/webp", "WEBP")],
)
def test_output_formats_types_and_cost(make_client, output_format, media_type, pil_format) -> None:
    client = make_client()
    inference = _inference(
        outputFormat=output_format,
        outputQuality=80,
        outputType=["URL", "base64Data", "dataURI"],
        includeCost=True,
        numberResults=2,
        seed=3,
    )
    items = rest(client, inference).json()["data"]
    assert len({item["imageUUID"] for item in items}) == 2
    for item in items:
        assert item["status"] == "success"
        response = client.get(item["imageURL"])
        assert response.headers["content-type"] == media_type
        assert Image.open(io.BytesIO(response.content)).format == pil_format
        assert item["imageDataURI"].startswith(f"data:{media_type};base64,")
        assert item["imageDataURI"].endswith(item["imageBase64Data"])
        assert item["cost"] == pytest.approx(64 * 64 / 1e6 * 2 * 0.00025)


def test_default_output_is_a_jpeg_url_without_cost(make_client) -> None:
    (item,) = rest(client := make_client(), _inference()).json()["data"]
    assert item["imageURL"].endswith(".jpg")
    assert "cost" not in item and "imageBase64Data" not in item
    assert client.get(item["imageURL"]).status_code == 200


# --- uploads and image inputs ---


def test_upload_accepts_data_uris_and_raw_base64(make_client) -> None:
    client = make_client()
    image = _noise(1)
    uri = data_uri(image)
    for value in (uri, uri.split(",", 1)[1]):
        (item,) = rest(client, task("imageUpload", image=value)).json()["data"]
        assert np.array_equal(fetch(client, item["imageURL"]), np.asarray(image))


def test_unknown_image_uuid_is_an_error(make_client) -> None:
    bad = _inference(seedImage="00000000-0000-4000-8000-000000000000")
    (error,) = rest(make_client(), bad).json()["errors"]
    assert error["code"] == "invalidImage" and "no image with imageUUID" in error["message"]


class _Recorder(BaseHTTPRequestHandler):
    """Serves one PNG on GET and records PUT / POST bodies."""

    received: ClassVar[list[tuple[str, str, bytes]]] = []
    image: ClassVar[bytes] = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.image)))
        self.end_headers()
        self.wfile.write(self.image)

    def _record(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append((self.command, self.headers.get("Content-Type", ""), body))
        self.send_response(200)
        self.end_headers()

    do_PUT = do_POST = _record

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def recorder() -> Iterator[str]:
    _Recorder.received = []
    buffer = io.BytesIO()
    _noise(5).save(buffer, format="PNG")
    _Recorder.image = buffer.getvalue()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_url_inputs_upload_endpoint_and_webhook(make_client, recorder) -> None:
    client = make_client(url_allow=("127.0.0.0/8",))
    inference = _inference(
        seedImage=f"{recorder}/seed.png",
        strength=0.5,
        outputFormat="PNG",
        uploadEndpoint=f"{recorder}/bucket/object.png",
        webhookURL=f"{recorder}/hook",
    )
    (item,) = rest(client, inference).json()["data"]
    stored = client.get(item["imageURL"]).content
    puts = [r for r in _Recorder.received if r[0] == "PUT"]
    posts = [r for r in _Recorder.received if r[0] == "POST"]
    assert puts == [("PUT", "image/png", stored)]
    assert len(posts) == 1 and json.loads(posts[0][2]) == {"data": [item]}


def test_private_urls_are_refused_unless_allowed(make_client, recorder) -> None:
    inference = _inference(seedImage=f"{recorder}/seed.png")
    (error,) = rest(make_client(), inference).json()["errors"]
    assert error["code"] == "invalidImage" and error["parameter"] == "seedImage"
    assert "127.0.0.1" in error["message"]
    assert _Recorder.received == []


# --- async delivery ---


def test_async_delivery_then_get_response(make_client) -> None:
    client = make_client()
    inference = _inference(deliveryMethod="async", numberResults=2, seed=9)
    (ack,) = rest(client, inference).json()["data"]
    assert ack == {
        "taskType": "imageInference",
        "taskUUID": inference["taskUUID"],
        "status": "processing",
    }
    poll = task("getResponse", taskUUID=inference["taskUUID"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        poll["taskUUID"] = inference["taskUUID"]
        items = rest(client, poll).json()["data"]
        if items[0]["status"] == "success":
            break
        assert items[0]["status"] == "processing"
        time.sleep(0.1)
    assert [i["seed"] for i in items] == [9, 10]
    assert all(i["taskUUID"] == inference["taskUUID"] and i["imageURL"] for i in items)


def test_async_failure_and_unknown_task_in_get_response(make_client) -> None:
    client = make_client()
    (error,) = rest(client, task("getResponse", taskUUID="nope")).json()["errors"]
    assert error["code"] == "taskNotFound"


# --- preprocessing and model search ---


def test_controlnet_preprocess_both_task_names(make_client) -> None:
    client = make_client()
    image = _noise(2, 96)
    old = task(
        "imageControlNetPreProcess",
        inputImage=data_uri(image),
        preProcessorType="canny",
        lowThresholdCanny=50,
        highThresholdCanny=150,
        outputFormat="PNG",
    )
    new = task(
        "controlNetPreprocess",
        model="runware:controlnet-preprocess@canny",
        inputs={"image": data_uri(image)},
        settings={"lowThresholdCanny": 50, "highThresholdCanny": 150},
        outputFormat="PNG",
    )
    options = {"low_threshold": 50.0, "high_threshold": 150.0}
    want = preprocess("canny", image, resolution=512, options=options, models_dir=None)
    want = want.resize(image.size, Image.Resampling.LANCZOS)
    for sent in (old, new):
        (item,) = rest(client, sent).json()["data"]
        assert item["taskType"] == sent["taskType"]
        assert item["guideImageUUID"] and item["inputImageUUID"]
        assert np.array_equal(fetch(client, item["guideImageURL"]), np.asarray(want.convert("RGB")))
        assert np.array_equal(
            fetch(client, item["guideImageURL"]), fetch(client, item["guideImageURL"])
        )


def test_preprocess_errors(make_client) -> None:
    client = make_client()
    image = data_uri(_noise(0))
    cases = [
        (task("imageControlNetPreProcess", inputImage=image, preProcessorType="seg"), "seg"),
        (task("imageControlNetPreProcess", inputImage=image, preProcessorType="zzz"), "unknown"),
        (
            task(
                "imageControlNetPreProcess",
                inputImage=image,
                preProcessorType="shuffle",
                lowThresholdCanny=1,
            ),
            "canny",
        ),
    ]
    for sent, words in cases:
        (error,) = rest(client, sent).json()["errors"]
        assert error["taskUUID"] == sent["taskUUID"] and words in error["message"]


def test_model_search(make_client) -> None:
    (item,) = rest(make_client(), task("modelSearch", search="demo", limit=5)).json()["data"]
    assert item["totalResults"] == 1
    (model,) = item["results"]
    assert model["air"] == "easel-demo" and model["category"] == "checkpoint"
    assert model["tags"] == [] and model["private"] is False
    (none,) = rest(make_client(), task("modelSearch", category="lora")).json()["data"]
    assert none["totalResults"] == 0 and none["results"] == []


# --- authentication and sessions ---


KEYS = KeyStore.of(runware={"good-key"})


def test_rest_authentication(make_client) -> None:
    client = make_client(keys=KEYS)
    for key in (None, "bad-key"):
        response = rest(client, _inference(), api_key=key)
        assert response.status_code == 401
        (error,) = response.json()["errors"]
        assert error["code"] in ("invalidApiKey", "missingApiKey")
        assert error["taskType"] == "authentication"
    assert rest(client, _inference(), api_key="good-key").status_code == 200
    in_body = [{"taskType": "authentication", "apiKey": "good-key"}, _inference()]
    assert client.post("/v1", json=in_body).status_code == 200


def test_socket_authentication(make_client) -> None:
    client = make_client(keys=KEYS)
    with client.websocket_connect("/v1") as socket:
        early = _inference()
        socket.send_json([early])
        (error,) = receive_for(socket, early["taskUUID"])
        assert error["code"] == "missingApiKey"
        socket.send_json([{"taskType": "authentication", "apiKey": "bad-key"}])
        assert socket.receive_json() == {
            "errors": [
                {
                    "code": "invalidApiKey",
                    "message": "Invalid API key",
                    "parameter": "apiKey",
                    "taskType": "authentication",
                }
            ]
        }
        socket.send_json([{"taskType": "authentication", "apiKey": "good-key"}])
        assert socket.receive_json()["data"][0]["connectionSessionUUID"]


def test_results_wait_for_a_resumed_session(make_client) -> None:
    client = make_client(keys=KEYS)
    inference = _inference(steps=4, numberResults=2)
    with client.websocket_connect("/v1") as socket:
        socket.send_json([{"taskType": "authentication", "apiKey": "good-key"}])
        session = socket.receive_json()["data"][0]["connectionSessionUUID"]
        socket.send_json([inference])
    # The socket is gone; the task goes on and its frame waits for the session.
    time.sleep(0.2)
    with client.websocket_connect("/v1") as socket:
        socket.send_json(
            [{"taskType": "authentication", "apiKey": "good-key", "connectionSessionUUID": session}]
        )
        first = socket.receive_json()
        assert first["data"][0] == {"taskType": "authentication", "connectionSessionUUID": session}
        items = receive_for(socket, inference["taskUUID"], 2)
        assert all(item["status"] == "success" for item in items)
    # Another key cannot take the session over.
    other = make_client(keys=KeyStore.of(runware={"good-key", "other"}))
    with other.websocket_connect("/v1") as socket:
        socket.send_json(
            [{"taskType": "authentication", "apiKey": "other", "connectionSessionUUID": session}]
        )
        assert socket.receive_json()["data"][0]["connectionSessionUUID"] != session
