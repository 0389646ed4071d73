"""DecodeState.join: a request prefilled alone joins a batch that is already decoding, and every row still decodes
exactly as it would alone (greedy, exact tokens). KVCache.reorder: what beam search's reorders move."""

import pytest
import torch

import transformerkit as tk
from transformerkit.errors import ConfigError
from transformerkit.nn.kv_cache import KVCache

PROMPTS = {"a": [5, 9, 14, 3, 7, 22, 8], "b": [11, 4], "c": [30, 2, 19, 6, 6, 12, 40, 41, 9, 17, 13]}


@pytest.fixture(params=["gpt-tiny", "llama-tiny"])
def model(request):
    torch.manual_seed(0)
    model = tk.build_model(tk.preset(request.param, vocab_size=64, dropout=0.0, attention_dropout=0.0)).eval()
    with torch.no_grad():
        model.output_layer().weight.mul_(3)  # a sharper distribution: fewer near-ties between tokens
    return model


@torch.no_grad()
def prefill(model, prompts: list[list[int]], room: int):
    """Left-padded prompts in one step, as generate does -> (state, logits (B, V))."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), True
    state = model.start(len(prompts), width + room)
    return state, model.step(ids, state, None if bool(mask.all()) else mask)


@torch.no_grad()
def greedy(model, state, logits, steps: int) -> tuple[list[list[int]], torch.Tensor]:
    """`steps` greedy tokens for every row (no stopping) -> (tokens per row, the logits after the last one)."""
    out = [[] for _ in range(logits.shape[0])]
    for _ in range(steps):
        tokens = logits.argmax(dim=-1)  # (B,)
        for row, token in enumerate(tokens.tolist()):
            out[row].append(token)
        logits = model.step(tokens[:, None], state)
    return out, logits


def alone(model, name: str, steps: int, with_logits: bool = False):
    """The tokens a prompt decodes to by itself (and the logits after the last of them)."""
    state, logits = prefill(model, [PROMPTS[name]], steps)
    out, logits = greedy(model, state, logits, steps)
    return (out[0], logits[0]) if with_logits else out[0]


def test_a_request_that_joins_a_running_batch_decodes_as_it_would_alone(model):
    state, logits = prefill(model, [PROMPTS["a"]], 12)
    first, logits = greedy(model, state, logits, 4)  # a is 4 tokens in when b arrives
    newcomer, new_logits = prefill(model, [PROMPTS["b"]], 12)
    state.join(newcomer)
    assert state.batch_size == 2 and state.length == len(PROMPTS["a"]) + 4
    rest, _ = greedy(model, state, torch.cat([logits, new_logits]), 8)
    assert first[0] + rest[0] == alone(model, "a", 12)
    assert rest[1] == alone(model, "b", 8)


def test_a_longer_newcomer_pads_the_running_rows(model):
    state, logits = prefill(model, [PROMPTS["b"]], 10)
    first, logits = greedy(model, state, logits, 2)
    newcomer, new_logits = prefill(model, [PROMPTS["c"], PROMPTS["a"]], 10)  # itself a padded batch
    state.join(newcomer)
    assert state.length == len(PROMPTS["c"])
    rest, last = greedy(model, state, torch.cat([logits, new_logits]), 8)
    for row, (name, steps) in enumerate([("b", 10), ("c", 8), ("a", 8)]):
        tokens, logits_alone = alone(model, name, steps, with_logits=True)
        assert (first[0] if row == 0 else []) + rest[row] == tokens
        torch.testing.assert_close(last[row], logits_alone, atol=1e-4, rtol=1e-4)  # positions too, not just argmax


def test_positions_left_by_finished_rows_are_dropped_on_join(model):
    state, logits = prefill(model, [PROMPTS["c"], PROMPTS["b"]], 10)
    first, logits = greedy(model, state, logits, 3)
    keep = torch.tensor([1])  # c finishes; b's row keeps padding where c's prompt was
    state.reorder(keep)
    newcomer, new_logits = prefill(model, [PROMPTS["a"]], 10)
    state.join(newcomer)
    assert state.length == len(PROMPTS["a"])  # b's 2 + 3 tokens are shorter than a's 7: c's columns are gone
    rest, _ = greedy(model, state, torch.cat([logits[keep], new_logits]), 6)
    assert first[1] + rest[0] == alone(model, "b", 9)
    assert rest[1] == alone(model, "a", 6)


def test_a_joined_batch_keeps_the_room_each_state_had():
    model = tk.build_model(tk.preset("llama-tiny", vocab_size=64)).eval()
    running, _ = prefill(model, [PROMPTS["a"]], 3)
    newcomer, _ = prefill(model, [PROMPTS["b"]], 20)
    running.join(newcomer)
    assert running.max_len - running.length == 20


def test_states_that_read_a_source_cannot_join():
    model = tk.build_model(tk.preset("transformer-tiny", vocab_size=64, dropout=0.0)).eval()
    source = torch.tensor([[5, 6, 7, 2]])
    state, other = model.start(1, 8, source), model.start(1, 8, source)
    with pytest.raises(ConfigError, match="join"):
        state.join(other)


def test_a_reorder_of_as_many_rows_gathers_the_written_positions_into_a_second_buffer():
    cache = KVCache(3, 2, 8, 4, torch.float32, "cpu")
    written = torch.randn(3, 2, 5, 4)
    cache.write(written, written + 1, 0)
    index = torch.tensor([2, 0, 0])
    first = cache.k
    cache.reorder(index, 5)
    assert torch.equal(cache.k[:, :, :5], written[index]) and torch.equal(cache.v[:, :, :5], written[index] + 1)
    cache.reorder(torch.tensor([0, 1, 2]), 5)
    assert cache.k is first  # two buffers, taking turns: no new tensors a step
    cache.reorder(torch.tensor([1]), 5)  # fewer rows (rows that ended): new tensors
    assert cache.k.shape[0] == 1 and torch.equal(cache.k[0, :, :5], written[0])


@torch.no_grad()
def test_reorders_that_follow_rows_move_nothing_and_settle_to_the_copied_cache(model):
    """Beam search with compiled steps reorders `origin` instead of the cache: the next eager step settles it, and
    its logits are those of a state whose cache was copied at every reorder."""
    prompts = [PROMPTS["a"], PROMPTS["c"], PROMPTS["b"]]
    copied, logits = prefill(model, prompts, 6)
    followed, _ = prefill(model, prompts, 6)
    followed.follow_rows()
    keys = [cache.k.clone() for cache in followed.caches]
    tokens = logits.argmax(dim=-1)[:, None]  # (3, 1)
    for index in (torch.tensor([2, 0, 0]), torch.tensor([1, 1, 2])):
        copied.reorder(index)
        followed.reorder(index)
    assert all(torch.equal(cache.k, k) for cache, k in zip(followed.caches, keys))  # nothing moved yet
    expected, got = model.step(tokens, copied), model.step(tokens, followed)  # the eager step settles first
    assert followed.origin is None
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    for a, b in zip(followed.caches, copied.caches):
        assert torch.equal(a.k[:, :, :copied.length], b.k[:, :, :copied.length])
