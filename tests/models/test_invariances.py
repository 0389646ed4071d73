"""The properties every correct Transformer has, checked on every family."""

import pytest
import torch

from transformerkit import build_model

from .conftest import DECODERS, FAMILIES

PAD = 0


def model_for(name):
    return build_model(FAMILIES[name]).eval()


def run(model, ids, mask=None, target=None, target_mask=None):
    """Outputs per position: decoder logits for decoders (target side for encoder-decoder), hidden states for BERT."""
    family = model.config.family
    if family == "encoder-decoder":
        return model(ids, target, mask, target_mask)
    if family == "encoder":
        return model.hidden_states(ids, mask)
    return model(ids, mask)


def tokens(*shape):
    return torch.randint(3, 50, shape)


@pytest.mark.parametrize("name", DECODERS)
def test_a_future_token_never_changes_an_earlier_output(name):
    model = model_for(name)
    ids, target = tokens(2, 8), tokens(2, 8)
    changed = target.clone() if model.config.family == "encoder-decoder" else ids.clone()
    changed[:, 5] = 7
    before = run(model, ids, target=target) if model.config.family == "encoder-decoder" else run(model, ids)
    after = run(model, ids, target=changed) if model.config.family == "encoder-decoder" else run(model, changed)
    torch.testing.assert_close(after[:, :5], before[:, :5])
    assert not torch.allclose(after[:, 5:], before[:, 5:])


def test_padding_never_changes_a_real_position(family):
    model = model_for(family)
    ids, target = tokens(1, 6), tokens(1, 5)
    padded = torch.cat([ids, torch.full((1, 3), PAD)], dim=1)
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 3)], dim=1).bool()
    if model.config.family == "encoder-decoder":
        padded_target = torch.cat([target, torch.full((1, 2), PAD)], dim=1)
        target_mask = torch.cat([torch.ones(1, 5), torch.zeros(1, 2)], dim=1).bool()
        alone = run(model, ids, target=target)
        torch.testing.assert_close(run(model, padded, mask, padded_target, target_mask)[:, :5], alone,
                                   atol=1e-5, rtol=1e-5)
    else:
        torch.testing.assert_close(run(model, padded, mask)[:, :6], run(model, ids), atol=1e-5, rtol=1e-5)


def test_a_batch_equals_its_rows_alone(family):
    model = model_for(family)
    lengths = [7, 4, 2]
    rows = [tokens(1, n) for n in lengths]
    batch = torch.full((3, 7), PAD)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    for i, row in enumerate(rows):
        batch[i, : row.shape[1]], mask[i, : row.shape[1]] = row[0], True
    target = tokens(3, 4)
    out = run(model, batch, mask, target=target)
    for i, row in enumerate(rows):
        alone = run(model, row, target=target[i:i + 1])
        n = alone.shape[1]
        torch.testing.assert_close(out[i:i + 1, :n], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", DECODERS)
def test_kv_cache_decoding_equals_a_full_forward_pass(name):
    model = model_for(name)
    source, ids = tokens(2, 9), tokens(2, 7)
    if model.config.family == "encoder-decoder":
        source_mask = torch.ones(2, 9, dtype=torch.bool)
        source_mask[1, 6:] = False
        full = model(source, ids, source_mask)
        state = model.start(2, 10, source, source_mask)
    else:
        full = model(ids)
        state = model.start(2, max_len=10)
    prefill = model.step(ids[:, :3], state)  # a chunk of three (its last position's logits), then one at a time
    steps = [model.step(ids[:, t:t + 1], state) for t in range(3, 7)]
    torch.testing.assert_close(torch.stack([prefill, *steps], dim=1), full[:, 2:], atol=1e-5, rtol=1e-5)
    assert state.length == 7


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_left_padded_prompts_decode_as_if_alone(name):
    model = model_for(name)
    short, long = tokens(1, 3), tokens(1, 6)
    batch = torch.cat([torch.cat([torch.full((1, 3), PAD), short], dim=1), long])
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, :3] = False
    state = model.start(2, max_len=8)
    first = model.step(batch, state, mask)
    nxt = tokens(2, 1)
    second = model.step(nxt, state)
    for row, prompt in enumerate((short, long)):
        alone_state = model.start(1, max_len=8)
        alone_first = model.step(prompt, alone_state)
        alone_second = model.step(nxt[row:row + 1], alone_state)
        torch.testing.assert_close(first[row], alone_first[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(second[row], alone_second[0], atol=1e-5, rtol=1e-5)


def test_gradients_reach_every_parameter(family):
    model = build_model(FAMILIES[family]).train()
    ids, target = tokens(2, 6), tokens(2, 5)
    loss = run(model, ids, target=target).float().pow(2).mean()
    if model.config.family == "encoder":
        loss = loss + model(ids).mean() + model.classify(ids).mean()
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reaches {missing}"


def test_reorder_keeps_the_chosen_rows():
    model = model_for("transformer-2017")
    source = tokens(3, 5)
    target = tokens(3, 4)
    state = model.start(3, 6, source)
    model.step(target[:, :3], state)
    state.reorder(torch.tensor([2, 0]))
    reordered = model.step(target[[2, 0], 3:], state)
    torch.testing.assert_close(reordered, model(source[[2, 0]], target[[2, 0]])[:, 3], atol=1e-5, rtol=1e-5)
