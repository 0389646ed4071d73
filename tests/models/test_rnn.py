"""The recurrent baselines: they learn, they decode through the shared interface, attention behaves."""

import pytest
import torch

from transformerkit import ConfigError
from transformerkit.inference.translate import decode_sources
from transformerkit.models import RNNConfig, RNNSeq2Seq
from transformerkit.tasks.translation import TranslationLoss

VARIANTS = {"lstm": dict(cell="lstm"), "gru": dict(cell="gru"), "lstm_attention": dict(cell="lstm", attention=True),
            "gru_attention": dict(cell="gru", attention=True),
            "lstm_reversed": dict(cell="lstm", reverse_source=True),  # Sutskever et al.
            "gru_maxout": dict(cell="gru", maxout_size=8),  # Cho et al.
            "gru_attention_maxout": dict(cell="gru", attention=True, maxout_size=8)}  # Bahdanau et al.


def tiny(name, **changes):
    torch.manual_seed(0)
    return RNNSeq2Seq(RNNConfig(vocab_size=30, embedding_dim=16, hidden_size=32, n_layers=2, dropout=0.0,
                                **VARIANTS[name], **changes))


def pairs():
    """Four sentence pairs: the target is the source reversed, plus one."""
    sources = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16], [17, 18]]
    return sources, [[t + 1 for t in reversed(s)] for s in sources]


def greedy_search(model, source, mask, max_len):
    return decode_sources(model, source, mask, max_len, beam=1)


def beam_search(model, source, mask, beam, max_len):
    return decode_sources(model, source, mask, max_len, beam=beam)


def batch(model):
    from transformerkit.data.batching import seq2seq_batch

    sources, targets = pairs()
    return seq2seq_batch(sources, targets, list(range(4)), 0, 1, 2)


@pytest.mark.parametrize("name", VARIANTS)
def test_each_rnn_overfits_a_handful_of_pairs(name):
    model = tiny(name).train()
    b = batch(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = TranslationLoss(label_smoothing=0.0)
    for _ in range(250):  # at most; stops once memorised
        loss, n = loss_fn(model, b)
        if float(loss.detach() / n) < 0.05:
            break
        optimizer.zero_grad()
        (loss / n).backward()
        optimizer.step()
    assert float(loss.detach() / n) < 0.05
    model.eval()
    assert greedy_search(model, b.source, b.source_mask, max_len=8) == pairs()[1]


@pytest.mark.parametrize("name", VARIANTS)
def test_step_by_step_decoding_equals_teacher_forcing(name):
    model = tiny(name).eval()
    b = batch(model)
    full = model(b.source, b.target_in, b.source_mask)
    state = model.start(4, 8, b.source, b.source_mask)
    steps = [model.step(b.target_in[:, t:t + 1], state) for t in range(b.target_in.shape[1])]
    torch.testing.assert_close(torch.stack(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", VARIANTS)
def test_beam_of_one_is_greedy(name):
    model = tiny(name).eval()
    b = batch(model)
    assert beam_search(model, b.source, b.source_mask, 1, 8) == greedy_search(model, b.source, b.source_mask, 8)
    assert len(beam_search(model, b.source, b.source_mask, 4, 8)) == 4


@pytest.mark.parametrize("name", ["gru_attention", "lstm_attention"])
def test_attention_weights_sum_to_one_and_skip_padding(name):
    model = tiny(name).eval()
    b = batch(model)
    weights = model.attention_weights(b.source, b.target_in, b.source_mask)  # (B, T, S)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:2]))
    assert (weights[~b.source_mask[:, None, :].expand_as(weights)] == 0).all()


@pytest.mark.parametrize("name", VARIANTS)
def test_padding_does_not_change_a_sentence(name):
    model = tiny(name).eval()
    b = batch(model)
    alone = model(b.source[3:4, :3], b.target_in[3:4, :3], b.source_mask[3:4, :3])
    torch.testing.assert_close(model(b.source, b.target_in, b.source_mask)[3:4, :3], alone, atol=1e-5, rtol=1e-5)


def test_a_reversed_source_reads_each_sentence_backwards_and_leaves_its_padding():
    """reverse_source on a padded batch gives what the same model gives on the sentences reversed by hand."""
    model = tiny("lstm_reversed").eval()
    plain = tiny("lstm").eval()
    plain.load_state_dict(model.state_dict())
    b = batch(model)
    by_hand = b.source.clone()
    for row, n in enumerate(b.source_mask.sum(dim=1).tolist()):
        by_hand[row, :n] = b.source[row, :n].flip(0)
    torch.testing.assert_close(model(b.source, b.target_in, b.source_mask),
                               plain(by_hand, b.target_in, b.source_mask), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(model(b.source, b.target_in, b.source_mask),
                              plain(b.source, b.target_in, b.source_mask))


def test_maxout_keeps_the_larger_of_each_pair_and_narrows_the_output_layer():
    model = tiny("gru_maxout").eval()
    assert model.output_layer().in_features == 8
    features = torch.randn(2, 3, model.maxout.in_features)
    pairs_ = model.maxout(features).reshape(2, 3, 8, 2)
    expected = torch.maximum(pairs_[..., 0], pairs_[..., 1])
    outputs, context, embedded = features.split([32, 32, 16], dim=-1)
    torch.testing.assert_close(model._features(outputs, context, embedded), expected)


def test_teacher_forcing_ratio_feeds_predictions_in_training():
    model = tiny("lstm", teacher_forcing=0.0).train()
    b = batch(model)
    forced = tiny("lstm", teacher_forcing=1.0).train()
    forced.load_state_dict(model.state_dict())
    assert not torch.allclose(model(b.source, b.target_in, b.source_mask),
                              forced(b.source, b.target_in, b.source_mask))


def test_config_validation():
    with pytest.raises(ConfigError, match="cell: 'rnn' is not allowed"):
        RNNConfig(cell="rnn")
    with pytest.raises(ConfigError, match="teacher_forcing"):
        RNNConfig(teacher_forcing=1.5)
    with pytest.raises(ConfigError, match="unknown RNN field 'hidden'"):
        RNNConfig.from_dict({"hidden": 3})
    with pytest.raises(ConfigError, match="reverse_source: True is not allowed"):
        RNNConfig(attention=True, reverse_source=True)
    with pytest.raises(ConfigError, match="maxout_size: 0 is not allowed"):
        RNNConfig(maxout_size=0)


@pytest.mark.parametrize("name", VARIANTS)
def test_the_written_out_cell_equals_torchs_recurrent_layer_step_by_step(name):
    """The decoder's per-step path (one matmul per layer, embeddings' share computed once) against nn.LSTM /
    nn.GRU themselves, fed one step at a time with the same weights: same features, teacher forcing on."""
    model = tiny(name).eval()
    b = batch(model)
    with torch.no_grad():
        fast_state = model.encode(b.source, b.source_mask)
        weights = model._layer_weights()
        x_gates = model.target_embed(b.target_in) @ weights[0].embed.t() + weights[0].bias
        reference_state = model.encode(b.source, b.source_mask)
        for t in range(b.target_in.shape[1]):
            context = model._context(fast_state)
            fast = model._cell_steps(x_gates[:, t], context, fast_state, weights)
            token = model.target_embed(b.target_in[:, t:t + 1])
            step_input = torch.cat([token, model._context(reference_state)[:, None]], dim=-1)
            reference, reference_state.hidden, reference_state.cell = model._rnn(step_input, reference_state)
            torch.testing.assert_close(fast, reference[:, 0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(fast_state.hidden, reference_state.hidden, atol=1e-5, rtol=1e-5)
