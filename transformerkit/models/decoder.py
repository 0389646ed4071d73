"""DecoderOnly: a causal language model. GPT-2 and LLaMA are two configs of this one class.

Data flow: token ids (B, T) -> embeddings (B, T, C) -> N causal blocks -> final norm -> output layer
-> logits (B, T, V): at every position, scores for the next token.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import ConfigError
from ..nn import DecodeState, TokenEmbedding, TransformerStack
from ..nn.init import init_weights
from ..nn.linear import Linear
from ..nn.masks import real_tokens


class DecoderOnly(nn.Module):
    """Each position attends to itself and earlier positions only, so one forward pass trains every next-token
    prediction in the sequence at once, and generation can cache the past (see `start`)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.family != "decoder":
            raise ConfigError(f"family: DecoderOnly needs 'decoder', got {config.family!r}")
        self.config = config
        tokens = TokenEmbedding(config.vocab_size, config.d_model, config.scale_embeddings)
        self.decoder = TransformerStack(config, config.n_layers, causal=True, cross_attention=False, tokens=tokens)
        self.lm_head = Linear(config.d_model, config.vocab_size, bias=config.output_bias)
        init_weights(self, config)
        self.tie_weights()
        self.tokenizer = None  # a `tokenizers.Tokenizer`, when the model came with one
        self.step_graphs = None  # compiled decoding steps (inference/step_graph.py), once asked for
        self.chat_template: str | None = None

    def tie_weights(self) -> None:
        """The output layer reuses the token embedding matrix, when the config says so."""
        if self.config.tie_embeddings:
            self.lm_head.weight = self.decoder.embed.tokens.weight

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """The last hidden states (B, T, C), before the output layer (training fuses the two, see losses.py)."""
        return self.decoder(input_ids, real_tokens(attention_mask))

    def output_layer(self) -> nn.Linear:
        """The layer that turns hidden states into logits over the vocabulary."""
        return self.lm_head

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """input_ids (B, T), attention_mask (B, T) true at real tokens -> logits (B, T, V)."""
        return self.lm_head(self.hidden_states(input_ids, attention_mask))

    # the decoding interface (models/interface.py)

    def start(self, batch_size: int, max_len: int, source: Tensor | None = None,
              source_mask: Tensor | None = None) -> DecodeState:
        """An empty KV cache for `batch_size` sequences of up to `max_len` tokens (a decoder reads no source)."""
        if source is not None:
            raise ConfigError("a decoder-only model reads no source: feed the prompt with step()")
        first = next(p for p in self.parameters() if p.is_floating_point())  # the model's dtype, quantized or not
        if self.step_graphs is not None:
            max_len = self.step_graphs.cache_length(max_len)
        return self.decoder.start(batch_size, max_len, first.dtype, first.device)

    def step(self, ids: Tensor, state: DecodeState, mask: Tensor | None = None) -> Tensor:
        """Feed the next tokens (B, T) -> logits (B, V) for the token after the last; the state advances by T."""
        if self.step_graphs is not None and self.step_graphs.serves(ids, state, mask):
            return self.step_graphs(ids, state)
        hidden = self.decoder(ids, real_tokens(mask), state=state)
        return self.lm_head(hidden[:, -1])
