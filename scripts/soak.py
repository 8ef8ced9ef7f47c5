"""Soak: thousands of mixed tasks from many concurrent clients against a real `easel serve`.

Every accepted task must end exactly once with the outcome it should have, and the server's
resident memory must stay flat once warm. The mix covers both protocols and every transport:

- PICPIK over HTTP, signed: GenerateImages (txt2img, BatchSize 2, img2img from a base64 image)
  polled with ListTasksDetails; GenerateImages cancelled at once with TerminateTask; invalid
  requests (RetCode expected).
- Runware over the WebSocket (authentication, task arrays, pings): imageInference (sync, and
  async with its pushed progress and result, then getResponse), several tasks in one array,
  imageUpload then img2img from the upload, invalid tasks (code expected).
- Runware over REST: sync and async (+ getResponse) imageInference, imageUpload, invalid tasks
  (code and HTTP status expected).
- The legacy picfinder protocol on the same socket: newTask, newImageUpload, invalid messages.

Checks, per task: it ends exactly once (no timeout: "lost"; no second end, no frame for a task
already answered, no image id seen twice across all tasks: "duplicated"); its outcome is the one
expected (images: as many as asked, each downloadable at the asked size; a cancelled task ends
cancelled; an invalid request gets its own error code); no HTTP 5xx; no traceback in the
server's log; every ping answered. The server's RSS is sampled every second (psutil); it is
"flat" when, after warm-up (the first 10 % of operations), it grew by at most max(5 % of the
warm-up RSS, 32 MiB) by the end and the least-squares slope over the second half of the run is
at most 10 MiB per 1000 operations. The server runs with glibc's malloc defaults: it gives
freed heap pages back after each batch itself (pipelines/heap.py).

    python scripts/soak.py                      # starts `easel serve` on a temporary data dir
    python scripts/soak.py --tasks 2000 --clients 32 --threads 1 --report soak.json
    python scripts/soak.py --url http://127.0.0.1:7860 --pid 1234   # a running server

Exit status 0 when every check passed, 1 otherwise. tests/e2e/test_soak.py runs the same code
at a small scale.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
from PIL import Image
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python scripts/soak.py`: the checkout's packages
    sys.path.insert(0, str(ROOT))

from server.picpik.signature import sign  # noqa: E402

MODEL = "easel-demo"  # the embedded demo model: a Runware model id passes through as its code
PICPIK_PUBLIC, PICPIK_PRIVATE = "soak-public", "soak-private"
RUNWARE_KEY = "soak-runware-key"

# The mix: operation kind -> weight (percent). One operation submits one task or a few (arrays,
# upload then img2img); invalid kinds send one request that must be refused.
MIX: dict[str, int] = {
    "pp_txt2img": 15,
    "pp_batch2": 8,
    "pp_img2img": 7,
    "pp_cancel": 3,
    "pp_invalid": 3,
    "rw_ws_inference": 15,
    "rw_ws_array": 5,
    "rw_ws_img2img": 4,
    "rw_ws_async": 3,
    "rw_ws_invalid": 3,
    "rw_rest_sync": 11,
    "rw_rest_async": 6,
    "rw_rest_upload": 3,
    "rw_rest_invalid": 3,
    "lg_new_task": 7,
    "lg_upload": 2,
    "lg_invalid": 2,
}
# Sizes and steps: tiny, so a 2-core machine runs thousands of tasks in minutes. PICPIK's
# Steps start at 6; legacy sizes start at 512x512, so legacy tasks use one or two steps.
SIDES = (64, 64, 64, 128)
RUNWARE_STEPS = (2, 3, 4)
PICPIK_STEPS = (6, 7)
CANCEL_SIDE, CANCEL_STEPS = 128, 40  # long enough to be queued or running when cancelled
LEGACY_SIDE = 512  # sizeId 1

# Memory criterion (see the module docstring).
WARMUP_FRACTION = 0.10
GROWTH_LIMIT_FRACTION = 0.05
GROWTH_LIMIT_MIB = 32.0
SLOPE_LIMIT_MIB_PER_1000 = 10.0
MIB = 1024 * 1024
KEEPALIVE_S = 2.0

# PICPIK requests that must be refused: (what is wrong, fields, RetCode).
PICPIK_INVALID: tuple[tuple[str, dict[str, Any], int], ...] = (
    ("steps below 6", {"Action": "GenerateImages", "_steps": 5}, 10010),
    ("unknown model", {"Action": "GenerateImages", "MainModel": {"ModelCode": "no-such"}}, 10030),
    ("unknown action", {"Action": "Frobnicate"}, 10002),
    (
        "bad base64 image",
        {
            "Action": "GenerateImages",
            "ImageAndMaskList": ["!!not base64!!"],
            "Image2Image": {"ImageIndex": 0},
        },
        10011,
    ),
    ("unknown task", {"Action": "ListTasksDetails", "_unknown_task": True}, 10040),
    ("bad signature", {"Action": "GenerateImages", "_bad_signature": True}, 10022),
    ("not JSON", {"_raw": b"{not json"}, 10001),
)
# Runware tasks that must be refused: (what is wrong, task fields, code).
RUNWARE_INVALID: tuple[tuple[str, dict[str, Any], str], ...] = (
    ("width not a multiple of 64", {"width": 65}, "invalidParameter"),
    ("unknown model", {"model": "no-such-model"}, "unknownModel"),
    ("missing prompt", {"positivePrompt": None}, "missingParameter"),
    ("unknown task type", {"taskType": "frobnicate"}, "unknownTaskType"),
    ("getResponse of an unknown task", {"taskType": "getResponse"}, "taskNotFound"),
    ("seedImage not uploaded", {"seedImage": "_random_uuid"}, "invalidImage"),
    ("taskUUID in use", {"_conflict": True}, "conflictTaskUUID"),
    ("not JSON", {"_raw": "{not json"}, "invalidMessage"),
    ("bad API key", {"_bad_key": True}, "invalidApiKey"),
)
# Legacy messages that must be refused: (what is wrong, newTask fields or a message, errorId).
LEGACY_INVALID: tuple[tuple[str, dict[str, Any], int], ...] = (
    ("unknown sizeId", {"sizeId": 99}, 3),
    ("unknown modelId", {"modelId": 999}, 5),
    ("unknown message", {"_message": "newThing"}, 2),
)
STATUS_ORDER = {"Queuing": 0, "Running": 1, "Finished": 2, "Error": 2}


# --- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """Keys the clients use; None: the server runs open (no keys file)."""

    picpik_public: str | None = None
    picpik_private: str | None = None
    runware_key: str | None = None

    @property
    def keyed(self) -> bool:
        return self.runware_key is not None


SOAK_CREDENTIALS = Credentials(PICPIK_PUBLIC, PICPIK_PRIVATE, RUNWARE_KEY)


def keys_file_content(credentials: Credentials = SOAK_CREDENTIALS) -> dict[str, Any]:
    """The keys file of a server started for the soak (unlimited keys)."""
    return {
        "picpik": [
            {"public_key": credentials.picpik_public, "private_key": credentials.picpik_private}
        ],
        "runware": [{"api_key": credentials.runware_key}],
    }


@dataclass(frozen=True)
class SoakConfig:
    tasks: int = 2000  # operations (each submits one task or more)
    clients: int = 32
    seed: int = 0
    task_timeout_s: float = 600.0  # an accepted task not ended by then is lost
    poll_interval_s: float = 0.25  # ListTasksDetails / getResponse polling
    ping_interval_s: float = 5.0  # each socket pings this often
    grace_s: float = 2.0  # sockets stay open this long after the last task, for stray frames
    download: bool = True  # fetch every result image and check its size
    warmup: float = WARMUP_FRACTION  # the share of operations RSS may grow in


@dataclass(frozen=True)
class Target:
    url: str
    pid: int | None = None  # the server's process, for the RSS samples
    credentials: Credentials = SOAK_CREDENTIALS
    log_path: Path | None = None  # the server's log: a traceback in it is a failure
    server_env: dict[str, str] = field(default_factory=dict)  # what the soak set (reported)

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://").replace("https://", "wss://") + "/v1"


# --- the plan -----------------------------------------------------------------------------------


def make_plan(tasks: int, seed: int, mix: dict[str, int] = MIX) -> list[str]:
    """`tasks` operation kinds in a random order: every kind once (when there is room), the rest
    drawn by weight."""
    rng = random.Random(seed)
    kinds = list(mix)
    plan = kinds[:tasks] if tasks < len(kinds) else list(kinds)
    plan += rng.choices(kinds, weights=[mix[k] for k in kinds], k=max(0, tasks - len(plan)))
    rng.shuffle(plan)
    return plan


# --- the ledger ---------------------------------------------------------------------------------


@dataclass
class Tracked:
    """One accepted task: what it must end with and what it ended with."""

    task_id: str
    kind: str
    want_images: int  # images expected; 0 with want_error set: an error is expected
    want_error: str | None = None
    ends: list[str] = field(default_factory=list)  # outcomes seen ("images" or "error:CODE")
    images: list[str] = field(default_factory=list)


@dataclass
class Problem:
    category: str  # lost, duplicated, unexpected, http_5xx
    kind: str
    task_id: str | None
    detail: str


class Ledger:
    """Every task, refusal, image and problem the clients saw. Used from one event loop only."""

    def __init__(self) -> None:
        self.tasks: dict[str, Tracked] = {}
        self.problems: list[Problem] = []
        self.image_owner: dict[str, str] = {}  # image id -> the task that returned it
        self.expected_errors: Counter[str] = Counter()
        self.http_status: Counter[int] = Counter()
        self.op_latency: dict[str, list[float]] = defaultdict(list)
        self.op_count: Counter[str] = Counter()
        self.cancels: Counter[str] = Counter()
        self.downloads = 0

    def problem(self, category: str, kind: str, task_id: str | None, detail: str) -> None:
        self.problems.append(Problem(category, kind, task_id, detail[:500]))

    def http(self, kind: str, status: int, detail: str) -> None:
        self.http_status[status] += 1
        if status >= 500:
            self.problem("http_5xx", kind, None, f"HTTP {status}: {detail}")

    def accept(self, task_id: str, kind: str, images: int, error: str | None = None) -> Tracked:
        if task_id in self.tasks:
            self.problem("duplicated", kind, task_id, "task id accepted twice")
        tracked = Tracked(task_id, kind, images, error)
        self.tasks[task_id] = tracked
        return tracked

    def expect_error(self, task_id: str, error: str) -> None:
        """The task must now end with this error (a cancel was acknowledged)."""
        self.tasks[task_id].want_images, self.tasks[task_id].want_error = 0, error

    def end(self, task_id: str, images: list[str], error: str | None = None) -> None:
        """Record how a task ended; flags a second end, a wrong outcome, a repeated image."""
        tracked = self.tasks.get(task_id)
        if tracked is None:
            self.problem("unexpected", "?", task_id, "an end for a task never accepted")
            return
        tracked.ends.append("images" if error is None else f"error:{error}")
        if len(tracked.ends) > 1:
            self.problem("duplicated", tracked.kind, task_id, f"ended twice: {tracked.ends}")
            return
        tracked.images = list(images)
        if error != tracked.want_error:
            want = tracked.want_error or f"{tracked.want_images} image(s)"
            got = error or f"{len(images)} image(s)"
            self.problem("unexpected", tracked.kind, task_id, f"wanted {want}, got {got}")
        elif error is None and len(images) != tracked.want_images:
            self.problem(
                "unexpected" if len(images) < tracked.want_images else "duplicated",
                tracked.kind,
                task_id,
                f"wanted {tracked.want_images} image(s), got {len(images)}: {images}",
            )
        for image_id in images:
            owner = self.image_owner.setdefault(image_id, task_id)
            if owner != task_id or images.count(image_id) > 1:
                self.problem(
                    "duplicated", tracked.kind, task_id, f"image {image_id} also in task {owner}"
                )

    def refused(self, kind: str, what: str, want: str, got: str | None) -> None:
        """An invalid request's answer: it must carry the expected error code."""
        if got == want:
            self.expected_errors[f"{kind.split('_')[0]}:{want}"] += 1
        else:
            self.problem("unexpected", kind, None, f"{what}: wanted error {want}, got {got}")

    def lost(self) -> list[Tracked]:
        return [t for t in self.tasks.values() if not t.ends]


