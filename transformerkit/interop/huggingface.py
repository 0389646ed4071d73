"""Hugging Face checkpoints to and from our models: a config translation and a name map per architecture.

Our modules carry Hugging Face's own names where one exists (q_proj, o_proj, gate_proj, ...), so each map
is a short list of (our module, their module) pairs; '*' stands for a layer index. GPT-2's fused and
transposed Conv1D weights and BART's position offset are converted on the way.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import CheckpointError, ConfigError

SUPPORTED = ("gpt2", "llama", "bert", "bart", "marian")

_LAYER = "*"


def _block(ours: str, theirs: str, attn: str, attn_norm: str, ffn_up: str, ffn_down: str, ffn_norm: str,
           q: str = "q_proj", k: str = "k_proj", v: str = "v_proj", o: str = "o_proj",
           cross: tuple[str, str] | None = None, gate: str | None = None) -> list[tuple[str, str]]:
    """The (ours, theirs) pairs of one block's modules."""
    pairs = [(f"{ours}.self_attn.{ours_name}", f"{theirs}.{attn}.{name}")
             for ours_name, name in (("q_proj", q), ("k_proj", k), ("v_proj", v), ("o_proj", o))]
    pairs += [(f"{ours}.self_attn_norm", f"{theirs}.{attn_norm}"), (f"{ours}.ffn_norm", f"{theirs}.{ffn_norm}"),
              (f"{ours}.ffn.up_proj", f"{theirs}.{ffn_up}"), (f"{ours}.ffn.down_proj", f"{theirs}.{ffn_down}")]
    if gate:
        pairs.append((f"{ours}.ffn.gate_proj", f"{theirs}.{gate}"))
    if cross:
        cross_attn, cross_norm = cross
        pairs += [(f"{ours}.cross_attn.{ours_name}", f"{theirs}.{cross_attn}.{name}")
                  for ours_name, name in (("q_proj", q), ("k_proj", k), ("v_proj", v), ("o_proj", o))]
        pairs.append((f"{ours}.cross_attn_norm", f"{theirs}.{cross_norm}"))
    return pairs


NAME_MAPS: dict[str, list[tuple[str, str]]] = {
    "llama": [
        ("decoder.embed.tokens", "model.embed_tokens"),
        *_block("decoder.layers.*", "model.layers.*", "self_attn", "input_layernorm", "mlp.up_proj", "mlp.down_proj",
                "post_attention_layernorm", gate="mlp.gate_proj"),
        ("decoder.norm", "model.norm"),
        ("lm_head", "lm_head"),
    ],
    # GPT-2's fused c_attn is split into q/k/v_proj before renaming (see _from_gpt2)
    "gpt2": [
        ("decoder.embed.tokens", "transformer.wte"),
        ("decoder.embed.positions", "transformer.wpe"),
        *_block("decoder.layers.*", "transformer.h.*", "attn", "ln_1", "mlp.c_fc", "mlp.c_proj", "ln_2", o="c_proj"),
        ("decoder.norm", "transformer.ln_f"),
        ("lm_head", "lm_head"),
    ],
    "bert": [
        ("encoder.embed.tokens", "bert.embeddings.word_embeddings"),
        ("encoder.embed.positions", "bert.embeddings.position_embeddings"),
        ("encoder.embed.token_types", "bert.embeddings.token_type_embeddings"),
        ("encoder.embed.norm", "bert.embeddings.LayerNorm"),
        *_block("encoder.layers.*", "bert.encoder.layer.*", "attention", "attention.output.LayerNorm",
                "intermediate.dense", "output.dense", "output.LayerNorm",
                q="self.query", k="self.key", v="self.value", o="output.dense"),
        ("pooler", "bert.pooler.dense"),
        ("mlm_head.dense", "cls.predictions.transform.dense"),
        ("mlm_head.norm", "cls.predictions.transform.LayerNorm"),
        ("mlm_head.output", "cls.predictions.decoder"),
        ("classifier", "classifier"),
    ],
    "bart": [
        ("encoder.embed.tokens", "model.shared"),
        ("decoder.embed.tokens", "model.decoder.embed_tokens"),
        ("encoder.embed.positions", "model.encoder.embed_positions"),
        ("decoder.embed.positions", "model.decoder.embed_positions"),
        ("encoder.embed.norm", "model.encoder.layernorm_embedding"),
        ("decoder.embed.norm", "model.decoder.layernorm_embedding"),
        *_block("encoder.layers.*", "model.encoder.layers.*", "self_attn", "self_attn_layer_norm", "fc1", "fc2",
                "final_layer_norm", o="out_proj"),
        *_block("decoder.layers.*", "model.decoder.layers.*", "self_attn", "self_attn_layer_norm", "fc1", "fc2",
                "final_layer_norm", o="out_proj", cross=("encoder_attn", "encoder_attn_layer_norm")),
        ("lm_head", "lm_head"),
    ],
}
NAME_MAPS["marian"] = NAME_MAPS["bart"]

