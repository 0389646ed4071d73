"""The configs of every model, on one validated base, and the named presets.

A LLaMA-style model is not a new class: it is a DecoderOnly with rmsnorm, pre-norm, swiglu, rope,
fewer key/value heads than query heads and no biases. Every family reads the fields it needs.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ConfigError

Family = Literal["encoder", "decoder", "encoder-decoder"]
Positions = Literal["sinusoidal", "learned", "rope", "none"]
Norm = Literal["layernorm", "rmsnorm", "none"]
NormPosition = Literal["post", "pre"]
Activation = Literal["relu", "gelu", "gelu_tanh", "swiglu"]
Init = Literal["xavier", "normal"]
Pooling = Literal["mean", "cls"]


def check_types(config: Any) -> None:
    """Every field of a dataclass has the type its annotation says, or a ConfigError names the field.

    Values come from TOML files, `--set` and JSON, so the checks are the ones those can get wrong: a string
    for a number, 1.5 for an integer, a word outside a Literal's choices. Integers are accepted for floats
    (and stored as floats); booleans are never numbers.
    """
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        ok, coerced, expected = _conforms(value, hints[f.name])
        if not ok:
            raise ConfigError(f"{f.name}: {value!r} is not allowed; it must be {expected}")
        if coerced is not value:
            object.__setattr__(config, f.name, coerced)


def _conforms(value: Any, hint: Any) -> tuple[bool, Any, str]:
    """(value fits hint, the value to store, what the hint allows in words)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return value in args, value, f"one of {', '.join(map(repr, args))}"
    if origin in (typing.Union, types.UnionType):
        words = []
        for option in args:
            if option is type(None):
                if value is None:
                    return True, value, ""
                words.append("none")
                continue
            ok, coerced, expected = _conforms(value, option)
            if ok:
                return True, coerced, ""
            words.append(expected)
        return False, value, " or ".join(words)
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)) or (origin is tuple and Ellipsis not in args
                                                     and len(value) != len(args)):
            return False, value, f"a list of {len(args)}" if origin is tuple else "a list"
        items = [_conforms(v, args[i] if origin is tuple and Ellipsis not in args else args[0])
                 for i, v in enumerate(value)] if args else [(True, v, "") for v in value]
        if not all(ok for ok, _, _ in items):
            return False, value, next(expected for ok, _, expected in items if not ok).join(("a list of ", ""))
        return True, origin(v for _, v, _ in items), ""
    if hint is bool:
        return isinstance(value, bool), value, "true or false"
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value, "an integer"
    if hint is float:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return number, float(value) if number else value, "a number"
    if hint is str:
        return isinstance(value, str), value, "a string"
    return True, value, ""  # anything else (dicts, objects) is the caller's to check


@dataclass(frozen=True)
class Config:
    """A frozen, validated config: the types are checked on construction, and dictionaries round-trip."""

    def __post_init__(self) -> None:
        check_types(self)
        self.validate()

    def validate(self) -> None:
        """Checks between fields; each subclass says what makes it coherent."""

    def replace(self, **changes: Any):
        return type(self).from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown and cls.KIND == "key":  # a recipe table
            raise ConfigError(f"{unknown[0]}: unknown key{closest(unknown[0], known)}; allowed: "
                              f"{', '.join(sorted(known))}")
        if unknown:
            raise ConfigError(f"unknown {cls.KIND} field {unknown[0]!r}{closest(unknown[0], known)}; "
                              f"known fields: {', '.join(sorted(known))}")
        return cls(**values)

    KIND: typing.ClassVar[str] = "config"  # "unknown model field ..."; "key" for a recipe table's config


def closest(name: str, known: set[str]) -> str:
    """' (did you mean 'x'?)' for the known name nearest a misspelt one, else ''."""
    import difflib

    match = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


