"""End to end: the request limits a real `easel serve` enforces over real sockets, where uvicorn
takes part: WebSocket frames over the limit (an error frame) and over uvicorn's hard cap (close
1009), HTTP bodies sent in many chunks, and a declared Content-Length refused before the body is
sent. One server for the module, with 1 MiB limits set by flags.
"""

from __future__ import annotations

import itertools
import json
import re
import select
import socket
import uuid
from collections.abc import Iterator

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.e2e.server_process import ServerProcess

MIB = 1024 * 1024
RECEIVE_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("limits") / "data"
    flags = ("--max-body-mb", "1", "--ws-max-frame-mb", "1")
    with ServerProcess(data_dir, *flags) as running:
        yield running


def _ws_url(server: ServerProcess) -> str:
    return server.url.replace("http://", "ws://") + "/v1"


def _upload(size: int) -> tuple[str, str]:
    """(its taskUUID, the frame) of an imageUpload `size` bytes long."""
    task_uuid = str(uuid.uuid4())
    frame = json.dumps([{"taskType": "imageUpload", "taskUUID": task_uuid, "image": ""}])
    pad = "x" * (size - len(frame))
    return task_uuid, frame.replace('"image": ""', f'"image": "{pad}"')


def test_frame_over_the_limit_gets_an_error_and_the_socket_stays(server: ServerProcess) -> None:
    with connect(_ws_url(server), max_size=None, open_timeout=30) as ws:
        task_uuid, frame = _upload(MIB + MIB // 2)
        ws.send(frame)
        (error,) = json.loads(ws.recv(RECEIVE_TIMEOUT_S))["errors"]
        assert error["code"] == "payloadTooLarge"
        assert error["taskUUID"] == task_uuid
        assert error["taskType"] == "imageUpload"
        ws.send(json.dumps([{"taskType": "ping"}]))
        assert json.loads(ws.recv(RECEIVE_TIMEOUT_S))["data"][0]["pong"] is True


def test_frame_over_the_hard_cap_closes_the_socket_with_1009(server: ServerProcess) -> None:
    """uvicorn's ws_max_size is 1 MiB + 1 MiB here (Limits.ws_hard_cap_bytes): beyond it the
    frame is not read whole and the socket is closed as "message too big"."""
    with connect(_ws_url(server), max_size=None, open_timeout=30) as ws:
        _, frame = _upload(2 * MIB + 1024)
        ws.send(frame)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(RECEIVE_TIMEOUT_S)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009


def _exchange(server: ServerProcess, head: bytes, chunks: Iterator[bytes]) -> tuple[bytes, bytes]:
    """Send a request over a raw socket, the body chunk by chunk until the server answers (it
    may answer and close before the body is all sent); (status line and headers, body)."""
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=RECEIVE_TIMEOUT_S) as raw:
        raw.sendall(head)
        for chunk in chunks:
            if select.select([raw], [], [], 0)[0]:
                break  # the answer is there
            try:
                raw.sendall(chunk)
            except OSError:
                break
        answer = b""
        while True:
            headers, _, body = answer.partition(b"\r\n\r\n")
            length = re.search(rb"content-length: *(\d+)", headers, re.IGNORECASE)
            if length is not None and len(body) >= int(length.group(1)):
                return headers, body
            data = raw.recv(65536)
            assert data, f"the connection closed mid-answer: {answer!r}"
            answer += data


def _chunked(path: str, size: int) -> tuple[bytes, Iterator[bytes]]:
    """A chunked request of about `size` bytes of JSON (one ping task), in 64 KiB chunks."""
    body = json.dumps([{"taskType": "ping", "pad": "x" * size}]).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    step = 64 * 1024
    parts = (
        f"{len(body[i : i + step]):x}\r\n".encode() + body[i : i + step] + b"\r\n"
        for i in range(0, len(body), step)
    )
    return head, itertools.chain(parts, [b"0\r\n\r\n"])


@pytest.mark.parametrize("path", ["/", "/v1"])
def test_chunked_bodies_are_counted_as_they_stream(server: ServerProcess, path: str) -> None:
    headers, body = _exchange(server, *_chunked(path, 8 * MIB))
    if path == "/v1":
        assert headers.startswith(b"HTTP/1.1 413"), headers
        assert json.loads(body)["errors"][0]["code"] == "payloadTooLarge"
    else:
        assert headers.startswith(b"HTTP/1.1 200"), headers
        assert json.loads(body)["RetCode"] == 10004
    headers, body = _exchange(server, *_chunked("/v1", MIB - 1024))
    assert headers.startswith(b"HTTP/1.1 200"), headers
    assert json.loads(body)["data"][0]["pong"] is True


def test_declared_length_is_refused_before_the_body_is_sent(server: ServerProcess) -> None:
    """Only the headers go out: the answer comes at once, nothing of the 100 MiB is awaited."""
    head = (
        "POST /v1 HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {100 * MIB}\r\n\r\n"
    ).encode()
    headers, body = _exchange(server, head, iter(()))
    assert headers.startswith(b"HTTP/1.1 413"), headers
    error = json.loads(body)["errors"][0]
    assert error["code"] == "payloadTooLarge"
    assert error["message"].startswith(f"the request body is {100 * MIB} bytes")
