"""`easel models pull` below the command line: download, resume, verify, classify, place.

Files come from a loopback HTTP server (tests/file_server.py) that answers Range requests, can
cut a connection after N bytes and records every request; Hugging Face repo ids resolve through
a fake Hub whose URLs point at that server. Nothing reaches the network.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from models.catalogue import Architecture, ModelKind
from models.hub import HubFile, HuggingFaceHub, RepoSource, parse_repo_source
from models.install import (
    PARTIAL_DIR,
    PullError,
    PullRequest,
    PullResult,
    _exclusive,
    partial_path,
    pull,
)
from tests.file_server import Served, file_server
from tests.models.tiny import SD1_CHECKPOINT, SD1_LORA


def random_safetensors(shapes: dict[str, tuple[int, ...]], seed: int) -> bytes:
    """A real .safetensors file of random fp16 tensors: every byte differs between offsets, so
    a resume that appends at the wrong place cannot go unnoticed."""
    rng = np.random.default_rng(seed)
    return save(
        {name: rng.standard_normal(shape).astype(np.float16) for name, shape in shapes.items()}
    )


LORA = random_safetensors(SD1_LORA, 1)
OTHER_LORA = random_safetensors(SD1_LORA, 2)
# The tensors detection reads, at small widths except the context ones (how it tells SD 1.x).
CHECKPOINT = random_safetensors(
    {name: tuple(min(n, 8) if i == 0 else n for i, n in enumerate(shape))
     for name, shape in SD1_CHECKPOINT.items()},
    3,
)  # fmt: skip
UNKNOWN = random_safetensors({"some.unknown.weight": (16, 16)}, 4)


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class Quiet:
    """A reporter that keeps the notes a terminal would show."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def note(self, message: str) -> None:
        self.notes.append(message)

    def start(self, total: int | None, done: int) -> None:
        pass

    def advance(self, count: int) -> None:
        pass

    def finish(self) -> None:
        pass


class FakeHub:
    """The Hub API as a file list; its URLs are the loopback server's."""

    def __init__(self, endpoint: str, files: dict[str, bytes], token: str | None = None) -> None:
        self.endpoint = endpoint
        self.files = files
        self._token = token
        self.listed: list[tuple[str, str]] = []

    def list_files(self, repo_id: str, revision: str) -> list[HubFile]:
        self.listed.append((repo_id, revision))
        return [HubFile(path, len(body), sha(body)) for path, body in self.files.items()]

    def file_url(self, repo_id: str, path: str, revision: str) -> str:
        return f"{self.endpoint}/{repo_id}/resolve/{revision}/{path}"

    def token(self) -> str | None:
        return self._token


@pytest.fixture(scope="module")
def served() -> Served:
    return Served()


@pytest.fixture(scope="module")
def base_url(served: Served) -> Iterator[str]:
    with file_server(served) as url:
        yield url


def serve(served: Served, path: str, body: bytes, **headers: str) -> str:
    served.files[path] = body
    served.headers[path] = {k.replace("_", "-"): v for k, v in headers.items()}
    return path


def run(base_url: str, path: str, models_dir: Path, **options) -> PullResult:
    request = PullRequest(base_url + path, models_dir, backoff_s=0, **options)
    return pull(request, Quiet())


def leftovers(models_dir: Path) -> list[Path]:
    return sorted(p for p in models_dir.rglob("*") if p.is_file())


# --- installing ----------------------------------------------------------------------------------


