"""Decoding: greedy, sampling and beam search agree with each other and with naive re-decoding."""

from types import SimpleNamespace

import pytest
import torch

import transformerkit as tk
from transformerkit.inference.beam import beam_search, length_penalty
from transformerkit.inference.sampling import pick_next
from transformerkit.inference.translate import decode_sources


def greedy_search(model, source, mask, max_len, **options):
    return decode_sources(model, source, mask, max_len, beam=1, **options)


def beam_translate(model, source, mask, beam, max_len, alpha=0.6):
    return decode_sources(model, source, mask, max_len, beam=beam, alpha=alpha)


def model_and_sources(seed=0, **changes):
    torch.manual_seed(seed)
    model = tk.build_model(tk.preset("transformer-tiny", vocab_size=40, dropout=0.0, **changes)).eval()
    with torch.no_grad():  # sharpen the output distribution so outputs are long and varied
        model.output_layer().weight.mul_(4)
    lengths = [7, 3, 5, 6]
    source = torch.zeros(4, 7, dtype=torch.long)
    for i, n in enumerate(lengths):
        source[i, :n] = torch.randint(3, 40, (n,))
        source[i, n - 1] = model.config.eos_id
    return model, source, source != model.config.pad_id


def naive_greedy(model, source, mask, max_len):
    """Re-run the whole decoder over the prefix every step: no cache at all."""
    outputs = []
    for i in range(source.shape[0]):
        tokens = [model.config.start_id]
        for _ in range(max_len):
            logits = model(source[i:i + 1], torch.tensor([tokens]), mask[i:i + 1])
            nxt = int(logits[0, -1].argmax())
            if nxt == model.config.eos_id:
                break
            tokens.append(nxt)
        outputs.append(tokens[1:])
    return outputs


@pytest.mark.parametrize("changes", [{}, {"norm_position": "pre", "positions": "learned", "n_kv_heads": 2}])
def test_cached_greedy_equals_re_decoding_the_whole_prefix(changes):
    model, source, mask = model_and_sources(**changes)
    assert greedy_search(model, source, mask, max_len=12) == naive_greedy(model, source, mask, 12)


def test_beam_of_one_is_greedy():
    model, source, mask = model_and_sources()
    assert beam_translate(model, source, mask, beam=1, max_len=12) == greedy_search(model, source, mask, max_len=12)


def test_beam_results_do_not_depend_on_the_batch():
    model, source, mask = model_and_sources(seed=1)
    together = beam_translate(model, source, mask, beam=4, max_len=12)
    for i in range(source.shape[0]):
        n = int(mask[i].sum())
        alone = beam_translate(model, source[i:i + 1, :n], mask[i:i + 1, :n], beam=4, max_len=12)
        assert alone[0] == together[i]
    assert beam_translate(model, source[[2, 0]], mask[[2, 0]], beam=4, max_len=12) == [together[2], together[0]]