# the prefix of the bare model's weights inside the task model's (GPT2Model inside GPT2LMHeadModel, ...)
BASE_PREFIX = {"gpt2": "transformer.", "llama": "model.", "bert": "bert.", "bart": "model.", "marian": "model."}
ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


# ---------------------------------------------------------------------------------------------- configs


def config_from_hf(hf: dict[str, Any], weights: dict[str, Tensor]) -> ModelConfig:
    """A Hugging Face config.json (and the names of its weights, for the optional heads) -> ModelConfig."""
    kind = hf.get("model_type")
    if kind not in SUPPORTED:
        raise CheckpointError(f"model_type {kind!r} is not supported; transformerkit reads {', '.join(SUPPORTED)}")
    return {"gpt2": _gpt2_config, "llama": _llama_config, "bert": _bert_config,
            "bart": _bart_config, "marian": _bart_config}[kind](hf, weights)


def _get(hf: dict[str, Any], key: str, default: Any = None) -> Any:
    value = hf.get(key, default)
    return default if value is None else value


def _activation(name: str) -> str:
    if name not in ACTIVATIONS:
        raise CheckpointError(f"activation {name!r} is not supported; transformerkit reads {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _gpt2_config(hf: dict[str, Any], weights: dict[str, Tensor]) -> ModelConfig:
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn") or hf.get("add_cross_attention"):
        raise CheckpointError("GPT-2 options scale_attn_by_inverse_layer_idx, reorder_and_upcast_attn and "
                              "add_cross_attention are not supported")
    d = hf["n_embd"]
    eos = _get(hf, "eos_token_id", 0)
    return ModelConfig(
        family="decoder", vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["n_layer"], n_heads=hf["n_head"],
        d_ff=_get(hf, "n_inner", 4 * d), max_len=hf["n_positions"], positions="learned", norm="layernorm",
        norm_eps=_get(hf, "layer_norm_epsilon", 1e-5), norm_position="pre",
        activation=_activation(_get(hf, "activation_function", "gelu_new")), bias=True,
        dropout=_get(hf, "resid_pdrop", 0.1), attention_dropout=_get(hf, "attn_pdrop", 0.1),
        tie_embeddings=_get(hf, "tie_word_embeddings", True), init="normal",
        pad_id=_get(hf, "pad_token_id", eos), bos_id=_get(hf, "bos_token_id", eos), eos_id=eos)


def _llama_config(hf: dict[str, Any], weights: dict[str, Tensor]) -> ModelConfig:
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise CheckpointError(f"rope_type {rope.get('rope_type', rope.get('type'))!r} is not supported; "
                              "transformerkit reads the default RoPE")
    if bool(hf.get("attention_bias")) != bool(hf.get("mlp_bias")):
        raise CheckpointError("attention_bias and mlp_bias must agree (transformerkit has one `bias` switch)")
    if _get(hf, "hidden_act", "silu") not in ("silu", "swish"):
        raise CheckpointError(f"hidden_act {hf['hidden_act']!r} is not supported for llama; it must be 'silu'")
    eos = _get(hf, "eos_token_id", 2)
    eos = eos[0] if isinstance(eos, list) else eos
    return ModelConfig(
        family="decoder", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"], n_kv_heads=_get(hf, "num_key_value_heads", hf["num_attention_heads"]),
        head_dim=hf.get("head_dim") if hf.get("head_dim") != hf["hidden_size"] // hf["num_attention_heads"] else None,
        d_ff=hf["intermediate_size"], max_len=_get(hf, "max_position_embeddings", 2048), positions="rope",
        rope_theta=float(rope.get("rope_theta", _get(hf, "rope_theta", 10000.0))), norm="rmsnorm",
        norm_eps=_get(hf, "rms_norm_eps", 1e-6), norm_position="pre", activation="swiglu",
        bias=bool(hf.get("attention_bias")), dropout=0.0, attention_dropout=_get(hf, "attention_dropout", 0.0),
        tie_embeddings=_get(hf, "tie_word_embeddings", False), init="normal",
        pad_id=_get(hf, "pad_token_id", eos), bos_id=_get(hf, "bos_token_id", 1), eos_id=eos)


def _bert_config(hf: dict[str, Any], weights: dict[str, Tensor]) -> ModelConfig:
    if _get(hf, "position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"position_embedding_type {hf['position_embedding_type']!r} is not supported; "
                              "transformerkit reads 'absolute'")
    archs = hf.get("architectures") or []
    n_classes = len(hf.get("id2label") or {}) if any("SequenceClassification" in a for a in archs) else 0
    return ModelConfig(
        family="encoder", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"], d_ff=hf["intermediate_size"], max_len=hf["max_position_embeddings"],
        positions="learned", norm="layernorm", norm_eps=_get(hf, "layer_norm_eps", 1e-12), norm_position="post",
        activation=_activation(_get(hf, "hidden_act", "gelu")), dropout=_get(hf, "hidden_dropout_prob", 0.1),
        attention_dropout=_get(hf, "attention_probs_dropout_prob", 0.1), embedding_norm=True,
        type_vocab_size=_get(hf, "type_vocab_size", 2), tie_embeddings=_get(hf, "tie_word_embeddings", True),
        pooler=any(k.startswith("bert.pooler.") for k in weights),
        mlm_head=any(k.startswith("cls.predictions.") for k in weights),
        output_bias=any(k.startswith("cls.predictions.") for k in weights), n_classes=n_classes,
        pooling="cls" if n_classes else "mean", init="normal", pad_id=_get(hf, "pad_token_id", 0),
        bos_id=_get(hf, "bos_token_id", 0), eos_id=_get(hf, "eos_token_id", 0))


def _bart_config(hf: dict[str, Any], weights: dict[str, Tensor]) -> ModelConfig:
    marian = hf["model_type"] == "marian"
    for a, b in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if hf.get(a) != hf.get(b):
            raise CheckpointError(f"{a} ({hf.get(a)}) and {b} ({hf.get(b)}) must be equal in transformerkit")
    if hf.get("add_final_layer_norm") or hf.get("normalize_before"):
        raise CheckpointError("pre-norm BART variants (mBART: normalize_before, add_final_layer_norm) are not "
                              "supported")
    vocab = hf["vocab_size"]
    target_vocab = hf.get("decoder_vocab_size") or vocab
    return ModelConfig(
        family="encoder-decoder", vocab_size=vocab, target_vocab_size=target_vocab if target_vocab != vocab else None,
        d_model=hf["d_model"], n_layers=hf["encoder_layers"], n_decoder_layers=hf["decoder_layers"],
        n_heads=hf["encoder_attention_heads"], d_ff=hf["encoder_ffn_dim"], max_len=hf["max_position_embeddings"],
        positions="sinusoidal" if marian else "learned", norm="layernorm", norm_position="post",
        activation=_activation(_get(hf, "activation_function", "gelu")), dropout=_get(hf, "dropout", 0.1),
        attention_dropout=_get(hf, "attention_dropout", 0.0), scale_embeddings=bool(hf.get("scale_embedding")),
        embedding_norm=not marian, tie_embeddings=_get(hf, "tie_word_embeddings", True),
        share_embeddings=_get(hf, "share_encoder_decoder_embeddings", True) and target_vocab == vocab,
        output_bias=True, init="normal", pad_id=_get(hf, "pad_token_id", 1), bos_id=_get(hf, "bos_token_id", 0),
        eos_id=_get(hf, "eos_token_id", 2), decoder_start_id=_get(hf, "decoder_start_token_id", 2))


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """ModelConfig -> a Hugging Face config.json for the architecture that holds it; CheckpointError if none does."""
    kind = hf_architecture(config)
    c = config
    if kind == "llama":
        return dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=c.vocab_size,
                    hidden_size=c.d_model, intermediate_size=c.d_ff, num_hidden_layers=c.n_layers,
                    num_attention_heads=c.n_heads, num_key_value_heads=c.kv_heads, head_dim=c.d_head,
                    hidden_act="silu", max_position_embeddings=c.max_len, rms_norm_eps=c.norm_eps,
                    rope_parameters={"rope_theta": c.rope_theta, "rope_type": "default"}, rope_theta=c.rope_theta,
                    attention_bias=c.bias, mlp_bias=c.bias, tie_word_embeddings=c.tie_embeddings,
                    attention_dropout=c.attention_dropout, pad_token_id=c.pad_id, bos_token_id=c.bos_id,
                    eos_token_id=c.eos_id)
    if kind == "gpt2":
        activation = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}[c.activation]
        return dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], vocab_size=c.vocab_size,
                    n_positions=c.max_len, n_embd=c.d_model, n_layer=c.n_layers, n_head=c.n_heads, n_inner=c.d_ff,
                    activation_function=activation, resid_pdrop=c.dropout, embd_pdrop=c.dropout,
                    attn_pdrop=c.attention_dropout, layer_norm_epsilon=c.norm_eps,
                    tie_word_embeddings=c.tie_embeddings, bos_token_id=c.bos_id, eos_token_id=c.eos_id,
                    pad_token_id=c.pad_id)
    if kind == "bert":
        arch = "BertForSequenceClassification" if c.n_classes else "BertForMaskedLM" if c.mlm_head else "BertModel"
        out = dict(model_type="bert", architectures=[arch], vocab_size=c.vocab_size, hidden_size=c.d_model,
                   num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, intermediate_size=c.d_ff,
                   hidden_act=c.activation if c.activation != "gelu_tanh" else "gelu_new",
                   hidden_dropout_prob=c.dropout, attention_probs_dropout_prob=c.attention_dropout,
                   max_position_embeddings=c.max_len, type_vocab_size=c.type_vocab_size, layer_norm_eps=c.norm_eps,
                   pad_token_id=c.pad_id, tie_word_embeddings=c.tie_embeddings)
        if c.n_classes:
            out["id2label"] = {str(i): f"LABEL_{i}" for i in range(c.n_classes)}
            out["label2id"] = {f"LABEL_{i}": i for i in range(c.n_classes)}
        return out
    activation = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}[c.activation]
    common = dict(vocab_size=c.vocab_size, d_model=c.d_model, encoder_layers=c.n_layers,
                  decoder_layers=c.decoder_layers, encoder_attention_heads=c.n_heads, decoder_attention_heads=c.n_heads,
                  encoder_ffn_dim=c.d_ff, decoder_ffn_dim=c.d_ff, activation_function=activation,
                  dropout=c.dropout, attention_dropout=c.attention_dropout, activation_dropout=0.0,
                  max_position_embeddings=c.max_len, scale_embedding=c.scale_embeddings,
                  tie_word_embeddings=c.tie_embeddings, pad_token_id=c.pad_id, bos_token_id=c.bos_id,
                  eos_token_id=c.eos_id, decoder_start_token_id=c.start_id, forced_eos_token_id=c.eos_id,
                  is_encoder_decoder=True)
    if kind == "bart":
        return dict(model_type="bart", architectures=["BartForConditionalGeneration"], **common)
    return dict(model_type="marian", architectures=["MarianMTModel"], decoder_vocab_size=c.output_vocab_size,
                share_encoder_decoder_embeddings=c.share_embeddings, **common)


