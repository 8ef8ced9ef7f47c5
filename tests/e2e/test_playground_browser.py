"""The playground page (GET /) in headless Chromium against a real `easel serve`.

The page talks to the server only through the public APIs (the Runware WebSocket, signed PICPIK
POSTs, /engine/events); every request to anywhere else is refused, so the page is shown to work
offline. One server (the embedded demo model, with keys, so the page's Runware key and PICPIK
signatures are checked for real) and one browser for the module; each test opens its own page
(its own localStorage). Generations are 64x64 so they take a second or two.
"""

from __future__ import annotations

import base64
import io
import json
import math
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from server import jsonbody
from server.picpik.signature import render, sign
from tests.e2e.browser import artifact, launched_browser
from tests.e2e.server_process import ServerProcess
from tests.models import tiny
from tests.models.tiny_controlnet import (
    save_controlnet_config,
    save_controlnet_single_file,
    tiny_sd1_controlnet,
)
from tests.models.tiny_ip_adapter import (
    ip_adapter_state,
    save_image_encoder,
    save_ip_adapter,
    tiny_image_encoder,
)

RUNWARE_KEY = "playground-runware-key"
PICPIK_PUBLIC = "playground-public"
PICPIK_PRIVATE = "playground-private-ключ"
DONE_TIMEOUT_MS = 90_000
# A watched job should run this long, whatever the machine's speed: long enough for several
# progress pushes (every 0.25 s), short enough for a busy 2-core CI runner.
WATCHED_JOB_S = 3.0
CALIBRATION_STEPS = 10
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Records every value a task card's progress bar takes (the page sets the attribute).
RECORD_PROGRESS = """() => {
  window.progressSeen = [];
  new MutationObserver((changes) => {
    for (const change of changes) {
      if (change.target.tagName === "PROGRESS") window.progressSeen.push(change.target.value);
    }
  }).observe(document.getElementById("tasks"),
             {subtree: true, attributes: true, attributeFilter: ["value"]});
}"""

# Records every text the engine panel shows.
RECORD_ENGINE = """() => {
  window.engineShown = [];
  const panel = document.getElementById("engine");
  new MutationObserver(() => window.engineShown.push(panel.textContent))
    .observe(panel, {subtree: true, childList: true, characterData: true});
}"""


def tiny_models(root: Path, tokenizers: Path) -> Path:
    """Next to the demo model: a tiny SD 1.x checkpoint with a ControlNet and an IP-Adapter
    made for it, so the page's ControlNet and style actions run for real."""
    pipe = tiny.tiny_sd1_pipeline(tokenizers)
    tiny.save_single_file(pipe, root / "checkpoints" / "tiny.safetensors")
    tiny.save_config_dir(pipe, root / "configs" / "tiny", like="sd15")
    net = tiny_sd1_controlnet()
    save_controlnet_single_file(net, root / "controlnet" / "control_v11p_sd15_canny.safetensors")
    save_controlnet_config(net, root / "configs" / "canny")
    adapter = ip_adapter_state(pipe.unet, image_embed_dim=32, seed=7)
    save_ip_adapter(adapter, root / "ipadapter" / "ip-adapter_sd15.safetensors")
    save_image_encoder(tiny_image_encoder(projection_dim=32), root / "clip_vision" / "vit-h")
    (root / "manifest.toml").write_text(
        '[models."checkpoints/tiny.safetensors"]\nconfig = "configs/tiny"\n'
        '[models."controlnet/control_v11p_sd15_canny.safetensors"]\nconfig = "configs/canny"\n'
    )
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with keys: the page's Runware key and PICPIK signatures are really checked."""
    root: Path = tmp_path_factory.mktemp("playground")
    models = tiny_models(root / "models", tmp_path_factory.mktemp("tokenizers"))
    keys = root / "keys.json"
    keys.write_text(
        json.dumps(
            {
                "runware": [{"api_key": RUNWARE_KEY}],
                "picpik": [{"public_key": PICPIK_PUBLIC, "private_key": PICPIK_PRIVATE}],
            }
        )
    )
    with ServerProcess(
        root / "data", "--keys-file", str(keys), "--models-dir", str(models)
    ) as process:
        yield process


