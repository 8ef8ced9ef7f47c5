"""SSRF through the real request paths: every field that makes the server fetch or call a URL.

Runware (REST and the legacy socket protocol): image inputs given as URLs (seedImage,
imageUpload, preprocessing, caption, upscale, background removal, legacy imageInitiatorUUID /
guideImageUrl / newImageUpload), uploadEndpoint PUTs and webhookURL POSTs. PICPIK takes base64
only: a URL there is refused as an image and never fetched.

Two local HTTP servers stand in for what a client may aim at: one on 127.0.0.1, one on
127.0.0.2. The default server refuses both (loopback); a server run with
`--allow-url-net 127.0.0.1/32` reaches the first and still refuses the second, also when the
first redirects there. Literal metadata addresses are refused before any connection, so they
need no server. Each refusal must be the protocol's own error naming the field, and the target
must have seen no request at all.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.limits import Limits
from server.picpik.errors import RetCode
from tests.conftest import demo_app
from tests.picpik_client import PicpikClient
from tests.runware_client import rest, task

ALLOWED_NET = "127.0.0.1/32"
MAX_IMAGE_BYTES = 256 * 1024  # the allow-listed server's limit: one fetch goes over it
SMALL = {"model": "easel-demo", "width": 64, "height": 64, "steps": 2, "outputFormat": "PNG"}


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


IMAGE = _png(3)


@dataclass
class Target:
    """A local HTTP server that records every request it gets."""

    httpd: ThreadingHTTPServer
    seen: list[tuple[str, str, bytes]] = field(default_factory=list)

    @property
    def host(self) -> str:
        return str(self.httpd.server_address[0])

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.httpd.server_address[1]}{path}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    target: Target

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _route(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.target.seen.append((self.command, self.path, body))
        url = urlsplit(self.path)
        if url.path == "/image.png":
            self._send(200, IMAGE, {"Content-Type": "image/png"})
        elif url.path.startswith("/bytes/"):
            self._send(200, b"x" * int(url.path.rsplit("/", 1)[1]))
        elif url.path == "/redirect":
            self._send(302, headers={"Location": parse_qs(url.query)["to"][0]})
        elif url.path == "/loop":
            self._send(302, headers={"Location": "/loop"})
        else:
            self._send(200)

    do_GET = do_PUT = do_POST = _route


def _start(host: str) -> Target:
    handler = type("Handler", (_Handler,), {})
    httpd = ThreadingHTTPServer((host, 0), handler)
    httpd.daemon_threads = True
    # A client that stops reading (a body over the limit) is expected: no traceback for it.
    httpd.handle_error = lambda request, address: None  # type: ignore[method-assign]
    handler.target = target = Target(httpd)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return target


@pytest.fixture(scope="module")
def near() -> Iterator[Target]:
    """On 127.0.0.1: what the allow-listed server may reach."""
    target = _start("127.0.0.1")
    yield target
    target.httpd.shutdown()


@pytest.fixture(scope="module")
def far() -> Iterator[Target]:
    """On 127.0.0.2: loopback too, outside the allowed network."""
    target = _start("127.0.0.2")
    yield target
    target.httpd.shutdown()


@pytest.fixture(autouse=True)
def _fresh_records(near: Target, far: Target) -> None:
    near.seen.clear()
    far.seen.clear()


@pytest.fixture(scope="module")
def default(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A server with the default policy: no private address is reachable."""
    app = demo_app(demo_dir, tmp_path_factory.mktemp("ssrf-default"))
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def allowed(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """`--allow-url-net 127.0.0.1/32`, and a small image limit."""
    app = demo_app(
        demo_dir,
        tmp_path_factory.mktemp("ssrf-allowed"),
        url_allow=(ALLOWED_NET,),
        limits=Limits(max_image_bytes=MAX_IMAGE_BYTES),
    )
    with TestClient(app) as client:
        yield client


def _error(client: TestClient, sent: dict[str, Any]) -> dict[str, Any]:
    """The one error item a task got over REST, checked to be routed to that task."""
    response = client.post("/v1", content=json.dumps([sent]))
    body = response.json()
    assert "data" not in body, body
    (error,) = body["errors"]
    assert response.status_code == 400, body
    assert (error["taskUUID"], error["taskType"]) == (sent["taskUUID"], sent["taskType"])
    return error


def _data(client: TestClient, sent: dict[str, Any]) -> list[dict[str, Any]]:
    body = rest(client, sent).json()
    assert "errors" not in body, body
    return body["data"]


def _inference(**fields: Any) -> dict[str, Any]:
    return task("imageInference", positivePrompt="a cat", **{**SMALL, **fields})


# --- image inputs given as URLs -------------------------------------------------------------------

# (task, the field that holds the URL as the error names it); "{url}" marks where it goes.
URL_INPUTS: list[tuple[dict[str, Any], str]] = [
    (_inference(seedImage="{url}", strength=0.5), "seedImage"),
    (task("imageUpload", image="{url}"), "image"),
    (task("imageControlNetPreProcess", inputImage="{url}", preProcessorType="canny"), "inputImage"),
    (
        task(
            "controlNetPreprocess",
            model="runware:controlnet-preprocess@canny",
            inputs={"image": "{url}"},
        ),
        "inputImage",
    ),
    (task("caption", inputImage="{url}"), "inputImage"),
    (task("imageCaption", inputImages=["{url}"]), "inputImages[0]"),
    (task("upscale", inputImage="{url}", upscaleFactor=2), "inputImage"),
    (task("removeBackground", inputs={"image": "{url}"}), "inputImage"),
]


def _with_url(sent: dict[str, Any], url: str) -> dict[str, Any]:
    text = json.dumps({**sent, "taskUUID": str(uuid.uuid4())}).replace("{url}", url)
    return json.loads(text)


@pytest.mark.parametrize(
    ("sent", "parameter"), URL_INPUTS, ids=[f"{t['taskType']}.{p}" for t, p in URL_INPUTS]
)
def test_image_url_fields_refuse_loopback_by_default(
    default: TestClient, near: Target, sent: dict[str, Any], parameter: str
) -> None:
    error = _error(default, _with_url(sent, near.url("/image.png")))
    assert error["code"] == "invalidImage" and error["parameter"] == parameter, error
    assert error["message"] == (
        f"{parameter} resolves to 127.0.0.1, a loopback address (allow it with --allow-url-net)"
    )
    assert near.seen == []


@pytest.mark.parametrize(
    ("host", "shown"),
    [
        ("localhost", "a loopback address"),
        ("2130706433", "resolves to 127.0.0.1, a loopback"),  # decimal
        ("0x7f.1", "resolves to 127.0.0.1, a loopback"),  # hex, short
        ("127.1", "resolves to 127.0.0.1, a loopback"),
        ("[::ffff:127.0.0.1]", "resolves to ::ffff:127.0.0.1, a loopback"),  # IPv4-mapped
        ("attacker.example@127.0.0.1", "resolves to 127.0.0.1, a loopback"),  # userinfo
        ("0", "resolves to 0.0.0.0, a unspecified"),
    ],
)
def test_other_spellings_of_loopback_are_refused(
    default: TestClient, near: Target, host: str, shown: str
) -> None:
    error = _error(default, task("imageUpload", image=near.url("/image.png", host=host)))
    assert error["code"] == "invalidImage" and shown in error["message"], error
    assert near.seen == []


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254, a link-local"),  # AWS...
        ("http://[fd00:ec2::254]/latest/meta-data/", "fd00:ec2::254, a private"),  # AWS IPv6
        ("http://100.100.100.200/latest/meta-data/", "100.100.100.200, a carrier-grade NAT"),
        ("http://192.0.0.192/latest/", "192.0.0.192, a special-purpose"),  # Oracle Cloud
        ("http://168.63.129.16/machine?comp=goalstate", "168.63.129.16, a cloud platform"),
        ("http://[::ffff:169.254.169.254]/", "::ffff:169.254.169.254, a link-local"),
        ("http://[64:ff9b::a9fe:a9fe]/", "64:ff9b::a9fe:a9fe, a link-local"),  # NAT64
        ("http://10.0.0.1/", "10.0.0.1, a private"),
        ("http://[::]:80/", "::, a unspecified"),
    ],
)
def test_metadata_and_private_addresses_are_refused_even_with_an_allow_list(
    allowed: TestClient, url: str, shown: str
) -> None:
    error = _error(allowed, task("imageUpload", image=url))
    assert error["code"] == "invalidImage" and error["parameter"] == "image", error
    assert f"image resolves to {shown} address" in error["message"], error


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("file:///etc/passwd", "is not an http(s) URL"),
        ("ftp://127.0.0.1/x.png", "is not an http(s) URL"),
        ("gopher://127.0.0.1:70/_x", "is not an http(s) URL"),
        ("http://127.0.0.1:99999/x.png", "port 99999 is out of range"),
        ("http://xn--/x.png", "is not a valid URL"),
    ],
)
def test_non_http_and_malformed_urls_are_refused(default: TestClient, url: str, words: str) -> None:
    error = _error(default, task("imageUpload", image=url))
    assert error["code"] == "invalidImage" and words in error["message"], error


