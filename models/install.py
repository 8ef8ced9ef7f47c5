"""`easel models pull`: fetch one .safetensors model and put it where the scan will find it.

A source is an http(s) URL or a Hugging Face repo id (models/hub.py). The file is downloaded
into `models_dir/.partial/` (resumable, models/download.py), its sha256 checked against the
digest the operator gives or the one the server publishes, its header read and classified the
way the models directory scan will classify it (models/arch.py, models/scan.py), and only then
moved, atomically, to `<kind folder>/<CODE>.safetensors`. Until that move nothing is installed:
a refused, corrupt or mismatching file never reaches a folder the server reads.

What is kept after a failure follows what the next run can use: an interrupted download stays
to be resumed, a complete one refused only for its placement (an unknown kind, a code already
taken) stays so the same command with --kind / --as / --force finishes without fetching again;
a file whose sha256 or format is wrong is deleted.

Pickle weights are never pulled: they can run code when loaded (a URL naming one is refused
before anything is fetched, and the content must start like a safetensors file).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TypeGuard
from urllib.parse import unquote, urlparse

import httpx

from models.arch import (
    MAX_HEADER_BYTES,
    Detected,
    ModelDetectionError,
    classify,
    read_safetensors_header,
)
from models.catalogue import Catalogue, ModelKind, ModelSpec
from models.download import (
    SHA256_HEX,
    TIMEOUT,
    Downloaded,
    DownloadError,
    DownloadReporter,
    HeadCheck,
    ResponseCheck,
    content_disposition_name,
    discard,
    download,
)
from models.hub import Hub, HubError, HuggingFaceHub, parse_repo_source, resolve
from models.manifest import MANIFEST_NAME, ManifestError, apply_manifest, load_manifest
from models.scan import KIND_FOLDERS, SAFETENSORS_SUFFIXES, detect_safetensors, scan_models_dir

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so two pulls of one file must not overlap
    fcntl = None  # type: ignore[assignment]

PARTIAL_DIR = ".partial"  # under models_dir; the scan never looks into dot-folders
SIDECAR_SUFFIX = ".sha256"
HUB_HOST = "huggingface.co"  # <url>.sha256: a digest published next to a plain URL's file

# Where each kind a pull can install goes when the models directory has no folder for it yet.
INSTALL_FOLDERS: dict[ModelKind, str] = {
    ModelKind.CHECKPOINT: "checkpoints",
    ModelKind.LORA: "loras",
    ModelKind.EMBEDDING: "embeddings",
    ModelKind.HYPERNETWORK: "hypernetworks",
    ModelKind.CONTROLNET: "controlnet",
    ModelKind.IP_ADAPTER: "ipadapter",
    ModelKind.VAE: "vae",
}
# --kind values: the kinds' own names, plus spellings operators use.
KIND_NAMES: dict[str, ModelKind] = {
    **{kind.value: kind for kind in INSTALL_FOLDERS},
    "ip-adapter": ModelKind.IP_ADAPTER,
    "ipadapter": ModelKind.IP_ADAPTER,
}

_PICKLE = (
    "pickle weights can run code when they are loaded, so they are never pulled: "
    "look for a .safetensors version of the model"
)
# File name endings refused before anything is fetched, and why.
REFUSED_SUFFIXES: dict[str, str] = {
    ".ckpt": _PICKLE,
    ".pt": _PICKLE,
    ".pth": _PICKLE,
    ".bin": _PICKLE,
    ".pkl": _PICKLE,
    ".gguf": "GGUF weights are not supported",
    ".onnx": "ONNX models are not supported",
    ".zip": "archives are not unpacked: pull the .safetensors file itself",
    ".tar": "archives are not unpacked: pull the .safetensors file itself",
    ".gz": "archives are not unpacked: pull the .safetensors file itself",
    ".7z": "archives are not unpacked: pull the .safetensors file itself",
}
# What a file that is not safetensors starts like, for the refusal message.
_LOOKS_LIKE: tuple[tuple[bytes, str], ...] = (
    (b"PK", "a zip archive (PyTorch .ckpt/.pt files are zipped pickles)"),
    (b"\x80", "a pickle"),
    (b"<", "an HTML page (a login or download page?)"),
    (b"GGUF", "a GGUF file"),
    (b"{", "a JSON document"),
)
CODE_MAX_CHARS = 200


class PullError(Exception):
    """A pull that did not install anything; the message says why and what to do."""


@dataclass(frozen=True)
class PullRequest:
    source: str
    models_dir: Path
    code: str | None = None  # --as; default: the file's stem
    kind: ModelKind | None = None  # --kind; default: what the header says
    sha256: str | None = None  # --sha256
    force: bool = False  # replace an installed file of the same name
    retries: int = 3
    backoff_s: float = 2.0


@dataclass(frozen=True)
class PullResult:
    code: str  # what clients send: the code the scan gives the placed file
    kind: ModelKind
    detected: Detected
    path: Path
    sha256: str
    verified_by: str | None  # where the expected sha256 came from; None: nothing to check
    download: Downloaded
    unchanged: bool = False  # the same file was installed already
    replaced: bool = False  # --force replaced a different file
    public_ids: tuple[str, ...] = ()  # manifest ids and aliases that resolve to it
    notes: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class _Source:
    url: str
    name: str  # file name the source gives (may lack .safetensors: the server may name it)
    label: str  # what messages call it
    headers: dict[str, str]
    published: str | None  # sha256 the source publishes
    published_by: str
    plain_url: bool  # a <url>.sha256 sidecar may exist


# --- sources -------------------------------------------------------------------------------------


def _source(text: str, hub: Hub | None) -> _Source:
    scheme = urlparse(text).scheme.lower()
    if scheme in ("http", "https"):
        return _url_source(text, hub)
    if scheme and "://" in text:
        raise PullError(f"{text}: only http(s) URLs and Hugging Face repo ids are pulled")
    repo = parse_repo_source(text)
    if repo is None:
        raise PullError(
            f"{text!r} is neither an http(s) URL nor a Hugging Face repo id "
            "(owner/name, owner/name@revision or owner/name/path/file.safetensors)"
        )
    hub = hub or HuggingFaceHub()
    try:
        found = resolve(repo, hub)
    except HubError as error:
        raise PullError(str(error)) from None
    name = PurePosixPath(found.file.path).name
    _refuse_suffix(name, str(found.source))
    host = urlparse(hub.endpoint).netloc
    return _Source(
        found.url, name, str(found.source), found.headers, found.file.sha256, host, False
    )


def _url_source(url: str, hub: Hub | None) -> _Source:
    parsed = urlparse(url)
    headers: dict[str, str] = {}
    hub_host = urlparse(hub.endpoint).netloc if hub is not None else HUB_HOST
    if parsed.netloc == hub_host:  # a Hub URL: the user's token reaches private repos
        if "/blob/" in parsed.path:  # the file's web page: its download is at /resolve/
            url = parsed._replace(path=parsed.path.replace("/blob/", "/resolve/", 1)).geturl()
            parsed = urlparse(url)
        token = (hub or HuggingFaceHub()).token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
    label = url.split("?", 1)[0]  # a query string may hold a signed token
    name = unquote(PurePosixPath(parsed.path).name)
    _refuse_suffix(name, label)
    return _Source(url, name, label, headers, None, parsed.netloc, True)


def _refuse_suffix(name: str, label: str) -> None:
    reason = REFUSED_SUFFIXES.get(PurePosixPath(name.lower()).suffix)
    if reason is not None:
        raise PullError(f"{label}: {reason}")


def _check_response(source: _Source) -> ResponseCheck:
    def check(response: httpx.Response) -> None:
        name = content_disposition_name(response.headers.get("content-disposition", ""))
        if name:
            _refuse_suffix(name, f"{source.label} ({name})")

    return check


def _check_head(source: _Source) -> HeadCheck:
    def check(head: bytes) -> None:
        reason = safetensors_head_problem(head)
        if reason is not None:
            raise PullError(f"{source.label}: not a safetensors file: {reason}")

    return check


def safetensors_head_problem(head: bytes) -> str | None:
    """Why a file starting with these bytes cannot be safetensors (None if it may be): an 8-byte
    little-endian header length, then the JSON header's opening brace."""
    if len(head) >= 9:
        (length,) = struct.unpack("<Q", head[:8])
        if 2 <= length <= MAX_HEADER_BYTES and head[8:9] == b"{":
            return None
    for prefix, what in _LOOKS_LIKE:
        if head.lstrip().startswith(prefix):
            return f"it starts like {what}"
    return "its first bytes are not a safetensors header" if head else "it is empty"


