"""Images in prompts, through llama.cpp's multimodal library (libmtmd).

Framework-free: plain classes over llama-cpp-python's low-level bindings
(``llama_cpp.mtmd_cpp``), with no Django, Redis or engine in them.  What is
here:

- ``Projection``: a multimodal projection file (an "mmproj" GGUF) loaded
  against an already loaded llama model; whether it serves images, and the
  marker that stands for one image in a prompt's text.
- ``decode_image``: bytes from a client to RGB pixels (Pillow), scaled down
  to fit the desired state's ``image_resize_to_fit``; bytes that are no image
  raise ``ImageDecodingFailed``.
- ``Projection.tokenize``: prompt text with markers plus decoded images to a
  ``MultimodalPrompt``, libmtmd's chunks (text tokens, image tokens) with the
  counts and the position layout the slot machinery needs.
- ``MultimodalPrompt.evaluate``: the chunks into one sequence of a llama
  context from a given position, skipping a reused prefix, returning the
  position after the prompt.
- ``position_keys`` / ``reusable_prefix``: what a slot's KV cache holds, one
  key per position, and how much of it a new prompt may keep (never part of
  an image).

Errors carry Paddler's names where Paddler has one (``ImageDecodingFailed``,
``MultimodalNotSupported``); each says what is wrong in words a client can
act on.  How the engine is to use all this is in ``docs/multimodal.md``.
"""

from __future__ import annotations

import ctypes
import io
import logging
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import llama_cpp
from llama_cpp import mtmd_cpp
from PIL import Image, ImageOps, UnidentifiedImageError

from agents.jobs import ModelLoadError
from agents.positions import ImagePosition, PositionKey
from balancer.images import image_digest

logger = logging.getLogger(__name__)


class MultimodalError(Exception):
    """A request with images that cannot be served; the message says why."""


class MultimodalNotSupported(MultimodalError):
    """Images sent to a model without a projection that reads them."""


class ImageDecodingFailed(MultimodalError):
    """Bytes that are not an image Pillow can decode."""


class ImageCountMismatch(MultimodalError):
    """A prompt whose image markers do not match the images sent with it."""


class ImagePreprocessingFailed(MultimodalError):
    """An image libmtmd could not turn into its encoder's input."""


class ImageEvaluationFailed(MultimodalError):
    """An image (or the text around it) that llama.cpp failed to evaluate."""


class ProjectionLoadFailed(ModelLoadError):
    """A projection file libmtmd would not load."""


class ProjectionWidthMismatch(ProjectionLoadFailed):
    """A projection whose embeddings are not as wide as the model's.

    It was made for another model: its image embeddings cannot enter this
    model's sequence.
    """

    def __init__(self, *, path: str, model_width: int, projection_width: int) -> None:
        self.model_width = model_width
        self.projection_width = projection_width
        super().__init__(
            f"the multimodal projection {path} gives embeddings {projection_width} "
            f"wide, but the model's are {model_width} wide: it was made for "
            "another model"
        )


# libmtmd's logging: quiet unless something goes wrong, and what goes wrong
# while a projection loads becomes the message of the exception.

_GGML_LOG_WARN = 3
_GGML_LOG_ERROR = 4
_GGML_LOG_CONT = 5
_log_ready = False
_log_lock = threading.Lock()
# Lines logged at warning or error level on this thread while a projection
# loads (libmtmd logs on the thread that calls it).
_captured = threading.local()


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _mtmd_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    line = text.decode("utf-8", "replace")
    lines: list[str] | None = getattr(_captured, "lines", None)
    if level in (_GGML_LOG_WARN, _GGML_LOG_ERROR):
        logger.debug("libmtmd: %s", line.rstrip())
        if lines is not None:
            lines.append(line)
    elif level == _GGML_LOG_CONT and lines:
        lines[-1] += line


def _init_logging() -> None:
    global _log_ready
    with _log_lock:
        if not _log_ready:
            # The callback object lives at module level: libmtmd keeps the
            # pointer for the life of the process.
            mtmd_cpp.mtmd_log_set(_mtmd_log, ctypes.c_void_p(0))
            mtmd_cpp.mtmd_helper_log_set(_mtmd_log, ctypes.c_void_p(0))
            _log_ready = True


_WIDTH_MISMATCH = re.compile(
    r"text model \(n_embd = (?P<model>\d+)\) and mmproj \(n_embd = (?P<mmproj>\d+)\)"
)


# Images.