def test_allow_list_lets_a_url_input_through(allowed: TestClient, near: Target) -> None:
    (item,) = _data(allowed, task("imageUpload", image=near.url("/image.png")))
    stored = allowed.get(item["imageURL"])
    assert stored.status_code == 200
    want = np.asarray(Image.open(io.BytesIO(IMAGE)).convert("RGB"))
    got = np.asarray(Image.open(io.BytesIO(stored.content)).convert("RGB"))
    assert np.array_equal(got, want)
    assert [(method, path) for method, path, _ in near.seen] == [("GET", "/image.png")]


def test_allow_list_covers_only_its_network(allowed: TestClient, far: Target) -> None:
    error = _error(allowed, task("imageUpload", image=far.url("/image.png")))
    assert error["message"] == (
        "image resolves to 127.0.0.2, a loopback address (allow it with --allow-url-net)"
    )
    assert far.seen == []


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("{far}", "which resolves to 127.0.0.2, a loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "which resolves to 169.254.169.254, a link"),
        ("file:///etc/passwd", "which is not an http(s) URL"),
    ],
)
def test_redirects_are_checked_again(
    allowed: TestClient, near: Target, far: Target, location: str, reason: str
) -> None:
    location = location.replace("{far}", far.url("/image.png"))
    url = near.url(f"/redirect?to={location}")
    error = _error(allowed, _inference(seedImage=url))
    assert error["code"] == "invalidImage" and error["parameter"] == "seedImage", error
    assert error["message"].startswith(f"seedImage redirects to {location}, {reason}"), error
    assert len(near.seen) == 1 and far.seen == []


