"""Request limits (server/limits.py) through the in-process app, on every protocol: body size,
image file size and pixels (decompression bombs included), width x height x images, prompt
length, WebSocket message size and rate. Each refusal comes in the protocol's own format, and a
request just under each limit still works.

Three apps for the module: one with tight limits (small sizes), one with a tight WebSocket rate,
one with the defaults (the bombs are judged by the limits a server really runs with).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.body_limit import BodyLimit
from server.limits import Limits
from server.runware.throttle import MessageBucket
from tests.conftest import demo_app
from tests.parity import png_data_uri as data_uri
from tests.runware_client import receive_for, rest, task

KIB = 1024
TIGHT = Limits(
    max_body_bytes=64 * KIB,
    max_image_bytes=8 * KIB,
    max_image_pixels=96 * 96,
    max_request_pixels=64 * 64 * 2,
    max_prompt_chars=40,
    ws_max_frame_bytes=32 * KIB,
)
THROTTLED = Limits(ws_messages_per_s=0.001, ws_burst=3)
SMALL = {"model": "easel-demo", "width": 64, "height": 64, "steps": 2}
BLACK = data_uri(Image.new("RGB", (64, 64)))
PICPIK_SMALL = {"MainModel": {"ModelCode": "easel-demo", "InferenceParams": {"Steps": 6}}}


@pytest.fixture(scope="module")
def clients(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """name -> a started TestClient: "tight", "throttled", "default"."""
    root = tmp_path_factory.mktemp("limits")
    limits = {"tight": TIGHT, "throttled": THROTTLED, "default": Limits()}
    started = {}
    for name, value in limits.items():
        client = TestClient(demo_app(demo_dir, root / name, limits=value))
        client.__enter__()
        started[name] = client
    yield started
    for client in started.values():
        client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def tight(clients: dict) -> TestClient:
    return clients["tight"]


def _picpik(client: TestClient, action: str, **params: Any) -> dict[str, Any]:
    body = {"Action": action, "request_uuid": "r-1", **params}
    response = client.post("/", content=json.dumps(body))
    assert response.status_code == 200, response.text
    return response.json()


def _accepted(client: TestClient, reply: dict[str, Any]) -> None:
    """A generation the server took (RetCode 0, a TaskUID), stopped at once: accepting it is
    what the test shows, running it would only cost time."""
    assert reply["RetCode"] == 0, reply
    assert _picpik(client, "TerminateTask", TaskUID=reply["TaskUID"])["RetCode"] in (0, 10041)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def blank_png(width: int, height: int, bits: int = 1) -> bytes:
    """A black greyscale PNG written row block by row block, never held decoded: the
    "decompression bomb" of a few KB to a few hundred KB that decodes to width x height."""
    row = bytes(1 + (width * bits + 7) // 8)  # filter byte 0, then zeros
    compressor = zlib.compressobj(9)
    block = 256
    parts = [compressor.compress(row * block) for _ in range(height // block)]
    parts += [compressor.compress(row * (height % block)), compressor.flush()]
    header = struct.pack(">IIBBBBB", width, height, bits, 0, 0, 0, 0)
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", b"".join(parts)),
            _png_chunk(b"IEND", b""),
        ]
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# Decode to 400 million pixels (Pillow's own bomb check), 144 million (between Pillow's warning
# and its error: easel's limit decides) and 25 million (just over easel's default 16.8).
BOMBS = {"20000x20000": (20000, 20000, 1), "12000x12000": (12000, 12000, 1)}
OVER_DEFAULT = (5000, 5000, 8)


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    made = {name: blank_png(*size) for name, size in BOMBS.items()}
    made["5000x5000"] = blank_png(*OVER_DEFAULT)
    assert all(len(data) < 400 * KIB for data in made.values())
    return made


# --- the request body -------------------------------------------------------------------------


def _padded(body: dict[str, Any], size: int) -> bytes:
    """The JSON body grown to exactly `size` bytes by a padding field."""
    empty = json.dumps({**body, "Pad": ""}).encode()
    return json.dumps({**body, "Pad": "x" * (size - len(empty))}).encode()


def test_picpik_body_over_the_limit_is_a_retcode(tight: TestClient) -> None:
    body = _padded({"Action": "GetCreditBalance", "request_uuid": "r-1"}, 64 * KIB + 1)
    response = tight.post("/", content=body)
    assert response.status_code == 200
    assert response.json() == {
        "RetCode": 10004,
        "Action": "",
        "Message": "the request body is 65537 bytes, more than this server's limit of 64 KiB",
        "request_uuid": "",
    }


def test_picpik_chunked_body_over_the_limit_is_a_retcode(tight: TestClient) -> None:
    body = _padded({"Action": "GetCreditBalance"}, 100 * KIB)
    chunks = (body[i : i + 4096] for i in range(0, len(body), 4096))
    response = tight.post("/", content=chunks)  # no Content-Length: counted as it comes
    assert response.status_code == 200
    reply = response.json()
    assert reply["RetCode"] == 10004
    assert "larger than this server's limit of 64 KiB" in reply["Message"]


def test_picpik_body_at_the_limit_is_served(tight: TestClient) -> None:
    body = _padded({"Action": "GetCreditBalance", "request_uuid": "r-1"}, 64 * KIB)
    reply = tight.post("/", content=body).json()
    assert reply["RetCode"] == 0, reply
    assert reply["Action"] == "GetCreditBalance"


def test_runware_body_over_the_limit_is_413(tight: TestClient) -> None:
    body = json.dumps([task("ping", pad="x" * (64 * KIB))]).encode()
    response = tight.post("/v1", content=body)
    assert response.status_code == 413
    (error,) = response.json()["errors"]
    assert error["code"] == "payloadTooLarge"
    assert "64 KiB" in error["message"]
    chunked = tight.post("/v1", content=iter([body[:1000], body[1000:]]))
    assert chunked.status_code == 413
    assert chunked.json()["errors"][0]["code"] == "payloadTooLarge"


def test_runware_body_at_the_limit_is_served(tight: TestClient) -> None:
    ping = task("ping")
    empty = len(json.dumps([{**ping, "pad": ""}]))
    body = json.dumps([{**ping, "pad": "x" * (64 * KIB - empty)}])
    assert len(body) == 64 * KIB
    response = tight.post("/v1", content=body)
    assert response.status_code == 200, response.text
    assert response.json()["data"][0]["pong"] is True


class _Chunks:
    """An ASGI receive that hands out a body in chunks and counts what was taken."""

    def __init__(self, chunk: int, count: int) -> None:
        self.chunk, self.left, self.taken = chunk, count, 0

    async def __call__(self) -> dict[str, Any]:
        self.left -= 1
        self.taken += self.chunk
        return {"type": "http.request", "body": b"x" * self.chunk, "more_body": self.left > 0}


def test_body_limit_stops_reading_at_the_limit() -> None:
    """The middleware takes no chunk beyond the one that crosses the limit, and the app never
    sees that one."""
    seen: list[int] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            seen.append(len(message["body"]))
            if not message["more_body"]:
                break

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    receive = _Chunks(chunk=1000, count=1000)  # 1 MB on offer
    scope = {"type": "http", "path": "/v1", "headers": [(b"transfer-encoding", b"chunked")]}
    asyncio.run(BodyLimit(app, max_body_bytes=10_500)(scope, receive, send))
    assert receive.taken == 11_000
    assert sum(seen) == 10_000
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["errors"][0]["code"] == "payloadTooLarge"


# --- image files and pixels -------------------------------------------------------------------


def _noise_png(width: int, height: int) -> bytes:
    """An incompressible PNG: its file is about 3 bytes per pixel."""
    pixels = random.Random(width * height).randbytes(width * height * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (width, height), pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_picpik_image_over_the_file_limit(tight: TestClient) -> None:
    large = _noise_png(60, 60)  # ~10.8 KB > 8 KiB
    assert len(large) > 8 * KIB
    reply = _picpik(
        tight,
        "GenerateImages",
        **PICPIK_SMALL,
        PositivePrompts=["a cat"],
        Width=64,
        Height=64,
        ImageAndMaskList=[_b64(large)],
        Image2Image={"ImageIndex": 0},
    )
    assert reply["RetCode"] == 10011, reply
    assert reply["Message"] == "ImageAndMaskList[0] is larger than this server's limit of 8 KiB"


def test_picpik_image_over_the_pixel_limit(tight: TestClient) -> None:
    reply = _picpik(tight, "RemoveBackground", RawImage=_b64(blank_png(97, 96)))
    assert reply["RetCode"] == 10011, reply
    assert reply["Message"] == "RawImage is 97x96: more than this server's limit of 9216 pixels"


def test_runware_image_over_the_limits(tight: TestClient) -> None:
    large = task("imageUpload", image=_b64(_noise_png(60, 60)))
    wide = task("imageUpload", image="data:image/png;base64," + _b64(blank_png(97, 96)))
    fits = task("imageUpload", image=_b64(blank_png(96, 96)))
    response = rest(tight, large, wide, fits)
    body = response.json()
    errors = {error["taskUUID"]: error for error in body["errors"]}
    assert errors[large["taskUUID"]]["code"] == "invalidImage"
    assert "larger than this server's limit of 8 KiB" in errors[large["taskUUID"]]["message"]
    assert errors[wide["taskUUID"]]["code"] == "invalidImage"
    assert "is 97x96: more than this server's limit of 9216" in errors[wide["taskUUID"]]["message"]
    assert [item["taskUUID"] for item in body["data"]] == [fits["taskUUID"]]


class _Files(BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        data = self.files.get(self.path, b"")
        self.send_response(200 if data else 404)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def file_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_runware_fetched_image_over_the_limits(
    demo_dir: Path, tmp_path: Path, file_server: str
) -> None:
    _Files.files.update(
        {
            "/large.png": _noise_png(60, 60),
            "/wide.png": blank_png(97, 96),
            "/ok.png": blank_png(96, 96),
        }
    )
    app = demo_app(demo_dir, tmp_path, limits=TIGHT, url_allow=("127.0.0.0/8",))
    with TestClient(app) as client:
        tasks = [
            task("imageUpload", image=f"{file_server}/{name}.png")
            for name in ("large", "wide", "ok")
        ]
        body = rest(client, *tasks).json()
    errors = {error["taskUUID"]: error["message"] for error in body["errors"]}
    assert errors[tasks[0]["taskUUID"]] == "image is larger than 8 KiB"
    assert "is 97x96: more than" in errors[tasks[1]["taskUUID"]]
    assert [item["taskUUID"] for item in body["data"]] == [tasks[2]["taskUUID"]]


@pytest.mark.parametrize("name", ["20000x20000", "12000x12000", "5000x5000"])
def test_decompression_bombs_are_invalid_images(clients: dict, bombs: dict, name: str) -> None:
    """Under the default limits: PICPIK INVALID_IMAGE, Runware invalidImage, both naming the
    field and why."""
    client = clients["default"]
    why = "decompression bomb" if name == "20000x20000" else f"is {name}: more than"
    reply = _picpik(client, "RemoveBackground", RawImage=_b64(bombs[name]))
    assert reply["RetCode"] == 10011, reply
    assert reply["Message"].startswith("RawImage ")
    assert why in reply["Message"]
    assert "16777216 pixels" in reply["Message"]
    upload = task("imageUpload", image=_b64(bombs[name]))
    seed = task("imageInference", positivePrompt="a cat", seedImage=_b64(bombs[name]), **SMALL)
    body = rest(client, upload, seed).json()
    for item, parameter in zip(body["errors"], ("image", "seedImage"), strict=True):
        assert item["code"] == "invalidImage"
        assert item["parameter"] == parameter
        assert why in item["message"]


# Peak memory from VmHWM: ru_maxrss would carry the parent's peak over into the child.
_MEASURE = """
import base64, re, sys
from server.images import ImageDecodeError, decode_base64_image
def peak_kb():
    return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