# --- the pull ------------------------------------------------------------------------------------


def partial_path(models_dir: Path, url: str, name: str) -> Path:
    """Stable per URL, so the same command run again finds what it fetched before."""
    key = hashlib.sha256(url.encode()).hexdigest()[:12]
    safe = re.sub(r"[^\w.+-]", "_", name)[:100] or "download"
    return models_dir / PARTIAL_DIR / f"{key}-{safe}.part"


def pull(
    request: PullRequest,
    reporter: DownloadReporter,
    *,
    hub: Hub | None = None,
    client: httpx.Client | None = None,
) -> PullResult:
    """Download, verify, classify and place one model; PullError when nothing was installed."""
    expected = _expected_digest(request.sha256)
    code = _check_code(request.code) if request.code is not None else None
    source = _source(request.source, hub)
    part = partial_path(request.models_dir, source.url, source.name)
    own_client = client is None
    client = client or httpx.Client(follow_redirects=True, timeout=TIMEOUT)
    try:
        with _exclusive(part):
            reporter.note(f"pulling {source.label}")
            fetched = _fetch(source, part, client, reporter, request)
            verified_by = _verify(source, fetched, expected, client, part)
            name = fetched.filename if _is_safetensors_name(fetched.filename) else source.name
            code = code or _code_from_name(name, source)
            return _install(request, part, fetched, verified_by, code)
    finally:
        if own_client:
            client.close()
        _tidy(part.parent)


