"""End to end: raw WebSocket frames against a real `easel serve` process on /v1.

The legacy (picfinder) protocol, message by message as a legacy client writes it, and the
guarantee both protocol generations give: a ping is answered at once while the (CPU) worker is
busy with a long job. One server for the whole module, with a keys file, serving the embedded
demo model. Legacy sizes start at 512x512, so legacy generations use one or two steps.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from websockets.sync.client import ClientConnection, connect

from pipelines.preprocessors import preprocess
from tests.e2e.server_process import ServerProcess

API_KEY = "e2e-socket-key"
MODEL = "easel-demo"  # a string modelId is passed through as the model's id
SEED = 4242
RECEIVE_TIMEOUT_S = 60.0
PING_PERIOD_S = 0.2
MAX_PONG_S = 1.0
# A legacy text-to-image task: "-no" splits off the negative prompt; style 3 and scheduler 17
# (EulerDiscreteScheduler) are served.
PROMPT = "a red fox in the snow -no blurry, dark"
POSITIVE = "a red fox in the snow"
LEGACY_BUSY_STEPS = 6  # two 512x512 images: a few seconds of CPU work


def _uuid() -> str:
    return str(uuid.uuid4())


def new_task(**fields: Any) -> dict[str, Any]:
    body = {
        "taskUUID": _uuid(),
        "taskType": 1,
        "promptText": PROMPT,
        "modelId": MODEL,
        "sizeId": 1,
        "steps": 1,
        "gScale": 7.5,
        "numberResults": 1,
        "styleId": 3,
        "schedulerId": 17,
        "useCache": False,
        **fields,
    }
    return {"newTask": body}


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def noise(seed: int, size: int = 512) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def square(size: int = 96) -> Image.Image:
    """A bright square on black: its canny map is the square's outline."""
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 230
    return Image.fromarray(pixels)


def download(url: str) -> np.ndarray:
    assert url.startswith("http://127.0.0.1:"), url
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200, url
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