def test_redirect_loop_ends(allowed: TestClient, near: Target) -> None:
    error = _error(allowed, task("imageUpload", image=near.url("/loop")))
    assert error["message"] == "image redirects more than 3 times", error
    assert len(near.seen) == 4  # the request and three redirects


def test_fetched_images_are_size_bounded(allowed: TestClient, near: Target) -> None:
    error = _error(allowed, task("imageUpload", image=near.url(f"/bytes/{MAX_IMAGE_BYTES + 1}")))
    assert error["code"] == "invalidImage"
    assert error["message"] == "image is larger than 256 KiB", error


# --- uploadEndpoint and webhookURL --------------------------------------------------------------


@pytest.mark.parametrize("parameter", ["uploadEndpoint", "webhookURL"])
@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("file:///tmp/out.png", "is not an http(s) URL"),
        ("gopher://127.0.0.1:70/_x", "is not an http(s) URL"),
        ("http://127.0.0.1:0/put", "port 0 is out of range"),
        ("not a url", "is not an http(s) URL"),
    ],
)
def test_unusable_delivery_urls_fail_before_any_work(
    default: TestClient, parameter: str, url: str, words: str
) -> None:
    error = _error(default, _inference(**{parameter: url}))
    assert error["code"] == "invalidParameter" and error["parameter"] == parameter, error
    assert error["message"].startswith(f"invalid {parameter}: ") and words in error["message"]


def test_delivery_to_loopback_is_refused_by_default(default: TestClient, near: Target) -> None:
    sent = _inference(uploadEndpoint=near.url("/put"), webhookURL=near.url("/hook"), seed=1)
    error = _error(default, sent)
    assert error["code"] == "deliveryFailed" and error["parameter"] == "uploadEndpoint", error
    assert error["message"] == (
        "uploadEndpoint resolves to 127.0.0.1, a loopback address (allow it with --allow-url-net)"
    )
    # The webhook (which would have carried that error) was refused the same way.
    assert near.seen == []


def test_delivery_with_the_allow_list(allowed: TestClient, near: Target, far: Target) -> None:
    # An upload outside the allowed network fails; the webhook inside it reports the failure.
    refused = _inference(uploadEndpoint=far.url("/put"), webhookURL=near.url("/hook"), seed=2)
    error = _error(allowed, refused)
    assert error["code"] == "deliveryFailed", error
    assert "resolves to 127.0.0.2, a loopback address" in error["message"]
    assert far.seen == []
    ((method, path, body),) = near.seen
    assert (method, path, json.loads(body)) == ("POST", "/hook", {"errors": [error]})
    # Both inside: the image is PUT and the result item POSTed.
    near.seen.clear()
    delivered = _inference(uploadEndpoint=near.url("/put?sig=1"), webhookURL=near.url("/hook"))
    (item,) = _data(allowed, delivered)
    stored = allowed.get(item["imageURL"]).content
    assert [(m, p) for m, p, _ in near.seen] == [("PUT", "/put?sig=1"), ("POST", "/hook")]
    assert near.seen[0][2] == stored
    assert json.loads(near.seen[1][2]) == {"data": [item]}


