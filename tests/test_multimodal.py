"""Images through libmtmd: the generated projection, real llama.cpp, the demo model.

The projection is the tiny random ``gemma3`` encoder of
``tests/support/mmproj.py``, written for the demo model's embedding width:
its answers are nonsense, so the tests compare outputs with each other
(same image, same tokens; another image, other tokens), never with text.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from agents.jobs import ModelLoadError
from agents.multimodal import (
    ImageCountMismatch,
    ImageDecodingFailed,
    ImageEvaluationFailed,
    MultimodalNotSupported,
    MultimodalPrompt,
    Projection,
    ProjectionLoadFailed,
    ProjectionWidthMismatch,
    decode_image,
    require_projection,
)
from agents.positions import ImagePosition, reusable_prefix
from balancer.images import image_digest
from tests.support.llama_runtime import LlamaRuntime, open_runtime
from tests.support.mmproj import EncoderShape, model_width, write_test_mmproj

SHAPE = EncoderShape()
ANSWER_TOKENS = 4


@pytest.fixture(scope="module")
def mmproj_path(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("mmproj")
    return write_test_mmproj(
        directory / "test-mmproj.gguf", text_width=model_width(model_path), shape=SHAPE
    )


@pytest.fixture(scope="module")
def runtime(model_path: Path) -> Iterator[LlamaRuntime]:
    # One thread: on a loaded machine, llama.cpp threads that wait for each
    # other spin, and two of them cost far more than one.
    loaded = open_runtime(model_path, sequences=2, threads=1)
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def projection(mmproj_path: Path, runtime: LlamaRuntime) -> Iterator[Projection]:
    with Projection(mmproj_path, model=runtime.model, n_threads=1) as loaded:
        yield loaded


def noise_png(seed: int, size: tuple[int, int] = (64, 64)) -> bytes:
    """A PNG of random pixels: images that differ everywhere."""
    rng = random.Random(seed)
    image = Image.frombytes(
        "RGB", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3))
    )
    return encoded(image, "PNG")


def encoded(image: Image.Image, kind: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind)
    return buffer.getvalue()


def prompt_with(projection: Projection, *images: bytes) -> MultimodalPrompt:
    markers = " and ".join(projection.marker for _ in images)
    return projection.tokenize(
        f"Look at {markers}. It shows",
        [decode_image(data, max_edge=1024) for data in images],
        add_special=True,
    )


def answer(
    runtime: LlamaRuntime, projection: Projection, image: bytes, *, seq_id: int
) -> list[int]:
    """Greedy tokens after a text, image, text prompt evaluated from scratch."""
    runtime.clear(seq_id)
    with prompt_with(projection, image) as prompt:
        position = prompt.evaluate(
            runtime.context, seq_id=seq_id, n_batch=runtime.n_batch
        )
        assert position == prompt.n_pos
    return runtime.greedy(seq_id=seq_id, position=position, count=ANSWER_TOKENS)


def test_generated_projection_loads_and_reads_images(projection: Projection) -> None:
    assert projection.supports_vision
    assert not projection.supports_audio
    assert projection.marker == "<__media__>"
    assert projection.model_width == 640


def test_image_becomes_image_tokens_between_text_chunks(
    projection: Projection,
) -> None:
    with prompt_with(projection, noise_png(1)) as prompt:
        assert [chunk.kind for chunk in prompt.chunks] == ["text", "image", "text"]
        assert prompt.image_tokens == SHAPE.image_tokens > 0
        assert prompt.text_tokens == sum(len(c.tokens) for c in prompt.chunks)
        assert prompt.n_pos == prompt.text_tokens + prompt.image_tokens
        image = prompt.chunks[1]
        assert image.image is not None
        assert image.image.digest == image_digest(noise_png(1))
        assert prompt.image_digests == [image_digest(noise_png(1))]
        keys = prompt.position_keys()
        assert len(keys) == prompt.n_pos
        assert keys[image.start] == ImagePosition(image.image.identity, 0)


def test_two_images_in_one_prompt_are_two_image_chunks(projection: Projection) -> None:
    with prompt_with(projection, noise_png(1), noise_png(2)) as prompt:
        kinds = [chunk.kind for chunk in prompt.chunks]
        assert kinds == ["text", "image", "text", "image", "text"]
        assert prompt.image_tokens == 2 * SHAPE.image_tokens


def test_text_image_text_is_evaluated_and_sampled_greedily(
    runtime: LlamaRuntime, projection: Projection
) -> None:
    tokens = answer(runtime, projection, noise_png(1), seq_id=0)
    assert len(tokens) == ANSWER_TOKENS
    assert all(0 <= token < 262144 for token in tokens)


def test_same_image_gives_same_tokens_and_another_image_other_tokens(
    runtime: LlamaRuntime, projection: Projection
) -> None:
    first = answer(runtime, projection, noise_png(1), seq_id=0)
    again = answer(runtime, projection, noise_png(1), seq_id=1)
    other = answer(runtime, projection, noise_png(2), seq_id=1)
    assert first == again
    assert first != other


def test_kept_prefix_stops_at_a_different_image_and_gives_the_fresh_answer(
    runtime: LlamaRuntime, projection: Projection
) -> None:
    fresh = answer(runtime, projection, noise_png(2), seq_id=1)
    runtime.clear(0)
    with prompt_with(projection, noise_png(1)) as cached:
        cached.evaluate(runtime.context, seq_id=0, n_batch=runtime.n_batch)
        cached_keys = cached.position_keys()
    with prompt_with(projection, noise_png(2)) as prompt:
        keep = reusable_prefix(cached_keys, prompt.position_keys())
        # The text before the image is kept, nothing of the other image.
        assert keep == prompt.chunks[1].start > 0
        runtime.keep(0, keep)
        position = prompt.evaluate(
            runtime.context, seq_id=0, n_batch=runtime.n_batch, reuse=keep
        )
    assert runtime.greedy(seq_id=0, position=position, count=ANSWER_TOKENS) == fresh


def test_kept_prefix_covers_the_same_image_and_gives_the_fresh_answer(
    runtime: LlamaRuntime, projection: Projection
) -> None:
    fresh = answer(runtime, projection, noise_png(1), seq_id=1)
    runtime.clear(0)
    with prompt_with(projection, noise_png(1)) as cached:
        cached.evaluate(runtime.context, seq_id=0, n_batch=runtime.n_batch)
        cached_keys = cached.position_keys()
    with prompt_with(projection, noise_png(1)) as prompt:
        # One position is evaluated again, for fresh logits.
        keep = reusable_prefix(
            cached_keys, prompt.position_keys(), limit=prompt.n_pos - 1
        )
        assert keep == prompt.n_pos - 1 > prompt.chunks[1].end
        runtime.keep(0, keep)
        position = prompt.evaluate(
            runtime.context, seq_id=0, n_batch=runtime.n_batch, reuse=keep
        )
    assert runtime.greedy(seq_id=0, position=position, count=ANSWER_TOKENS) == fresh


def test_image_larger_than_a_micro_batch_is_refused_not_split(
    model_path: Path, mmproj_path: Path
) -> None:
    # Gemma 3's image tokens attend to each other both ways: split over two
    # micro-batches they would silently give other embeddings.
    small = open_runtime(model_path, sequences=1, threads=1, n_batch=8)
    try:
        projection = Projection(mmproj_path, model=small.model, n_threads=1)
        with (
            projection,
            prompt_with(projection, noise_png(1)) as prompt,
            pytest.raises(ImageEvaluationFailed, match="16 tokens"),
        ):
            prompt.evaluate(small.context, seq_id=0, n_batch=8)
    finally:
        small.close()


def test_evaluation_refuses_to_start_inside_an_image(projection: Projection) -> None:
    with prompt_with(projection, noise_png(1)) as prompt:
        inside = prompt.chunks[1].start + 1
        with pytest.raises(ValueError, match="inside an image"):
            prompt.evaluate(None, seq_id=0, n_batch=512, reuse=inside)


@pytest.mark.parametrize(
    "data",
    [b"this is not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, b""],
    ids=["text", "truncated-png", "empty"],
)
def test_bytes_that_are_not_an_image_raise_image_decoding_failed(data: bytes) -> None:
    with pytest.raises(ImageDecodingFailed, match="image"):
        decode_image(data)


def test_truncated_jpeg_raises_image_decoding_failed() -> None:
    whole = encoded(Image.open(io.BytesIO(noise_png(3))), "JPEG")
    with pytest.raises(ImageDecodingFailed):
        decode_image(whole[: len(whole) // 2])


def test_image_of_too_many_pixels_is_refused_before_decoding() -> None:
    # 8000x8000 of one colour: 64 million pixels in a few hundred kilobytes.
    bomb = encoded(Image.new("L", (8000, 8000), 0), "PNG")
    assert len(bomb) < 1 << 20
    with pytest.raises(ImageDecodingFailed, match="8000x8000 pixels"):
        decode_image(bomb)
    small = encoded(Image.new("RGB", (100, 100), "red"), "PNG")
    with pytest.raises(ImageDecodingFailed, match="100x100 pixels"):
        decode_image(small, max_pixels=9_999)


def test_formats_outside_the_accepted_ones_are_refused() -> None:
    tiff = encoded(Image.new("RGB", (8, 8), "red"), "TIFF")
    assert decode_image(encoded(Image.new("RGB", (8, 8), "red"), "WEBP")).width == 8
    with pytest.raises(ImageDecodingFailed, match="no image format"):
        decode_image(tiff)


def test_images_are_scaled_down_to_fit_and_never_up() -> None:
    wide = encoded(Image.new("RGB", (2000, 1000), "red"), "PNG")
    scaled = decode_image(wide, max_edge=1024)
    assert (scaled.width, scaled.height) == (1024, 512)
    assert len(scaled.rgb) == 1024 * 512 * 3
    small = decode_image(noise_png(1), max_edge=1024)
    assert (small.width, small.height) == (64, 64)


def test_transparent_image_is_laid_on_white_rgb() -> None:
    clear = encoded(Image.new("RGBA", (4, 4), (0, 0, 0, 0)), "PNG")
    image = decode_image(clear)
    assert image.rgb == b"\xff" * (4 * 4 * 3)


def test_image_is_known_by_its_sent_bytes_and_its_scaled_size() -> None:
    picture = Image.open(io.BytesIO(noise_png(4)))
    png, jpeg = encoded(picture, "PNG"), encoded(picture, "JPEG")
    assert decode_image(png).digest == image_digest(png) == decode_image(png).digest
    assert len(image_digest(png)) == 32
    # The same picture sent in another encoding is another image to the cache.
    assert decode_image(jpeg).digest != decode_image(png).digest
    # The same bytes scaled to another size hold other keys and values.
    full, scaled = decode_image(png), decode_image(png, max_edge=32)
    assert full.digest == scaled.digest
    assert full.identity != scaled.identity


def test_marker_and_image_counts_must_agree(projection: Projection) -> None:
    image = decode_image(noise_png(1))
    with pytest.raises(ImageCountMismatch, match="1 image marker"):
        projection.tokenize(f"{projection.marker} text", [])
    with pytest.raises(ImageCountMismatch, match="2 image"):
        projection.tokenize(f"{projection.marker} text", [image, image])


def test_model_without_projection_does_not_serve_images() -> None:
    with pytest.raises(MultimodalNotSupported, match="no multimodal projection"):
        require_projection(None)


def test_projection_of_another_width_is_refused_with_both_widths(
    runtime: LlamaRuntime, tmp_path: Path
) -> None:
    wrong = write_test_mmproj(tmp_path / "wrong.gguf", text_width=512, shape=SHAPE)
    with pytest.raises(ProjectionWidthMismatch) as caught:
        Projection(wrong, model=runtime.model)
    assert (caught.value.model_width, caught.value.projection_width) == (640, 512)
    assert "512 wide" in str(caught.value)
    assert "640 wide" in str(caught.value)
    assert isinstance(caught.value, ModelLoadError)


def test_missing_or_foreign_projection_file_is_a_load_failure(
    runtime: LlamaRuntime, model_path: Path, tmp_path: Path
) -> None:
    with pytest.raises(ProjectionLoadFailed, match="does not exist"):
        Projection(tmp_path / "absent.gguf", model=runtime.model)
    # A text model is no projection: libmtmd's own reason is in the message.
    with pytest.raises(ProjectionLoadFailed, match="could not load"):
        Projection(model_path, model=runtime.model)


def test_reusable_prefix_never_ends_inside_an_image() -> None:
    image = [ImagePosition("a", index) for index in range(4)]
    other = [ImagePosition("b", index) for index in range(4)]
    assert reusable_prefix([1, 2, *image, 3], [1, 2, *image, 3]) == 7
    assert reusable_prefix([1, 2, *image, 3], [1, 2, *other, 3]) == 2
    # A limit that falls inside an image goes back to the image's start.
    assert reusable_prefix([1, 2, *image], [1, 2, *image], limit=5) == 2
    assert reusable_prefix([1, 2, *image, 3], [1, 2, *image, 4]) == 6
    assert reusable_prefix([], [1, 2]) == 0