class Socket:
    """A raw client socket: JSON frames out, JSON frames in."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection

    def send(self, frame: Any) -> None:
        self.connection.send(frame if isinstance(frame, str) else json.dumps(frame))

    def receive(self, timeout: float = RECEIVE_TIMEOUT_S) -> Any:
        return json.loads(self.connection.recv(timeout=timeout))

    def ask(self, frame: Any) -> Any:
        """Send one frame and return the next one received."""
        self.send(frame)
        return self.receive()

    def replies_for(self, *task_uuids: str) -> dict[str, list[Any]]:
        """Legacy frames until each task has its answer (a task's images may span frames)."""
        wanted = {task_uuid: 0 for task_uuid in task_uuids}
        expected: dict[str, int] = {}
        replies: dict[str, list[Any]] = {task_uuid: [] for task_uuid in task_uuids}
        while any(expected.get(t) is None or wanted[t] < expected[t] for t in wanted):
            frame = self.receive()
            task_uuid, count, total = _legacy_task_of(frame)
            assert task_uuid in replies, f"a frame for no task of ours: {frame}"
            replies[task_uuid].append(frame)
            wanted[task_uuid] += count
            expected[task_uuid] = total
        return replies

    def legacy_login(self) -> None:
        reply = self.ask({"newConnection": {"apiKey": API_KEY}})
        session = reply["newConnectionSessionUUID"]["connectionSessionUUID"]
        assert uuid.UUID(session)


def _legacy_task_of(frame: dict[str, Any]) -> tuple[str, int, int]:
    """(taskUUID, results in this frame, results the task makes) of one legacy reply frame."""
    if frame.get("error"):
        return frame["taskUUID"], 1, 1
    if "newImages" in frame:
        body = frame["newImages"]
        return body["images"][0]["taskUUID"], len(body["images"]), body["totalAvailableResults"]
    ((_key, body),) = frame.items()
    return body["taskUUID"], 1, 1


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("runware-socket")
    keys_file = root / "keys.json"
    keys_file.write_text(json.dumps({"runware": [{"api_key": API_KEY}]}))
    process = ServerProcess(root / "data", "--keys-file", str(keys_file))
    with process:
        yield process


@contextlib.contextmanager
def open_socket(server: ServerProcess, login: bool = True) -> Iterator[Socket]:
    """A socket to the server's /v1, logged in with a legacy newConnection unless told not to."""
    url = server.url.replace("http://", "ws://") + "/v1"
    with connect(url, max_size=None, open_timeout=30) as connection:
        sock = Socket(connection)
        if login:
            sock.legacy_login()
        yield sock


@pytest.fixture
def socket(server: ServerProcess) -> Iterator[Socket]:
    with open_socket(server) as sock:
        yield sock


@pytest.fixture(scope="module")
def seeded(server: ServerProcess) -> tuple[dict[str, Any], list[np.ndarray], list[Any]]:
    """One legacy text-to-image task with two seeded images: (message, pixels, its frames)."""
    with open_socket(server) as sock:
        message = new_task(numberResults=2, seed=SEED)
        task_uuid = message["newTask"]["taskUUID"]
        sock.send(message)
        frames = sock.replies_for(task_uuid)[task_uuid]
    images = [image for frame in frames for image in frame["newImages"]["images"]]
    return message, [download(image["imageSrc"]) for image in images], frames


# --- authentication and keepalive ---


def test_new_connection_then_ping(socket: Socket) -> None:
    assert socket.ask({"ping": True}) == {"pong": True}
    # A second newConnection on the same socket re-authenticates.
    reply = socket.ask({"newConnection": {"apiKey": API_KEY}})
    assert set(reply) == {"newConnectionSessionUUID"}


def test_bad_key_and_tasks_before_authentication(server: ServerProcess) -> None:
    with open_socket(server, login=False) as sock:
        assert sock.ask({"newConnection": {"apiKey": "wrong"}}) == {
            "error": True,
            "errorId": 19,
            "errorMessage": "Invalid api key",
        }
        assert sock.ask({"ping": True}) == {"pong": True}  # still open
        message = new_task()
        error = sock.ask(message)
        assert error["error"] is True
        assert error["errorId"] == 18, error
        assert error["taskUUID"] == message["newTask"]["taskUUID"]
        sock.legacy_login()  # the same socket can still authenticate


# --- newTask ---


def test_new_task_gives_two_seeded_images(server: ServerProcess, seeded) -> None:
    message, pixels, frames = seeded
    task_uuid = message["newTask"]["taskUUID"]
    images = [image for frame in frames for image in frame["newImages"]["images"]]
    assert len(images) == 2
    assert all(frame["newImages"]["totalAvailableResults"] == 2 for frame in frames)
    for image in images:
        assert set(image) == {"imageSrc", "imageUUID", "bNSFWContent", "imageAltText", "taskUUID"}
        assert image["taskUUID"] == task_uuid
        assert image["imageAltText"] == POSITIVE  # the part before -no, before the style
        assert image["bNSFWContent"] is False
        assert image["imageUUID"] in image["imageSrc"]
    assert len({image["imageUUID"] for image in images}) == 2
    assert all(p.shape == (512, 512, 3) for p in pixels)
    assert not np.array_equal(pixels[0], pixels[1])

    # The same task again under a new taskUUID: the same pixels (up to batching: the two tasks
    # below arrive together and share forwards, float rounding of another batch size, seen after
    # JPEG: mean 0.13, max 8, far below the distance between two seeds, ~34). Image i uses
    # seed + i: the second image again, from seed + 1.
    again = {"newTask": {**message["newTask"], "taskUUID": _uuid()}}
    second = new_task(numberResults=1, seed=SEED + 1)
    ids = [again["newTask"]["taskUUID"], second["newTask"]["taskUUID"]]
    with open_socket(server) as sock:
        sock.send(again)
        sock.send(second)
        replies = sock.replies_for(*ids)
    repeated = [image for frame in replies[ids[0]] for image in frame["newImages"]["images"]]
    assert [image["taskUUID"] for image in repeated] == [ids[0]] * 2
    assert all(
        np.abs(download(image["imageSrc"]).astype(np.int16) - want).mean() < 1.0
        for image, want in zip(repeated, pixels, strict=True)
    )
    ((image,),) = [frame["newImages"]["images"] for frame in replies[ids[1]]]
    alone = download(image["imageSrc"]).astype(np.int16)
    assert np.abs(alone - pixels[1]).mean() < 1.0
    assert np.abs(alone - pixels[0]).mean() > 10.0


def test_image_upload_img2img_inpaint_and_canny(socket: Socket, seeded) -> None:
    picture, mask = noise(1), Image.new("RGB", (512, 512))
    mask.paste((255, 255, 255), (128, 128, 384, 384))
    uploads = {}
    for name, image in (("picture", picture), ("mask", mask), ("square", square())):
        task_uuid = _uuid()
        reply = socket.ask(
            {"newImageUpload": {"taskUUID": task_uuid, "imageBase64": png_base64(image)}}
        )
        body = reply["newUploadedImageUUID"]
        assert body["taskUUID"] == task_uuid
        assert np.array_equal(download(body["newImageSrc"]), np.asarray(image))
        uploads[name] = body["newImageUUID"]

    # Canny on the uploaded square: the server's map is the preprocessor's (JPEG-encoded).
    canny_uuid = _uuid()
    reply = socket.ask(
        {
            "newPreProcessControlNet": {
                "taskUUID": canny_uuid,
                "preProcessorType": "canny",
                "guideImageUUID": uploads["square"],
                "lowThresholdCanny": 50,
                "highThresholdCanny": 150,
                "includeHandsAndFaceOpenPose": False,
            }
        }
    )
    body = reply["newPreProcessControlNet"]
    assert body["taskUUID"] == canny_uuid
    assert body["initImageUUID"] == uploads["square"]
    assert body["newImageUUID"] not in (uploads["square"], None)
    got = download(body["newImageSrc"]).astype(np.int16)
    options = {"low_threshold": 50.0, "high_threshold": 150.0}
    want = preprocess("canny", square(), resolution=512, options=options, models_dir=None)
    want_pixels = np.asarray(want.resize(square().size, Image.Resampling.LANCZOS).convert("RGB"))
    assert got.shape == want_pixels.shape
    assert np.abs(got - want_pixels).mean() < 6, "not the canny map of the uploaded image"
    assert np.abs(got - np.asarray(square())).mean() > 40  # a map, not the input

    # img2img and inpainting from the uploaded images, both in flight at once.
    img2img = new_task(
        taskType=2, steps=2, seed=SEED, strength=0.5, imageInitiatorUUID=uploads["picture"]
    )
    inpaint = new_task(
        taskType=3,
        steps=2,
        seed=SEED,
        strength=0.5,
        imageInitiatorUUID=uploads["picture"],
        imageMaskInitiatorUUID=uploads["mask"],
    )
    ids = [img2img["newTask"]["taskUUID"], inpaint["newTask"]["taskUUID"]]
    socket.send(img2img)
    socket.send(inpaint)
    replies = socket.replies_for(*ids)
    outputs = []
    for task_uuid in ids:
        (frame,) = replies[task_uuid]
        assert "error" not in frame, frame
        (image,) = frame["newImages"]["images"]
        assert image["imageAltText"] == POSITIVE
        outputs.append(download(image["imageSrc"]))
    source = np.asarray(picture).astype(np.int16)
    _, txt2img, _ = seeded
    for output in outputs:
        assert output.shape == (512, 512, 3)
        assert not np.array_equal(output, txt2img[0])
    assert not np.array_equal(outputs[0], outputs[1])
    # Inpainting keeps the unmasked border close to the source image; img2img does not.
    border = np.ones((512, 512), dtype=bool)
    border[96:416, 96:416] = False
    inpaint_error = np.abs(outputs[1].astype(np.int16) - source)[border].mean()
    img2img_error = np.abs(outputs[0].astype(np.int16) - source)[border].mean()
    assert inpaint_error < img2img_error, (inpaint_error, img2img_error)


# --- errors ---


@pytest.mark.parametrize(
    ("fields", "error_id", "words"),
    [
        ({"sizeId": 99}, 3, "sizeId 99"),
        ({"modelId": 999}, 5, "modelId 999"),
        ({"modelId": "civitai:1@1"}, 5, "civitai:1@1"),
        ({"schedulerId": 999}, 3, "schedulerId"),
        ({"styleId": 999}, 3, "styleId"),
        ({"taskType": 4}, 4, "newReverseImageClip"),
        ({"taskType": 1, "imageInitiatorUUID": "x"}, 3, "imageInitiatorUUID"),
    ],
)
def test_bad_new_task_is_a_legacy_error_with_its_task_uuid(
    socket: Socket, fields: dict[str, Any], error_id: int, words: str
) -> None:
    message = new_task(**fields)
    error = socket.ask(message)
    assert error["error"] is True, error
    assert error["errorId"] == error_id, error
    assert error["taskUUID"] == message["newTask"]["taskUUID"]
    assert words in error["errorMessage"], error
    assert socket.ask({"ping": True}) == {"pong": True}


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("newReverseImageClip", "inputImage"),  # an unknown imageUUID: the image is missing
        ("newUpscaleGan", "inputImage"),
        ("newRemoveBackground", "inputImage"),
        # (newPromptEnhance runs: the demo set's prompt enhancer answers it, see
        # test_demo_set_server.py; this server has no utility models of its own.)
    ],
)
def test_utility_messages_that_cannot_run_are_clear_legacy_errors(
    socket: Socket, key: str, words: str
) -> None:
    task_uuid = _uuid()
    body = {"taskUUID": task_uuid, "imageUUID": _uuid(), "prompt": "a cat", "upscaleFactor": 2}
    error = socket.ask({key: body})
    assert error["error"] is True and error["taskUUID"] == task_uuid, error
    assert words in error["errorMessage"], error
    assert socket.ask({"ping": True}) == {"pong": True}


