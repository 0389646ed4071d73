"""Decoding steps compiled whole (inference/step_graph.py): the same tokens as the eager steps, in float32."""

import pytest
import torch
from torch import Tensor

import transformerkit as tk
from transformerkit.inference import step_graph
from transformerkit.inference.generate import GenerationOptions, generate_ids
from transformerkit.inference.step_graph import compile_steps
from transformerkit.inference.translate import decode_sources
from transformerkit.nn.kv_cache import DecodeState


@pytest.fixture(autouse=True)
def small_quanta(monkeypatch):
    """Caches in steps of 8 positions, sources of 4: a few steps cross from one graph to the next."""
    monkeypatch.setattr(step_graph, "CACHE_QUANTUM", 8)
    monkeypatch.setattr(step_graph, "SOURCE_QUANTUM", 4)


def decoder(name: str):
    """A tiny model of the preset `name` (a decoder-only one, or transformer-tiny)."""
    torch.manual_seed(0)
    model = tk.build_model(tk.preset(name, vocab_size=40, dropout=0.0, attention_dropout=0.0, max_len=64)).eval()
    with torch.no_grad():  # larger weights than at initialisation: outputs that change with every token read
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.normal_(0, 0.3)
    return model


STOP = 17


def with_and_without_graphs(model, run):
    """run() eagerly, then with compiled steps; both results and the graphs made."""
    eager = run()
    compile_steps(model)
    try:
        return eager, run(), model.step_graphs.graphs
    finally:
        model.step_graphs = None


@pytest.mark.parametrize("name", ["gpt-tiny", "llama-tiny"])  # learned positions; rotary with grouped-query heads
def test_compiled_steps_generate_the_eager_tokens(name):
    model = decoder(name)
    prompts = [[5, 6, 7, 8, 9], [3], [11, 12, 13]]  # left-padded into one batch: padding masked in the graphs too
    options = GenerationOptions(max_new_tokens=14, stop_tokens=[STOP])  # rows end at different steps, and stay
    eager, compiled, graphs = with_and_without_graphs(model, lambda: generate_ids(model, prompts, options))
    assert compiled == eager
    assert {n for n in map(len, eager)} != {14}  # some row did end early
    assert len(graphs) >= 2  # the cache positions read crossed a multiple of CACHE_QUANTUM


def test_compiled_steps_sample_and_search_beams_as_eager_ones():
    model = decoder("gpt-tiny")
    sampled = GenerationOptions(max_new_tokens=10, min_new_tokens=10, temperature=1.0, seed=3)
    beams = GenerationOptions(max_new_tokens=10, beam=3)
    for options in (sampled, beams):
        eager, compiled, _ = with_and_without_graphs(model, lambda: generate_ids(model, [[1, 2, 3]], options))
        assert compiled == eager


@pytest.mark.parametrize("beam", [1, 3])
def test_compiled_steps_translate_as_eager_ones(beam):
    model = decoder("transformer-tiny")
    source = torch.tensor([[5, 6, 7, 8, 9, 10, 2], [11, 12, 2, 0, 0, 0, 0]])  # 7 positions: padded to 8 for graphs
    mask = source != 0
    run = lambda: decode_sources(model, source, mask, 12, beam=beam)  # noqa: E731
    eager, compiled, graphs = with_and_without_graphs(model, run)
    assert compiled == eager
    assert graphs


@torch.no_grad()  # the graphs serve steps outside autograd only
def test_the_graph_writes_the_cache_in_place_and_advances_the_state():
    model = decoder("gpt-tiny")
    compile_steps(model)
    state = model.start(2, 5)
    assert state.max_len == 8  # rounded up to CACHE_QUANTUM
    model.step(torch.tensor([[1, 2], [3, 4]]), state)  # the prompt: eager
    model.step(torch.tensor([[5], [6]]), state)  # one token a row: the graph
    assert state.length == 3 and state.n_real.tolist() == [3, 3]
    assert state.key_mask[:, :3].all() and not state.key_mask[:, 3:].any()
    assert state.caches[0].k[:, :, 2].abs().sum() > 0 and state.caches[0].k[:, :, 3:].abs().sum() == 0


