"""EncoderOnly: a bidirectional encoder (BERT): it reads a whole sentence at once to understand it.

Data flow: token ids (B, T) (+ token types) -> embeddings -> N bidirectional blocks -> hidden states
(B, T, C) -> a head: masked-token logits (B, T, V), a sentence vector (B, C), or class logits (B, K).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..data.batching import pad
from ..data.tokenizers import clean_text
from ..errors import ConfigError
from ..nn import TokenEmbedding, TransformerStack
from ..nn.dropout import Dropout
from ..nn.feedforward import ACTIVATIONS
from ..nn.init import init_weights
from ..nn.linear import Linear
from ..nn.masks import real_tokens
from ..nn.norm import make_norm


class MLMHead(nn.Module):
    """BERT's masked-LM head: dense + activation + norm, then the output layer over the vocabulary."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = Linear(config.d_model, config.d_model)
        self.act = ACTIVATIONS[config.activation]
        self.norm = make_norm(config)
        self.output = Linear(config.d_model, config.vocab_size, bias=config.output_bias)

    def transform(self, hidden: Tensor) -> Tensor:
        """(..., C) -> (..., C): what the output layer reads."""
        return self.norm(self.act(self.dense(hidden)))

    def forward(self, hidden: Tensor) -> Tensor:
        return self.output(self.transform(hidden))  # (..., C) -> (..., V)


class EncoderOnly(nn.Module):
    """Every position attends to every other (padding aside): no causal mask, nothing is generated."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.family != "encoder":
            raise ConfigError(f"family: EncoderOnly needs 'encoder', got {config.family!r}")
        self.config = config
        tokens = TokenEmbedding(config.vocab_size, config.d_model, config.scale_embeddings)
        self.encoder = TransformerStack(config, config.n_layers, causal=False, cross_attention=False, tokens=tokens)
        self.pooler = Linear(config.d_model, config.d_model) if config.pooler else None
        self.mlm_head = MLMHead(config) if config.mlm_head else None
        self.classifier = Linear(config.d_model, config.n_classes) if config.n_classes else None
        self.dropout = Dropout(config.dropout)
        init_weights(self, config)
        self.tie_weights()
        self.tokenizer = None

    def tie_weights(self) -> None:
        """The MLM head's output layer reuses the token embedding matrix, when the config says so."""
        if self.mlm_head is not None and self.config.tie_embeddings:
            self.mlm_head.output.weight = self.encoder.embed.tokens.weight

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                      token_type_ids: Tensor | None = None) -> Tensor:
        """input_ids (B, T), attention_mask (B, T) true at real tokens -> hidden states (B, T, C)."""
        return self.encoder(input_ids, real_tokens(attention_mask), token_type_ids)

    def mlm_features(self, hidden: Tensor) -> Tensor:
        """Hidden states (..., C) -> what the MLM output layer reads (..., C): dense, activation, norm."""
        return self._mlm_head().transform(hidden)

    def mlm_logits(self, hidden: Tensor) -> Tensor:
        """Hidden states (..., C) -> masked-token logits (..., V); run it on the masked positions only."""
        return self._mlm_head()(hidden)

    def output_layer(self) -> nn.Linear:
        """The MLM head's output layer over the vocabulary (training fuses it with the loss)."""
        return self._mlm_head().output

    def _mlm_head(self) -> MLMHead:
        if self.mlm_head is None:
            raise ConfigError("mlm_head: this encoder has no MLM head (a sentence encoder or a classifier)")
        return self.mlm_head

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> Tensor:
        """Masked-token logits (B, T, V); a model without an MLM head (a sentence encoder) returns its hidden states.
        The methods above say which one they return; this is the Hugging Face-style entry point."""
        hidden = self.hidden_states(input_ids, attention_mask, token_type_ids)
        return self.mlm_head(hidden) if self.mlm_head is not None else hidden

    def pool(self, hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Hidden states (B, T, C) -> one vector per sequence (B, C): the mean over real tokens, or the first
        token's state, as config.pooling says (sentence-transformers' two common poolings)."""
        if self.config.pooling == "cls":
            return hidden[:, 0]
        if attention_mask is None:
            return hidden.mean(dim=1)
        weights = attention_mask.to(hidden.dtype)[..., None]  # (B, T, 1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)

    def sentence_vectors(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                         token_type_ids: Tensor | None = None) -> Tensor:
        """(B, T) -> pooled (B, C), L2-normalised when config.normalize_embeddings."""
        vectors = self.pool(self.hidden_states(input_ids, attention_mask, token_type_ids), attention_mask)
        return F.normalize(vectors, dim=-1) if self.config.normalize_embeddings else vectors

    @torch.inference_mode()
    def embed(self, sentences: list[str], batch_size: int = 64) -> Tensor:
        """Sentence vectors (N, d), float32, L2-normalised when the config says so, in input order.

        Sentences are tokenized with the model's tokenizer (truncated to its limit) and batched by length,
        so little time goes to padding."""
        if self.tokenizer is None:
            raise ConfigError("this model has no tokenizer: call sentence_vectors with token ids")
        device = next(self.parameters()).device
        rows = [e.ids for e in self.tokenizer.encode_batch([clean_text(s) for s in sentences])]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out = torch.empty(len(rows), self.config.d_model)
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            ids, mask = pad([rows[i] for i in chosen], self.config.pad_id)
            out[chosen] = self.sentence_vectors(ids.to(device), mask.to(device)).float().cpu()
        return out

    def classify(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                 token_type_ids: Tensor | None = None) -> Tensor:
        """(B, T) -> class logits (B, n_classes), from BERT's pooler (dense + tanh on the first token) when the
        model has one, else from the pooled vector."""
        if self.classifier is None:
            raise ConfigError("n_classes: this model has no classification head (n_classes is 0)")
        hidden = self.hidden_states(input_ids, attention_mask, token_type_ids)
        pooled = torch.tanh(self.pooler(hidden[:, 0])) if self.pooler is not None else self.pool(hidden, attention_mask)
        return self.classifier(self.dropout(pooled))
