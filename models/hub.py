"""Hugging Face repo ids as `easel models pull` sources: which file, at which URL, with what sha256.

    owner/name                          the repo's one single-file .safetensors at its root
    owner/name@revision                 the same at a branch, tag or commit
    owner/name/path/in/repo.safetensors one file (also owner/name@revision/path...)

The repo's file list comes from the Hub API through huggingface_hub (it also gives each LFS file's
sha256, which the download is checked against); the file itself is fetched by easel's own
resumable downloader from the URL `hf_hub_url` builds, so a Hub file resumes and verifies like
any URL. The server process runs with the Hub switched off (server/__init__.py): a pull is the
operator asking for the network, so it lifts that lock for its own Hub calls only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlparse

REPO_SOURCE = re.compile(
    r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w.-]+))?(?:/(?P<path>.+))?$"
)
DEFAULT_REVISION = "main"
SAFETENSORS = ".safetensors"


class HubError(Exception):
    """A repo id that cannot be pulled; the message says why and what to pass instead."""


@dataclass(frozen=True)
class RepoSource:
    repo_id: str
    revision: str = DEFAULT_REVISION
    path: str | None = None  # None: choose the repo's single-file checkpoint

    def __str__(self) -> str:
        at = "" if self.revision == DEFAULT_REVISION else f"@{self.revision}"
        return f"{self.repo_id}{at}" + (f"/{self.path}" if self.path else "")


@dataclass(frozen=True)
class HubFile:
    path: str
    size: int
    sha256: str | None  # LFS files' sha256; None for small files kept in git


@dataclass(frozen=True)
class HubDownload:
    """A repo file resolved to what the downloader needs."""

    source: RepoSource
    file: HubFile
    url: str
    headers: dict[str, str]  # the user's token for private or gated repos


class Hub(Protocol):
    """What a pull needs from the Hub (tests stand in a fake)."""

    endpoint: str

    def list_files(self, repo_id: str, revision: str) -> list[HubFile]: ...

    def file_url(self, repo_id: str, path: str, revision: str) -> str: ...

    def token(self) -> str | None: ...


def parse_repo_source(text: str) -> RepoSource | None:
    """owner/name[@revision][/path] as a RepoSource; None when text is not shaped like one."""
    match = REPO_SOURCE.match(text.strip())
    if match is None or "//" in text or ".." in text.split("/"):
        return None
    return RepoSource(match["repo"], match["revision"] or DEFAULT_REVISION, match["path"])


def resolve(source: RepoSource, hub: Hub) -> HubDownload:
    """The file a repo source means, its download URL and the headers to fetch it with."""
    files = hub.list_files(source.repo_id, source.revision)
    weights = [f for f in files if f.path.lower().endswith(SAFETENSORS)]
    if source.path is not None:
        found = next((f for f in files if f.path == source.path), None)
        if found is None:
            where = f"{source.repo_id}@{source.revision}"
            raise HubError(f"{where} has no file {source.path!r}" + _choices(weights))
        chosen = found
    else:
        chosen = _single_file(source, weights)
    token = hub.token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = hub.file_url(source.repo_id, chosen.path, source.revision)
    return HubDownload(
        RepoSource(source.repo_id, source.revision, chosen.path), chosen, url, headers
    )


def _single_file(source: RepoSource, weights: list[HubFile]) -> HubFile:
    """The repo's one .safetensors at its root: a single-file checkpoint, LoRA... Files in
    sub-folders are diffusers components (unet/, vae/...), which are not single models."""
    at_root = [f for f in weights if "/" not in f.path]
    if len(at_root) == 1:
        return at_root[0]
    if not weights:
        raise HubError(f"{source.repo_id}@{source.revision} has no .safetensors file")
    listed = at_root or weights
    which = "several .safetensors files" if at_root else "no single-file .safetensors at its root"
    raise HubError(
        f"{source.repo_id}@{source.revision} has {which}: name one, as "
        f"{source.repo_id}/PATH" + _choices(listed)
    )


def _choices(files: list[HubFile]) -> str:
    if not files:
        return ""
    lines = "".join(f"\n  {f.path}  ({_size(f.size)})" for f in files[:30])
    more = f"\n  ... and {len(files) - 30} more" if len(files) > 30 else ""
    return f"; its .safetensors files:{lines}{more}"


def _size(count: int) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


# --- the real Hub, through huggingface_hub -------------------------------------------------------


@contextmanager
def _online() -> Iterator[None]:
    """Lift the process-wide HF_HUB_OFFLINE lock for one explicit Hub call."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _unreachable(error: Exception) -> bool:
    """A network failure (DNS, refused, timeout, offline) from whichever HTTP library
    huggingface_hub runs on: httpx, its httpx2 fork, requests (whose errors are OSErrors)."""
    names = {cls.__name__ for cls in type(error).__mro__}
    return isinstance(error, OSError) or bool(names & {"TransportError", "RequestError"})


class HuggingFaceHub:
    """The Hub at HF_ENDPOINT (huggingface.co by default); token from HF_TOKEN or `hf auth`."""

    def __init__(self) -> None:
        from huggingface_hub import constants

        self.endpoint = constants.ENDPOINT

    def list_files(self, repo_id: str, revision: str) -> list[HubFile]:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
        from huggingface_hub.hf_api import RepoFile

        try:
            with _online():
                tree = HfApi(endpoint=self.endpoint).list_repo_tree(
                    repo_id, revision=revision, recursive=True
                )
                entries = [e for e in tree if isinstance(e, RepoFile)]
        except GatedRepoError:
            raise HubError(
                f"{repo_id} is gated: accept its terms on {self.endpoint}/{repo_id} and set "
                "HF_TOKEN (or run `hf auth login`)"
            ) from None
        except RevisionNotFoundError:
            raise HubError(f"{repo_id} has no revision {revision!r}") from None
        except RepositoryNotFoundError:
            raise HubError(
                f"no model repo {repo_id!r} on {self.endpoint} (or it is private: set HF_TOKEN)"
            ) from None
        except HfHubHTTPError as error:
            raise HubError(f"{self.endpoint}: {error}") from None
        except Exception as error:
            if not _unreachable(error):
                raise
            raise HubError(f"cannot reach {urlparse(self.endpoint).netloc}: {error}") from None
        return [HubFile(e.path, e.size, e.lfs.sha256 if e.lfs else None) for e in entries]

    def file_url(self, repo_id: str, path: str, revision: str) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(repo_id, path, revision=revision, endpoint=self.endpoint)

    def token(self) -> str | None:
        from huggingface_hub import get_token

        return get_token()