def step_logits(model, graphs: bool) -> tuple[Tensor, DecodeState]:
    """A left-padded prompt, then 12 steps of one token a row -> the steps' logits (12, 2, V) and the state."""
    model.step_graphs = None
    if graphs:
        compile_steps(model)
    state = model.start(2, 20)
    model.step(torch.tensor([[0, 2, 3], [4, 5, 6]]), state, torch.tensor([[False, True, True], [True] * 3]))
    logits = torch.stack([model.step(torch.tensor([[t], [t + 1]]), state) for t in range(7, 19)])
    model.step_graphs = None
    return logits.float(), state


@torch.no_grad()
def test_compiled_step_logits_equal_the_eager_ones_within_float_rounding():
    model = decoder("llama-tiny")
    (eager, eager_state), (compiled, compiled_state) = step_logits(model, False), step_logits(model, True)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    assert compiled_state.n_real.tolist() == eager_state.n_real.tolist() == [14, 15]


@torch.no_grad()
def test_compiled_bfloat16_steps_are_as_close_to_float32_as_the_eager_ones():
    """In bfloat16 the graph rounds less often than the eager step (inductor computes a fused chain of operations in
    float32 and rounds once), so its logits differ from the eager ones by a few bfloat16 steps, which compound from
    step to step: held to float32's logits, its error is no larger than the eager step's."""
    model = decoder("llama-tiny")
    exact, _ = step_logits(model, False)
    model.to(torch.bfloat16)
    eager_error = (step_logits(model, False)[0] - exact).abs().mean()
    compiled_error = (step_logits(model, True)[0] - exact).abs().mean()
    assert compiled_error <= 1.2 * eager_error


@torch.no_grad()
def test_a_rewound_state_decodes_in_the_graph_as_in_the_eager_step():
    """A chat turn that rewinds the conversation: positions forgotten must not be read by the graph, which reads
    the key mask past the positions written."""
    model = decoder("llama-tiny")
    results = []
    for graphs in (False, True):
        if graphs:
            compile_steps(model)
        state = model.start(1, 20)
        model.step(torch.tensor([[1, 2, 3]]), state)
        for t in range(5):
            model.step(torch.tensor([[t + 4]]), state)
        state.rewind(4)
        results.append(torch.stack([model.step(torch.tensor([[t + 20]]), state) for t in range(6)]))
    model.step_graphs = None
    torch.testing.assert_close(results[1], results[0], atol=1e-5, rtol=1e-5)


def one_row_logits(model, graphs: bool) -> Tensor:
    """A prompt of one row, then 12 steps of one token -> the steps' logits (12, 1, V): one-row products."""
    model.step_graphs = None
    if graphs:
        compile_steps(model)
    state = model.start(1, 20)
    model.step(torch.tensor([[2, 3, 4]]), state)
    logits = torch.stack([model.step(torch.tensor([[t]]), state) for t in range(7, 19)])
    model.step_graphs = None
    return logits


@torch.no_grad()
def test_a_large_weight_s_row_product_is_one_call_of_its_row_kernel_inside_the_graph(monkeypatch):
    """In a traced step a one-row product with a weight of ROW_OPAQUE_MIN_BYTES or more calls its row kernel whole,
    the smaller ones are the kernel's expression fused by inductor: both in one graph, the eager logits."""
    from transformerkit.nn import linear

    model = decoder("gpt-tiny")
    layers = [m for m in model.modules() if isinstance(m, linear.Linear)]
    for layer in layers:
        layer.stream_rows()  # as load() gives them where the row kernel pays
    eager = one_row_logits(model, False)
    largest = max(layer.weight.nbytes for layer in layers)  # the feed-forward weights, 64 x 256
    monkeypatch.setattr(linear, "ROW_OPAQUE_MIN_BYTES", largest)
    calls = []
    kernel = linear.row_kernel
    monkeypatch.setattr(linear, "row_kernel", lambda *key: calls.append(key[:2]) or kernel(*key))
    compiled = one_row_logits(model, True)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    large = {tuple(layer.weight.shape) for layer in layers if layer.weight.nbytes >= largest}
    assert calls and set(calls) == large  # called whole: only the large weights, at every traced step
