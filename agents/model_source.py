"""Turns a model source from the desired state into a GGUF file on this host.

``LocalToAgent`` is a path on the agent; ``HuggingFace`` goes through
``huggingface_hub`` (which honours ``HF_ENDPOINT``, ``HF_TOKEN`` and
``HF_HOME``); ``Url`` is streamed into ``PADDLER_CACHE_DIR`` with resume and an
atomic rename, so a half-downloaded file is never taken for a model.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import httpx
from django.conf import settings

from balancer.desired_state import ModelSource


class DownloadProgress(Protocol):
    current: int
    total: int
    filename: str | None
    indeterminate: bool


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
            raise ModelSourceError({"ModelFileDoesNotExist": source.local_path})
        return source.local_path
    if source.kind == "HuggingFace":
        return await asyncio.to_thread(_huggingface_download, source)
    if source.kind == "Url":
        return await _url_download(source.url, progress, on_progress)
    raise ModelSourceError({"UnsupportedModelSource": source.kind})


def _huggingface_download(source: ModelSource) -> str:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    reference = {
        "repo_id": source.repo_id,
        "filename": source.filename,
        "revision": source.revision,
    }
    try:
        return hf_hub_download(
            repo_id=source.repo_id,
            filename=source.filename,
            revision=source.revision,
        )
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
        raise ModelSourceError({"HuggingFaceModelDoesNotExist": reference}) from None
    except (HfHubHTTPError, OSError) as error:
        raise ModelSourceError(
            {"HuggingFaceDownloadFailed": {**reference, "error": str(error)}}
        ) from None


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
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    progress.filename = target.name
    done = partial.stat().st_size if partial.exists() else 0
    headers = {"Range": f"bytes={done}-"} if done else {}
    try:
        async with (
            httpx.AsyncClient(follow_redirects=True, timeout=30.0) as client,
            client.stream("GET", url, headers=headers) as response,
        ):
            if response.status_code == 416:
                # The part file is already complete.
                pass
            elif response.status_code == 206:
                pass
            elif response.status_code == 200:
                done = 0  # the server ignored the range: start over
            else:
                raise ModelSourceError(
                    {
                        "ModelDownloadFailed": {
                            "url": url,
                            "error": f"HTTP {response.status_code}",
                        }
                    }
                )
            length = response.headers.get("content-length")
            progress.total = done + int(length) if length else 0
            progress.indeterminate = length is None
            progress.current = done
            on_progress()
            if response.status_code != 416:
                mode = "ab" if done else "wb"
                with open(partial, mode) as handle:
                    async for chunk in response.aiter_bytes(1 << 20):
                        handle.write(chunk)
                        progress.current += len(chunk)
                        on_progress()
    except httpx.HTTPError as error:
        raise ModelSourceError(
            {"ModelDownloadFailed": {"url": url, "error": str(error)}}
        ) from None
    finally:
        progress.filename = None
        progress.indeterminate = False
    os.replace(partial, target)
    progress.current = progress.total = 0
    on_progress()
    return str(target)