# --- images -------------------------------------------------------------------------------------


def _png_bytes(seed: int, side: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


INIT_PNG = base64.b64encode(_png_bytes(1)).decode()
INIT_DATA_URI = "data:image/png;base64," + INIT_PNG


def image_id_of(url: str) -> str:
    """A result URL's image id: its file name without extension."""
    return url.rsplit("/", 1)[-1].split(".", 1)[0]


# --- sockets ------------------------------------------------------------------------------------


class SocketGone(Exception):
    pass


class Waiter:
    """The frames a request is waiting for on a socket, by taskUUID."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.future: asyncio.Future[list[Any]] = loop.create_future()
        self.items: list[Any] = []  # legacy newImages frames so far (a task's may span several)

    def resolve(self, items: list[Any]) -> None:
        if not self.future.done():
            self.future.set_result(items)


class Follower(Waiter):
    """Every item an async task gets on a socket: its acknowledgement, the progress the server
    pushes, then its result items (`expected` successes) or its error."""

    def __init__(self, loop: asyncio.AbstractEventLoop, expected: int) -> None:
        super().__init__(loop)
        self.expected = expected

    def resolve(self, items: list[Any]) -> None:
        self.items.extend(items)
        successes = [item for item in self.items if item.get("status") == "success"]
        failed = any("code" in item for item in items)
        if (failed or len(successes) >= self.expected) and not self.future.done():
            self.future.set_result(self.items)


class Socket:
    """One client WebSocket to /v1 speaking one protocol generation (current: JSON arrays;
    legacy: objects). A reader routes every frame to the request waiting for its taskUUID; a
    frame for a task nobody waits for (already answered, or never sent) is a duplicate. A
    pinger keeps the socket alive and counts pongs."""

    def __init__(self, client: Client, legacy: bool) -> None:
        self.client = client
        self.legacy = legacy
        self.kind = "legacy_socket" if legacy else "runware_socket"
        self.connection: ClientConnection | None = None
        self.waiting: dict[str, Waiter] = {}
        self.untagged: asyncio.Queue[Any] = asyncio.Queue()
        self.auth: asyncio.Future[Any] | None = None
        self.ping_sent: list[float] = []
        self.pongs = 0
        self.pings = 0
        self.max_pong_s = 0.0
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def open(self) -> bool:
        return self.connection is not None

    async def connect(self) -> None:
        target = self.client.target
        self.connection = await connect(
            target.ws_url, max_size=None, open_timeout=60, ping_interval=None
        )
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read()), loop.create_task(self._ping_loop())]
        self.auth = loop.create_future()
        key = target.credentials.runware_key or "open"
        if self.legacy:
            await self.send({"newConnection": {"apiKey": key}})
        else:
            await self.send([{"taskType": "authentication", "apiKey": key}])
        reply = await asyncio.wait_for(self.auth, 60)
        if "errors" in reply or "error" in reply:
            raise RuntimeError(f"authentication refused: {reply}")

    def stop_pinging(self) -> None:
        """No more pings: the pongs of those sent can still arrive."""
        for task in self._tasks[1:]:
            task.cancel()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await self.connection.close()
        self.connection = None

    async def send(self, message: Any) -> None:
        if self.connection is None:
            raise SocketGone("the socket is closed")
        text = message if isinstance(message, str) else json.dumps(message)
        try:
            await self.connection.send(text)
        except ConnectionClosed as closed:
            raise SocketGone(str(closed)) from None

    async def ask(self, message: Any, task_ids: list[str], timeout: float) -> dict[str, list[Any]]:
        """Send one message; the items (current) or frames (legacy) each task id gets. A task
        that gets nothing within `timeout` is missing from the answer."""
        loop = asyncio.get_running_loop()
        waiters = {task_id: Waiter(loop) for task_id in task_ids}
        self.waiting.update(waiters)
        try:
            await self.send(message)
            await asyncio.wait([w.future for w in waiters.values()], timeout=timeout)
        finally:
            for task_id in task_ids:
                self.waiting.pop(task_id, None)
        answers = {}
        for task_id, waiter in waiters.items():
            if waiter.future.done() and waiter.future.exception() is None:
                answers[task_id] = waiter.future.result()
            elif waiter.future.done():
                raise SocketGone(str(waiter.future.exception()))
        return answers

    async def follow(
        self, message: Any, task_id: str, expected: int, timeout: float
    ) -> list[Any] | None:
        """Send an async task; every item it gets until it ends (see Follower), None when it
        does not end within `timeout`."""
        follower = Follower(asyncio.get_running_loop(), expected)
        self.waiting[task_id] = follower
        try:
            await self.send(message)
            await asyncio.wait([follower.future], timeout=timeout)
        finally:
            self.waiting.pop(task_id, None)
        if not follower.future.done():
            return None
        if follower.future.exception() is not None:
            raise SocketGone(str(follower.future.exception()))
        return follower.future.result()

    async def _ping_loop(self) -> None:
        while True:
            await asyncio.sleep(self.client.config.ping_interval_s)
            await self.ping()

    async def ping(self) -> None:
        self.ping_sent.append(time.monotonic())
        self.pings += 1
        await self.send({"ping": True} if self.legacy else [{"taskType": "ping", "ping": True}])

    def _pong(self) -> None:
        self.pongs += 1
        if self.ping_sent:
            self.max_pong_s = max(self.max_pong_s, time.monotonic() - self.ping_sent.pop(0))

    async def _read(self) -> None:
        assert self.connection is not None
        try:
            async for raw in self.connection:
                frame = json.loads(raw)
                if self.legacy:
                    self._route_legacy(frame)
                else:
                    self._route_current(frame)
        except ConnectionClosed as closed:
            error = SocketGone(f"closed by the server: {closed}")
        except Exception as failure:  # a frame that is not JSON: a protocol failure
            error = SocketGone(f"bad frame: {failure!r}")
        else:
            error = SocketGone("closed by the server")
        self.connection = None
        if self.waiting:
            self.client.ledger.problem("unexpected", self.kind, None, str(error))
        for waiter in self.waiting.values():
            if not waiter.future.done():
                waiter.future.set_exception(error)
        if self.auth is not None and not self.auth.done():
            self.auth.set_exception(error)

    def _deliver(self, task_id: str | None, items: list[Any], frame: Any) -> None:
        waiter = self.waiting.get(task_id) if task_id is not None else None
        if task_id is None:
            self.untagged.put_nowait(frame)
        elif waiter is None or waiter.future.done():
            self.client.ledger.problem(
                "duplicated", self.kind, task_id, f"a frame nobody waits for: {frame}"
            )
        else:
            waiter.resolve(items)

    def _route_current(self, frame: dict[str, Any]) -> None:
        items = [*frame.get("data", []), *frame.get("errors", [])]
        if items and all(item.get("taskType") == "ping" for item in items):
            for _ in items:
                self._pong()
            return
        if items and items[0].get("taskType") == "authentication":
            if self.auth is not None and not self.auth.done():
                self.auth.set_result(frame)
            else:
                self.client.ledger.problem("unexpected", self.kind, None, f"auth frame {frame}")
            return
        by_task: dict[str | None, list[Any]] = defaultdict(list)
        for item in items:
            by_task[item.get("taskUUID")].append(item)
        if not items:
            by_task[None] = []
        for task_id, its in by_task.items():
            self._deliver(task_id, its, frame)

    def _route_legacy(self, frame: dict[str, Any]) -> None:
        if frame == {"pong": True}:
            self._pong()
        elif "newConnectionSessionUUID" in frame or (frame.get("errorId") == 19):
            if self.auth is not None and not self.auth.done():
                self.auth.set_result(frame)
        elif frame.get("error"):
            self._deliver(frame.get("taskUUID"), [frame], frame)
        elif "newImages" in frame:
            images = frame["newImages"]["images"]
            task_ids = {image.get("taskUUID") for image in images}
            task_id = task_ids.pop() if len(task_ids) == 1 else None
            waiter = self.waiting.get(task_id) if task_id is not None else None
            if waiter is None or waiter.future.done():
                self._deliver(task_id, [frame], frame)
                return
            waiter.items.append(frame)
            total = frame["newImages"]["totalAvailableResults"]
            if sum(len(f["newImages"]["images"]) for f in waiter.items) >= total:
                waiter.resolve(waiter.items)
        else:
            ((_, body),) = frame.items()
            self._deliver(body.get("taskUUID") if isinstance(body, dict) else None, [frame], frame)


# --- one client ---------------------------------------------------------------------------------


class Client:
    """One of the concurrent clients: its own HTTP connection pool and its two sockets (opened
    on first use), running one operation at a time."""

    def __init__(self, index: int, config: SoakConfig, target: Target, ledger: Ledger) -> None:
        self.index = index
        self.config = config
        self.target = target
        self.ledger = ledger
        self.rng = random.Random(config.seed * 1000 + index)
        self.http = httpx.AsyncClient(
            base_url=target.url,
            timeout=httpx.Timeout(config.task_timeout_s, connect=60),
            # Below uvicorn's 5 s keep-alive: a connection the server is closing is never reused
            # (with equal timeouts a request can race the close: "Server disconnected").
            limits=httpx.Limits(keepalive_expiry=KEEPALIVE_S),
        )
        self.current = Socket(self, legacy=False)
        self.legacy = Socket(self, legacy=True)
        self.invalid_turn = index

    async def close(self) -> None:
        await self.current.close()
        await self.legacy.close()
        await self.http.aclose()

    def runner(self, kind: str) -> Callable[[], Awaitable[None]]:
        return getattr(self, f"op_{kind}")

    async def run(self, kind: str) -> None:
        started = time.monotonic()
        try:
            await self.runner(kind)()
        except SocketGone as gone:
            self.ledger.problem("unexpected", kind, None, f"socket failure: {gone}")
            sock = self.legacy if kind.startswith("lg_") else self.current
            await sock.close()
        except Exception as failure:
            self.ledger.problem("unexpected", kind, None, f"client failure: {failure!r}")
        self.ledger.op_latency[kind].append(time.monotonic() - started)
        self.ledger.op_count[kind] += 1

    @staticmethod
    def _uuid() -> str:
        return str(uuid.uuid4())  # not from the seeded rng: a data dir may be reused

    def _seed(self) -> int:
        return self.rng.randrange(0, 2**31 - 1)

    def _next_invalid(self, cases: tuple[Any, ...]) -> Any:
        self.invalid_turn += 1
        return cases[self.invalid_turn % len(cases)]

    # --- images ---

    async def check_images(self, kind: str, task_id: str, urls: list[str], side: int) -> None:
        """Each result image is served, decodes, and has the asked size."""
        if not self.config.download:
            return
        for url in urls:
            response = await self.http.get(url)
            self.ledger.http(kind, response.status_code, url)
            self.ledger.downloads += 1
            if response.status_code != 200:
                self.ledger.problem("lost", kind, task_id, f"image {url}: {response.status_code}")
                continue
            try:
                size = Image.open(io.BytesIO(response.content)).size
            except Exception as failure:
                self.ledger.problem("unexpected", kind, task_id, f"image {url}: {failure!r}")
                continue
            if size != (side, side):
                self.ledger.problem("unexpected", kind, task_id, f"image {url} is {size}")

    # --- PICPIK ---

    async def picpik(self, kind: str, action: str, **params: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"Action": action, "request_uuid": self._uuid(), **params}
        credentials = self.target.credentials
        if credentials.picpik_public is not None and credentials.picpik_private is not None:
            body["PublicKey"] = credentials.picpik_public
            body["Signature"] = sign(body, credentials.picpik_private)
        return await self._picpik_post(kind, json.dumps(body).encode(), body["request_uuid"])

    async def _picpik_post(self, kind: str, raw: bytes, request_uuid: str | None) -> dict[str, Any]:
        response = await self.http.post(
            "/", content=raw, headers={"Content-Type": "application/json"}
        )
        self.ledger.http(kind, response.status_code, response.text[:200])
        if response.status_code != 200:
            raise RuntimeError(f"PICPIK answered HTTP {response.status_code}: {response.text}")
        reply = response.json()
        if request_uuid is not None and reply.get("request_uuid") != request_uuid:
            self.ledger.problem("unexpected", kind, None, f"request_uuid not echoed: {reply}")
        return reply

    async def picpik_generate(self, kind: str, batch: int = 1, **params: Any) -> None:
        side = self.rng.choice(SIDES)
        fields: dict[str, Any] = {
            "PositivePrompts": [f"soak {kind} {self.index}"],
            "Width": side,
            "Height": side,
            "BatchSize": batch,
            "Seed": self._seed(),
            "MainModel": {"InferenceParams": {"Steps": self.rng.choice(PICPIK_STEPS)}},
            **params,
        }
        reply = await self.picpik(kind, "GenerateImages", **fields)
        if reply["RetCode"] != 0:
            self.ledger.problem("unexpected", kind, None, f"GenerateImages refused: {reply}")
            return
        task_id = reply["TaskUID"]
        self.ledger.accept(task_id, kind, batch)
        await self.picpik_follow(kind, task_id, fields["Width"])

    async def picpik_follow(self, kind: str, task_id: str, side: int) -> None:
        """Poll until the task ends; its statuses never go back; the ended detail is stable."""
        deadline = time.monotonic() + self.config.task_timeout_s
        last = -1
        while time.monotonic() < deadline:
            reply = await self.picpik(kind, "ListTasksDetails", TaskUIDList=[task_id])
            if reply["RetCode"] != 0:
                self.ledger.problem("unexpected", kind, task_id, f"ListTasksDetails: {reply}")
                return
            (detail,) = reply["TaskDetailList"]
            order = STATUS_ORDER.get(detail["Status"], -1)
            if order < last:
                self.ledger.problem("unexpected", kind, task_id, f"status went back: {detail}")
            last = order
            if detail["Status"] in ("Finished", "Error"):
                break
            await asyncio.sleep(self.config.poll_interval_s)
        else:
            return  # lost: never ended
        images = [image_id_of(url) for url in detail["ImgList"]]
        error = None if detail["Status"] == "Finished" else str(detail["ErrorCode"])
        if error is not None and images:
            self.ledger.problem("unexpected", kind, task_id, f"an error with images: {detail}")
        self.ledger.end(task_id, images, error)
        again = await self.picpik(kind, "ListTasksDetails", TaskUIDList=[task_id])
        (after,) = again["TaskDetailList"]
        if (after["Status"], after["ImgList"]) != (detail["Status"], detail["ImgList"]):
            self.ledger.problem("duplicated", kind, task_id, f"changed after end: {after}")
        await self.check_images(kind, task_id, detail["ImgList"], side)

    async def op_pp_txt2img(self) -> None:
        await self.picpik_generate("pp_txt2img")

    async def op_pp_batch2(self) -> None:
        await self.picpik_generate("pp_batch2", batch=2)

    async def op_pp_img2img(self) -> None:
        await self.picpik_generate(
            "pp_img2img",
            ImageAndMaskList=[INIT_PNG],
            Image2Image={"ImageIndex": 0, "ReferStrength": 0.5},
        )

    async def op_pp_cancel(self) -> None:
        kind = "pp_cancel"
        reply = await self.picpik(
            kind,
            "GenerateImages",
            PositivePrompts=["soak cancel"],
            Width=CANCEL_SIDE,
            Height=CANCEL_SIDE,
            Seed=self._seed(),
            MainModel={"InferenceParams": {"Steps": CANCEL_STEPS}},
        )
        if reply["RetCode"] != 0:
            self.ledger.problem("unexpected", kind, None, f"GenerateImages refused: {reply}")
            return
        task_id = reply["TaskUID"]
        self.ledger.accept(task_id, kind, 1)
        await asyncio.sleep(self.rng.choice((0.0, 0.0, 0.2, 1.0)))
        cancel = await self.picpik(kind, "TerminateTask", TaskUID=task_id)
        if cancel["RetCode"] == 0:
            self.ledger.cancels["acknowledged"] += 1
            self.ledger.expect_error(task_id, "20001")
        elif cancel["RetCode"] == 10041:
            self.ledger.cancels["already_ended"] += 1
        else:
            self.ledger.problem("unexpected", kind, task_id, f"TerminateTask: {cancel}")
        await self.picpik_follow(kind, task_id, CANCEL_SIDE)

    async def op_pp_invalid(self) -> None:
        kind = "pp_invalid"
        what, fields, want = self._next_invalid(PICPIK_INVALID)
        fields = dict(fields)
        if "_raw" in fields:
            reply = await self._picpik_post(kind, fields["_raw"], None)
            self.ledger.refused(kind, what, str(want), str(reply.get("RetCode")))
            return
        if fields.pop("_bad_signature", False):
            if self.target.credentials.picpik_private is None:
                return  # an open server checks no signature
            body = {"Action": fields.pop("Action"), "PositivePrompts": ["x"], "Width": 64}
            body["PublicKey"] = self.target.credentials.picpik_public
            body["Signature"] = "0" * 40
            reply = await self._picpik_post(kind, json.dumps(body).encode(), None)
            self.ledger.refused(kind, what, str(want), str(reply.get("RetCode")))
            return
        action = fields.pop("Action")
        if fields.pop("_unknown_task", False):
            fields["TaskUIDList"] = [self._uuid()]
        if action == "GenerateImages":
            steps = fields.pop("_steps", 6)
            base = {"PositivePrompts": ["x"], "Width": 64, "Height": 64}
            fields = {**base, "MainModel": {"InferenceParams": {"Steps": steps}}, **fields}
        reply = await self.picpik(kind, action, **fields)
        self.ledger.refused(kind, what, str(want), str(reply.get("RetCode")))
        if reply.get("RetCode") == 0 and "TaskUID" in reply:  # accepted after all: follow it
            self.ledger.accept(reply["TaskUID"], kind, 1)
            await self.picpik_follow(kind, reply["TaskUID"], 64)

    # --- Runware, shared ---

    def inference(self, **fields: Any) -> dict[str, Any]:
        side = self.rng.choice(SIDES)
        return {
            "taskType": "imageInference",
            "taskUUID": self._uuid(),
            "positivePrompt": f"soak runware {self.index}",
            "model": MODEL,
            "width": side,
            "height": side,
            "steps": self.rng.choice(RUNWARE_STEPS),
            "numberResults": self.rng.choice((1, 1, 2)),
            "seed": self._seed(),
            **fields,
        }

    async def runware_items(
        self, kind: str, task: dict[str, Any], items: list[dict[str, Any]] | None
    ) -> None:
        """End an accepted imageInference / imageUpload task with the items it got."""
        task_id = task["taskUUID"]
        if items is None:
            return  # lost: no answer
        errors = [item for item in items if "code" in item or item.get("error")]
        if errors:
            self.ledger.end(task_id, [], errors[0].get("code"))
            return
        bad = [item for item in items if item.get("taskUUID") != task_id]
        if bad:
            self.ledger.problem("unexpected", kind, task_id, f"items of another task: {bad}")
        if task["taskType"] == "imageInference" and any(
            item.get("status") != "success" for item in items
        ):
            self.ledger.problem("unexpected", kind, task_id, f"items not successes: {items}")
        self.ledger.end(task_id, [item["imageUUID"] for item in items])
        side = task.get("width", 64)
        await self.check_images(kind, task_id, [item["imageURL"] for item in items], side)

    async def rest(
        self, kind: str, tasks: list[dict[str, Any]], api_key: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        key = api_key or self.target.credentials.runware_key
        headers = {}
        if key is not None and self.rng.random() < 0.5:
            headers["Authorization"] = f"Bearer {key}"
        elif key is not None:
            tasks = [{"taskType": "authentication", "apiKey": key}, *tasks]
        response = await self.http.post("/v1", json=tasks, headers=headers)
        self.ledger.http(kind, response.status_code, response.text[:200])
        return response.status_code, response.json()

    async def poll_runware(
        self, kind: str, task: dict[str, Any], ask: Callable[[dict[str, Any]], Awaitable[Any]]
    ) -> list[dict[str, Any]] | None:
        """getResponse until the task is no longer processing; checks that the next poll gives
        the same answer. None when it never ended."""
        deadline = time.monotonic() + self.config.task_timeout_s
        while time.monotonic() < deadline:
            await asyncio.sleep(self.config.poll_interval_s)
            poll = {"taskType": "getResponse", "taskUUID": task["taskUUID"]}
            items = await ask(poll)
            if items is None:
                continue
            if any(item.get("status") == "processing" for item in items):
                continue
            again = await ask(poll)
            if again != items:
                self.ledger.problem("duplicated", kind, task["taskUUID"], f"{items} != {again}")
            return items
        return None

    # --- Runware over REST ---

    async def op_rw_rest_sync(self) -> None:
        kind = "rw_rest_sync"
        task = self.inference()
        self.ledger.accept(task["taskUUID"], kind, task["numberResults"])
        status, body = await self.rest(kind, [task])
        items = body.get("data", []) + body.get("errors", [])
        if status != (400 if "errors" in body else 200):
            self.ledger.problem("unexpected", kind, task["taskUUID"], f"HTTP {status}: {body}")
        await self.runware_items(kind, task, items)

    async def op_rw_rest_async(self) -> None:
        kind = "rw_rest_async"
        task = self.inference(deliveryMethod="async")
        self.ledger.accept(task["taskUUID"], kind, task["numberResults"])
        status, body = await self.rest(kind, [task])
        ack = body.get("data", []) + body.get("errors", [])
        if status != 200 or [item.get("status") for item in ack] != ["processing"]:
            self.ledger.problem("unexpected", kind, task["taskUUID"], f"HTTP {status}: {body}")
            await self.runware_items(kind, task, ack)
            return

        async def ask(poll: dict[str, Any]) -> list[dict[str, Any]]:
            _, answer = await self.rest(kind, [poll])
            return answer.get("data", []) + answer.get("errors", [])

        await self.runware_items(kind, task, await self.poll_runware(kind, task, ask))

    async def op_rw_rest_upload(self) -> None:
        kind = "rw_rest_upload"
        task = {"taskType": "imageUpload", "taskUUID": self._uuid(), "image": INIT_DATA_URI}
        self.ledger.accept(task["taskUUID"], kind, 1)
        status, body = await self.rest(kind, [task])
        if status != 200:
            self.ledger.problem("unexpected", kind, task["taskUUID"], f"HTTP {status}: {body}")
        await self.runware_items(kind, task, body.get("data", []) + body.get("errors", []))

    async def op_rw_rest_invalid(self) -> None:
        kind = "rw_rest_invalid"
        what, task, want = await self.invalid_runware_task(kind)
        if task is None:
            return
        api_key = "wrong-key" if task.pop("_bad_key", False) else None
        if "_raw" in task:
            response = await self.http.post("/v1", content=task["_raw"])
            self.ledger.http(kind, response.status_code, response.text[:200])
            status, body = response.status_code, response.json()
        else:
            status, body = await self.rest(kind, [task], api_key=api_key)
        want_status = 401 if want == "invalidApiKey" else 400
        codes = [item.get("code") for item in body.get("errors", [])]
        self.ledger.refused(kind, what, want, codes[0] if len(codes) == 1 else str(codes))
        if status != want_status:
            self.ledger.problem("unexpected", kind, None, f"{what}: HTTP {status}, {body}")

    async def invalid_runware_task(self, kind: str) -> tuple[str, dict[str, Any] | None, str]:
        """The next invalid Runware task (None when this server cannot refuse it: an open
        server takes any key). A conflict case first uploads an image under the task id."""
        what, fields, want = self._next_invalid(RUNWARE_INVALID)
        if fields.get("_bad_key") and not self.target.credentials.keyed:
            return what, None, want
        if fields.get("_raw"):
            return what, dict(fields), want
        task = self.inference(steps=2, numberResults=1)
        for name, value in fields.items():
            if value is None:
                task.pop(name, None)
            elif value == "_random_uuid":
                task[name] = self._uuid()
            elif not name.startswith("_"):
                task[name] = value
        if fields.get("_bad_key"):
            task["_bad_key"] = True
        if fields.get("_conflict"):
            upload = {"taskType": "imageUpload", "taskUUID": task["taskUUID"], "image": INIT_PNG}
            self.ledger.accept(upload["taskUUID"], kind, 1)
            _, body = await self.rest(kind, [upload])
            await self.runware_items(kind, upload, body.get("data", []) + body.get("errors", []))
        return what, task, want

    # --- Runware over the WebSocket ---

    async def socket(self, legacy: bool) -> Socket:
        sock = self.legacy if legacy else self.current
        if not sock.open:
            await sock.connect()
        return sock

    async def ws_tasks(self, kind: str, tasks: list[dict[str, Any]], extra: Any = ()) -> None:
        """Send the tasks in one array (plus `extra` items, e.g. a ping); end each with its
        items."""
        sock = await self.socket(legacy=False)
        for task in tasks:
            want = task.get("numberResults", 1) if task["taskType"] == "imageInference" else 1
            self.ledger.accept(task["taskUUID"], kind, want)
        ids = [task["taskUUID"] for task in tasks]
        answers = await sock.ask([*tasks, *extra], ids, self.config.task_timeout_s)
        for task in tasks:
            await self.runware_items(kind, task, answers.get(task["taskUUID"]))

    async def op_rw_ws_inference(self) -> None:
        await self.ws_tasks("rw_ws_inference", [self.inference()])

    async def op_rw_ws_array(self) -> None:
        sock = await self.socket(legacy=False)
        sock.ping_sent.append(time.monotonic())
        sock.pings += 1
        tasks = [self.inference(numberResults=1), self.inference(numberResults=2)]
        await self.ws_tasks("rw_ws_array", tasks, extra=[{"taskType": "ping", "ping": True}])

    async def op_rw_ws_img2img(self) -> None:
        kind = "rw_ws_img2img"
        upload = {"taskType": "imageUpload", "taskUUID": self._uuid(), "image": INIT_DATA_URI}
        sock = await self.socket(legacy=False)
        self.ledger.accept(upload["taskUUID"], kind, 1)
        answers = await sock.ask([upload], [upload["taskUUID"]], self.config.task_timeout_s)
        items = answers.get(upload["taskUUID"])
        await self.runware_items(kind, upload, items)
        if not items or "imageUUID" not in items[0]:
            return
        task = self.inference(seedImage=items[0]["imageUUID"], strength=0.6, steps=4)
        await self.ws_tasks(kind, [task])

    async def op_rw_ws_async(self) -> None:
        kind = "rw_ws_async"
        sock = await self.socket(legacy=False)
        task = self.inference(deliveryMethod="async")
        task_id = task["taskUUID"]
        self.ledger.accept(task_id, kind, task["numberResults"])
        # On a socket the server pushes an async task's progress and then its result items
        # (docs/runware.md, Live progress): no polling needed.
        items = await sock.follow([task], task_id, task["numberResults"], 60)
        if not items:
            return await self.runware_items(kind, task, None)
        ack, *pushed = items
        if ack != {"taskType": "imageInference", "taskUUID": task_id, "status": "processing"}:
            self.ledger.problem("unexpected", kind, task_id, f"async ack: {ack}")
        running = [item for item in pushed if item.get("status") == "processing"]
        progress = [item.get("progress") for item in running]
        if progress != sorted(progress) or not all(isinstance(p, int) for p in progress):
            self.ledger.problem("unexpected", kind, task_id, f"pushed progress: {progress}")
        ended = [item for item in pushed if item.get("status") != "processing"]
        await self.runware_items(kind, task, ended)
        if not any("code" in item for item in ended):  # getResponse answers the same
            polled = await sock.ask(
                [{"taskType": "getResponse", "taskUUID": task_id}], [task_id], 60
            )
            if polled.get(task_id) != ended:
                self.ledger.problem("duplicated", kind, task_id, f"{ended} != {polled}")

    async def op_rw_ws_invalid(self) -> None:
        kind = "rw_ws_invalid"
        what, task, want = await self.invalid_runware_task(kind)
        if task is None:
            return
        sock = await self.socket(legacy=False)
        if task.pop("_bad_key", False):
            # A bad key on a fresh socket: refused, and the socket stays open.
            async with connect(self.target.ws_url, open_timeout=60, ping_interval=None) as probe:
                await probe.send(json.dumps([{"taskType": "authentication", "apiKey": "wrong"}]))
                frame = json.loads(await asyncio.wait_for(probe.recv(), 60))
                await probe.send(json.dumps([{"taskType": "ping", "ping": True}]))
                pong = json.loads(await asyncio.wait_for(probe.recv(), 60))
            codes = [item.get("code") for item in frame.get("errors", [])]
            self.ledger.refused(kind, what, want, codes[0] if codes else str(frame))
            if pong != {"data": [{"taskType": "ping", "pong": True}]}:
                self.ledger.problem("unexpected", kind, None, f"after a bad key: {pong}")
            return
        if "_raw" in task:
            await sock.send(task["_raw"])
            frame = await asyncio.wait_for(sock.untagged.get(), 60)
            codes = [item.get("code") for item in frame.get("errors", [])]
            self.ledger.refused(kind, what, want, codes[0] if codes else str(frame))
            return
        answers = await sock.ask([task], [task["taskUUID"]], 60)
        items = answers.get(task["taskUUID"], [])
        codes = [item.get("code") for item in items]
        self.ledger.refused(kind, what, want, codes[0] if len(codes) == 1 else str(items))

    # --- legacy ---

    async def op_lg_new_task(self) -> None:
        kind = "lg_new_task"
        sock = await self.socket(legacy=True)
        count = self.rng.choice((1, 1, 2))
        task_id = self._uuid()
        message = {
            "newTask": {
                "taskUUID": task_id,
                "taskType": 1,
                "promptText": f"soak legacy {self.index} -no blurry",
                "modelId": MODEL,
                "sizeId": 1,
                "steps": self.rng.choice((1, 2)),
                "numberResults": count,
                "seed": self._seed(),
                "useCache": False,
            }
        }
        self.ledger.accept(task_id, kind, count)
        answers = await sock.ask(message, [task_id], self.config.task_timeout_s)
        frames = answers.get(task_id)
        if frames is None:
            return
        errors = [frame for frame in frames if frame.get("error")]
        if errors:
            self.ledger.end(task_id, [], f"legacy:{errors[0].get('errorId')}")
            return
        images = [image for frame in frames for image in frame["newImages"]["images"]]
        self.ledger.end(task_id, [image["imageUUID"] for image in images])
        await self.check_images(kind, task_id, [i["imageSrc"] for i in images], LEGACY_SIDE)

    async def op_lg_upload(self) -> None:
        kind = "lg_upload"
        sock = await self.socket(legacy=True)
        task_id = self._uuid()
        self.ledger.accept(task_id, kind, 1)
        message = {"newImageUpload": {"taskUUID": task_id, "imageBase64": INIT_DATA_URI}}
        answers = await sock.ask(message, [task_id], self.config.task_timeout_s)
        frames = answers.get(task_id)
        if frames is None:
            return
        (frame,) = frames
        if frame.get("error"):
            self.ledger.end(task_id, [], f"legacy:{frame.get('errorId')}")
            return
        body = frame["newUploadedImageUUID"]
        self.ledger.end(task_id, [body["newImageUUID"]])
        await self.check_images(kind, task_id, [body["newImageSrc"]], 64)

    async def op_lg_invalid(self) -> None:
        kind = "lg_invalid"
        sock = await self.socket(legacy=True)
        what, fields, want = self._next_invalid(LEGACY_INVALID)
        task_id = self._uuid()
        if "_message" in fields:
            message: dict[str, Any] = {fields["_message"]: {"taskUUID": task_id}}
        else:
            body = {"taskUUID": task_id, "taskType": 1, "promptText": "x", "modelId": MODEL}
            message = {"newTask": {**body, "sizeId": 1, "steps": 1, **fields}}
        answers = await sock.ask(message, [task_id], 60)
        frames = answers.get(task_id, [])
        got = [str(frame.get("errorId")) for frame in frames if frame.get("error")]
        self.ledger.refused(kind, what, str(want), got[0] if len(got) == 1 else str(frames))


# --- memory -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the start
    done: int  # operations finished
    rss: int  # bytes
    load1: float  # the machine's 1-minute load average


class Sampler:
    """Samples the server's RSS (and the machine's load) every second in a thread."""

    def __init__(self, pid: int | None, progress: Callable[[], int], period: float = 1.0) -> None:
        self.process = psutil.Process(pid) if pid is not None else None
        self.progress = progress
        self.period = period
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._started = time.monotonic()
        self.cpu_start = self._cpu()

    def _cpu(self) -> float | None:
        if self.process is None:
            return None
        times = self.process.cpu_times()
        return times.user + times.system

    def start(self) -> None:
        self._started = time.monotonic()
        self.cpu_start = self._cpu()
        self._thread.start()

    def stop(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.sample()
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        rss = self.process.memory_info().rss if self.process is not None else 0
        elapsed = time.monotonic() - self._started
        self.samples.append(Sample(elapsed, self.progress(), rss, os.getloadavg()[0]))

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            with contextlib.suppress(psutil.Error):
                self.sample()

    def server_cpu_s(self) -> float | None:
        now = self._cpu()
        return None if now is None or self.cpu_start is None else now - self.cpu_start


def rss_summary(
    samples: list[Sample], total: int, warmup: float = WARMUP_FRACTION
) -> dict[str, Any]:
    """Warm-up, end and max RSS and whether memory stayed flat (see the module docstring).

    warm-up: the median of the samples taken while `warmup` to `warmup` + 5 % of the
    operations were done (the first sample after `warmup` if none); end: the median of the
    samples after 95 %; slope: least squares of RSS against operations done over the samples
    of the second half."""
    points = [s for s in samples if s.rss > 0]
    if not points or total <= 0:
        return {"measured": False, "flat": True}

    def mib(value: float) -> float:
        return round(value / MIB, 1)

    def at(fraction: float) -> float:
        window = [s.rss for s in points if fraction <= s.done / total < fraction + 0.05]
        if not window:
            window = [next((s.rss for s in points if s.done >= fraction * total), 0)]
        return statistics.median(window) if window[0] else points[0].rss

    warm = at(warmup)
    end_window = [s.rss for s in points if s.done >= 0.95 * total] or [points[-1].rss]
    end = statistics.median(end_window)
    peak = max(s.rss for s in points)
    second = [s for s in points if s.done >= total / 2]
    slope = 0.0
    if len({s.done for s in second}) >= 2:
        x = np.array([s.done for s in second], dtype=float)
        y = np.array([s.rss for s in second], dtype=float)
        slope = float(np.polyfit(x, y, 1)[0]) * 1000 / MIB
    growth = end - warm
    growth_limit = max(GROWTH_LIMIT_FRACTION * warm, GROWTH_LIMIT_MIB * MIB)
    flat = growth <= growth_limit and slope <= SLOPE_LIMIT_MIB_PER_1000
    return {
        "measured": True,
        "start_mib": mib(points[0].rss),
        "after_10pct_mib": mib(at(0.10)),
        "warmup_fraction": warmup,
        "warmup_mib": mib(warm),
        "end_mib": mib(end),
        "max_mib": mib(peak),
        "growth_after_warmup_mib": mib(growth),
        "growth_after_warmup_pct": round(100 * growth / warm, 2),
        "growth_limit_mib": mib(growth_limit),
        "second_half_slope_mib_per_1000_ops": round(slope, 2),
        "slope_limit_mib_per_1000_ops": SLOPE_LIMIT_MIB_PER_1000,
        "samples": len(points),
        "timeline": [[round(s.t, 1), s.done, mib(s.rss)] for s in points],  # s, ops, MiB
        "flat": flat,
        "criterion": (
            f"warm-up = the first {warmup:.0%} of the operations; "
            f"flat iff end - warm-up <= max({GROWTH_LIMIT_FRACTION:.0%} of warm-up, "
            f"{GROWTH_LIMIT_MIB:g} MiB) and second-half slope <= "
            f"{SLOPE_LIMIT_MIB_PER_1000:g} MiB per 1000 operations"
        ),
    }


# --- the run ------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


async def soak(config: SoakConfig, target: Target) -> dict[str, Any]:
    """Run the plan from `config.clients` concurrent clients; the report (see `report`)."""
    plan = make_plan(config.tasks, config.seed)
    ledger = Ledger()
    queue: asyncio.Queue[str] = asyncio.Queue()
    for kind in plan:
        queue.put_nowait(kind)
    done = 0
    sampler = Sampler(target.pid, lambda: done)
    clients = [Client(i, config, target, ledger) for i in range(config.clients)]
    client_cpu = time.process_time()
    load_start = os.getloadavg()
    started = time.monotonic()
    sampler.start()

    async def drive(client: Client) -> None:
        nonlocal done
        while not queue.empty():
            await client.run(queue.get_nowait())
            done += 1

    try:
        await asyncio.gather(*(drive(client) for client in clients))
        wall = time.monotonic() - started
        for client in clients:
            client.current.stop_pinging()
            client.legacy.stop_pinging()
        await asyncio.sleep(config.grace_s)  # frames still coming would be duplicates
        for client in clients:
            for sock in (client.current, client.legacy):
                while not sock.untagged.empty():
                    frame = sock.untagged.get_nowait()
                    ledger.problem("unexpected", sock.kind, None, f"untagged frame: {frame}")
    finally:
        sampler.stop()
        for client in clients:
            await client.close()
    sockets = [sock for client in clients for sock in (client.current, client.legacy)]
    pings = {
        "sent": sum(sock.pings for sock in sockets),
        "pongs": sum(sock.pongs for sock in sockets),
        "max_pong_s": round(max(sock.max_pong_s for sock in sockets), 3),
    }
    if pings["pongs"] != pings["sent"]:
        ledger.problem("lost", "ping", None, f"{pings['sent']} pings, {pings['pongs']} pongs")
    return report(config, target, ledger, sampler, wall, pings, client_cpu, load_start)


def report(
    config: SoakConfig,
    target: Target,
    ledger: Ledger,
    sampler: Sampler,
    wall: float,
    pings: dict[str, Any],
    client_cpu_start: float,
    load_start: tuple[float, float, float],
) -> dict[str, Any]:
    for tracked in ledger.lost():
        ledger.problem("lost", tracked.kind, tracked.task_id, "accepted, never ended")
    if target.log_path is not None and target.log_path.exists():
        log = target.log_path.read_text(errors="replace")
        for at in range(log.count("Traceback")):
            ledger.problem("unexpected", "server", None, f"traceback {at + 1} in {target.log_path}")
    tasks_by_kind = Counter(t.kind for t in ledger.tasks.values())
    images_by_kind: Counter[str] = Counter()
    for tracked in ledger.tasks.values():
        images_by_kind[tracked.kind] += len(tracked.images)
    problems = Counter(p.category for p in ledger.problems)
    kinds = {}
    for kind in MIX:
        latencies = ledger.op_latency.get(kind, [])
        kinds[kind] = {
            "ops": ledger.op_count[kind],
            "tasks": tasks_by_kind[kind],
            "images": images_by_kind[kind],
            "p50_s": _round(percentile(latencies, 50)),
            "p95_s": _round(percentile(latencies, 95)),
            "problems": sum(1 for p in ledger.problems if p.kind == kind),
        }
    ops = sum(ledger.op_count.values())
    images = sum(images_by_kind.values())
    memory = rss_summary(sampler.samples, ops, config.warmup)
    loads = [s.load1 for s in sampler.samples]
    failures = [f"{n} {category}" for category, n in sorted(problems.items())]
    if not memory["flat"]:
        failures.append("memory grew: " + memory["criterion"])
    ends = Counter(t.ends[0] for t in ledger.tasks.values() if t.ends)
    return {
        "config": asdict(config),
        "target": {
            "url": target.url,
            "pid": target.pid,
            "keyed": target.credentials.keyed,
            "server_env": target.server_env,
        },
        "wall_s": round(wall, 1),
        "ops": ops,
        "tasks_accepted": len(ledger.tasks),
        "requests_refused": sum(ledger.expected_errors.values()),
        "images": images,
        "downloads": ledger.downloads,
        "ops_per_s": round(ops / wall, 2),
        "tasks_per_s": round(len(ledger.tasks) / wall, 2),
        "images_per_s": round(images / wall, 2),
        "lost": problems.get("lost", 0),
        "duplicated": problems.get("duplicated", 0),
        "unexpected": problems.get("unexpected", 0),
        "http_5xx": problems.get("http_5xx", 0),
        "expected_errors": dict(sorted(ledger.expected_errors.items())),
        "task_ends": dict(sorted(ends.items())),
        "cancels": dict(ledger.cancels),
        "http_status": {str(k): v for k, v in sorted(ledger.http_status.items())},
        "pings": pings,
        "kinds": kinds,
        "rss": memory,
        "load": {
            "cpus": os.cpu_count(),
            "load1_start": round(load_start[0], 2),
            "load1_mean": _round(statistics.fmean(loads) if loads else None),
            "load1_max": _round(max(loads) if loads else None),
            "server_cpu_s": _round(sampler.server_cpu_s()),
            "soak_client_cpu_s": round(time.process_time() - client_cpu_start, 1),
        },
        "problems": [asdict(p) for p in ledger.problems[:200]],
        "failures": failures,
        "passed": not failures,
    }


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def summary_table(result: dict[str, Any]) -> str:
    lines = [f"{'kind':18} {'ops':>5} {'tasks':>5} {'images':>6} {'p50 s':>6} {'p95 s':>6} prob"]
    for kind, row in result["kinds"].items():
        p50 = "-" if row["p50_s"] is None else f"{row['p50_s']:.2f}"
        p95 = "-" if row["p95_s"] is None else f"{row['p95_s']:.2f}"
        lines.append(
            f"{kind:18} {row['ops']:5d} {row['tasks']:5d} {row['images']:6d} {p50:>6} {p95:>6} "
            f"{row['problems']}"
        )
    rss = result["rss"]
    load = result["load"]
    lines += [
        "",
        f"{result['ops']} operations, {result['tasks_accepted']} tasks accepted and "
        f"{result['requests_refused']} invalid ones refused, "
        f"{result['images']} images ({result['downloads']} downloaded) from "
        f"{result['config']['clients']} clients in {result['wall_s']} s: "
        f"{result['ops_per_s']} ops/s, {result['tasks_per_s']} tasks/s, "
        f"{result['images_per_s']} images/s",
        f"lost {result['lost']}, duplicated {result['duplicated']}, unexpected "
        f"{result['unexpected']}, HTTP 5xx {result['http_5xx']}",
        f"expected errors: {result['expected_errors']}",
        f"task ends: {result['task_ends']}; cancels: {result['cancels']}",
        f"pings: {result['pings']}",
    ]
    if rss.get("measured"):
        lines.append(
            f"server RSS: start {rss['start_mib']} MiB, warm-up {rss['warmup_mib']} MiB, end "
            f"{rss['end_mib']} MiB, max {rss['max_mib']} MiB; growth after warm-up "
            f"{rss['growth_after_warmup_mib']} MiB ({rss['growth_after_warmup_pct']} %), "
            f"second-half slope {rss['second_half_slope_mib_per_1000_ops']} MiB/1000 ops: "
            f"{'flat' if rss['flat'] else 'NOT flat'} ({rss['criterion']})"
        )
    else:
        lines.append("server RSS: not measured (no --pid)")
    lines.append(
        f"load: {load['cpus']} CPUs, 1-min load at start {load['load1_start']}, mean "
        f"{load['load1_mean']}, max {load['load1_max']}; server CPU {load['server_cpu_s']} s, "
        f"soak client CPU {load['soak_client_cpu_s']} s"
    )
    for p in result["problems"][:20]:
        lines.append(f"  {p['category']}: {p['kind']} {p['task_id']}: {p['detail']}")
    lines.append("PASSED" if result["passed"] else "FAILED: " + "; ".join(result["failures"]))
    return "\n".join(lines)


def run(config: SoakConfig, target: Target) -> dict[str, Any]:
    return asyncio.run(soak(config, target))


@contextlib.contextmanager
def local_server(data_dir: Path | None, env: dict[str, str] | None = None) -> Iterator[Target]:
    """A real `easel serve` on a free loopback port over `data_dir` (a temporary one when None)
    with the soak's keys and `env` added to its environment; the demo model is built on its
    first start."""
    from tests.e2e.server_process import ServerProcess

    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "data"
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        keys_file = data_dir.parent / f"{data_dir.name}-soak-keys.json"
        keys_file.write_text(json.dumps(keys_file_content()))
        server = ServerProcess(data_dir, "--keys-file", str(keys_file), env=env)
        server.start(timeout=600)
        stack.callback(server.stop)
        assert server.process is not None
        yield Target(
            server.url, server.process.pid, SOAK_CREDENTIALS, server.log_path, dict(env or {})
        )


def server_env(threads: int | None) -> dict[str, str]:
    """The started server's extra environment. OMP_NUM_THREADS: on a machine shared with other
    work, torch's spinning OpenMP threads can make each forward tens of times slower than one
    thread."""
    env: dict[str, str] = {}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000, help="operations to run")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--pid", type=int, help="the running server's pid, for RSS samples")
    parser.add_argument("--picpik-key", nargs=2, metavar=("PUBLIC", "PRIVATE"))
    parser.add_argument("--runware-key")
    parser.add_argument("--data-dir", type=Path, help="the started server's data dir")
    parser.add_argument(
        "--threads", type=int, help="OMP_NUM_THREADS of the started server (default: torch's)"
    )
    parser.add_argument("--report", type=Path, help="write the JSON report here")
    parser.add_argument("--no-download", action="store_true", help="skip image downloads")
    parser.add_argument(
        "--warmup",
        type=float,
        default=WARMUP_FRACTION,
        help="share of the operations after which RSS must stay flat",
    )
    args = parser.parse_args(argv)
    config = SoakConfig(
        tasks=args.tasks,
        clients=args.clients,
        seed=args.seed,
        download=not args.no_download,
        warmup=args.warmup,
    )
    if args.url:
        public, private = args.picpik_key or (None, None)
        credentials = Credentials(public, private, args.runware_key)
        result = run(config, Target(args.url.rstrip("/"), args.pid, credentials))
    else:
        env = server_env(args.threads)
        with local_server(args.data_dir, env) as target:
            print(f"server {target.url} (pid {target.pid}) is up", file=sys.stderr)
            result = run(config, target)
    print(summary_table(result))
    if args.report:
        args.report.write_text(json.dumps(result, indent=2))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