def half_trained_copier():
    """A tiny model trained briefly to copy its source: its outputs end (a random model never emits the end
    token), yet it is unsure enough that beam search has something to find."""
    torch.manual_seed(0)
    model = tk.build_model(tk.preset("transformer-tiny", vocab_size=40, dropout=0.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        body = torch.randint(3, 40, (32, 5))
        source = torch.cat([body, torch.full((32, 1), 2)], dim=1)  # sentence + </s>
        target_in = torch.cat([torch.full((32, 1), 1), body], dim=1)  # <s> + sentence
        loss = torch.nn.functional.cross_entropy(model(source, target_in).flatten(0, 1), source.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    source = torch.cat([torch.randint(3, 40, (6, 5)), torch.full((6, 1), 2)], dim=1)
    return model.eval(), source, torch.ones_like(source, dtype=torch.bool)


def test_beam_finds_at_least_as_likely_an_output_as_greedy():
    model, source, mask = half_trained_copier()

    def log_prob(i, tokens):
        target = torch.tensor([[model.config.start_id] + tokens])
        logits = model(source[i:i + 1], target, mask[i:i + 1]).detach().log_softmax(-1)[0]
        return float(sum(logits[t, tok] for t, tok in enumerate(tokens + [model.config.eos_id])))

    greedy = greedy_search(model, source, mask, max_len=12)
    beam = beam_translate(model, source, mask, beam=5, max_len=12, alpha=0.0)
    ended = [i for i in range(source.shape[0]) if len(greedy[i]) < 11]  # greedy ended on its own: scores compare
    assert len(ended) >= 4
    for i in ended:
        assert log_prob(i, beam[i]) >= log_prob(i, greedy[i]) - 1e-5
    assert any(beam[i] != greedy[i] for i in ended)  # beam search found something greedy did not


class PrefixModel:
    """A stand-in with the decoding interface whose next-token logits are a fixed pseudo-random function of each
    row's prefix: a naive search can ask for any hypothesis's logits and get exactly those the batched search
    saw, and over 12 tokens the end token falls at every rank, so hypotheses end at every length."""

    config = SimpleNamespace(start_id=1, eos_id=2)

    def logits(self, prefix: list[int]) -> torch.Tensor:
        """Some prefixes sure of their next token, others not, so that one hypothesis's candidates can fill
        most of the best 2K."""
        generator = torch.Generator().manual_seed(hash(tuple(prefix)) % 2**31)
        return torch.randn(12, generator=generator) * 6 * torch.rand((), generator=generator)

    def step(self, tokens, state):
        state.prefixes = [prefix + row.tolist() for prefix, row in zip(state.prefixes, tokens)]
        return torch.stack([self.logits(prefix) for prefix in state.prefixes])


class PrefixState:
    def __init__(self, rows: int):
        self.prefixes = [[row] for row in range(rows)]  # each row starts from its own "source"

    def reorder(self, index, memory=True):
        self.prefixes = [self.prefixes[i] for i in index.tolist()]


def naive_beam(log_probs, eos, beam, max_len, alpha, min_len=0):
    """Beam search as beam_search's docstring tells it, for one sentence: every candidate of every live
    hypothesis ranked in Python; log_probs(tokens) gives the next token's log-probabilities as a list."""
    live, finished = [(0.0, [])], []  # (score, tokens)
    for t in range(max_len):
        candidates = []
        for b, (score, tokens) in enumerate(live):
            scored = log_probs(tokens)
            if t < min_len:
                scored[eos] = float("-inf")
            candidates += [(score + lp, b, token) for token, lp in enumerate(scored)]
        best = sorted(candidates, key=lambda candidate: -candidate[0])[:2 * beam]
        for score, b, token in best[:beam]:  # ending candidates among the best `beam` retire
            if token == eos and len(finished) < beam:
                finished.append((score / length_penalty(t + 1, alpha), live[b][1]))
        live = [(score, live[b][1] + [token]) for score, b, token in best if token != eos][:beam]
        if t + 1 == max_len:  # out of room: the live hypotheses end here
            finished += [(score / length_penalty(t + 1, alpha), tokens) for score, tokens in live]
        if len(finished) >= beam:
            break
    return max(finished[:beam], key=lambda hypothesis: hypothesis[0])[1]


@pytest.mark.parametrize("beam,alpha,min_len", [(3, 0.6, 0), (5, 1.0, 0), (4, 0.0, 3), (2, 2.0, 1)])
def test_beam_search_equals_a_naive_one(beam, alpha, min_len):
    """The batched search (each beam's best 2K tokens only, rows leaving the batch as they finish) keeps exactly
    the hypotheses that ranking every candidate of every beam keeps."""
    model, B = PrefixModel(), 300
    start, eos = model.config.start_id, model.config.eos_id
    limits = torch.arange(B) % 8 + 2  # (B,) each row's own limit
    ours = beam_search(model, PrefixState(B), torch.full((B,), start), beam, limits, alpha, min_len)
    naive = [naive_beam(lambda tokens: model.logits([row, start, *tokens]).log_softmax(-1).tolist(), eos, beam,
                        int(limits[row]), alpha, min_len) for row in range(B)]
    assert ours == naive
    assert len({len(out) for out in ours}) >= 4  # hypotheses ended at many lengths


def test_beam_search_with_a_real_model_equals_the_naive_one():
    """The same on a Transformer, its cache reordered between steps, against re-decoding every hypothesis."""
    model, source, mask = half_trained_copier()

    def log_probs(i):
        def scored(tokens):
            target = torch.tensor([[model.config.start_id, *tokens]])
            return model(source[i:i + 1], target, mask[i:i + 1])[0, -1].log_softmax(-1).tolist()
        return scored

    with torch.no_grad():
        ours = decode_sources(model, source, mask, 9, beam=4, alpha=0.6)
        naive = [naive_beam(log_probs(i), model.config.eos_id, 4, 9, 0.6) for i in range(source.shape[0])]
    assert ours == naive


def test_length_penalty_is_gnmt():
    assert length_penalty(1, 0.6) == 1.0
    assert length_penalty(7, 0.6) == pytest.approx(2**0.6)
    assert length_penalty(20, 0.0) == 1.0


def test_outputs_stop_at_max_len():
    model, source, mask = model_and_sources()
    assert all(len(out) <= 3 for out in beam_translate(model, source, mask, beam=3, max_len=3))
    assert all(len(out) <= 3 for out in greedy_search(model, source, mask, max_len=3))


def test_sampling():
    logits = torch.tensor([[0.0, 1.0, 5.0, 2.0]] * 2000)
    assert pick_next(logits).tolist() == [2] * 2000
    generator = torch.Generator().manual_seed(0)
    top2 = pick_next(logits, temperature=1.0, top_k=2, generator=generator)
    assert set(top2.tolist()) == {2, 3}
    nucleus = pick_next(logits, temperature=1.0, top_p=0.5, generator=generator)
    assert set(nucleus.tolist()) == {2}  # the top token alone holds more than half the mass
    a = pick_next(logits[:10], 1.0, generator=torch.Generator().manual_seed(5))
    b = pick_next(logits[:10], 1.0, generator=torch.Generator().manual_seed(5))
    assert a.tolist() == b.tolist()
    hot = pick_next(logits, temperature=100.0, generator=generator)
    assert len(set(hot.tolist())) == 4  # a high temperature flattens the distribution


def test_sampled_decoding_is_reproducible_with_a_seed():
    model, source, mask = model_and_sources()
    runs = [greedy_search(model, source, mask, 10, temperature=1.0, generator=torch.Generator().manual_seed(3))
            for _ in range(2)]
    assert runs[0] == runs[1]


def test_sampling_follows_the_distribution():
    """Frequencies of 40,000 draws match softmax(logits / temperature) and a masked token is never drawn: an
    off-by-one in the sampler, or a temperature ignored, moves a frequency by far more than 0.01."""
    logits = torch.tensor([[0.5, 1.0, float("-inf"), 2.0, 0.0]]).expand(40_000, 5)
    for temperature in (1.0, 2.0):
        picks = pick_next(logits, temperature, generator=torch.Generator().manual_seed(1))
        frequencies = torch.bincount(picks, minlength=5).double() / len(picks)
        assert torch.allclose(frequencies, (logits[0] / temperature).softmax(-1).double(), atol=0.01)
        assert frequencies[2] == 0
