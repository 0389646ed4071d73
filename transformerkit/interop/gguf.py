"""GGUF files (llama.cpp's format) into our DecoderOnly: config, dequantized weights, tokenizer, chat template.

A GGUF file holds everything in one place: metadata (the llama architecture's sizes, the tokenizer's
vocabulary and merges, the chat template) and tensors, many quantized. The `gguf` package reads and
dequantizes them; the rest is a name map and one layout fix (see `unpermute_rope`).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..config import ModelConfig
from ..errors import CheckpointError
from .huggingface import rename

NAME_MAP = [
    ("decoder.embed.tokens", "token_embd"),
    ("decoder.layers.*.self_attn_norm", "blk.*.attn_norm"),
    ("decoder.layers.*.self_attn.q_proj", "blk.*.attn_q"),
    ("decoder.layers.*.self_attn.k_proj", "blk.*.attn_k"),
    ("decoder.layers.*.self_attn.v_proj", "blk.*.attn_v"),
    ("decoder.layers.*.self_attn.o_proj", "blk.*.attn_output"),
    ("decoder.layers.*.ffn_norm", "blk.*.ffn_norm"),
    ("decoder.layers.*.ffn.gate_proj", "blk.*.ffn_gate"),
    ("decoder.layers.*.ffn.up_proj", "blk.*.ffn_up"),
    ("decoder.layers.*.ffn.down_proj", "blk.*.ffn_down"),
    ("decoder.norm", "output_norm"),
    ("lm_head", "output"),
]
QUANT_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")
CONTROL, USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values
# how llama.cpp splits text before byte-level BPE, for the pre-tokenizer names whose split is not GPT-2's
PRE_TOKENIZER_SPLITS = {
    name: r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+"
    for name in ("llama3", "llama-v3", "llama-bpe", "smaug-bpe")
}


def unpermute_rope(weight: Tensor, n_heads: int) -> Tensor:
    """GGUF's query/key rows -> Hugging Face's.

    RoPE rotates pairs of channels. llama.cpp pairs neighbours (channel 2i with 2i + 1, interleaved);
    Hugging Face and transformerkit pair halves (i with i + D/2). The converter that wrote the file
    reordered each head's rows from halves to pairs; this puts them back: (H, D/2, 2) -> (H, 2, D/2).
    """
    rows, cols = weight.shape
    return weight.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


@dataclass
class Int4Blocks:
    """A Q4_1 (or Q4_0) tensor kept as it is stored: blocks of 32 weights along each row, w = q d + m."""

    codes: Tensor  # (N, K) uint8 in 0..15
    d: Tensor  # (N, K / 32) float32
    m: Tensor  # (N, K / 32) float32

    def rows(self, index: Tensor) -> Int4Blocks:
        return Int4Blocks(self.codes[index], self.d[index], self.m[index])

    def dequantize(self) -> Tensor:
        N, K = self.codes.shape
        blocks = self.codes.float().reshape(N, K // 32, 32) * self.d[..., None] + self.m[..., None]
        return blocks.reshape(N, K)


def read_gguf(path: str | Path, keep_int4: bool = False) -> tuple[ModelConfig, dict[str, Any], Any, str | None]:
    """A GGUF file -> (our config, our state dict in float32, a `tokenizers.Tokenizer`, the chat template).

    keep_int4: Q4_1 and Q4_0 tensors come back as Int4Blocks, exactly as stored, instead of dequantized."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as error:
        raise CheckpointError(f"{path}: not a readable GGUF file ({error})") from None
    meta = {name: _value(field) for name, field in reader.fields.items()}
    architecture = meta.get("general.architecture")
    if architecture != "llama":
        raise CheckpointError(f"{path}: GGUF architecture {architecture!r} is not supported; transformerkit reads "
                              "'llama'")
    config = _config(meta, reader)
    pairs = [(theirs, ours) for ours, theirs in NAME_MAP]
    wanted = [(name, tensor) for tensor in reader.tensors if (name := rename(tensor.name, pairs)) is not None]
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:  # numpy's dequantizing releases the GIL
        read = (lambda t: _int4_blocks(t) if t.tensor_type.name in INT4_TYPES else _dequantize(t, path)) \
            if keep_int4 else (lambda t: _dequantize(t, path))
        values = pool.map(lambda item: read(item[1]), wanted)
        weights = {name: value for (name, _), value in zip(wanted, values)}
    for name, value in weights.items():
        heads = config.n_heads if name.endswith("q_proj.weight") else config.kv_heads \
            if name.endswith("k_proj.weight") else None
        if heads is None:
            continue
        if isinstance(value, Int4Blocks):  # blocks run along rows, so reordering rows moves whole blocks
            rows = value.codes.shape[0]
            weights[name] = value.rows(unpermute_rope(torch.arange(rows)[:, None], heads).squeeze(1))
        else:
            weights[name] = unpermute_rope(value, heads)
    return config, weights, _tokenizer(meta, path), meta.get("tokenizer.chat_template")