def hf_architecture(config: ModelConfig) -> str:
    """The Hugging Face model_type that holds exactly this config; CheckpointError naming what does not fit."""
    c = config

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise CheckpointError(f"no Hugging Face architecture holds this model: {what}")

    need(c.residual and c.scale_attention and c.causal, "residual, scale_attention and causal must stay on")
    if c.family == "decoder":
        if c.positions == "rope":
            need(c.norm == "rmsnorm" and c.norm_position == "pre" and c.activation == "swiglu"
                 and not c.output_bias and not c.embedding_norm and not c.scale_embeddings,
                 "a rope decoder must be LLaMA-like (rmsnorm, pre-norm, swiglu, no output bias)")
            return "llama"
        need(c.positions == "learned" and c.norm == "layernorm" and c.norm_position == "pre" and c.bias
             and c.activation != "swiglu" and not c.output_bias and not c.embedding_norm and not c.scale_embeddings
             and c.kv_heads == c.n_heads and c.head_dim in (None, c.d_model // c.n_heads),
             "a decoder without rope must be GPT-2-like (learned positions, pre-norm layernorm, biases, all heads)")
        return "gpt2"
    need(c.norm == "layernorm" and c.norm_position == "post" and c.bias and c.activation != "swiglu"
         and c.kv_heads == c.n_heads and c.head_dim in (None, c.d_model // c.n_heads),
         f"a {c.family} must be post-norm with layernorm, biases, a plain activation and all heads")
    if c.family == "encoder":
        need(c.positions == "learned" and c.embedding_norm and not c.scale_embeddings and c.type_vocab_size > 0
             and (c.output_bias or not c.mlm_head), "an encoder must be BERT-like (learned positions, embedding norm,"
             " token types)")
        return "bert"
    if c.positions == "learned":
        need(c.embedding_norm and c.share_embeddings, "a learned-position encoder-decoder must be BART-like "
             "(embedding norm, shared embeddings)")
        return "bart"
    need(c.positions == "sinusoidal" and not c.embedding_norm, "a sinusoidal encoder-decoder must be Marian-like "
         "(no embedding norm)")
    return "marian"


# ---------------------------------------------------------------------------------------------- weights


def rename(key: str, pairs: list[tuple[str, str]]) -> str | None:
    """Rename one weight by the first (source module, target module) pair whose source matches."""
    module, _, param = key.rpartition(".")
    for source, target in pairs:
        match = re.fullmatch(re.escape(source).replace(r"\*", r"(\d+)"), module)
        if match:
            return (target.replace(_LAYER, match.group(1)) if match.groups() else target) + "." + param
    return None


def normalize_hf_names(kind: str, weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """Name weights as the task model does (a bare BertModel's `embeddings.x` becomes `bert.embeddings.x`) and
    rename old BERT checkpoints' LayerNorm gamma/beta to weight/bias."""
    prefix = BASE_PREFIX[kind]
    if not any(k.startswith(prefix) for k in weights):
        heads = ("lm_head.", "cls.", "classifier.", "final_logits_bias")
        weights = {(k if k.startswith(heads) else prefix + k): v for k, v in weights.items()}
    return {re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", k)): v for k, v in weights.items()}


def weights_from_hf(kind: str, weights: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """Hugging Face state dict -> ours. Tensors we have no place for (a task model's other heads, buffers
    such as GPT-2's causal mask) are left out; a tensor we need and do not get is an error at load time."""
    weights = FROM_HF.get(kind, lambda w, c: w)(weights, config)
    pairs = [(theirs, ours) for ours, theirs in NAME_MAPS[kind]]
    renamed = {name: tensor for name, tensor in ((rename(k, pairs), t) for k, t in weights.items()) if name}
    return renamed


def weights_to_hf(kind: str, weights: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """Our state dict -> Hugging Face's, tied copies dropped (Hugging Face re-ties them on load)."""
    theirs = {}
    for key, tensor in weights.items():
        name = rename(key, NAME_MAPS[kind])
        if name is None:
            raise CheckpointError(f"tensor {key!r} has no Hugging Face {kind} name")
        theirs[name] = tensor
    return TO_HF.get(kind, lambda w, c: w)(theirs, config)


def _conv1d(t: Tensor) -> Tensor:
    """GPT-2 stores Linear weights transposed (its Conv1D is x @ W with W (in, out))."""
    return t.t().contiguous()


def _from_gpt2(weights: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    out = {}
    for key, tensor in weights.items():
        if key.endswith("attn.c_attn.weight") or key.endswith("attn.c_attn.bias"):
            base, param = key.rsplit(".c_attn.", 1)
            parts = tensor.split(config.d_model, dim=-1)  # (C, 3C) -> 3 x (C, C); bias (3C,) -> 3 x (C,)
            for name, part in zip(("q_proj", "k_proj", "v_proj"), parts):
                out[f"{base}.{name}.{param}"] = _conv1d(part) if param == "weight" else part
        elif key.endswith(".weight") and re.search(r"\.(attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$", key):
            out[key] = _conv1d(tensor)
        else:
            out[key] = tensor
    return out


def _to_gpt2(weights: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    out = {}
    for key, tensor in weights.items():
        if re.search(r"\.attn\.q_proj\.(weight|bias)$", key):
            base, param = key.rsplit(".q_proj.", 1)
            parts = [weights[f"{base}.{n}.{param}"] for n in ("q_proj", "k_proj", "v_proj")]
            out[f"{base}.c_attn.{param}"] = torch.cat([_conv1d(p) if param == "weight" else p for p in parts], dim=-1)
        elif re.search(r"\.attn\.(k_proj|v_proj)\.", key):
            continue
        elif key.endswith(".weight") and re.search(r"\.(attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$", key):
            out[key] = _conv1d(tensor)
        else:
            out[key] = tensor
    return out


BART_POSITION_OFFSET = 2  # BART's learned position table starts at row 2 (a fairseq padding convention)


def _from_bart(weights: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    out = dict(weights)
    for side in ("encoder", "decoder"):
        key = f"model.{side}.embed_positions.weight"
        if key in out and config.positions == "learned":
            out[key] = out[key][BART_POSITION_OFFSET:]
        elif key in out:
            del out[key]  # Marian's sinusoids: we compute the same table
    if "final_logits_bias" in out:
        out["lm_head.bias"] = out.pop("final_logits_bias").reshape(-1)
    if "model.shared.weight" not in out and "model.encoder.embed_tokens.weight" in out:
        out["model.shared.weight"] = out["model.encoder.embed_tokens.weight"]
    return out


def _to_bart(weights: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    out = dict(weights)
    for side in ("encoder", "decoder"):
        key = f"model.{side}.embed_positions.weight"
        if key in out:
            out[key] = torch.cat([out[key].new_zeros(BART_POSITION_OFFSET, config.d_model), out[key]])
    bias = out.pop("lm_head.bias", None)
    if bias is None:
        bias = out["lm_head.weight" if "lm_head.weight" in out else "model.shared.weight"].new_zeros(
            config.output_vocab_size)
    out["final_logits_bias"] = bias[None]  # (1, V): a buffer in Hugging Face
    return out


def _to_marian(weights: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    from ..nn.embedding import sinusoids

    out = _to_bart(weights, config)
    for side in ("encoder", "decoder"):
        out[f"model.{side}.embed_positions.weight"] = sinusoids(config.max_len, config.d_model)
    if not config.share_embeddings:
        out["model.encoder.embed_tokens.weight"] = out["model.shared.weight"]
    return out


def _from_bert(weights: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """BERT keeps its MLM output bias beside the decoder, as cls.predictions.bias."""
    return {("cls.predictions.decoder.bias" if k == "cls.predictions.bias" else k): v for k, v in weights.items()}


def _to_bert(weights: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    return {("cls.predictions.bias" if k == "cls.predictions.decoder.bias" else k): v for k, v in weights.items()}


FROM_HF: dict[str, Callable[[dict[str, Tensor], ModelConfig], dict[str, Tensor]]] = {
    "gpt2": _from_gpt2, "bert": _from_bert, "bart": _from_bart, "marian": _from_bart}
TO_HF: dict[str, Callable[[dict[str, Tensor], ModelConfig], dict[str, Tensor]]] = {
    "gpt2": _to_gpt2, "bert": _to_bert, "bart": _to_bart, "marian": _to_marian}


# ---------------------------------------------------------------------------------------------- folders


def read_hf_weights(folder: Path) -> dict[str, Tensor]:
    """model.safetensors (possibly sharded) or pytorch_model.bin."""
    from ..training.checkpoint import read_weights

    files = sorted(folder.glob("model*.safetensors"))
    if files:
        weights: dict[str, Tensor] = {}
        for file in files:
            weights.update(read_weights(file))
        return weights
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if bins:
        weights = {}
        for file in bins:
            try:
                weights.update(torch.load(file, map_location="cpu", weights_only=True))
            except Exception as error:  # truncated or foreign: pickle and zip raise many kinds
                raise CheckpointError(f"{file}: unreadable ({str(error)[:200]})") from None
        return weights
    raise CheckpointError(f"{folder}: no model.safetensors or pytorch_model.bin")


SPECIAL_TOKEN_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")


def _without_impossible_token_ids(hf: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Special-token ids outside the vocabulary (GPT2Config's default 50256 in a tiny test model) name no token:
    treat them as absent, as transformers does, and say so."""
    vocab = hf.get("vocab_size")
    out = dict(hf)
    for key in SPECIAL_TOKEN_KEYS:
        value = hf.get(key)
        if isinstance(vocab, int) and isinstance(value, int) and not 0 <= value < vocab:
            print(f"warning: {folder / 'config.json'}: {key} {value} is outside the vocabulary ({vocab}); "
                  "treated as absent", file=sys.stderr)
            out.pop(key)
    return out


def read_hf_config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{folder / 'config.json'}: {error}") from None


def load_hf(folder: Path) -> tuple[ModelConfig, dict[str, Tensor]]:
    """A Hugging Face model folder -> our config and our state dict (float tensors as stored)."""
    hf = _without_impossible_token_ids(read_hf_config(folder), folder)
    kind = hf.get("model_type")
    if kind not in SUPPORTED:
        raise CheckpointError(f"{folder}: model_type {kind!r} is not supported; transformerkit reads "
                              f"{', '.join(SUPPORTED)}")
    weights = normalize_hf_names(kind, read_hf_weights(folder))
    try:
        config = config_from_hf(hf, weights)
    except ConfigError as error:
        raise CheckpointError(f"{folder / 'config.json'}: {error}") from None
    return config, weights_from_hf(kind, weights, config)


def export_hf(model: nn.Module, folder: str | Path) -> str:
    """Write config.json, model.safetensors (and tokenizer.json) that `transformers` loads with equal logits;
    returns the model_type written."""
    from safetensors.torch import save_file

    folder = Path(folder)
    config = model.config
    kind = hf_architecture(config)
    weights = weights_to_hf(kind, _drop_tied(model.state_dict()), config)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config_to_hf(config), indent=2))
    save_file({k: v.detach().float().contiguous() for k, v in weights.items()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    tokenizer = getattr(model, "tokenizer", None) or getattr(model, "target_tokenizer", None)
    if tokenizer is not None:
        tokenizer.save(str(folder / "tokenizer.json"))
    return kind


def _drop_tied(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Keep the first name of each tensor that several names share (tied embeddings)."""
    seen: set[int] = set()
    out = {}
    for key, tensor in state_dict.items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        out[key] = tensor
    return out