@contextmanager
def _exclusive(part: Path) -> Iterator[None]:
    """One pull per partial file at a time: two would write into the same file. An advisory
    lock the kernel drops when its process dies, so a killed pull never blocks the next."""
    part.parent.mkdir(parents=True, exist_ok=True)
    lock = part.with_name(part.name + ".lock")
    with lock.open("a") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise PullError(
                    "another `easel models pull` is downloading the same file into this models "
                    "directory"
                ) from None
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)


def _fetch(
    source: _Source,
    part: Path,
    client: httpx.Client,
    reporter: DownloadReporter,
    request: PullRequest,
) -> Downloaded:
    try:
        return download(
            source.url,
            part,
            client=client,
            reporter=reporter,
            headers=source.headers,
            check_response=_check_response(source),
            check_head=_check_head(source),
            retries=request.retries,
            backoff_s=request.backoff_s,
        )
    except PullError:  # refused by the checks: a file type that is never installed
        discard(part)
        raise
    except DownloadError as error:  # the partial file stays for the next run
        raise PullError(str(error)) from None
    except httpx.HTTPError as error:  # a malformed URL, a refused redirect...
        raise PullError(f"{source.label}: {error}") from None


def _expected_digest(text: str | None) -> str | None:
    if text is None:
        return None
    digest = text.strip().lower().removeprefix("sha256:")
    if not SHA256_HEX.match(digest):
        raise PullError(f"--sha256 must be 64 hexadecimal digits, not {text!r}")
    return digest