@dataclass(frozen=True)
class DecodedImage:
    """An image as libmtmd takes it: packed 8-bit RGB, row by row."""

    width: int
    height: int
    rgb: bytes
    # ``balancer.images.image_digest`` of the bytes it was decoded from.
    digest: str

    @property
    def identity(self) -> str:
        """What a slot's cache knows the image by: its bytes, as scaled.

        The size is part of it because the same bytes scaled to another
        ``image_resize_to_fit`` are other pixels, with other keys and values.
        """
        return f"{self.digest}:{self.width}x{self.height}"


# The formats a client may send: what browsers and cameras produce.  Pillow
# reads many more, each a parser exposed to untrusted bytes.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
# Pixels an image may have before it is decoded: a PNG of one colour packs
# hundreds of millions of pixels (gigabytes once decoded) into a few hundred
# kilobytes, well inside any request size limit.
MAX_PIXELS = 40_000_000


def decode_image(
    data: bytes, *, max_edge: int | None = None, max_pixels: int = MAX_PIXELS
) -> DecodedImage:
    """Decode an image file's bytes (one of ``IMAGE_FORMATS``) to RGB.

    Scaled down, keeping its aspect ratio, so that neither side exceeds
    ``max_edge`` (the desired state's ``image_resize_to_fit``); never scaled
    up, as the projection resamples to its own input size anyway.  EXIF
    orientation is applied (a phone's portrait photo stays upright) and
    transparency is laid on white, not on black.  An image of more than
    ``max_pixels`` is refused from its header, before its pixels are decoded.
    """
    if not data:
        raise ImageDecodingFailed("the image is empty (0 bytes)")
    if max_edge is not None and max_edge < 1:
        raise ValueError(f"max_edge must be at least 1, not {max_edge}")
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as opened:
            width, height = opened.size
            if width * height > max_pixels:
                raise ImageDecodingFailed(
                    f"the image is {width}x{height} pixels, more than the "
                    f"{max_pixels} an image may have"
                )
            opened.load()
            image = ImageOps.exif_transpose(opened)
            image = _flatten(image)
    except UnidentifiedImageError as error:
        raise ImageDecodingFailed(
            f"the {len(data)} bytes sent as an image are in no image format that "
            f"can be decoded (one of {', '.join(IMAGE_FORMATS)})"
        ) from error
    except (
        Image.DecompressionBombError,
        OSError,
        SyntaxError,
        ValueError,
    ) as error:
        raise ImageDecodingFailed(
            f"the {len(data)} bytes sent as an image are not an image that can be "
            f"decoded ({error})"
        ) from error
    if max_edge is not None and max(image.size) > max_edge:
        scale = max_edge / max(image.size)
        size = (
            max(1, round(image.width * scale)),
            max(1, round(image.height * scale)),
        )
        image = image.resize(size, Image.Resampling.BICUBIC)
    return DecodedImage(
        width=image.width,
        height=image.height,
        rgb=image.tobytes(),
        digest=image_digest(data),
    )