@pytest.fixture(scope="module")
def watched_steps(server: ServerProcess) -> str:
    """How many 64x64 steps make a job of about WATCHED_JOB_S here and now: a first job loads
    the model, two more are timed (CPU speed differs tenfold between an idle machine and a
    shared CI runner)."""

    def run(steps: int) -> float:
        task = {
            "taskType": "imageInference",
            "taskUUID": str(uuid.uuid4()),
            "positivePrompt": "calibration",
            "model": "easel-demo",
            "width": 64,
            "height": 64,
            "steps": steps,
        }
        headers = {"Authorization": f"Bearer {RUNWARE_KEY}"}
        started = time.monotonic()
        reply = httpx.post(server.url + "/v1", json=[task], headers=headers, timeout=120)
        assert reply.status_code == 200, reply.text
        return time.monotonic() - started

    run(1)
    # The difference of two runs: the steps alone, without the request's fixed costs.
    per_step = max(run(2 + CALIBRATION_STEPS) - run(2), 0.001) / CALIBRATION_STEPS
    return str(min(100, max(12, math.ceil(WATCHED_JOB_S / per_step))))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launched_browser()


class Playground:
    """An open playground page, with what it sent over the WebSocket and anything refused."""

    def __init__(self, browser: Any, server: ServerProcess) -> None:
        self.server = server
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.outside: list[str] = []
        self.errors: list[str] = []
        self.sent: list[Any] = []
        self.page.route("**/*", self._only_the_server)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("websocket", self._record_frames)
        self.page.goto(server.url + "/")
        # The server wants keys: the page says so and opens the keys panel; once they are
        # typed in, it authenticates again and loads the models.
        self.page.wait_for_selector('#connection[data-state="error"]', timeout=30_000)
        assert "authentication failed" in self.page.inner_text("#connection")
        assert self.page.get_attribute("#keys-panel", "open") is not None
        for field, value in (
            ("picpik-public", PICPIK_PUBLIC),
            ("picpik-private", PICPIK_PRIVATE),
            ("runware-key", RUNWARE_KEY),
        ):
            self.page.fill(f"#{field}", value)
            self.page.press(f"#{field}", "Tab")  # a change event: the keys are kept
        self.page.wait_for_selector('#connection[data-state="connected"]', timeout=30_000)
        self.page.wait_for_selector('#model option[value="easel-demo"]', state="attached")
        self.page.select_option("#model", "easel-demo")  # tiny (with its adapters) is listed first
        self.page.evaluate(RECORD_PROGRESS)

    def _only_the_server(self, route: Any) -> None:
        if route.request.url.startswith(self.server.url):
            route.continue_()
        else:
            self.outside.append(route.request.url)
            route.abort()

    def _record_frames(self, socket: Any) -> None:
        socket.on("framesent", lambda payload: self.sent.append(json.loads(payload)))

    def fill(self, **fields: str) -> None:
        for name, value in fields.items():
            self.page.fill(f"#{name}", value)

    def choose_image(self, image: Image.Image) -> None:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        file = {"name": "input.png", "mimeType": "image/png", "buffer": buffer.getvalue()}
        self.page.set_input_files("#image", files=[file])
        self.page.wait_for_function(
            "() => document.getElementById('image-preview').naturalWidth > 0"
        )

    def generate(self) -> Any:
        """Submit the form; the task card once it is done (its state text if it failed)."""
        before = self.page.locator(".task").count()
        self.page.click("#submit")
        self.page.wait_for_function(
            "(before) => document.querySelectorAll('.task').length > before", arg=before
        )
        card = self.page.locator(".task").first  # the newest
        self.page.wait_for_function(
            "() => ['done', 'error'].includes(document.querySelector('.task').dataset.state)",
            timeout=DONE_TIMEOUT_MS,
        )
        assert card.get_attribute("data-state") == "done", card.locator(".state").inner_text()
        return card

    def progress_seen(self) -> list[float]:
        return self.page.evaluate("() => window.progressSeen")

    def check_result(self, card: Any) -> str:
        """The card's result image: shown, and served by the server as a PNG; its URL."""
        image = card.locator(".thumbs img").first
        image.wait_for()
        self.page.wait_for_function("(img) => img.complete", arg=image.element_handle())
        assert image.evaluate("(img) => img.naturalWidth") > 0
        src = image.get_attribute("src")
        assert src.startswith(self.server.url + "/results/") and src.endswith(".png"), src
        response = httpx.get(src, timeout=30)
        assert response.headers["content-type"] == "image/png"
        assert response.content.startswith(PNG_MAGIC)
        return src

    def close(self) -> None:
        assert self.outside == [], self.outside  # nothing loaded from elsewhere
        assert self.errors == [], self.errors
        self.page.close()