def _verify(
    source: _Source, fetched: Downloaded, expected: str | None, client: httpx.Client, part: Path
) -> str | None:
    """Check the sha256 against --sha256, else the digest the source publishes; a mismatch
    deletes the download. Returns where the expected digest came from (None: nowhere)."""
    if expected is not None:
        origin = "--sha256"
    elif source.published or fetched.published_sha256:
        expected = source.published or fetched.published_sha256
        origin = f"the digest {source.published_by} publishes"
    elif source.plain_url and (sidecar := _sidecar_digest(source, client)) is not None:
        expected, origin = sidecar, f"{source.label}{SIDECAR_SUFFIX}"
    else:
        return None
    if fetched.sha256 != expected:
        discard(part)
        raise PullError(
            f"sha256 mismatch for {source.label}: expected {expected} ({origin}), the download "
            f"is {fetched.sha256}; it was deleted, nothing was installed"
        )
    return origin


def _sidecar_digest(source: _Source, client: httpx.Client) -> str | None:
    """The first word of `<url>.sha256` when it is a sha256 (`sha256sum` output); optional."""
    parsed = urlparse(source.url)
    url = parsed._replace(path=parsed.path + SIDECAR_SUFFIX).geturl()
    try:
        response = client.get(url, headers=source.headers)
    except httpx.HTTPError:
        return None
    words = response.text.split() if response.status_code == 200 else []
    digest = words[0].lower() if words else ""
    return digest if SHA256_HEX.match(digest) else None


def _is_safetensors_name(name: str | None) -> TypeGuard[str]:
    return bool(name) and PurePosixPath(str(name).lower()).suffix in SAFETENSORS_SUFFIXES


def _code_from_name(name: str, source: _Source) -> str:
    if not _is_safetensors_name(name):
        raise PullError(
            f"{source.label} does not name a .safetensors file: pass --as CODE to name the model "
            "(the download is kept: nothing is fetched again)"
        )
    return _check_code(PurePosixPath(name).stem)


def _check_code(code: str) -> str:
    """A code is a file stem in a kind folder: no path separators, not hidden, printable."""
    code = code.strip()
    if code.lower().endswith(".safetensors"):
        code = code[: -len(".safetensors")]
    bad = (
        not code
        or len(code) > CODE_MAX_CHARS
        or code.startswith(".")
        or any(c in code for c in "/\\")
        or not code.isprintable()
    )
    if bad:
        raise PullError(f"{code!r} cannot be a model code: use letters, digits, - _ . (no /)")
    return code


# --- placing -------------------------------------------------------------------------------------


def kind_folder(models_dir: Path, kind: ModelKind) -> Path:
    """The folder of that kind the models directory already has (A1111's `Lora/`, ComfyUI's
    `loras/`...), the usual name first; else a new one with the usual name."""
    usual = INSTALL_FOLDERS[kind]
    try:
        existing = sorted(
            entry.name
            for entry in models_dir.iterdir()
            if entry.is_dir() and KIND_FOLDERS.get(entry.name.lower()) is kind
        )
    except OSError:
        existing = []
    if usual in existing:
        return models_dir / usual
    return models_dir / (existing[0] if existing else usual)


def _install(
    request: PullRequest, part: Path, fetched: Downloaded, verified_by: str | None, code: str
) -> PullResult:
    kind, detected = _classify(part, request.kind)
    dest = kind_folder(request.models_dir, kind) / f"{code}.safetensors"
    before = _installed(request.models_dir)
    taken = next((s for s in before.specs if s.kind is kind and _same_code(s, code, dest)), None)
    if taken is not None:
        raise PullError(
            f"a {kind.value} model with the code {code!r} is installed already ({taken.path}): "
            "pass --as OTHER_CODE (the download is kept: nothing is fetched again)"
        )
    unchanged = replaced = False
    if dest.exists():
        unchanged = _file_sha256(dest) == fetched.sha256
        if not unchanged and not request.force:
            raise PullError(
                f"{dest} exists and is a different file: pass --force to replace it, or --as "
                "OTHER_CODE (the download is kept: nothing is fetched again)"
            )
        replaced = not unchanged
    if not unchanged:
        _place(part, dest)
    discard(part)
    after = _installed(request.models_dir)
    notes = list(after.notes)
    spec = next((s for s in after.specs if _same_file(s.path, dest)), None)
    if spec is None:  # the scan disagrees with the checks above: say so rather than pretend
        notes.append(f"the models directory scan does not list {dest}: run `easel models`")
    public = () if spec is None else (*spec.public_ids, *_aliases_of(spec, after.aliases))
    return PullResult(
        code=spec.code if spec else code,
        kind=kind,
        detected=detected,
        path=dest,
        sha256=fetched.sha256,
        verified_by=verified_by,
        download=fetched,
        unchanged=unchanged,
        replaced=replaced,
        public_ids=public,
        notes=tuple(notes),
    )