def test_malformed_frames_get_errors_and_the_socket_stays_usable(socket: Socket) -> None:
    error = socket.ask("this is not JSON {")
    # The socket cannot tell which protocol a non-JSON frame meant: the current error frame.
    assert error == {"errors": [{"code": "invalidMessage", "message": "not JSON"}]}
    error = socket.ask({"newThing": {"taskUUID": "t-1"}})
    assert error["error"] is True and error["errorId"] == 2
    assert error["taskUUID"] == "t-1"
    assert "newThing" in error["errorMessage"]
    error = socket.ask({"newTask": "not an object"})
    assert error["error"] is True and error["errorId"] == 2
    assert socket.ask({"ping": True}) == {"pong": True}


# --- pings while the worker is busy ---


def pong_latencies(
    sock: Socket,
    ping: Any,
    is_pong: Callable[[Any], bool],
    done: Callable[[list[Any]], bool],
) -> tuple[list[float], int, list[Any]]:
    """Ping every PING_PERIOD_S until `done(frames)` sees the busy job's whole answer among the
    frames that were not pongs; each ping waits for its own pong. Returns every round trip, how
    many pongs came back before the answer was complete, and the other frames."""
    latencies: list[float] = []
    before = 0
    others: list[Any] = []
    while not done(others):
        sent = time.monotonic()
        sock.send(ping)
        while not is_pong(frame := sock.receive(timeout=MAX_PONG_S * 5)):
            others.append(frame)
        latencies.append(time.monotonic() - sent)
        before += not done(others)
        time.sleep(max(0.0, PING_PERIOD_S - (time.monotonic() - sent)))
    return latencies, before, others