@pytest.fixture()
def playground(browser: Any, server: ServerProcess) -> Iterator[Playground]:
    opened = Playground(browser, server)
    yield opened
    opened.close()


def test_txt2img_shows_progress_and_the_image(playground: Playground, watched_steps: str) -> None:
    page = playground.page
    page.evaluate(RECORD_ENGINE)
    playground.fill(
        prompt="a lighthouse at dusk", width="64", height="64", steps=watched_steps, seed="7"
    )
    card = playground.generate()

    seen = playground.progress_seen()
    assert any(0 < value < 100 for value in seen), seen  # progress moved while it ran
    assert seen == sorted(seen), seen
    src = playground.check_result(card)
    # The gallery keeps it, newest first, with its prompt and seed.
    first = page.locator("#gallery li").first
    assert first.locator("a").get_attribute("href") == src
    assert first.locator(".caption").inner_text() == "a lighthouse at dusk"
    assert "seed 7" in first.inner_text()
    stored = page.evaluate("() => JSON.parse(localStorage.getItem('easel.playground.gallery'))")
    assert stored[0]["url"] == src and stored[0]["seed"] == 7
    # What went out: an async Runware task with the form's parameters.
    (task,) = [t for m in playground.sent for t in m if t.get("taskType") == "imageInference"]
    assert task["deliveryMethod"] == "async"
    assert (task["width"], task["height"], task["seed"]) == (64, 64, 7)
    assert task["steps"] == int(watched_steps)
    assert task["model"] == "easel-demo" and task["positivePrompt"] == "a lighthouse at dusk"
    # The engine panel (GET /engine/events) showed the batch while it ran, then the idle device.
    shown = page.evaluate("() => window.engineShown")
    assert any("running easel-demo: 1 job(s), 1 image(s)" in text for text in shown), shown
    page.wait_for_function("() => document.getElementById('engine').textContent.includes('idle')")
    page.screenshot(path=str(artifact("playground.png")), full_page=True)


def test_a_lost_connection_is_resumed_and_the_task_still_ends(
    playground: Playground, watched_steps: str
) -> None:
    page = playground.page
    playground.fill(prompt="a quiet harbour", width="64", height="64", steps=watched_steps)
    page.click("#submit")
    page.wait_for_function("() => window.progressSeen.some((value) => value > 0)", timeout=60_000)
    page.evaluate("() => socket.socket.close()")  # as a network drop would
    page.wait_for_function(
        "() => document.querySelector('.task').dataset.state === 'done'", timeout=DONE_TIMEOUT_MS
    )
    playground.check_result(page.locator(".task").first)
    page.wait_for_selector('#connection[data-state="connected"]', timeout=30_000)
    auths = [t for m in playground.sent for t in m if t.get("taskType") == "authentication"]
    assert auths[-1].get("connectionSessionUUID"), auths  # the session was resumed


def test_keys_are_kept_in_the_browser(playground: Playground) -> None:
    page = playground.page
    kept = page.evaluate("() => JSON.parse(localStorage.getItem('easel.playground.keys'))")
    assert kept == {
        "runware": RUNWARE_KEY,
        "picpikPublic": PICPIK_PUBLIC,
        "picpikPrivate": PICPIK_PRIVATE,
    }
    page.reload()  # authenticates with the kept key straight away
    page.wait_for_selector('#connection[data-state="connected"]', timeout=30_000)
    assert page.input_value("#runware-key") == RUNWARE_KEY


def test_a_server_error_is_shown_on_the_card(playground: Playground) -> None:
    page = playground.page
    playground.fill(prompt="too big a seed", width="64", height="64", seed="99999999999999999999")
    page.click("#submit")
    card = page.locator(".task").first
    page.wait_for_selector('.task[data-state="error"]', timeout=30_000)
    assert card.locator(".state").inner_text().startswith("error: invalid seed"), card.inner_text()