files = [base64.b64encode(open(path, "rb").read()).decode() for path in sys.argv[1:]]
before = peak_kb()
for data in files:
    try:
        decode_base64_image(data)
    except ImageDecodeError as error:
        print(error)
print((peak_kb() - before) // 1024)
"""


def test_bombs_are_refused_before_their_pixels_are_decoded(bombs: dict, tmp_path: Path) -> None:
    """In a fresh process: decoding the three bombs (144 to 400 MB of pixels) grows its peak
    memory by a few MB, not by what they decode to."""
    paths = []
    for name, data in bombs.items():
        paths.append(tmp_path / f"{name}.png")
        paths[-1].write_bytes(data)
    run = subprocess.run(
        [sys.executable, "-c", _MEASURE, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    *messages, grown_mb = run.stdout.split("\n")[:-1]
    assert len(messages) == 3, run.stdout
    assert int(grown_mb) < 40, run.stdout


# --- width x height x images ------------------------------------------------------------------


def test_picpik_request_pixels(tight: TestClient) -> None:
    over = _picpik(
        tight,
        "GenerateImages",
        **PICPIK_SMALL,
        PositivePrompts=["a cat"],
        Width=64,
        Height=64,
        BatchSize=3,
    )
    assert over["RetCode"] == 10010, over
    assert over["Message"] == (
        "invalid Width/Height/BatchSize: 64x64 x 3 images is 12288 pixels, more than this "
        "server's limit of 8192 per request"
    )
    under = _picpik(
        tight,
        "GenerateImages",
        **PICPIK_SMALL,
        PositivePrompts=["a cat"],
        Width=64,
        Height=64,
        BatchSize=2,
    )
    _accepted(tight, under)
    resize = _picpik(tight, "ResizeImage", RawImage=_b64(blank_png(64, 64)), Width=128)
    assert resize["RetCode"] == 10010, resize
    assert resize["Message"].startswith("invalid Width/Height: 128x128 is 16384 pixels")


def test_runware_request_pixels_and_prompts_just_under_are_served(tight: TestClient) -> None:
    at_limit = "a" * 40
    fits = task(
        "imageInference",
        positivePrompt=at_limit,
        negativePrompt=at_limit,
        numberResults=2,
        **SMALL,
    )
    response = rest(tight, fits)
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 2


@pytest.mark.parametrize(
    ("fields", "parameter", "message"),
    [
        (
            {"numberResults": 3},
            "numberResults",
            "width x height x numberResults: 64x64 x 3 images is 12288 pixels, more than this "
            "server's limit of 8192 per request",
        ),
        (
            {"width": 128, "height": 128},
            "width",
            "width x height x numberResults: 128x128 is 16384 pixels",
        ),
        ({"positivePrompt": "a" * 41}, "positivePrompt", "positivePrompt is 41 characters long"),
        ({"negativePrompt": "a" * 41}, "negativePrompt", "negativePrompt is 41 characters long"),
    ],
)
def test_runware_inference_over_the_limits(
    tight: TestClient, fields: dict, parameter: str, message: str
) -> None:
    bad = task("imageInference", **{"positivePrompt": "a cat", **SMALL, **fields})
    response = rest(tight, bad)
    assert response.status_code == 400
    (error,) = response.json()["errors"]
    assert error["code"] == "invalidParameter"
    assert error["parameter"] == parameter
    assert error["taskUUID"] == bad["taskUUID"]
    assert error["message"].startswith(message), error


@pytest.mark.parametrize(
    ("kind", "fields", "parameter"),
    [
        ("promptEnhance", {"prompt": "a" * 41}, "prompt"),
        ("imageCaption", {"prompt": "a" * 41, "inputImage": "x"}, "prompt"),
        ("caption", {"settings": {"prompt": "a" * 41}, "inputs": {"image": "x"}}, "prompt"),
        ("imageUpscale", {"inputImage": BLACK, "upscaleFactor": 2}, "upscaleFactor"),
    ],
)
def test_runware_utilities_over_the_limits(
    tight: TestClient, kind: str, fields: dict, parameter: str
) -> None:
    bad = task(kind, **fields)
    (error,) = rest(tight, bad).json()["errors"]
    assert error["code"] == "invalidParameter", error
    assert error["parameter"] == parameter
    assert error["taskUUID"] == bad["taskUUID"]
    if parameter == "prompt":
        assert error["message"].startswith("prompt is 41 characters long")
    else:
        assert error["message"].startswith("inputImage x upscaleFactor: 128x128 is 16384")


def test_picpik_prompts(tight: TestClient) -> None:
    long = _picpik(
        tight, "GenerateImages", **PICPIK_SMALL, PositivePrompts=["a cat", "b" * 41], Width=64
    )
    assert long["RetCode"] == 10010, long
    assert long["Message"] == (
        "invalid PositivePrompts[1]: is 41 characters long, more than this server's limit of 40"
    )
    joined = _picpik(
        tight,
        "GenerateImages",
        **PICPIK_SMALL,
        PositivePrompts=["a cat"],
        NegativePrompts=["c" * 20, "d" * 20],
        Width=64,
    )
    assert joined["RetCode"] == 10010, joined
    assert joined["Message"].startswith(
        "invalid NegativePrompts: joined into one prompt, it is 42 characters long"
    )
    at_limit = _picpik(
        tight,
        "GenerateImages",
        **PICPIK_SMALL,
        PositivePrompts=["a" * 40],
        NegativePrompts=["c" * 19, "d" * 19],
        Width=64,
        Height=64,
    )
    _accepted(tight, at_limit)


# --- the WebSocket ----------------------------------------------------------------------------


def _legacy_task(**fields: Any) -> dict[str, Any]:
    return {
        "newTask": {
            "taskUUID": fields.pop("taskUUID", "legacy-1"),
            "taskType": 1,
            "promptText": "a cat",
            "modelId": "easel-demo",
            "sizeId": 1,
            "steps": 1,
            "numberResults": 1,
            **fields,
        }
    }


def test_legacy_prompt_and_pixels(tight: TestClient) -> None:
    with tight.websocket_connect("/v1") as socket:
        socket.send_json(_legacy_task(promptText="a" * 41))
        assert socket.receive_json() == {
            "error": True,
            "errorId": 3,
            "errorMessage": "promptText is 41 characters long, more than this server's limit of 40",
            "taskUUID": "legacy-1",
        }
        socket.send_json(_legacy_task(taskUUID="legacy-2"))  # 512x512 (sizeId 1)
        frame = socket.receive_json()
        assert frame["errorId"] == 3 and frame["taskUUID"] == "legacy-2", frame
        assert frame["errorMessage"].startswith(
            "width x height x numberResults: 512x512 is 262144 pixels"
        )


def test_oversized_frames_are_answered_and_the_socket_stays(tight: TestClient) -> None:
    big = task("imageUpload", image="x" * (32 * KIB))
    with tight.websocket_connect("/v1") as socket:
        socket.send_text(json.dumps([big]))
        (error,) = socket.receive_json()["errors"]
        assert error["code"] == "payloadTooLarge"
        assert error["taskUUID"] == big["taskUUID"]
        assert error["taskType"] == "imageUpload"
        assert "more than this server's limit of 32 KiB per WebSocket message" in error["message"]
        socket.send_bytes(json.dumps([big, task("ping")]).encode())
        errors = socket.receive_json()["errors"]
        assert [item.get("taskUUID") for item in errors] == [big["taskUUID"], errors[1]["taskUUID"]]
        assert "taskType" not in errors[0]  # two task types in the frame: not guessed
        legacy = _legacy_task(taskUUID="legacy-big", promptText="x" * (32 * KIB))
        socket.send_text(json.dumps(legacy))
        frame = socket.receive_json()
        assert frame["errorId"] == 2 and frame["taskUUID"] == "legacy-big", frame
        socket.send_text("x" * (40 * KIB))  # nothing to name: an error without a taskUUID
        (error,) = socket.receive_json()["errors"]
        assert error["code"] == "payloadTooLarge" and "taskUUID" not in error
        # Just under the limit: read and served as usual.
        fits = task("getResponse", pad="x" * (32 * KIB - 200))
        text = json.dumps([fits])
        assert 32 * KIB - 200 < len(text) <= 32 * KIB
        socket.send_text(text)
        (error,) = receive_for(socket, fits["taskUUID"])
        assert error["code"] == "taskNotFound"
        socket.send_json([task("ping")])
        assert socket.receive_json() == {"data": [{"taskType": "ping", "pong": True}]}


def test_messages_over_the_rate_are_refused_by_task_and_pings_answered(clients: dict) -> None:
    with clients["throttled"].websocket_connect("/v1") as socket:
        tasks = [task("getResponse") for _ in range(5)]
        socket.send_json([*tasks[:2], {"taskType": "ping"}, *tasks[2:]])
        frames = [socket.receive_json() for _ in range(6)]
        pongs = [f for f in frames if f.get("data") == [{"taskType": "ping", "pong": True}]]
        assert len(pongs) == 1
        errors = {e["taskUUID"]: e for f in frames for e in f.get("errors", [])}
        assert {errors[t["taskUUID"]]["code"] for t in tasks[:2]} == {"taskNotFound"}
        for refused in tasks[2:]:  # the ping took the third token
            error = errors[refused["taskUUID"]]
            assert error["code"] == "tooManyMessages"
            assert error["taskType"] == "getResponse"
        # Over the rate, pings are still answered; legacy tasks are refused with their uuid.
        socket.send_json([{"taskType": "ping"}])
        assert socket.receive_json()["data"][0]["pong"] is True
        socket.send_json({"ping": True})
        assert socket.receive_json() == {"pong": True}
        socket.send_json(_legacy_task(taskUUID="legacy-late"))
        frame = socket.receive_json()
        assert frame["errorId"] == 7 and frame["taskUUID"] == "legacy-late", frame
        assert "messages per second" in frame["errorMessage"]
    # Another socket has its own bucket.
    with clients["throttled"].websocket_connect("/v1") as socket:
        again = task("getResponse")
        socket.send_json([again])
        assert receive_for(socket, again["taskUUID"])[0]["code"] == "taskNotFound"


def test_message_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    bucket = MessageBucket(rate=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5  # one token back
    assert [bucket.take(), bucket.take()] == [True, False]
    now[0] += 100  # never more than the burst
    assert sum(bucket.take() for _ in range(10)) == 3


# --- configuration ----------------------------------------------------------------------------


def test_serve_flags_and_variables_set_the_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    from server.cli import build_parser, settings_from_args

    monkeypatch.setenv("EASEL_MAX_PROMPT_CHARS", "500")
    monkeypatch.setenv("EASEL_WS_BURST", "7")
    args = build_parser().parse_args(
        [
            "serve",
            "--max-body-mb",
            "1.5",
            "--max-image-mb",
            "2",
            "--max-image-megapixels",
            "2048x1024",
            "--max-request-megapixels",
            "8",
            "--ws-max-frame-mb",
            "4",
            "--ws-messages-per-s",
            "2.5",
            "--ws-burst",
            "9",
        ]
    )
    limits = settings_from_args(args).limits
    assert limits == Limits(
        max_body_bytes=1536 * KIB,
        max_image_bytes=2 * 1024 * KIB,
        max_image_pixels=2048 * 1024,
        max_request_pixels=8_000_000,
        max_prompt_chars=500,  # from the environment
        ws_max_frame_bytes=4 * 1024 * KIB,
        ws_messages_per_s=2.5,
        ws_burst=9,  # the flag wins
    )
    assert limits.ws_hard_cap_bytes == 5 * 1024 * KIB
    assert settings_from_args(build_parser().parse_args(["serve"])).limits == Limits(
        max_prompt_chars=500, ws_burst=7
    )


@pytest.mark.parametrize(
    "argv", [["--max-body-mb", "0"], ["--ws-burst", "-1"], ["--max-image-megapixels", "big"]]
)
def test_bad_limit_flags_are_refused(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    from server.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", *argv])
    assert argv[0] in capsys.readouterr().err