def _flatten(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


# What a prompt is made of.


@dataclass(frozen=True)
class Chunk:
    """One of libmtmd's chunks of a prompt: a run of text tokens, or an image."""

    kind: Literal["text", "image"]
    # Where the chunk starts, counted in positions from the prompt's start.
    start: int
    # Sequence positions it takes: for most models its token count; models
    # with M-RoPE (Qwen2-VL and kin) give an image fewer positions than tokens.
    n_pos: int
    n_tokens: int
    tokens: tuple[int, ...] = ()
    image: DecodedImage | None = None

    @property
    def end(self) -> int:
        return self.start + self.n_pos


class MultimodalPrompt:
    """A tokenized prompt with images; owns libmtmd's chunks until ``close``."""

    def __init__(
        self, projection: Projection, handle: Any, chunks: list[Chunk]
    ) -> None:
        self._projection = projection
        self._handle = handle
        self.chunks = chunks

    @property
    def text_tokens(self) -> int:
        return sum(chunk.n_tokens for chunk in self.chunks if chunk.kind == "text")

    @property
    def image_tokens(self) -> int:
        return sum(chunk.n_tokens for chunk in self.chunks if chunk.kind == "image")

    @property
    def n_pos(self) -> int:
        return self.chunks[-1].end if self.chunks else 0

    @property
    def image_digests(self) -> list[str]:
        """The fingerprints of its images, in prompt order (for routing)."""
        return [
            chunk.image.digest
            for chunk in self.chunks
            if chunk.kind == "image" and chunk.image is not None
        ]

    def position_keys(self) -> list[PositionKey]:
        """One key per position: what a slot's cache holds after this prompt."""
        return position_keys(self.chunks)

    def evaluate(
        self,
        context: Any,
        *,
        seq_id: int,
        n_batch: int,
        position: int = 0,
        reuse: int = 0,
        logits_last: bool = True,
    ) -> int:
        """Evaluate the prompt into sequence ``seq_id`` of ``context``.

        The prompt starts at sequence position ``position``; its first
        ``reuse`` positions are already in the sequence's cache (a kept
        prefix) and are skipped.  ``reuse`` may end inside a run of text but
        never inside an image (see ``reusable_prefix``).  With ``logits_last``
        the last position's logits are computed, ready for sampling.  Returns
        the sequence position after the prompt.

        The caller removes whatever the cache holds from ``position + reuse``
        on first (``llama_memory_seq_rm``).  On failure, the sequence holds a
        part of the prompt: the caller clears it and fails the request.
        """
        if self._handle is None:
            raise RuntimeError("the prompt was closed")
        if not 0 <= reuse <= self.n_pos:
            raise ValueError(f"reuse {reuse} is outside the prompt (0..{self.n_pos})")
        for chunk in self.chunks:
            if chunk.kind == "image" and chunk.start < reuse < chunk.end:
                raise ValueError(
                    f"reuse {reuse} ends inside an image ({chunk.start}..{chunk.end})"
                )
        with self._projection.lock:
            for index, chunk in enumerate(self.chunks):
                if chunk.end <= reuse:
                    continue
                last = index == len(self.chunks) - 1
                if chunk.kind == "text":
                    skip = max(0, reuse - chunk.start)
                    evaluate_tokens(
                        context,
                        chunk.tokens[skip:],
                        seq_id=seq_id,
                        position=position + chunk.start + skip,
                        n_batch=n_batch,
                        logits_last=logits_last and last,
                    )
                else:
                    self._evaluate_image(
                        context,
                        index,
                        seq_id=seq_id,
                        position=position + chunk.start,
                        n_batch=n_batch,
                        logits_last=logits_last and last,
                    )
        return position + self.n_pos

    def evaluate_image(
        self,
        context: Any,
        index: int,
        *,
        seq_id: int,
        position: int,
        n_batch: int,
        logits_last: bool = False,
    ) -> None:
        """Encode chunk ``index`` (an image) and decode it into sequence
        ``seq_id`` from ``position``, in a batch of its own.

        For an engine that evaluates a prompt's text in its shared batch and
        each image alone between two batch steps.  On failure
        (``ImageEvaluationFailed``) the sequence may hold part of the image:
        the caller clears it.
        """
        if self._handle is None:
            raise RuntimeError("the prompt was closed")
        if self.chunks[index].kind != "image":
            raise ValueError(f"chunk {index} is not an image")
        with self._projection.lock:
            self._evaluate_image(
                context,
                index,
                seq_id=seq_id,
                position=position,
                n_batch=n_batch,
                logits_last=logits_last,
            )

    def encode_image(self, index: int) -> None:
        """Run the vision encoder on chunk ``index`` (an image), alone.

        ``evaluate`` encodes images itself; this is for measuring the encoder,
        and for an engine that would encode off its decode step.
        """
        if self._handle is None:
            raise RuntimeError("the prompt was closed")
        if self.chunks[index].kind != "image":
            raise ValueError(f"chunk {index} is not an image")
        with self._projection.lock:
            chunk = mtmd_cpp.mtmd_input_chunks_get(self._handle, index)
            status = mtmd_cpp.mtmd_encode_chunk(self._projection.handle, chunk)
        if status != 0:
            raise ImageEvaluationFailed(
                f"the vision encoder failed on an image (status {status})"
            )

    def _evaluate_image(
        self,
        context: Any,
        index: int,
        *,
        seq_id: int,
        position: int,
        n_batch: int,
        logits_last: bool,
    ) -> None:
        # The helper encodes the image, then decodes its embeddings in a batch
        # of their own (switching to non-causal attention where the model
        # wants it, as Gemma 3 does); they cannot share a batch with tokens.
        chunk = mtmd_cpp.mtmd_input_chunks_get(self._handle, index)
        n_tokens = self.chunks[index].n_tokens
        room = min(n_batch, int(llama_cpp.llama_n_ubatch(context)))
        if mtmd_cpp.mtmd_decode_use_non_causal(self._projection.handle, chunk) and (
            n_tokens > room
        ):
            # The helper would split the image over several micro-batches,
            # and its tokens would no longer all see each other: wrong
            # embeddings, and no error from llama.cpp.
            raise ImageEvaluationFailed(
                f"an image takes {n_tokens} tokens, but the context evaluates at "
                f"most {room} at once and this model must see all of an image's "
                "tokens together: raise n_batch"
            )
        new_position = llama_cpp.llama_pos(0)
        status = mtmd_cpp.mtmd_helper_eval_chunk_single(
            self._projection.handle,
            context,
            chunk,
            position,
            seq_id,
            n_batch,
            logits_last,
            ctypes.byref(new_position),
        )
        if status != 0:
            raise ImageEvaluationFailed(
                f"llama.cpp failed to evaluate an image (status {status})"
            )

    def close(self) -> None:
        if self._handle is not None:
            mtmd_cpp.mtmd_input_chunks_free(self._handle)
            self._handle = None

    def __enter__(self) -> MultimodalPrompt:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


def evaluate_tokens(
    context: Any,
    tokens: Sequence[int],
    *,
    seq_id: int,
    position: int,
    n_batch: int,
    logits_last: bool,
) -> None:
    """Evaluate text tokens into sequence ``seq_id`` from ``position`` on.

    In batches of at most ``n_batch``; with ``logits_last``, the last token's
    logits are computed.
    """
    if not tokens:
        return
    batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
    try:
        for offset in range(0, len(tokens), n_batch):
            piece = tokens[offset : offset + n_batch]
            final = offset + len(piece) == len(tokens)
            for index, token in enumerate(piece):
                batch.token[index] = token
                batch.pos[index] = position + offset + index
                batch.n_seq_id[index] = 1
                batch.seq_id[index][0] = seq_id
                batch.logits[index] = logits_last and final and index == len(piece) - 1
            batch.n_tokens = len(piece)
            status = llama_cpp.llama_decode(context, batch)
            if status != 0:
                raise ImageEvaluationFailed(
                    f"llama.cpp failed to evaluate the text of a prompt with images "
                    f"(llama_decode returned {status})"
                )
    finally:
        llama_cpp.llama_batch_free(batch)


def position_keys(chunks: Sequence[Chunk]) -> list[PositionKey]:
    """One key per position of ``chunks``: text tokens, then image positions.

    Two prompts share a cache prefix exactly as far as their keys agree; an
    image's keys name it (``DecodedImage.identity``) and count its positions,
    so the same image in the next turn matches and another image does not.
    """
    keys: list[PositionKey] = []
    for chunk in chunks:
        if chunk.kind == "text":
            keys.extend(chunk.tokens)
        else:
            identity = chunk.image.identity if chunk.image else "unknown"
            keys.extend(
                ImagePosition(identity, offset) for offset in range(chunk.n_pos)
            )
    return keys


# The projection.


class Projection:
    """A multimodal projection loaded against a llama model.

    ``model`` is the ``llama_model`` pointer of the text model the projection
    was made for; it must outlive the projection.  One lock serialises
    tokenizing and evaluating: libmtmd does not promise that one context may
    preprocess an image on one thread while it encodes another on a second.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        model: Any,
        n_threads: int = 1,
        use_gpu: bool = True,
        warmup: bool = True,
    ) -> None:
        if not model:
            raise ValueError("a projection needs a loaded text model")
        _init_logging()
        self.path = str(path)
        self.lock = threading.Lock()
        if not Path(self.path).is_file():
            raise ProjectionLoadFailed(
                f"the multimodal projection {self.path} does not exist"
            )
        self.model_width = int(llama_cpp.llama_model_n_embd(model))
        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = n_threads
        params.print_timings = False
        params.warmup = warmup
        _captured.lines = []
        try:
            handle = mtmd_cpp.mtmd_init_from_file(self.path.encode(), model, params)
            problems: list[str] = _captured.lines
        finally:
            _captured.lines = None
        if not handle:
            raise self._load_error(problems)
        self.handle: Any = handle
        self.supports_vision = bool(mtmd_cpp.mtmd_support_vision(handle))
        self.supports_audio = bool(mtmd_cpp.mtmd_support_audio(handle))
        marker = mtmd_cpp.mtmd_get_marker(handle) or mtmd_cpp.mtmd_default_marker()
        # The text that stands for one image (or audio clip) in a prompt.
        self.marker: str = marker.decode()

    def _load_error(self, problems: list[str]) -> ProjectionLoadFailed:
        text = "".join(problems)
        mismatch = _WIDTH_MISMATCH.search(text)
        if mismatch:
            return ProjectionWidthMismatch(
                path=self.path,
                model_width=int(mismatch["model"]),
                projection_width=int(mismatch["mmproj"]),
            )
        # The last lines say why; the first ones are warnings on the way.
        reason = " ".join(line.strip() for line in problems[-3:] if line.strip())
        return ProjectionLoadFailed(
            f"llama.cpp could not load the multimodal projection {self.path}"
            + (f": {reason}" if reason else "")
        )

    def tokenize(
        self,
        text: str,
        images: Sequence[DecodedImage],
        *,
        add_special: bool = False,
        parse_special: bool = True,
    ) -> MultimodalPrompt:
        """Split ``text`` at its markers into text and image chunks.

        The i-th marker stands for ``images[i]``; libmtmd wraps each image in
        the model's own delimiters (``<start_of_image>``, ``<end_of_image>``
        for Gemma 3), which are text tokens.  ``add_special`` adds the model's
        BOS (leave it off for text a chat template has rendered, as it carries
        its own).
        """
        if self.handle is None:
            raise RuntimeError("the projection was closed")
        if images and not self.supports_vision:
            raise MultimodalNotSupported(
                f"the multimodal projection {Path(self.path).name} does not read images"
            )
        markers = text.count(self.marker)
        if markers != len(images):
            raise ImageCountMismatch(
                f"the prompt has {markers} image marker(s) {self.marker!r} "
                f"but {len(images)} image(s) were sent with it"
            )
        encoded = text.encode()
        prompt_text = mtmd_cpp.mtmd_input_text(
            text=encoded,
            text_len=len(encoded),
            add_special=add_special,
            parse_special=parse_special,
        )
        with self.lock:
            bitmaps: list[Any] = []
            handle = mtmd_cpp.mtmd_input_chunks_init()
            try:
                for image in images:
                    bitmaps.append(_bitmap(image))
                array = (mtmd_cpp.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
                status = mtmd_cpp.mtmd_tokenize(
                    self.handle,
                    handle,
                    ctypes.byref(prompt_text),
                    array,
                    len(bitmaps),
                )
                if status == 1:
                    raise ImageCountMismatch(
                        "libmtmd found a different number of image markers than images"
                    )
                if status != 0:
                    raise ImagePreprocessingFailed(
                        f"libmtmd could not preprocess the image(s) (status {status})"
                    )
                chunks = list(_read_chunks(handle, images))
            except BaseException:
                mtmd_cpp.mtmd_input_chunks_free(handle)
                raise
            finally:
                for bitmap in bitmaps:
                    mtmd_cpp.mtmd_bitmap_free(bitmap)
        return MultimodalPrompt(self, handle, chunks)

    def close(self) -> None:
        if self.handle is not None:
            mtmd_cpp.mtmd_free(self.handle)
            self.handle = None

    def __enter__(self) -> Projection:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


def require_projection(projection: Projection | None) -> Projection:
    """The projection that serves a request with images, or the client's error."""
    if projection is None or not projection.supports_vision:
        raise MultimodalNotSupported(
            "this model has no multimodal projection that reads images"
        )
    return projection