def test_a_lora_lands_in_the_existing_lora_folder_under_its_code(
    served: Served, base_url: str, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    (models / "Lora").mkdir(parents=True)  # A1111's name: used rather than a new loras/
    path = serve(served, "/files/watercolor.safetensors", LORA)
    result = run(base_url, path, models, code="wc")
    assert result.path == models / "Lora" / "wc.safetensors"
    assert result.path.read_bytes() == LORA
    assert (result.code, result.kind, result.detected.architecture) == (
        "wc",
        ModelKind.LORA,
        Architecture.SD1,
    )
    assert result.sha256 == sha(LORA) and result.verified_by is None
    assert leftovers(models) == [result.path]  # no partial file, no .partial folder
    assert not (models / PARTIAL_DIR).exists()


def test_a_checkpoint_goes_to_checkpoints_named_after_its_file(
    served: Served, base_url: str, tmp_path: Path
) -> None:
    path = serve(served, "/m/dreamy%20v2.safetensors?download=true", CHECKPOINT)
    result = run(base_url, path, tmp_path)
    assert result.path == tmp_path / "checkpoints" / "dreamy v2.safetensors"
    assert (result.code, result.kind) == ("dreamy v2", ModelKind.CHECKPOINT)
    # it is the only real checkpoint, so the public PICPIK codes resolve to it
    assert "PICPIK General" in result.public_ids


def test_kind_is_read_from_the_file_or_given(served: Served, base_url: str, tmp_path: Path) -> None:
    path = serve(served, "/odd.safetensors", UNKNOWN)
    with pytest.raises(PullError, match=r"pass --kind .*the download is kept"):
        run(base_url, path, tmp_path)
    requests = len(served.requests_for(path))
    result = run(base_url, path, tmp_path, kind=ModelKind.CONTROLNET)
    assert result.path == tmp_path / "controlnet" / "odd.safetensors"
    assert result.download.received == 0  # the kept download was complete: a 416, no bytes
    assert served.requests_for(path)[requests]["range"] == f"bytes={len(UNKNOWN)}-"
    with pytest.raises(PullError, match="would not load it as a lora"):
        run(base_url, path, tmp_path / "other", kind=ModelKind.LORA)


# --- checksums -----------------------------------------------------------------------------------


def test_a_wrong_sha256_installs_nothing(served: Served, base_url: str, tmp_path: Path) -> None:
    path = serve(served, "/v/lora.safetensors", LORA)
    with pytest.raises(PullError, match=r"sha256 mismatch.*--sha256.*deleted") as caught:
        run(base_url, path, tmp_path, sha256="0" * 64)
    assert sha(LORA) in str(caught.value)
    assert leftovers(tmp_path) == []
    result = run(base_url, path, tmp_path, sha256=sha(LORA).upper())
    assert result.verified_by == "--sha256"
    with pytest.raises(PullError, match="64 hexadecimal digits"):
        run(base_url, path, tmp_path, sha256="abc")


def test_published_digests_are_checked(served: Served, base_url: str, tmp_path: Path) -> None:
    # Hugging Face: huggingface.co redirects to its CDN with the LFS sha256 in X-Linked-Etag.
    cdn = serve(served, "/cdn/blob-1", LORA)
    served.redirects["/hf/resolve/main/a.safetensors"] = base_url + cdn
    served.headers["/hf/resolve/main/a.safetensors"] = {"X-Linked-Etag": f'"{sha(LORA)}"'}
    result = run(base_url, "/hf/resolve/main/a.safetensors", tmp_path / "one")
    assert result.verified_by == "the digest 127.0.0.1:{} publishes".format(base_url.split(":")[-1])
    assert result.path.name == "a.safetensors"

    served.redirects["/hf/resolve/main/b.safetensors"] = base_url + cdn
    served.headers["/hf/resolve/main/b.safetensors"] = {"X-Linked-Etag": f'"{sha(OTHER_LORA)}"'}
    with pytest.raises(PullError, match="sha256 mismatch"):
        run(base_url, "/hf/resolve/main/b.safetensors", tmp_path / "two")
    assert leftovers(tmp_path / "two") == []

    # A plain URL: an optional <url>.sha256 sidecar in sha256sum's format.
    path = serve(served, "/s/c.safetensors", LORA)
    served.files["/s/c.safetensors.sha256"] = f"{sha(LORA)}  c.safetensors\n".encode()
    assert run(base_url, path, tmp_path / "three").verified_by.endswith("c.safetensors.sha256")
    served.files["/s/c.safetensors.sha256"] = f"{sha(OTHER_LORA)}  c.safetensors\n".encode()
    with pytest.raises(PullError, match="sha256 mismatch"):
        run(base_url, path, tmp_path / "four")


# --- resuming ------------------------------------------------------------------------------------


def test_a_truncated_download_resumes_on_the_next_run(
    served: Served, base_url: str, tmp_path: Path
) -> None:
    path = serve(served, "/big/ckpt.safetensors", CHECKPOINT)
    served.cut_after[path] = len(CHECKPOINT) // 3
    with pytest.raises(PullError, match=r"interrupted at .*run the same command again to resume"):
        run(base_url, path, tmp_path, retries=0)
    (part,) = (tmp_path / PARTIAL_DIR).glob("*.part")
    kept = part.stat().st_size
    assert 0 < kept < len(CHECKPOINT)
    assert not (tmp_path / "checkpoints").exists()  # nothing installed yet

    result = run(base_url, path, tmp_path, sha256=sha(CHECKPOINT), retries=0)
    second = served.requests_for(path)[-1]
    assert second["range"] == f"bytes={kept}-"
    assert second["if-range"] == served_etag(CHECKPOINT)
    assert result.download.resumed_from == kept
    assert result.download.received == len(CHECKPOINT) - kept
    assert result.path.read_bytes() == CHECKPOINT
    assert not part.exists()


def served_etag(body: bytes) -> str:
    from tests.file_server import etag

    return etag(body)


def test_a_dropped_connection_is_resumed_within_the_run(
    served: Served, base_url: str, tmp_path: Path
) -> None:
    path = serve(served, "/drop/lora.safetensors", LORA)
    served.cut_after[path] = 5000
    result = run(base_url, path, tmp_path, retries=2, sha256=sha(LORA))
    first, second = served.requests_for(path)
    assert "range" not in first and second["range"].startswith("bytes=")
    assert result.path.read_bytes() == LORA


def test_a_server_that_ignores_ranges_or_changed_the_file_starts_over(
    served: Served, base_url: str, tmp_path: Path
) -> None:
    path = serve(served, "/norange/lora.safetensors", OTHER_LORA)
    served.cut_after[path] = 5000
    with pytest.raises(PullError, match="interrupted"):
        run(base_url, path, tmp_path, retries=0)
    served.files[path] = LORA  # changed on the server: its ETag no longer matches If-Range
    result = run(base_url, path, tmp_path, sha256=sha(LORA))
    assert result.path.read_bytes() == LORA
    assert result.download.received == len(LORA)

    served.cut_after[path] = 5000
    served.ignore_range.add(path)  # a server that answers a range request with a 200
    with pytest.raises(PullError, match="interrupted"):
        run(base_url, path, tmp_path / "again", retries=0)
    result = run(base_url, path, tmp_path / "again")
    assert result.path.read_bytes() == LORA
    assert (result.download.resumed_from, result.download.received) == (0, len(LORA))


def test_one_pull_of_a_file_at_a_time_and_unreachable_servers(
    served: Served, base_url: str, tmp_path: Path
) -> None:
    path = serve(served, "/lock/lora.safetensors", LORA)
    part = partial_path(tmp_path, base_url + path, "lora.safetensors")
    with _exclusive(part), pytest.raises(PullError, match="another `easel models pull`"):
        run(base_url, path, tmp_path)
    assert run(base_url, path, tmp_path).path.read_bytes() == LORA  # the lock went with its pull
    with pytest.raises(PullError, match=r"cannot reach 127\.0\.0\.1: "):
        pull(PullRequest("http://127.0.0.1:9/x.safetensors", tmp_path, retries=0), Quiet())


# --- refusals ------------------------------------------------------------------------------------


def test_pickles_and_other_non_safetensors_are_refused(
    served: Served, base_url: str, tmp_path: Path
) -> None:
    path = serve(served, "/p/model.ckpt", b"PK\x03\x04 a zipped pickle")
    with pytest.raises(PullError, match=r"pickle weights .* never pulled"):
        run(base_url, path, tmp_path)
    assert served.requests_for(path) == []  # refused before anything is fetched

    path = serve(served, "/api/download/1", b"PK\x03\x04" + bytes(4000))  # no name in the URL
    with pytest.raises(PullError, match="not a safetensors file: it starts like a zip"):
        run(base_url, path, tmp_path)
    path = serve(served, "/api/download/2", LORA, Content_Disposition='attachment; filename="x.pt"')
    with pytest.raises(PullError, match=r"\(x.pt\): pickle weights"):
        run(base_url, path, tmp_path)
    path = serve(served, "/page.safetensors", b"<!DOCTYPE html><html>log in first</html>")
    with pytest.raises(PullError, match="starts like an HTML page"):
        run(base_url, path, tmp_path)
    with pytest.raises(PullError, match="only http"):
        pull(PullRequest("ftp://example.test/x.safetensors", tmp_path), Quiet())
    assert leftovers(tmp_path) == []

    # A server-given name makes the code; without one, --as must.
    path = serve(
        served,
        "/api/download/3",
        LORA,
        Content_Disposition="attachment; filename*=UTF-8''ink%20wash.safetensors",
    )
    assert run(base_url, path, tmp_path).code == "ink wash"
    path = serve(served, "/api/download/4", LORA)
    with pytest.raises(PullError, match="pass --as CODE"):
        run(base_url, path, tmp_path / "unnamed")
    assert run(base_url, path, tmp_path / "unnamed", code="named").code == "named"
    with pytest.raises(PullError, match="cannot be a model code"):
        run(base_url, path, tmp_path, code="../escape")


def test_an_installed_file_is_not_overwritten(
    served: Served, base_url: str, tmp_path: Path
) -> None:
    dest = tmp_path / "loras" / "mine.safetensors"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(OTHER_LORA)
    path = serve(served, "/o/mine.safetensors", LORA)
    with pytest.raises(PullError, match="exists and is a different file: pass --force"):
        run(base_url, path, tmp_path)
    assert dest.read_bytes() == OTHER_LORA
    replaced = run(base_url, path, tmp_path, force=True)
    assert replaced.replaced and replaced.download.received == 0  # the kept download served
    assert dest.read_bytes() == LORA
    again = run(base_url, path, tmp_path)
    assert again.unchanged and dest.read_bytes() == LORA

    nested = tmp_path / "loras" / "styles" / "taken.safetensors"
    nested.parent.mkdir()
    nested.write_bytes(OTHER_LORA)
    with pytest.raises(PullError, match="code 'taken' is installed already"):
        run(base_url, path, tmp_path, code="taken")


# --- Hugging Face repo ids -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("owner/name", RepoSource("owner/name")),
        ("owner/name@v1.0", RepoSource("owner/name", "v1.0")),
        ("owner/name/sub/x.safetensors", RepoSource("owner/name", "main", "sub/x.safetensors")),
        ("o-1/n.2@abc123/x.safetensors", RepoSource("o-1/n.2", "abc123", "x.safetensors")),
        ("owner", None),
        ("owner/../x", None),
        ("/abs/path", None),
        ("owner//x", None),
    ],
)
def test_repo_ids_parse(text: str, expected: RepoSource | None) -> None:
    assert parse_repo_source(text) == expected


