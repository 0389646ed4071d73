"""The recurrent sequence-to-sequence models the Transformer replaced.

- LSTM encoder-decoder (Sutskever et al., 2014): the encoder's final hidden and cell states are the
  decoder's initial states; the whole source must squeeze through them. Fed backwards (`reverse_source`), as
  the paper does, the source's first words sit next to the target's first, a short path to learn first.
- GRU encoder-decoder (Cho et al., 2014): the encoder's final state is a context vector fed to every
  decoder step and to the output layer, so the decoder need not carry it alone.
- With attention (Bahdanau et al., 2015): a bidirectional encoder keeps one state per source token, and at
  every step the decoder scores them all (additive attention), reading their weighted sum.
- Cho et al. and Bahdanau et al. read the output through a maxout layer (`maxout_size`), which also makes the
  output layer, the largest matmul of each step, several times narrower.

They speak the Transformer's decoding interface (models/interface.py) and its training contract
(`hidden_states` + `output_layer`), so the same trainer, greedy and beam search, and evaluation serve both.
Notation: B batch, S source length, T target length, E embedding, H hidden, L layers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..config import RNNConfig
from ..errors import ConfigError
from ..nn.dropout import Dropout
from ..nn.linear import Linear


class AdditiveAttention(nn.Module):
    """score(s, h_j) = v^T tanh(W s + U h_j) (Bahdanau et al., 2015): a small network, not a dot product."""

    def __init__(self, decoder_size: int, encoder_size: int, size: int):
        super().__init__()
        self.query = Linear(decoder_size, size, bias=False)
        self.key = Linear(encoder_size, size)
        self.v = Linear(size, 1, bias=False)

    def forward(self, query: Tensor, keys: Tensor, projected_keys: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """query (B, Hd), keys (B, S, He), projected_keys = key(keys), mask (B, S)
        -> context (B, He), weights (B, S)."""
        scores = self.v(torch.tanh(self.query(query)[:, None] + projected_keys)).squeeze(-1)  # (B, S)
        weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)  # padding gets exactly zero
        return (weights[:, :, None] * keys).sum(dim=1), weights


class StepWeights(NamedTuple):
    """One decoder layer's weights as a written-out step uses them (G gates: 4H for the LSTM, 3H for the GRU)."""

    embed: Tensor | None  # layer 0: the token embeddings' share of the input weights (G, E)
    step: Tensor  # what multiplies a step's input: (context or layer below, G); the LSTM's state rows joined below
    state: Tensor | None  # GRU: the state's weights (H, G), kept apart (see _cell_steps)
    bias: Tensor  # what a step's gates start from (G,): both biases for the LSTM, the input's for the GRU
    bias_hh: Tensor | None  # GRU: the state's bias, which the reset gate scales with the state's share


@dataclass
class RNNState:
    """What the decoder carries between steps; the same `reorder` contract as the Transformer's DecodeState."""

    hidden: Tensor  # (L, B, H)
    cell: Tensor | None  # (L, B, H) for LSTM
    memory: Tensor  # encoder states (B, S, He), or the context vector (B, 1, He) without attention
    projected: Tensor | None  # attention: memory through the attention's key projection
    mask: Tensor  # (B, S)
    length: int = 0
    attention_weights: list[Tensor] = dataclasses.field(default_factory=list)  # (B, S) per step, when recorded
    record: bool = False

    def reorder(self, index: Tensor, memory: bool = True) -> None:
        self.hidden = self.hidden.index_select(1, index)
        self.cell = self.cell.index_select(1, index) if self.cell is not None else None
        self.memory, self.mask = self.memory.index_select(0, index), self.mask.index_select(0, index)
        self.projected = self.projected.index_select(0, index) if self.projected is not None else None


