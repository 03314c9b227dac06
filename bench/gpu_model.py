"""A random-weight GGUF of a known architecture (llama), for the GPU check.

The demo model is too big to travel to the device machine (``scripts/
gpu_check.sh``), so the check writes one there: llama's layout, F16 weights
drawn at random, and a generated SentencePiece-style vocabulary (the 256 byte
tokens, then made-up pieces) large enough that the end-of-text token is
almost never sampled.  Only speed is measured with it: what it generates is
noise.

    python bench/gpu_model.py --out /tmp/model.gguf [--size tiny|small|1b]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SIZES = {
    # embedding, layers, feed-forward, heads, KV heads, vocabulary
    "tiny": (64, 2, 128, 4, 2, 1024),
    "small": (512, 8, 1408, 8, 4, 8192),
    "1b": (2048, 16, 5632, 32, 8, 32000),
}


def vocabulary(size: int) -> tuple[list[bytes], list[float], list[int]]:
    """Tokens, scores and types: <unk>, <s>, </s>, the byte tokens, then
    pieces ("▁w17") that SentencePiece merges by score."""
    tokens = [b"<unk>", b"<s>", b"</s>"]
    types = [2, 3, 3]  # unknown, control, control
    tokens += [f"<0x{byte:02X}>".encode() for byte in range(256)]
    types += [6] * 256  # byte
    tokens += [f"\u2581w{n}".encode() for n in range(size - len(tokens))]
    types += [1] * (size - len(types))  # normal
    scores = [0.0] * 259 + [-float(n) for n in range(size - 259)]
    return tokens, scores, types


def write_model(out: Path, size: str, seed: int = 0) -> None:
    import gguf

    embd, layers, ff, heads, kv_heads, vocab = SIZES[size]
    head = embd // heads
    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    def norm() -> np.ndarray:
        return np.ones(embd, dtype=np.float32)

    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name(f"random-llama-{size}")
    writer.add_context_length(8192)
    writer.add_embedding_length(embd)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    tokens, scores, types = vocabulary(vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    # numpy shapes are (rows, columns); GGUF stores them reversed, as
    # llama.cpp reads them.
    writer.add_tensor("token_embd.weight", weight(vocab, embd))
    writer.add_tensor("output_norm.weight", norm())
    writer.add_tensor("output.weight", weight(vocab, embd))
    for n in range(layers):
        writer.add_tensor(f"blk.{n}.attn_norm.weight", norm())
        writer.add_tensor(f"blk.{n}.attn_q.weight", weight(embd, embd))
        writer.add_tensor(f"blk.{n}.attn_k.weight", weight(kv_heads * head, embd))
        writer.add_tensor(f"blk.{n}.attn_v.weight", weight(kv_heads * head, embd))
        writer.add_tensor(f"blk.{n}.attn_output.weight", weight(embd, embd))
        writer.add_tensor(f"blk.{n}.ffn_norm.weight", norm())
        writer.add_tensor(f"blk.{n}.ffn_gate.weight", weight(ff, embd))
        writer.add_tensor(f"blk.{n}.ffn_up.weight", weight(ff, embd))
        writer.add_tensor(f"blk.{n}.ffn_down.weight", weight(embd, ff))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", choices=sorted(SIZES), default="1b")
    args = parser.parse_args()
    write_model(args.out, args.size)
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