def test_engine_panel_says_when_status_is_unavailable(browser: Any, server: ServerProcess) -> None:
    page = browser.new_page()
    page.route("**/engine/events", lambda route: route.fulfill(status=404, body="{}"))
    page.goto(server.url + "/")
    page.wait_for_function(
        "() => document.getElementById('engine').textContent.includes('status unavailable')"
    )
    page.close()


def test_inpaint_sends_the_painted_mask(playground: Playground) -> None:
    page = playground.page
    page.select_option("#action", "inpaint")
    playground.fill(prompt="a red door", width="64", height="64", steps="8", seed="3")
    playground.choose_image(Image.fromarray(np.full((64, 64, 3), 128, np.uint8)))
    page.fill("#brush", "48")  # screen pixels: 8 image pixels, the image shown at 384x384
    canvas = page.locator("#mask-canvas")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()  # where it is on the screen now
    scale = box["width"] / 64  # the canvas has the image's own size: 64x64 pixels
    page.mouse.move(box["x"] + 8 * scale, box["y"] + 8 * scale)
    page.mouse.down()
    page.mouse.move(box["x"] + 8 * scale, box["y"] + 40 * scale, steps=8)
    page.mouse.up()
    card = playground.generate()
    playground.check_result(card)

    (task,) = [t for m in playground.sent for t in m if t.get("taskType") == "imageInference"]
    assert task["seedImage"].startswith("data:image/png;base64,")
    header, data = task["maskImage"].split(",", 1)
    assert header == "data:image/png;base64"
    mask = np.array(Image.open(io.BytesIO(base64.b64decode(data))).convert("L"))
    assert mask.shape == (64, 64)
    assert mask[20, 8] == 255 and mask[36, 8] == 255  # painted: white, redraw
    assert mask[8, 40] == 0 and mask[60, 60] == 0  # not painted: black, keep


def test_background_goes_through_picpik(playground: Playground) -> None:
    page = playground.page
    page.select_option("#action", "background")
    playground.fill(prompt="a beach", width="64", height="64", steps="8")
    foreground = np.zeros((64, 64, 4), np.uint8)
    foreground[16:48, 16:48] = (200, 40, 40, 255)  # an opaque square, transparent around it
    playground.choose_image(Image.fromarray(foreground, "RGBA"))
    card = playground.generate()
    playground.check_result(card)
    assert page.locator("#gallery li").count() == 1


def test_page_signs_picpik_requests_as_the_server_checks_them(playground: Playground) -> None:
    """The page's signing (SHA-1 in JS, the signing tool's rendering) against
    server/picpik/signature.py, on what the server parses from the page's JSON."""
    rng = random.Random(9)
    floats = [rng.uniform(-1, 1) * 10 ** rng.randint(-12, 25) for _ in range(200)]
    floats += [0.1, 1e-7, 2.5e-10, 123.456, 1e21, 1e22, 3.0, -0.0, 5e-324, 1.7976931348623157e308]
    requests: list[dict[str, Any]] = [
        {"Action": "ListModels", "PublicKey": "abcdefg"},  # the published test vector
        {
            "Action": "GenerateImages",
            "PublicKey": "pk",
            "request_uuid": "r-1",
            "PositivePrompts": ["un chat 猫 🐈", "x" * 1000],
            "NegativePrompts": [],
            "MainModel": {"ModelCode": "easel-demo", "InferenceParams": {"CFGScale": 7.5}},
            "Seed": -1,
            "Tileable": False,
            "UseMainModelVAE": True,
            "Image2Image": None,
            "Empty": "",
            "Nested": [[1, 2.5, [True, None]], {"b": 1, "a": [{"z": 0.25}]}],
        },
        # keys whose code-point order differs from UTF-16 order (U+FF01 before U+1F600)
        {"Action": "X", "Map": {"😀": 1, "\uff01": 2, "é": 3, "Z": 4, "a": 5, "_": 6, "": 7}},
        {"Action": "Floats", "Values": floats},
    ]
    results = playground.page.evaluate(
        """(text) => JSON.parse(text).map((request) => ({
             sent: JSON.stringify(request),
             signature: window.easelPlayground.signRequest(request, "123456"),
             rendered: request.Values ? request.Values.map(window.easelPlayground.renderSigned)
                                      : null,
           }))""",
        json.dumps(requests),
    )
    assert results[0]["signature"] == "4a20bc1141494035f6aaaad13224c94c5a8bc3a5"
    for request, result in zip(requests, results, strict=True):
        parsed = jsonbody.loads(result["sent"])  # what the server will check
        assert result["signature"] == sign(parsed, "123456"), request["Action"]
    for request, result in zip(requests[:3], results[:3], strict=True):
        assert result["signature"] == sign(request, "123456"), request["Action"]
    # Each float as the server renders what it parses. An integral float between 2**53 and
    # 1e21 reaches it as the int JavaScript writes ("1234567890123456800"), not the float's
    # exact value: the page signs what it sends, which is what matters.
    sent = jsonbody.loads(results[3]["sent"])["Values"]
    assert results[3]["rendered"] == [render(value) for value in sent]
    exact = [i for i, value in enumerate(floats) if not (2**53 <= abs(value) < 1e21)]
    assert len(exact) > 150
    assert [results[3]["rendered"][i] for i in exact] == [render(floats[i]) for i in exact]