def _bitmap(image: DecodedImage) -> Any:
    expected = image.width * image.height * 3
    if image.width < 1 or image.height < 1 or len(image.rgb) != expected:
        raise ImagePreprocessingFailed(
            f"an image of {image.width}x{image.height} needs {expected} RGB bytes, "
            f"not {len(image.rgb)}"
        )
    pixels = (ctypes.c_uint8 * len(image.rgb)).from_buffer_copy(image.rgb)
    bitmap = mtmd_cpp.mtmd_bitmap_init(image.width, image.height, pixels)
    if not bitmap:
        raise ImagePreprocessingFailed("libmtmd could not take the image's pixels")
    # libmtmd names the image chunk by this id (llama-server's cache does too).
    mtmd_cpp.mtmd_bitmap_set_id(bitmap, image.identity.encode())
    return bitmap


def _read_chunks(handle: Any, images: Sequence[DecodedImage]) -> Iterator[Chunk]:
    start = 0
    pending = iter(images)
    for index in range(mtmd_cpp.mtmd_input_chunks_size(handle)):
        chunk = mtmd_cpp.mtmd_input_chunks_get(handle, index)
        kind = mtmd_cpp.mtmd_input_chunk_get_type(chunk)
        n_tokens = int(mtmd_cpp.mtmd_input_chunk_get_n_tokens(chunk))
        n_pos = int(mtmd_cpp.mtmd_input_chunk_get_n_pos(chunk))
        if kind == mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_TEXT:
            count = ctypes.c_size_t(0)
            pointer = mtmd_cpp.mtmd_input_chunk_get_tokens_text(
                chunk, ctypes.byref(count)
            )
            tokens = tuple(pointer[i] for i in range(count.value))
            yield Chunk("text", start, n_pos, n_tokens, tokens=tokens)
        elif kind == mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_IMAGE:
            yield Chunk("image", start, n_pos, n_tokens, image=next(pending, None))
        else:
            raise MultimodalNotSupported("only images are served, not audio")
        start += n_pos
