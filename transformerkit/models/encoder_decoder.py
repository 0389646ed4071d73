"""EncoderDecoder: the 2017 translation Transformer, and BART.

Data flow: source ids (B, S) -> embeddings -> N bidirectional blocks -> memory (B, S, C).
Target ids (B, T) -> embeddings -> N blocks, each with causal self-attention and cross-attention to the
memory -> output layer -> logits (B, T, V) over the target vocabulary (softmax gives probabilities).
"""

from __future__ import annotations

from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import ConfigError
from ..nn import DecodeState, TokenEmbedding, TransformerStack
from ..nn.init import init_weights
from ..nn.linear import Linear
from ..nn.masks import real_tokens


class EncoderDecoder(nn.Module):
    """Encode the source once; decode the target with queries from the decoder and keys and values from the
    encoder's output (cross-attention)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.family != "encoder-decoder":
            raise ConfigError(f"family: EncoderDecoder needs 'encoder-decoder', got {config.family!r}")
        self.config = config
        source = TokenEmbedding(config.vocab_size, config.d_model, config.scale_embeddings)
        target = source if config.share_embeddings else TokenEmbedding(
            config.output_vocab_size, config.d_model, config.scale_embeddings)
        self.encoder = TransformerStack(config, config.n_layers, causal=False, cross_attention=False, tokens=source)
        self.decoder = TransformerStack(config, config.decoder_layers, causal=True, cross_attention=True, tokens=target)
        self.lm_head = Linear(config.d_model, config.output_vocab_size, bias=config.output_bias)
        init_weights(self, config)
        self.tie_weights()
        self.source_tokenizer = None  # `tokenizers.Tokenizer`s, when the model came with them (may be one object)
        self.target_tokenizer = None
        self.step_graphs = None  # compiled decoding steps (inference/step_graph.py), once asked for

    def tie_weights(self) -> None:
        """The output layer reuses the target embedding matrix, when the config says so."""
        if self.config.tie_embeddings:
            self.lm_head.weight = self.decoder.embed.tokens.weight

    def encode(self, source_ids: Tensor, source_mask: Tensor | None = None) -> Tensor:
        """source_ids (B, S), source_mask (B, S) true at real tokens -> memory (B, S, C)."""
        return self.encoder(source_ids, real_tokens(source_mask))

    def hidden_states(self, source_ids: Tensor, target_ids: Tensor, source_mask: Tensor | None = None,
                      target_mask: Tensor | None = None) -> Tensor:
        """The decoder's last hidden states (B, T, C), before the output layer (training fuses the two)."""
        source_mask = real_tokens(source_mask)
        memory = self.encoder(source_ids, source_mask)
        return self.decoder(target_ids, real_tokens(target_mask), memory=memory, memory_mask=source_mask)

    def output_layer(self) -> nn.Linear:
        """The layer that turns hidden states into logits over the target vocabulary."""
        return self.lm_head

    def forward(self, source_ids: Tensor, target_ids: Tensor, source_mask: Tensor | None = None,
                target_mask: Tensor | None = None) -> Tensor:
        """Teacher forcing: target_ids (B, T) start with the start token -> logits (B, T, V) for the next tokens."""
        return self.lm_head(self.hidden_states(source_ids, target_ids, source_mask, target_mask))

    # the decoding interface (models/interface.py)

    def start(self, batch_size: int, max_len: int, source: Tensor | None = None,
              source_mask: Tensor | None = None) -> DecodeState:
        """Encode the source (B, S) once and prepare to decode up to `max_len` target tokens."""
        if source is None or source.shape[0] != batch_size:
            raise ConfigError(f"an encoder-decoder needs a source of {batch_size} rows to start decoding")
        source_mask = real_tokens(source_mask)
        memory = self.encoder(source, source_mask)
        if self.step_graphs is not None:
            max_len = self.step_graphs.cache_length(max_len)
            memory, source_mask = self.step_graphs.pad_source(memory, source_mask)
        return self.decoder.start(batch_size, max_len, memory.dtype, memory.device, memory, source_mask)

    def step(self, ids: Tensor, state: DecodeState, mask: Tensor | None = None) -> Tensor:
        """Feed the next target tokens (B, T) -> logits (B, V) for the token after the last; the state advances."""
        if self.step_graphs is not None and self.step_graphs.serves(ids, state, mask):
            return self.step_graphs(ids, state)
        return self.lm_head(self.decoder(ids, real_tokens(mask), state=state)[:, -1])
