"""A real multimodal projection file for the demo model, with random weights.

No vision model can be downloaded here, so the tests make their own: a tiny
SigLIP-style vision encoder of llama.cpp's ``gemma3`` projector type (the one
Gemma 3's vision models ship), written with the ``gguf`` package.  libmtmd
loads it like any published mmproj file; its answers are nonsense, but every
step of the path is the real one: preprocessing, the encoder graph, the
projection into the text model's embedding space, and evaluation of the image
embeddings in a llama.cpp sequence.

The layout (what libmtmd's ``clip`` loader reads for this projector type):

- metadata under ``clip.*`` and ``clip.vision.*``: sizes, normalisation, the
  projector type, the pooling factor (``projector.scale_factor``);
- ``v.patch_embd`` (a convolution cutting the image into patches) and
  ``v.position_embd``;
- per block ``v.blk.N.{ln1,attn_q,attn_k,attn_v,attn_out,ln2,ffn_up,ffn_down}``;
- ``v.post_ln``, then the Gemma 3 projector: average pooling of the patch grid
  by ``scale_factor`` per side, an RMS norm (``mm.soft_emb_norm``) and a matrix
  into the text model's width (``mm.input_projection``).

Shapes below are numpy's (row-major); GGUF stores the reverse order, which is
how ggml names dimensions.  With the defaults, a 64 px image is an 8x8 grid of
8 px patches, pooled 2x2 into 16 image tokens.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import numpy.typing as npt

PROJECTOR_TYPE = "gemma3"


@dataclass(frozen=True)
class EncoderShape:
    """The sizes of the tiny encoder; the defaults keep an encode to milliseconds."""

    image_size: int = 64
    patch_size: int = 8
    width: int = 64
    heads: int = 4
    # Must differ from ``width``: libmtmd takes an FFN whose down matrix has
    # the model's width as input for one exported the wrong way round, and
    # swaps it.
    feed_forward: int = 128
    blocks: int = 2
    # Patches pooled per side into one image token.
    merge: int = 2

    @property
    def image_tokens(self) -> int:
        side = self.image_size // self.patch_size // self.merge
        return side * side


def model_width(model_path: Path) -> int:
    """The embedding width of a llama.cpp model file (``<arch>.embedding_length``).

    Read by llama.cpp from the metadata alone (a vocabulary-only load, about
    a second): ``gguf.GGUFReader`` parses every field in Python and takes most
    of a minute over the demo model's 262,144-entry vocabulary.
    """
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), params)
    if not model:
        raise ValueError(f"llama.cpp could not read {model_path}")
    try:
        value = ctypes.create_string_buffer(256)

        def metadata(key: str) -> str:
            size = llama_cpp.llama_model_meta_val_str(model, key.encode(), value, 256)
            if size < 0:
                raise ValueError(f"{model_path} has no {key}")
            return value.value.decode()

        return int(metadata(f"{metadata('general.architecture')}.embedding_length"))
    finally:
        llama_cpp.llama_model_free(model)


def write_test_mmproj(
    path: Path,
    *,
    text_width: int,
    seed: int = 0,
    shape: EncoderShape | None = None,
) -> Path:
    """Write a ``gemma3`` projection whose output is ``text_width`` wide.

    The same arguments always give the same file (the weights come from a
    generator seeded with ``seed``).
    """
    shape = shape or EncoderShape()
    if shape.image_size % (shape.patch_size * shape.merge):
        raise ValueError("image_size must be a multiple of patch_size * merge")
    if shape.width % shape.heads or shape.feed_forward == shape.width:
        raise ValueError("width must split into heads and differ from feed_forward")
    rng = np.random.default_rng(seed)

    def weights(*dims: int, scale: float) -> npt.NDArray[np.float32]:
        return rng.normal(0.0, scale, size=dims).astype(np.float32)

    def ones(size: int) -> npt.NDArray[np.float32]:
        return np.ones(size, dtype=np.float32)

    def zeros(size: int) -> npt.NDArray[np.float32]:
        return np.zeros(size, dtype=np.float32)

    width = shape.width
    patches = (shape.image_size // shape.patch_size) ** 2
    # Scales that keep activations near unit size through the random layers,
    # so different images still give clearly different embeddings.
    linear = 1.0 / np.sqrt(width)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, arch="clip")
    writer.add_name("paddler test projection (random weights)")
    writer.add_description(
        "A tiny gemma3-type vision encoder for tests: its output is nonsense."
    )
    writer.add_string("clip.projector_type", PROJECTOR_TYPE)
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.has_audio_encoder", False)
    writer.add_bool("clip.use_gelu", True)
    writer.add_uint32("clip.vision.image_size", shape.image_size)
    writer.add_uint32("clip.vision.patch_size", shape.patch_size)
    writer.add_uint32("clip.vision.embedding_length", width)
    writer.add_uint32("clip.vision.feed_forward_length", shape.feed_forward)
    writer.add_uint32("clip.vision.block_count", shape.blocks)
    writer.add_uint32("clip.vision.projection_dim", text_width)
    writer.add_uint32("clip.vision.attention.head_count", shape.heads)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    writer.add_uint32("clip.vision.projector.scale_factor", shape.merge)

    patch_scale = 1.0 / np.sqrt(3 * shape.patch_size * shape.patch_size)
    writer.add_tensor(
        "v.patch_embd.weight",
        weights(width, 3, shape.patch_size, shape.patch_size, scale=patch_scale),
    )
    writer.add_tensor("v.patch_embd.bias", zeros(width))
    writer.add_tensor("v.position_embd.weight", weights(patches, width, scale=0.1))
    for block in range(shape.blocks):
        prefix = f"v.blk.{block}"
        writer.add_tensor(f"{prefix}.ln1.weight", ones(width))
        writer.add_tensor(f"{prefix}.ln1.bias", zeros(width))
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            writer.add_tensor(
                f"{prefix}.{name}.weight", weights(width, width, scale=linear)
            )
            writer.add_tensor(f"{prefix}.{name}.bias", zeros(width))
        writer.add_tensor(f"{prefix}.ln2.weight", ones(width))
        writer.add_tensor(f"{prefix}.ln2.bias", zeros(width))
        writer.add_tensor(
            f"{prefix}.ffn_up.weight",
            weights(shape.feed_forward, width, scale=linear),
        )
        writer.add_tensor(f"{prefix}.ffn_up.bias", zeros(shape.feed_forward))
        writer.add_tensor(
            f"{prefix}.ffn_down.weight",
            weights(width, shape.feed_forward, scale=1.0 / np.sqrt(shape.feed_forward)),
        )
        writer.add_tensor(f"{prefix}.ffn_down.bias", zeros(width))
    writer.add_tensor("v.post_ln.weight", ones(width))
    writer.add_tensor("v.post_ln.bias", zeros(width))
    writer.add_tensor("mm.soft_emb_norm.weight", ones(width))
    # (vision width, text width): ggml reads it as text-width rows of
    # vision-width columns and transposes it in the graph.
    writer.add_tensor(
        "mm.input_projection.weight", weights(width, text_width, scale=linear)
    )

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