def _choose_by_label(page: Any, select: str, text: str) -> str:
    """Pick the option whose label contains `text`; its value."""
    value = page.evaluate(
        """([select, text]) => [...document.querySelector(select).options]
             .find((option) => option.textContent.includes(text))?.value""",
        [select, text],
    )
    assert value, (select, text, page.inner_text(select))
    page.select_option(select, value)
    return value


def _inference_sent(playground: Playground) -> dict[str, Any]:
    (task,) = [t for m in playground.sent for t in m if t.get("taskType") == "imageInference"]
    return task


def test_img2img_sends_the_image_and_strength(playground: Playground) -> None:
    page = playground.page
    page.select_option("#action", "img2img")
    playground.fill(prompt="an oil painting", width="64", height="64", steps="6", strength="0.6")
    playground.choose_image(Image.fromarray(np.full((64, 64, 3), 90, np.uint8)))
    playground.check_result(playground.generate())
    task = _inference_sent(playground)
    assert task["seedImage"].startswith("data:image/png;base64,")
    assert task["strength"] == 0.6 and "maskImage" not in task


def test_controlnet_with_the_canny_preprocessor(playground: Playground) -> None:
    page = playground.page
    page.select_option("#action", "controlnet")
    _choose_by_label(page, "#model", "tiny")
    controlnet = _choose_by_label(page, "#controlnet-model", "canny")
    page.select_option("#preprocessor", "canny")
    playground.fill(prompt="a house", width="64", height="64", steps="6", seed="5")
    guide = np.zeros((64, 64, 3), np.uint8)
    guide[16:48, 16:48] = 255  # a square: canny finds its edges
    playground.choose_image(Image.fromarray(guide))
    card = playground.generate()
    playground.check_result(card)
    # The preprocessing task ran first; its guide is shown on the card and fed to the unit.
    (pre,) = [
        t for m in playground.sent for t in m if t.get("taskType") == "imageControlNetPreProcess"
    ]
    assert pre["preProcessorType"] == "canny"
    shown = card.locator("img.guide").get_attribute("src")
    edges = np.array(Image.open(io.BytesIO(httpx.get(shown, timeout=30).content)).convert("L"))
    # Canny's edges (found at the preprocessor's resolution, scaled to 64x64): along the
    # square's border only, dark inside it and in the far corner.
    assert edges[12:20, 16:48].max() > 0
    assert edges[24:40, 24:40].max() == 0 and edges[:6, :6].max() == 0
    (unit,) = _inference_sent(playground)["controlNet"]
    assert unit["model"] == controlnet and unit["weight"] == 1
    assert unit["guideImage"] == shown.rsplit("/", 1)[1].split(".")[0]  # its imageUUID


def test_style_reference_uses_the_ip_adapter(playground: Playground) -> None:
    page = playground.page
    page.select_option("#action", "style")
    _choose_by_label(page, "#model", "tiny")
    adapter = _choose_by_label(page, "#ip-adapter", "ip-adapter")
    playground.fill(prompt="a cat", width="64", height="64", steps="6", seed="8")
    playground.choose_image(Image.fromarray(np.full((64, 64, 3), (30, 160, 60), np.uint8)))
    playground.check_result(playground.generate())
    (unit,) = _inference_sent(playground)["ipAdapters"]
    assert unit["model"] == adapter and unit["guideImage"].startswith("data:image/png;base64,")
    assert unit["weight"] == 0.8