def _classify(part: Path, kind: ModelKind | None) -> tuple[ModelKind, Detected]:
    """The kind (given, or read from the header) and what the scan will see in that folder."""
    label = "the download"
    try:
        header = read_safetensors_header(part)
    except ModelDetectionError as error:
        discard(part)
        raise PullError(
            f"not a usable safetensors file: {_message(error, part)}; deleted"
        ) from None
    if kind is None:
        try:
            kind = classify(header, source=label).kind
        except ModelDetectionError as error:
            raise PullError(
                f"{_message(error, part)}: pass --kind ({', '.join(INSTALL_FOLDERS)}) "
                "if you know what it is (the download is kept)"
            ) from None
        if kind not in INSTALL_FOLDERS:
            raise PullError(f"{kind.value} models are not installed by a pull")
    try:
        return kind, detect_safetensors(part, kind)
    except ModelDetectionError as error:
        raise PullError(
            f"the server would not load it as a {kind.value}: {_message(error, part)} "
            "(the download is kept)"
        ) from None


def _message(error: ModelDetectionError, part: Path) -> str:
    return str(error).replace(f"{part}: ", "").replace(str(part), "the download")


@dataclass(frozen=True)
class _Installed:
    specs: list[ModelSpec]
    aliases: dict[str, str] = field(default_factory=dict)  # public alias -> checkpoint code
    notes: list[str] = field(default_factory=list)


def _installed(models_dir: Path) -> _Installed:
    """The models the server would list (codes after the manifest); the scan alone, with a
    note, when the manifest is broken."""
    scanned = scan_models_dir(models_dir).specs
    manifest_path = models_dir / MANIFEST_NAME
    try:
        manifest = load_manifest(models_dir)
        specs = apply_manifest(scanned, manifest)
        catalogue = Catalogue(specs, aliases=manifest.aliases, default_checkpoint=manifest.default)
    except ValueError as error:  # ManifestError, or two models given one id
        broken = str(error) if isinstance(error, ManifestError) else f"{manifest_path}: {error}"
        return _Installed(scanned, {}, [f"{broken} (`easel serve` refuses to start until fixed)"])
    return _Installed(specs, dict(catalogue.aliases))


def _aliases_of(spec: ModelSpec, aliases: dict[str, str]) -> tuple[str, ...]:
    if spec.kind is not ModelKind.CHECKPOINT:
        return ()
    return tuple(alias for alias, code in aliases.items() if code == spec.code)


def _same_code(spec: ModelSpec, code: str, dest: Path) -> bool:
    """Another file that has, or would collide into, this code (the scan names by stem)."""
    if _same_file(spec.path, dest):
        return False
    stem = spec.path.name if spec.path.is_dir() else spec.path.stem
    return spec.code == code or stem == code


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


def _place(part: Path, dest: Path) -> None:
    """Atomic: the scan sees no file or the whole file, never a half-copied one."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(part, dest)
        return
    except OSError as error:
        if error.errno != errno.EXDEV:  # not a kind folder on another disk (a symlink)
            raise PullError(f"cannot move the download to {dest}: {error}") from None
    staged = dest.with_name(f".{dest.name}.incoming")
    try:
        shutil.copyfile(part, staged)
        os.replace(staged, dest)
    except OSError as error:
        staged.unlink(missing_ok=True)
        raise PullError(f"cannot copy the download to {dest}: {error}") from None


def _tidy(folder: Path) -> None:
    try:
        folder.rmdir()  # only when empty: other pulls' partial files stay
    except OSError:
        pass