@dataclass(frozen=True)
class ModelConfig(Config):
    """Hyper-parameters of a Transformer; validated on construction, so a built model is always coherent."""

    KIND: typing.ClassVar[str] = "model"

    # which masks and heads: a bidirectional encoder (BERT), a causal decoder (GPT, LLaMA), or both (2017, BART)
    family: Family = "encoder-decoder"
    # tokens the embedding knows (for encoder-decoder: the source side)
    vocab_size: int = 8000
    # encoder-decoder with a separate target vocabulary; None: the same vocabulary as the source
    target_vocab_size: int | None = None
    # width of the residual stream that every block reads and writes
    d_model: int = 256
    # number of blocks (for encoder-decoder: the encoder's)
    n_layers: int = 3
    # encoder-decoder: number of decoder blocks; None: as many as the encoder
    n_decoder_layers: int | None = None
    # attention heads: each attends in its own d_model / n_heads subspace
    n_heads: int = 4
    # key/value heads: n_heads is multi-head, 1 multi-query, between grouped-query (LLaMA 2): a smaller KV cache
    n_kv_heads: int | None = None
    # width of one head; None: d_model // n_heads
    head_dim: int | None = None
    # hidden width of the position-wise feed-forward network (4 * d_model in the 2017 paper)
    d_ff: int = 1024
    # longest sequence the model takes: the size of learned position tables
    max_len: int = 512
    # how order enters: sinusoidal (2017), learned (GPT-2, BERT, BART), rope (LLaMA) or none
    positions: Positions = "sinusoidal"
    # RoPE base: a larger theta stretches the longest wavelength, for longer contexts
    rope_theta: float = 10000.0
    # LayerNorm (2017, GPT-2, BERT) or RMSNorm (LLaMA: no mean subtraction, no bias); none only to see why (lab)
    norm: Norm = "layernorm"
    # added to the variance inside the square root, so a flat vector does not divide by zero
    norm_eps: float = 1e-5
    # post: norm(x + f(x)) as in 2017 and BERT; pre: x + f(norm(x)) as in GPT-2 and LLaMA, stabler when deep
    norm_position: NormPosition = "post"
    # feed-forward non-linearity: relu (2017), gelu (BERT, BART), gelu_tanh (GPT-2), swiglu (LLaMA)
    activation: Activation = "relu"
    # biases in the attention and feed-forward projections (LLaMA has none)
    bias: bool = True
    # dropout on the embeddings and on every sub-layer's output before the residual add (2017 paper)
    dropout: float = 0.1
    # dropout on the attention weights (BERT, GPT-2)
    attention_dropout: float = 0.0
    # multiply token embeddings by sqrt(d_model) (2017 paper), so positions do not drown them
    scale_embeddings: bool = False
    # a norm right after the embedding sum (BERT, BART)
    embedding_norm: bool = False
    # the output layer reuses the token embedding matrix (2017 paper, GPT-2): fewer parameters, better small models
    tie_embeddings: bool = True
    # encoder-decoder: source and target share one embedding table (one joint vocabulary, as in the 2017 paper)
    share_embeddings: bool = False
    # a bias on the output layer (BERT's MLM head, BART's final_logits_bias)
    output_bias: bool = False
    # encoder: token-type (segment) embeddings, 2 in BERT; 0 for none
    type_vocab_size: int = 0
    # encoder: dense + tanh on the first token (BERT's [CLS] pooler)
    pooler: bool = False
    # encoder: dense + activation + norm + output layer that predicts masked tokens (BERT pretraining)
    mlm_head: bool = False
    # encoder: a sequence-classification head on the pooled output with this many classes; 0 for none
    n_classes: int = 0
    # encoder: how a sentence vector is made: the mean of the token states, or the first token's state
    pooling: Pooling = "mean"
    # encoder: L2-normalise sentence vectors (cosine similarity becomes a dot product)
    normalize_embeddings: bool = False
    # The three switches below exist to take a part out and measure what it was for (`transformerkit lab`);
    # every real model keeps them on.
    # y = x + f(x) around every sub-layer; False: y = f(x), the skip path cut
    residual: bool = True
    # divide attention scores by sqrt(d_head); False: raw dot products, which saturate softmax as d_head grows
    scale_attention: bool = True
    # a decoder's self-attention sees only earlier positions; False: it sees the future it is asked to predict
    causal: bool = True
    # weight init: xavier uniform (2017 paper, fairseq) or normal(0, 0.02) with scaled residual projections (GPT-2)
    init: Init = "normal"
    # special token ids the models and decoders need: padding, start and end of sequence
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    # the decoder's first input; None: bos_id (Marian starts from pad, BART from eos)
    decoder_start_id: int | None = None

    def validate(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_len"):
            require(self, name, getattr(self, name) >= 1, "a positive integer")
        kv = self.n_kv_heads
        require(self, "n_kv_heads", kv is None or (kv >= 1 and self.n_heads % kv == 0),
                 f"a divisor of n_heads ({self.n_heads})")
        require(self, "n_heads", self.head_dim is not None or self.d_model % self.n_heads == 0,
                 f"a divisor of d_model ({self.d_model}), or set head_dim")
        require(self, "head_dim", self.positions != "rope" or self.d_head % 2 == 0, "even when positions='rope'")
        for name in ("target_vocab_size", "n_decoder_layers"):
            require(self, name, getattr(self, name) is None or getattr(self, name) >= 1, "a positive integer or None")
        for name in ("dropout", "attention_dropout"):
            require(self, name, 0.0 <= getattr(self, name) < 1.0, "in [0, 1)")
        require(self, "norm_eps", self.norm_eps > 0, "positive")
        require(self, "rope_theta", self.rope_theta > 0, "positive")
        require(self, "share_embeddings",
                 not self.share_embeddings or self.target_vocab_size in (None, self.vocab_size),
                 "False when the target vocabulary differs from the source vocabulary")
        if self.family != "encoder":
            for name in ("type_vocab_size", "n_classes"):
                require(self, name, getattr(self, name) == 0, "0 unless family='encoder'")
            for name in ("pooler", "mlm_head"):
                require(self, name, not getattr(self, name), "False unless family='encoder'")
        require(self, "activation", not (self.mlm_head and self.activation == "swiglu"),
                 "not 'swiglu' with an MLM head")
        require(self, "pooling", self.pooling != "cls" or self.family == "encoder", "'mean' unless family='encoder'")
        require(self, "causal", self.causal or self.family != "encoder", "True for an encoder (no mask to take out)")
        for name in ("pad_id", "bos_id", "eos_id", "decoder_start_id"):
            value = getattr(self, name)
            require(self, name, value is None or 0 <= value < max(self.vocab_size, self.target_vocab_size or 0),
                     f"a token id below the vocabulary size ({self.vocab_size})")

    @property
    def d_head(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def decoder_layers(self) -> int:
        return self.n_decoder_layers or self.n_layers

    @property
    def output_vocab_size(self) -> int:
        """Size of the softmax: the target vocabulary for encoder-decoder, else the vocabulary."""
        return self.target_vocab_size or self.vocab_size

    @property
    def start_id(self) -> int:
        return self.bos_id if self.decoder_start_id is None else self.decoder_start_id


def require(config: Config, name: str, ok: bool, allowed: str) -> None:
    """A check between or on fields: the message names the field, its value and what it must be."""
    if not ok:
        raise ConfigError(f"{name}: {getattr(config, name)!r} is not allowed; it must be {allowed}")


@dataclass(frozen=True)
class RNNConfig(Config):
    """Hyper-parameters of a recurrent encoder-decoder (models/rnn.py); validated on construction."""

    KIND: typing.ClassVar[str] = "RNN"

    # the recurrent unit: LSTM (hidden and cell state) or GRU (hidden state only, fewer gates)
    cell: Literal["lstm", "gru"] = "lstm"
    # additive attention over a bidirectional encoder (Bahdanau); without it, the final state is all there is
    attention: bool = False
    vocab_size: int = 8000
    # a separate target vocabulary; None: the same as the source
    target_vocab_size: int | None = None
    embedding_dim: int = 256
    hidden_size: int = 512
    n_layers: int = 2
    # dropout on embeddings, between layers and before the output layer
    dropout: float = 0.5
    # training: the chance of feeding the true previous token rather than the model's own prediction
    teacher_forcing: float = 1.0
    # feed the source backwards (Sutskever et al., 2014): its first words then end next to the first target
    # words, which a decoder without attention learns from much sooner
    reverse_source: bool = False
    # a deep output (Cho et al., 2014; Bahdanau et al., 2015): the decoder's features pass a maxout layer of
    # this width before the output layer, which is then this narrow, not the features' full width;
    # None: the features feed the output layer directly
    maxout_size: int | None = None
    # source and target share one embedding table (one joint vocabulary)
    share_embeddings: bool = False
    # longest output a decoder produces (decoding also stops at a * source length + b)
    max_len: int = 256
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def validate(self) -> None:
        for name in ("vocab_size", "embedding_dim", "hidden_size", "n_layers", "max_len"):
            require(self, name, getattr(self, name) >= 1, "a positive integer")
        for name in ("dropout", "teacher_forcing"):
            require(self, name, 0.0 <= getattr(self, name) <= 1.0, "in [0, 1]")
        require(self, "reverse_source", not (self.reverse_source and self.attention),
                "False with attention (a bidirectional encoder reads the source both ways already)")
        require(self, "maxout_size", self.maxout_size is None or self.maxout_size >= 1, "a positive integer or None")
        require(self, "share_embeddings",
                 not self.share_embeddings or self.target_vocab_size in (None, self.vocab_size),
                 "False when the target vocabulary differs")

    @property
    def output_vocab_size(self) -> int:
        return self.target_vocab_size or self.vocab_size

    @property
    def start_id(self) -> int:
        return self.bos_id


def _paper(**changes: Any) -> ModelConfig:
    """The 2017 translation Transformer: post-norm, ReLU, sinusoidal positions, one shared vocabulary."""
    base = dict(family="encoder-decoder", positions="sinusoidal", norm="layernorm", norm_position="post",
                activation="relu", scale_embeddings=True, share_embeddings=True, tie_embeddings=True,
                init="xavier", max_len=1024)
    return ModelConfig(**{**base, **changes})


def _gpt2(**changes: Any) -> ModelConfig:
    base = dict(family="decoder", positions="learned", norm="layernorm", norm_position="pre", activation="gelu_tanh",
                tie_embeddings=True, bias=True, dropout=0.1, attention_dropout=0.1, pad_id=0, bos_id=0, eos_id=0)
    return ModelConfig(**{**base, **changes})


def _llama(**changes: Any) -> ModelConfig:
    base = dict(family="decoder", positions="rope", norm="rmsnorm", norm_position="pre", activation="swiglu",
                bias=False, dropout=0.0, tie_embeddings=False)
    return ModelConfig(**{**base, **changes})


def _bert(**changes: Any) -> ModelConfig:
    base = dict(family="encoder", positions="learned", norm="layernorm", norm_eps=1e-12, norm_position="post",
                activation="gelu", embedding_norm=True, type_vocab_size=2, pooler=True, pooling="cls", mlm_head=True,
                output_bias=True, attention_dropout=0.1, max_len=512, vocab_size=30522, pad_id=0, bos_id=101,
                eos_id=102)
    return ModelConfig(**{**base, **changes})


@dataclass(frozen=True)
class Preset:
    config: ModelConfig
    about: str = field(default="")


PRESETS: dict[str, Preset] = {
    # the paper's Table 3 (Vaswani et al., 2017); 37,000 shared BPE tokens as for WMT en-de
    "transformer-base": Preset(_paper(vocab_size=37000, d_model=512, n_layers=6, n_heads=8, d_ff=2048, dropout=0.1),
                               "2017 paper, base (Table 3)"),
    "transformer-big": Preset(_paper(vocab_size=37000, d_model=1024, n_layers=6, n_heads=16, d_ff=4096, dropout=0.3),
                              "2017 paper, big (Table 3)"),
    "transformer-small": Preset(_paper(vocab_size=8000, d_model=256, n_layers=3, n_heads=4, d_ff=1024, dropout=0.1),
                                "2017 model sized for a CPU (Multi30k)"),
    "transformer-tiny": Preset(_paper(vocab_size=1000, d_model=64, n_layers=2, n_heads=4, d_ff=128, dropout=0.1),
                               "for tests and quick experiments"),
    "bart-base": Preset(ModelConfig(family="encoder-decoder", vocab_size=50265, d_model=768, n_layers=6, n_heads=12,
                                    d_ff=3072, max_len=1024, positions="learned", norm_position="post",
                                    activation="gelu", embedding_norm=True, share_embeddings=True, output_bias=True,
                                    pad_id=1, bos_id=0, eos_id=2, decoder_start_id=2, dropout=0.1),
                        "BART base (Lewis et al., 2019)"),
    "gpt2-small": Preset(_gpt2(vocab_size=50257, d_model=768, n_layers=12, n_heads=12, d_ff=3072, max_len=1024,
                               pad_id=50256, bos_id=50256, eos_id=50256),
                         "GPT-2 124M (Radford et al., 2019)"),
    "gpt-tiny": Preset(_gpt2(vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=256, max_len=256),
                       "GPT-2 style, for tests"),
    "llama-tiny": Preset(_llama(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=172,
                                max_len=256), "LLaMA style with grouped-query attention, for tests"),
    "smollm2-135m": Preset(_llama(vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, d_ff=1536,
                                  max_len=8192, rope_theta=100000.0, tie_embeddings=True, pad_id=2, bos_id=1,
                                  eos_id=2), "SmolLM2-135M (LLaMA architecture)"),
    "bert-base": Preset(_bert(d_model=768, n_layers=12, n_heads=12, d_ff=3072), "BERT base (Devlin et al., 2018)"),
    "bert-tiny": Preset(_bert(vocab_size=1000, bos_id=2, eos_id=3, d_model=64, n_layers=2, n_heads=4, d_ff=128,
                              max_len=128),
                        "BERT style, for tests"),
}


def preset(name: str, **changes: Any) -> ModelConfig:
    """The named preset's config, with any fields changed."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    config = PRESETS[name].config
    return config.replace(**changes) if changes else config
