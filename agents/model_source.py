"""Turns a model source from the desired state into a GGUF file on this host.

``LocalToAgent`` is a path on the agent. ``Url`` and ``HuggingFace`` are both
downloaded by ``agents.model_download``, under the same rules (public
addresses or trusted hosts only, a size cap, nothing left behind on failure):
a Hugging Face file is the Hub's ``resolve`` URL for it, at ``HF_ENDPOINT``
with ``HF_TOKEN``, kept under ``HF_HOME``. Not ``huggingface_hub``'s own
downloader, since its redirects, its Xet transfers and its partial files are
out of our reach.

A downloaded file is kept by its URL (a Hugging Face one by endpoint,
repository, revision and file) and not fetched again: a branch revision such
as ``main`` is read once, so pin a commit, or remove the file, to take a newer
upload.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from django.conf import settings

from agents.model_download import (
    DownloadFailed,
    DownloadProgress,
    DownloadRules,
    download_file,
)
from balancer.desired_state import ModelSource

__all__ = [
    "DownloadProgress",
    "ModelSourceError",
    "cached_path_for_url",
    "resolve_model_path",
]

# What the Hub answers in X-Error-Code when the file is not there to have.
_HUB_MISSING = frozenset({"RepoNotFound", "RevisionNotFound", "EntryNotFound"})


def paddler_model_path(source: ModelSource) -> str:
    """How Paddler names a model source in its issues' ``model_path``."""
    if source.kind == "LocalToAgent":
        return source.local_path
    if source.kind == "HuggingFace":
        return f"{source.repo_id}/{source.revision}/{source.filename}"
    if source.kind == "Url":
        return source.url
    return source.kind


def download_issue(error: DownloadFailed, model_path: str) -> dict[str, Any]:
    """Paddler's issue for a failed download, with its payload.

    A failure Paddler has no issue for (a file that is not GGUF or is above
    PADDLER_MODEL_MAX_BYTES, a redirect loop, a malformed answer) is our
    ``ModelDownloadFailed``, which carries the reason.
    """
    if error.variant is None:
        return {
            "ModelDownloadFailed": {"model_path": model_path, "error": error.message}
        }
    return {error.variant: {"model_path": model_path}}


class ModelSourceError(Exception):
    """The source cannot give a model; ``issue`` is the agent issue to report."""

    def __init__(self, issue: Any) -> None:
        super().__init__(str(issue))
        self.issue = issue


async def resolve_model_path(
    source: ModelSource,
    progress: DownloadProgress,
    on_progress: Callable[[], None],
) -> str:
    if source.kind == "LocalToAgent":
        if not os.path.isfile(source.local_path):
            raise ModelSourceError(
                {"ModelFileDoesNotExist": {"model_path": source.local_path}}
            )
        return source.local_path
    if source.kind == "HuggingFace":
        return await _huggingface_download(source, progress, on_progress)
    if source.kind == "Url":
        return await _url_download(source.url, progress, on_progress)
    raise ModelSourceError({"UnsupportedModelSource": source.kind})


def cached_path_for_url(url: str) -> Path:
    name = os.path.basename(urlparse(url).path) or "model.gguf"
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return Path(settings.PADDLER_CACHE_DIR) / "models" / f"{digest}-{name}"


async def _url_download(
    url: str, progress: DownloadProgress, on_progress: Callable[[], None]
) -> str:
    target = cached_path_for_url(url)
    if target.is_file():
        return str(target)
    try:
        await download_file(
            url,
            target,
            rules=DownloadRules.from_settings(),
            progress=progress,
            on_progress=on_progress,
        )
    except DownloadFailed as error:
        raise ModelSourceError(download_issue(error, url)) from None
    return str(target)


async def _huggingface_download(
    source: ModelSource, progress: DownloadProgress, on_progress: Callable[[], None]
) -> str:
    from huggingface_hub import hf_hub_url

    # Read at each download, as huggingface_hub reads them, with its defaults.
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        "huggingface",
    )
    model_path = {"model_path": paddler_model_path(source)}
    key = "\n".join((endpoint, source.repo_id, source.revision, source.filename))
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    name = os.path.basename(source.filename) or "model.gguf"
    target = Path(home) / "paddler" / f"{digest}-{name}"
    if target.is_file():
        return str(target)
    url = hf_hub_url(
        source.repo_id, source.filename, revision=source.revision, endpoint=endpoint
    )
    token = _huggingface_token(home)
    try:
        await download_file(
            url,
            target,
            rules=DownloadRules.from_settings(),
            progress=progress,
            on_progress=on_progress,
            headers={"Authorization": f"Bearer {token}"} if token else None,
        )
    except DownloadFailed as error:
        if error.status in (401, 404) and error.error_code in _HUB_MISSING:
            raise ModelSourceError(
                {"HuggingFaceModelDoesNotExist": model_path}
            ) from None
        if error.status in (401, 403):
            raise ModelSourceError({"HuggingFacePermissions": model_path}) from None
        raise ModelSourceError(
            download_issue(error, model_path["model_path"])
        ) from None
    return str(target)


def _huggingface_token(home: str) -> str | None:
    """``HF_TOKEN``, else the token file ``hf auth login`` writes.

    Not ``huggingface_hub.get_token``: it may exchange or refresh tokens over
    the network, outside the download rules.
    """
    token = os.environ.get("HF_TOKEN", "").strip()
    if token:
        return token
    path = os.environ.get("HF_TOKEN_PATH") or os.path.join(home, "token")
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None