def test_current_ping_is_answered_while_the_worker_is_busy(server: ServerProcess) -> None:
    with open_socket(server, login=False) as sock:
        reply = sock.ask([{"taskType": "authentication", "apiKey": API_KEY}])
        assert reply["data"][0]["taskType"] == "authentication"
        busy_uuid = _uuid()
        busy = {
            "taskType": "imageInference",
            "taskUUID": busy_uuid,
            "positivePrompt": "a long job",
            "model": MODEL,
            "width": 256,  # a few seconds of CPU work even on a quiet machine
            "height": 256,
            "steps": 30,
            "numberResults": 2,
            "seed": 1,
        }
        sock.send([busy])

        def items(frames: list[Any]) -> list[Any]:
            return [item for f in frames for item in f.get("data", []) + f.get("errors", [])]

        latencies, before, others = pong_latencies(
            sock,
            [{"taskType": "ping", "ping": True}],
            lambda frame: frame == {"data": [{"taskType": "ping", "pong": True}]},
            lambda frames: len(items(frames)) >= 2 or any("errors" in f for f in frames),
        )
    assert not any("errors" in frame for frame in others), others
    assert [item["taskUUID"] for item in items(others)] == [busy_uuid] * 2
    assert before >= 5, latencies
    assert max(latencies) < MAX_PONG_S, latencies


def test_legacy_ping_is_answered_while_the_worker_is_busy(socket: Socket) -> None:
    busy = new_task(steps=LEGACY_BUSY_STEPS, numberResults=2, seed=SEED)
    socket.send(busy)

    def images(frames: list[Any]) -> list[Any]:
        return [image for f in frames for image in f.get("newImages", {}).get("images", [])]

    latencies, before, others = pong_latencies(
        socket,
        {"ping": True},
        lambda frame: frame == {"pong": True},
        lambda frames: len(images(frames)) >= 2 or any(f.get("error") for f in frames),
    )
    assert not any(frame.get("error") for frame in others), others
    assert [image["taskUUID"] for image in images(others)] == [busy["newTask"]["taskUUID"]] * 2
    assert before >= 5, latencies
    assert max(latencies) < MAX_PONG_S, latencies