def gguf_tokenizer(path: str | Path) -> tuple[Any, str | None]:
    """Only the tokenizer and the chat template of a GGUF file (no tensors are read)."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as error:
        raise CheckpointError(f"{path}: not a readable GGUF file ({error})") from None
    meta = {name: _value(field) for name, field in reader.fields.items()}
    return _tokenizer(meta, path), meta.get("tokenizer.chat_template")


def _value(field) -> Any:
    try:
        return field.contents()
    except Exception:  # a field type this gguf version cannot render: not one we read
        return None


def _config(meta: dict[str, Any], reader) -> ModelConfig:
    def get(key: str, default: Any = None) -> Any:
        value = meta.get(f"llama.{key}", default)
        if value is None:
            raise CheckpointError(f"GGUF metadata llama.{key} is missing")
        return value

    d_model, n_heads = int(get("embedding_length")), int(get("attention.head_count"))
    head_dim = n_heads and d_model // n_heads
    rope_dim = int(get("rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise CheckpointError(f"GGUF rope.dimension_count {rope_dim} is not the head width {head_dim} (partial "
                              "rotary is not supported)")
    vocab = int(meta.get("llama.vocab_size") or len(meta["tokenizer.ggml.tokens"]))
    eos = int(meta.get("tokenizer.ggml.eos_token_id", 2))
    return ModelConfig(
        family="decoder", vocab_size=vocab, d_model=d_model, n_layers=int(get("block_count")), n_heads=n_heads,
        n_kv_heads=int(get("attention.head_count_kv", n_heads)), d_ff=int(get("feed_forward_length")),
        max_len=int(get("context_length", 2048)), positions="rope", rope_theta=float(get("rope.freq_base", 10000.0)),
        norm="rmsnorm", norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)), norm_position="pre",
        activation="swiglu", bias=False, dropout=0.0,
        tie_embeddings=not any(t.name == "output.weight" for t in reader.tensors),
        pad_id=int(meta.get("tokenizer.ggml.padding_token_id", eos)),
        bos_id=int(meta.get("tokenizer.ggml.bos_token_id", 1)), eos_id=eos)


def _dequantize(tensor, path) -> Tensor:
    """Any supported tensor type -> float32, in PyTorch's (rows, columns) order (GGUF lists dimensions reversed)."""
    from gguf.quants import dequantize

    kind = tensor.tensor_type.name
    if kind not in QUANT_TYPES:
        raise CheckpointError(f"{path}: tensor {tensor.name} has quantization type {kind}, which is not supported; "
                              f"transformerkit reads {', '.join(QUANT_TYPES)}")
    values = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
    shape = tuple(int(n) for n in reversed(tensor.shape))
    return torch.from_numpy(values.reshape(shape).copy())


INT4_TYPES = ("Q4_1", "Q4_0")


def _int4_blocks(tensor) -> Int4Blocks:
    """Q4_1 blocks (d fp16, m fp16, 16 bytes: element j in the low nibble of byte j, j + 16 in its high one) or
    Q4_0 blocks (d fp16, 16 bytes; w = (q - 8) d, so m = -8 d), rows as PyTorch orders them."""
    rows = int(tensor.shape[-1]) if len(tensor.shape) > 1 else 1
    q4_1 = tensor.tensor_type.name == "Q4_1"
    data = np.asarray(tensor.data, dtype=np.uint8).reshape(rows, -1, 20 if q4_1 else 18)  # (N, K / 32, block)
    d = data[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)  # (N, K / 32)
    m = data[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32) if q4_1 else -8 * d
    quants = data[..., 4:20] if q4_1 else data[..., 2:18]  # (N, K / 32, 16)
    codes = np.concatenate([quants & 15, quants >> 4], axis=-1).reshape(rows, -1)  # (N, K)
    return Int4Blocks(torch.from_numpy(codes), torch.from_numpy(d), torch.from_numpy(np.ascontiguousarray(m)))


def _tokenizer(meta: dict[str, Any], path):
    """Byte-level BPE from the file's vocabulary and merges, with its control tokens kept whole."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise CheckpointError(f"{path}: GGUF tokenizer model {kind!r} is not supported; transformerkit reads 'gpt2' "
                              "(byte-level BPE)")
    alphabet = _byte_alphabet()
    spelled = set(alphabet.values())
    tokens, types = meta["tokenizer.ggml.tokens"], meta.get("tokenizer.ggml.token_type") or []
    vocab = {(t if set(t) <= spelled else "".join(alphabet[b] for b in t.encode("utf-8"))): i
             for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ")) for m in meta.get("tokenizer.ggml.merges") or []]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    split = PRE_TOKENIZER_SPLITS.get(meta.get("tokenizer.ggml.pre"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False) if split is None else \
        pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                  for t, kind in zip(tokens, types) if kind == CONTROL and set(t) <= spelled])
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False)
                          for t, kind in zip(tokens, types) if kind == USER_DEFINED])
    return tokenizer


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's map from bytes to printable characters (printable bytes stand for themselves)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    extra = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(extra)}}