def test_a_repo_id_resolves_to_its_single_file_and_is_verified(
    served: Served, base_url: str, tmp_path: Path
) -> None:
    files = {
        "README.md": b"# a LoRA",
        "unet/diffusion_pytorch_model.safetensors": CHECKPOINT,  # a diffusers component
        "ink-lora.safetensors": LORA,
    }
    for name, body in files.items():
        serve(served, f"/someone/ink/resolve/v2/{name}", body)
    hub = FakeHub(base_url, files, token="hf_secret")
    result = pull(PullRequest("someone/ink@v2", tmp_path, backoff_s=0), Quiet(), hub=hub)
    assert hub.listed == [("someone/ink", "v2")]
    assert result.path == tmp_path / "loras" / "ink-lora.safetensors"
    assert result.verified_by and "publishes" in result.verified_by
    request = served.requests_for("/someone/ink/resolve/v2/ink-lora.safetensors")[-1]
    assert request["authorization"] == "Bearer hf_secret"

    hub.files = {**files, "ink-lora-fp16.safetensors": OTHER_LORA}
    with pytest.raises(PullError, match=r"several .safetensors files: name one") as caught:
        pull(PullRequest("someone/ink@v2", tmp_path / "x"), Quiet(), hub=hub)
    assert "ink-lora-fp16.safetensors" in str(caught.value)
    with pytest.raises(PullError, match=r"has no file 'nope.safetensors'"):
        pull(PullRequest("someone/ink@v2/nope.safetensors", tmp_path / "x"), Quiet(), hub=hub)
    with pytest.raises(PullError, match="pickle weights"):
        hub.files = {"model.ckpt": b"x"}
        pull(PullRequest("someone/ink/model.ckpt", tmp_path / "x"), Quiet(), hub=hub)