# --- the legacy protocol on the socket ------------------------------------------------------------


def _legacy(client: TestClient, message: dict[str, Any]) -> dict[str, Any]:
    """The legacy error frame for one message, on a fresh logged-in socket."""
    ((_, body),) = message.items()
    with client.websocket_connect("/v1") as socket:
        socket.send_json({"newConnection": {"apiKey": "any"}})
        assert "newConnectionSessionUUID" in socket.receive_json()
        socket.send_json(message)
        frame = socket.receive_json()
    assert frame.get("error") is True and frame["taskUUID"] == body["taskUUID"], frame
    return frame


def _legacy_new_task(**fields: Any) -> dict[str, Any]:
    body = {"taskUUID": str(uuid.uuid4()), "taskType": 1, "promptText": "a fox"}
    return {"newTask": {**body, "modelId": "easel-demo", "steps": 1, **fields}}


@pytest.mark.parametrize(
    "message",
    [
        _legacy_new_task(taskType=2, imageInitiatorUUID="{url}"),
        {
            "newPreProcessControlNet": {
                "taskUUID": str(uuid.uuid4()),
                "preProcessorType": "canny",
                "guideImageUrl": "{url}",
            }
        },
        {"newImageUpload": {"taskUUID": str(uuid.uuid4()), "imageBase64": "{url}"}},
    ],
    ids=["imageInitiatorUUID", "guideImageUrl", "newImageUpload"],
)
def test_legacy_url_fields_refuse_loopback(
    default: TestClient, near: Target, message: dict[str, Any]
) -> None:
    frame = _legacy(default, json.loads(json.dumps(message).replace("{url}", near.url("/x.png"))))
    assert frame["errorId"] == 9, frame  # INVALID_IMAGE
    assert "resolves to 127.0.0.1, a loopback address" in frame["errorMessage"], frame
    assert near.seen == []


def test_legacy_upload_endpoint_is_checked(default: TestClient) -> None:
    frame = _legacy(default, _legacy_new_task(uploadEndpoint="file:///tmp/out.png"))
    assert frame["errorId"] == 3, frame  # INVALID_PARAMETER
    assert "uploadEndpoint" in frame["errorMessage"] and "http(s)" in frame["errorMessage"]


# --- PICPIK: images are base64, a URL is never fetched -------------------------------------------


@pytest.mark.parametrize(
    ("action", "fields", "where"),
    [
        ("RemoveBackground", {"RawImage": "{url}"}, "RawImage"),
        ("ResizeImage", {"RawImage": "{url}", "Width": 64}, "RawImage"),
        ("DescribeImages", {"ImageList": ["{url}"]}, "ImageList[0]"),
        (
            "GenerateImages",
            {
                "MainModel": {"ModelCode": "easel-demo"},
                "PositivePrompts": ["a cat"],
                "Width": 64,
                "Height": 64,
                "ImageAndMaskList": ["{url}"],
                "Image2Image": {"ImageIndex": 0},
            },
            "ImageAndMaskList[0]",
        ),
    ],
)
def test_picpik_image_fields_never_fetch(
    allowed: TestClient, near: Target, action: str, fields: dict[str, Any], where: str
) -> None:
    """Even where URLs of the allowed network could be fetched, PICPIK's fields take none."""
    params = json.loads(json.dumps(fields).replace("{url}", near.url("/image.png")))
    reply = PicpikClient(allowed).call(action, **params)
    assert reply["RetCode"] == RetCode.INVALID_IMAGE, reply
    assert where in reply["Message"], reply
    assert near.seen == []


# --- no model hub ---------------------------------------------------------------------------------


def test_the_server_process_never_asks_the_hub() -> None:
    """Importing the server switches huggingface_hub to offline mode, whatever the environment
    says: a load that forgot local_files_only fails instead of downloading."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    env["HF_HUB_OFFLINE"] = "0"
    probe = "import server, huggingface_hub.constants as c; print(c.HF_HUB_OFFLINE)"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.stdout.strip() == "True"
