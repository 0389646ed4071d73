"""Generation with decoder-only models: the KV cache, batching, stopping, sampling and streaming."""

import pytest
import torch

import transformerkit as tk
from transformerkit.data.tokenizers import train_chars
from transformerkit.inference.chat import Chat, render
from transformerkit.inference.generate import GenerationOptions, generate, generate_ids

TEXT = "to be or not to be, that is the question.\nwhether 'tis nobler in the mind to suffer\n"


@pytest.fixture(params=["gpt-tiny", "llama-tiny"])
def model(request):
    torch.manual_seed(0)
    tokenizer = train_chars(TEXT)
    model = tk.build_model(tk.preset(request.param, vocab_size=tokenizer.get_vocab_size(), dropout=0.0,
                                     attention_dropout=0.0)).eval()
    with torch.no_grad():
        model.output_layer().weight.mul_(3)  # tied or not, the output layer's weight sharpens the distribution
    model.tokenizer = tokenizer
    return model


def naive(model, ids, n):
    """Argmax of a full forward pass over the whole sequence, every step: no cache."""
    ids = list(ids)
    out = []
    for _ in range(n):
        nxt = int(model(torch.tensor([ids]))[0, -1].argmax())
        if nxt == model.config.eos_id:
            break
        ids.append(nxt)
        out.append(nxt)
    return out


def test_cached_generation_equals_full_forward_passes(model):
    prompt = model.tokenizer.encode("to be or").ids
    assert generate_ids(model, [prompt], GenerationOptions(max_new_tokens=20))[0] == naive(model, prompt, 20)


def test_each_prompt_of_a_batch_gets_what_it_would_alone(model):
    prompts = [model.tokenizer.encode(t).ids for t in ("t", "whether 'tis", "to be or not to")]
    together = generate_ids(model, prompts, GenerationOptions(max_new_tokens=15))
    for prompt, output in zip(prompts, together):
        assert generate_ids(model, [prompt], GenerationOptions(max_new_tokens=15))[0] == output


def test_max_new_tokens_stop_tokens_and_stop_strings(model):
    prompt = model.tokenizer.encode("to be").ids
    full = generate_ids(model, [prompt], GenerationOptions(max_new_tokens=12))[0]
    assert len(full) <= 12
    stopped = generate_ids(model, [prompt], GenerationOptions(max_new_tokens=12, stop_tokens=[full[3]]))[0]
    assert stopped == full[:full.index(full[3])]
    text = generate(model, "to be", max_new_tokens=12)
    cut = text[2:4]
    assert generate(model, "to be", max_new_tokens=12, stop=[cut]) == text[:text.index(cut)]


def test_streamed_pieces_add_up_to_the_result(model):
    pieces = []
    text = generate(model, "whether", max_new_tokens=25, temperature=0.9, seed=3,
                    on_text=lambda row, piece: pieces.append(piece))
    assert "".join(pieces) == text and len(pieces) > 1


def test_sampling_is_reproducible_with_a_seed_and_varies_without(model):
    runs = [generate(model, "to", max_new_tokens=30, temperature=1.0, seed=7) for _ in range(2)]
    assert runs[0] == runs[1]
    others = {generate(model, "to", max_new_tokens=30, temperature=1.0, seed=s) for s in range(5)}
    assert len(others) > 1


def test_repetition_penalty_makes_seen_tokens_less_likely(model):
    from transformerkit.inference.search import penalize as _penalize

    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    penalized = _penalize(logits, torch.tensor([[0, 1, 0]]), 2.0)
    assert penalized.tolist() == [[1.0, -2.0, 0.5, 3.0]]  # seen: positive halved, negative doubled
    assert len(generate(model, "to be or not to be", max_new_tokens=10, repetition_penalty=1.5)) > 0


def test_bad_options_are_clear_errors(model):
    with pytest.raises(tk.ConfigError, match="top_p"):
        generate(model, "to", top_p=0.0)
    with pytest.raises(tk.ConfigError, match="empty prompt"):
        generate_ids(model, [[]])


def test_a_prompt_longer_than_learned_positions_is_refused():
    model = tk.build_model(tk.preset("gpt-tiny", max_len=32)).eval()
    with pytest.raises(tk.ConfigError, match="exceed the model's context"):
        generate_ids(model, [[5] * 30], GenerationOptions(max_new_tokens=10))


CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def test_render_chatml():
    text = render(CHATML, [{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(tk.ConfigError, match="chat template"):
        render("{{ raise_exception('no system messages') }}", [])


def test_chat_reuses_the_cache_between_turns():
    from tokenizers import AddedToken

    tokenizer = train_chars(TEXT)
    tokenizer.add_special_tokens([AddedToken("<|im_start|>", special=True), AddedToken("<|im_end|>", special=True)])
    model = tk.build_model(tk.preset("llama-tiny", vocab_size=tokenizer.get_vocab_size())).eval()
    model.tokenizer, model.chat_template = tokenizer, CHATML
    fed = []
    original = model.decoder.forward

    def counting(ids, *args, **kwargs):
        fed.append(ids.shape[1])
        return original(ids, *args, **kwargs)

    model.decoder.forward = counting
    chat = Chat(model, max_new_tokens=8)
    chat.send("to be")
    fed.clear()
    chat.send("or not")
    whole = len(tokenizer.encode(render(CHATML, chat.messages[:-1])).ids)
    assert fed[0] < whole  # the second turn fed its own tokens, not the whole conversation again
    assert chat.state.length == len(chat.tokens) and len(chat.messages) == 4


def test_compiled_blocks_decode_as_eager():
    """compile_blocks: each step's logits equal the eager model's (float32) through a left-padded prompt batch
    and twelve cached steps, with three blocks in two compiled regions of unequal length, and the regions
    compile a handful of graphs, not one per position (dynamic shapes: a graph per position would hit Dynamo's
    recompile limit and fall back to eager on long outputs)."""
    from torch._dynamo.utils import counters

    from transformerkit.nn.block import TransformerStack, compile_blocks
    from transformerkit.runtime import compile_unavailable

    if reason := compile_unavailable():
        pytest.skip(f"torch.compile is unavailable here: {reason}")
    torch.manual_seed(0)
    model = tk.build_model(tk.preset("llama-tiny", vocab_size=40, n_layers=3, dropout=0.0,
                                     attention_dropout=0.0)).eval()

    @torch.no_grad()
    def logits_per_step():
        state = model.start(2, 20)
        ids = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 0, 10, 11]])
        out = [model.step(ids, state, ids != 0)]
        for token in range(12, 24):
            out.append(model.step(torch.tensor([[token], [token + 1]]), state))
        return torch.stack(out)  # (13, 2, V)

    eager = logits_per_step()
    torch._dynamo.reset()
    counters.clear()
    assert compile_blocks(model, per_region=2) == 3
    stack = next(m for m in model.modules() if isinstance(m, TransformerStack))
    assert [len(run.blocks) for run in stack.runs] == [2, 1]
    torch.testing.assert_close(logits_per_step(), eager, atol=1e-5, rtol=1e-5)
    assert 1 <= counters["stats"]["unique_graphs"] <= 4