class RNNSeq2Seq(nn.Module):
    """An LSTM or GRU encoder-decoder, with or without attention; see the module docstring."""

    architecture = "rnn"

    def __init__(self, config: RNNConfig):
        super().__init__()
        self.config = c = config
        rnn = nn.LSTM if c.cell == "lstm" else nn.GRU
        E, H, L = c.embedding_dim, c.hidden_size, c.n_layers
        between = c.dropout if L > 1 else 0.0
        self.source_embed = nn.Embedding(c.vocab_size, E, padding_idx=c.pad_id)
        self.target_embed = self.source_embed if c.share_embeddings else nn.Embedding(
            c.output_vocab_size, E, padding_idx=c.pad_id)
        self.encoder = rnn(E, H, L, batch_first=True, dropout=between, bidirectional=c.attention)
        encoded = 2 * H if c.attention else H  # width of one source state (memory)
        context = encoded if c.attention or c.cell == "gru" else 0  # what every decoder step also reads
        self.bridge = Linear(encoded, H) if c.attention else None  # bidirectional final states -> decoder start
        self.attention = AdditiveAttention(H, encoded, H) if c.attention else None
        self.decoder = rnn(E + context, H, L, batch_first=True, dropout=between)
        self.dropout = Dropout(c.dropout)
        self.between = Dropout(between)  # between stacked decoder layers, where nn.LSTM's own dropout would be
        features = H + context + (E if context else 0)  # the decoder state, and the context and input token
        # Bahdanau et al.'s deep output: pairs of units, the larger of each kept, so the output layer (the
        # costliest matmul of a step) reads maxout_size values, not all the features
        self.maxout = Linear(features, 2 * c.maxout_size) if c.maxout_size else None
        self.lm_head = Linear(c.maxout_size or features, c.output_vocab_size)
        self.source_tokenizer = self.target_tokenizer = None

    # ------------------------------------------------------------------------------------------ encoding

    def encode(self, source_ids: Tensor, source_mask: Tensor | None) -> RNNState:
        """Encode once: the decoder's initial state, and what it will read at every step."""
        c = self.config
        mask = source_mask if source_mask is not None else torch.ones_like(source_ids, dtype=torch.bool)
        counts = mask.sum(dim=1)  # (B,) real tokens per row
        if c.reverse_source:  # each row's real tokens backwards; its padding stays at the end
            positions, ends = torch.arange(source_ids.shape[1], device=source_ids.device), counts[:, None]
            source_ids = source_ids.gather(1, torch.where(positions < ends, ends - 1 - positions, positions))
        lengths = counts.cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.dropout(self.source_embed(source_ids)), lengths,
                                                   batch_first=True, enforce_sorted=False)
        outputs, final = self.encoder(packed)
        hidden, cell = final if c.cell == "lstm" else (final, None)  # (L * directions, B, H)
        if c.attention:
            memory, _ = nn.utils.rnn.pad_packed_sequence(outputs, batch_first=True, total_length=source_ids.shape[1])
            last = torch.cat([hidden[-2], hidden[-1]], dim=-1)  # forward's last and backward's first state
            hidden = torch.tanh(self.bridge(last))[None].repeat(c.n_layers, 1, 1)  # (L, B, H)
            cell = torch.zeros_like(hidden) if cell is not None else None
            return RNNState(hidden, cell, memory, self.attention.key(memory), mask)
        if c.cell == "gru":  # Cho et al.: the final state is the context every step reads
            return RNNState(hidden, None, hidden[-1][:, None], None, mask)
        return RNNState(hidden, cell, hidden.new_zeros(hidden.shape[1], 1, 0), None, mask)

    # ------------------------------------------------------------------------------------------ decoding

    def _decode(self, target_ids: Tensor, state: RNNState, teacher: Tensor | None = None) -> Tensor:
        """Run the decoder over target_ids (B, T) from `state` -> output-layer features (B, T, F).

        Without attention and with every true token fed, nothing changes from step to step but the recurrence
        itself: nn.LSTM / nn.GRU run the whole sequence. Otherwise each step reads a context that depends on
        the state (attention), or the model's own last guess (scheduled sampling), and the cell is written
        out (see _cell_steps) so that a step costs one matmul per layer: the embeddings' share of layer 0's gates
        is computed for all steps at once, and the context and the previous state share one matmul.
        """
        embedded = self.dropout(self.target_embed(target_ids))  # (B, T, E)
        B, T, E = embedded.shape
        if self.attention is None and teacher is None:
            context = state.memory.expand(-1, T, -1)  # (B, T, C)
            outputs, state.hidden, state.cell = self._rnn(torch.cat([embedded, context], dim=-1), state)
            state.length += T
            return self._features(outputs, context, embedded)
        weights = self._layer_weights()
        embed_share = weights[0].embed.t()  # (E, G)
        x_gates = torch.addmm(weights[0].bias, embedded.reshape(B * T, E), embed_share).view(B, T, -1)  # once
        inputs, contexts, outputs = list(embedded.unbind(1)), [], []  # per step: (B, E), (B, C), (B, H)
        for t in range(T):
            if teacher is not None and t > 0 and not teacher[t]:  # scheduled sampling: the model's own guess
                guess = self.lm_head(self._features(outputs[-1], contexts[-1], inputs[t - 1])).argmax(dim=-1)
                inputs[t] = self.dropout(self.target_embed(guess))  # (B, E)
                x_t = torch.addmm(weights[0].bias, inputs[t], embed_share)
            else:
                x_t = x_gates[:, t]
            contexts.append(self._context(state))
            outputs.append(self._cell_steps(x_t, contexts[-1], state, weights))
        state.length += T
        return self._features(torch.stack(outputs, 1), torch.stack(contexts, 1), torch.stack(inputs, 1))

    def _context(self, state: RNNState) -> Tensor:
        """What a step reads besides its token: attention over the memory, or the fixed context vector."""
        if self.attention is None:
            return state.memory[:, 0]
        context, weights = self.attention(state.hidden[-1], state.memory, state.projected, state.mask)
        if state.record:
            state.attention_weights.append(weights.detach())
        return context

    def _layer_weights(self) -> list[StepWeights]:
        """Per decoder layer, nn.LSTM / nn.GRU's own parameters (gates in their order: i f g o, or r z n) cut and
        joined once per forward pass. Cut or joined inside the step loop, a weight is copied at every step, and
        in backward its gradient zero-filled and copied back at every step too: the profiler put fill_ and
        copy_ at 12% of a GRU+attention training step that way, 6% this way."""
        d, E, lstm = self.decoder, self.config.embedding_dim, self.config.cell == "lstm"
        layers = []
        for k in range(self.config.n_layers):
            w_ih, w_hh = getattr(d, f"weight_ih_l{k}"), getattr(d, f"weight_hh_l{k}")  # (G, in), (G, H)
            b_ih, b_hh = getattr(d, f"bias_ih_l{k}"), getattr(d, f"bias_hh_l{k}")  # (G,)
            embed, w_x = (w_ih[:, :E], w_ih[:, E:]) if k == 0 else (None, w_ih)  # layer 0: token | context
            if lstm:
                layers.append(StepWeights(embed, torch.cat([w_x, w_hh], dim=1).t(), None, b_ih + b_hh, None))
            else:
                layers.append(StepWeights(embed, w_x.t(), w_hh.t(), b_ih, b_hh))
        return layers

    def _cell_steps(self, x_gates: Tensor, context: Tensor, state: RNNState, weights: list[StepWeights]) -> Tensor:
        """One step through every layer: layer 0 reads its token's gates (x_gates, biased) and the context, the
        others the layer below (with dropout between layers, as nn.LSTM has); returns the top layer's output
        (B, H) and updates the state."""
        H = self.config.hidden_size
        hidden, cell = list(state.hidden.unbind(0)), list(state.cell.unbind(0)) if state.cell is not None else None
        below = context
        for k, w in enumerate(weights):
            start = x_gates if k == 0 else w.bias
            if k > 0:
                below = self.between(below)
            if cell is not None:  # LSTM: the input's and the state's shares in one matmul
                gates = torch.addmm(start, torch.cat([below, hidden[k]], dim=-1), w.step)
                i, f, g, o = gates.chunk(4, dim=-1)
                cell[k] = torch.sigmoid(f) * cell[k] + torch.sigmoid(i) * torch.tanh(g)
                hidden[k] = torch.sigmoid(o) * torch.tanh(cell[k])
            else:  # GRU: the state's share of the new-gate is reset by r, so it stays apart
                gi = torch.addmm(start, below, w.step) if below.shape[-1] else start.expand(-1, 3 * H)
                gh = torch.addmm(w.bias_hh, hidden[k], w.state)
                r, z = torch.sigmoid(gi[:, :2 * H] + gh[:, :2 * H]).chunk(2, dim=-1)
                n = torch.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
                hidden[k] = (1 - z) * n + z * hidden[k]
            below = hidden[k]
        state.hidden = torch.stack(hidden)
        state.cell = torch.stack(cell) if cell is not None else None
        return below

    def _rnn(self, inputs: Tensor, state: RNNState):
        if self.config.cell == "lstm":
            outputs, (hidden, cell) = self.decoder(inputs, (state.hidden, state.cell))
            return outputs, hidden, cell
        outputs, hidden = self.decoder(inputs, state.hidden)
        return outputs, hidden, None

    def _features(self, outputs: Tensor, context: Tensor, embedded: Tensor) -> Tensor:
        """What the output layer reads: the decoder state, and (with a context) the context and the input token,
        through the maxout layer when there is one."""
        features = outputs if context.shape[-1] == 0 else torch.cat([outputs, context, embedded], dim=-1)
        features = self.dropout(features)  # (B, T, F)
        if self.maxout is None:
            return features
        return self.maxout(features).unflatten(-1, (-1, 2)).amax(dim=-1)  # (B, T, maxout_size)

    # ------------------------------------------------------------------------------------------ interfaces

    def hidden_states(self, source_ids: Tensor, target_ids: Tensor, source_mask: Tensor | None = None,
                      target_mask: Tensor | None = None) -> Tensor:
        """Training: features (B, T, F) for the output layer. With teacher_forcing < 1, some steps read the
        model's own previous prediction instead of the true token (one draw per step for the whole batch)."""
        state = self.encode(source_ids, source_mask)
        teacher = None
        if self.training and self.config.teacher_forcing < 1.0:
            teacher = torch.rand(target_ids.shape[1]) < self.config.teacher_forcing
        return self._decode(target_ids, state, teacher)

    def output_layer(self) -> nn.Linear:
        return self.lm_head

    def forward(self, source_ids: Tensor, target_ids: Tensor, source_mask: Tensor | None = None,
                target_mask: Tensor | None = None) -> Tensor:
        """Teacher-forced logits (B, T, V)."""
        return self.lm_head(self.hidden_states(source_ids, target_ids, source_mask, target_mask))

    @torch.no_grad()
    def attention_weights(self, source_ids: Tensor, target_ids: Tensor, source_mask: Tensor | None = None) -> Tensor:
        """Where each target step looks in the source: the additive attention's weights (B, T, S), teacher forced."""
        if self.attention is None:
            raise ConfigError("attention: this recurrent model has no attention to show")
        state = self.encode(source_ids, source_mask)
        state.record = True
        self._decode(target_ids, state)
        return torch.stack(state.attention_weights, dim=1)

    def start(self, batch_size: int, max_len: int, source: Tensor | None = None,
              source_mask: Tensor | None = None) -> RNNState:
        """The decoding interface (models/interface.py): encode the source (B, S) once."""
        if source is None or source.shape[0] != batch_size:
            raise ConfigError(f"a recurrent encoder-decoder needs a source of {batch_size} rows to start decoding")
        return self.encode(source, source_mask)

    def step(self, ids: Tensor, state: RNNState, mask: Tensor | None = None) -> Tensor:
        """Feed the next target tokens (B, T) -> logits (B, V) for the token after the last; the state advances."""
        return self.lm_head(self._decode(ids, state)[:, -1])