def test_an_unreachable_hub_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real huggingface_hub client, with the server's HF_HUB_OFFLINE lock lifted for the
    pull's own call: the failure is the network's, named, not "offline mode is enabled"."""
    import time

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as in `easel` (server/__init__.py)
    monkeypatch.setattr(time, "sleep", lambda _s: None)  # huggingface_hub's retry backoff
    hub = HuggingFaceHub()
    hub.endpoint = "http://127.0.0.1:9"  # the discard port: nothing listens
    with pytest.raises(PullError, match=r"cannot reach 127\.0\.0\.1:9") as caught:
        pull(PullRequest("someone/ink", tmp_path), Quiet(), hub=hub)
    assert "offline" not in str(caught.value)
    assert constants.HF_HUB_OFFLINE  # lifted for that call only


# --- the command line ----------------------------------------------------------------------------


def test_the_command_reports_an_interrupted_then_resumed_pull(
    served: Served, base_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from server.cli import main

    path = serve(served, "/cli/ink.safetensors", LORA)
    served.cut_after[path] = 5000
    args = ["models", "pull", base_url + path, "--as", "ink", "--models-dir", str(tmp_path)]
    assert main([*args, "--retries", "0"]) == 1
    failed = capsys.readouterr()
    assert failed.err.startswith(f"pulling {base_url}{path}\n")
    assert "easel models pull: download interrupted at " in failed.err
    assert "run the same command again to resume" in failed.err

    assert main([*args, "--sha256", sha(LORA)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("downloaded ") and ", resumed at " in lines[0]
    assert lines[1:] == [
        f"sha256 {sha(LORA)} (verified against --sha256)",
        f"installed lora (sd1) 'ink' at {tmp_path / 'loras' / 'ink.safetensors'}",
        "restart `easel serve` to serve it: the server reads the models directory when it starts",
    ]
    assert main(args) == 0
    assert "already installed: " in capsys.readouterr().out
    assert main(["models", "pull", "not a source", "--models-dir", str(tmp_path)]) == 1
    assert "neither an http(s) URL nor a Hugging Face repo id" in capsys.readouterr().err
