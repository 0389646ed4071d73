"""GGUF: tiny files written here with llama.cpp's layout and every supported quantization, read by our loader and
compared with transformers' own GGUF loader; and the real SmolLM2-135M-Instruct when its package is installed."""

import functools
import json

import numpy as np
import pytest
import torch

import transformerkit as tk
from transformerkit import CheckpointError
from transformerkit.data.tokenizers import train_byte_bpe
from transformerkit.interop.gguf import unpermute_rope

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

TEXT = ["The quick brown fox jumps over the lazy dog. " * 3, "Grüße aus Köln! 한국어 🙂", "def f(x):\n    return x\n"]


def permute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """What llama.cpp's converter does to query and key rows (halves -> interleaved pairs)."""
    rows = weight.shape[0]
    return weight.reshape(n_heads, 2, rows // n_heads // 2, -1).swapaxes(1, 2).reshape(weight.shape)


def write_tiny_gguf(path, quant="F32", architecture="llama"):
    """A random tiny LLaMA (from transformers, so there is a reference) written as a GGUF file."""
    torch.manual_seed(0)
    tokenizer = train_byte_bpe(TEXT * 20, vocab_size=300, min_frequency=1)
    vocab = tokenizer.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in json.loads(tokenizer.to_str())["model"]["merges"]]
    config = transformers.LlamaConfig(vocab_size=len(tokens), hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      rope_theta=5000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
                                      max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    hf = transformers.LlamaForCausalLM(config).eval()
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(2)
    writer.add_context_length(128)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_rope_freq_base(5000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(16)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t.startswith("<") and t.endswith(">") else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}")
    names = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
    layer = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for name, tensor in hf.state_dict().items():
        module = name.rsplit(".", 1)[0]
        if module in names:
            target = names[module]
        else:
            i, rest = module.split(".", 3)[2], module.split(".", 3)[3]
            target = f"blk.{i}.{layer[rest]}"
        data = tensor.numpy().astype(np.float32)
        if target.endswith("attn_q"):
            data = permute(data, 4)
        elif target.endswith("attn_k"):
            data = permute(data, 2)
        kind = gguf.GGMLQuantizationType[quant] if data.ndim == 2 else gguf.GGMLQuantizationType.F32
        if kind in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            writer.add_tensor(target + ".weight", data.astype(np.float16 if quant == "F16" and data.ndim == 2
                                                                  else np.float32))
        else:
            writer.add_tensor(target + ".weight", gguf.quants.quantize(data, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return hf


def test_unpermute_undoes_llama_cpp():
    w = np.arange(8 * 16 * 3, dtype=np.float32).reshape(8 * 16, 3)
    assert np.array_equal(unpermute_rope(torch.from_numpy(permute(w, 8)), 8).numpy(), w)


def test_without_unpermuting_the_logits_would_differ(tmp_path, monkeypatch):
    from transformerkit.interop import gguf as ours

    hf = write_tiny_gguf(tmp_path / "tiny.gguf")
    ids = torch.tensor([[5, 9, 17, 30, 4, 8]])
    monkeypatch.setattr(ours, "unpermute_rope", lambda w, n: w)
    wrong = tk.load(tmp_path / "tiny.gguf", device="cpu")
    assert (wrong(ids) - hf(ids).logits).abs().max() > 1e-3


@pytest.mark.parametrize("quant", ["F32", "F16", "Q8_0", "Q4_0", "Q4_1"])
def test_each_quantization_matches_transformers_gguf_loader(quant, tmp_path):
    hf_original = write_tiny_gguf(tmp_path / "tiny.gguf", quant)
    ours = tk.load(tmp_path / "tiny.gguf", device="cpu")
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf",
                                                                  dtype=torch.float32).eval()
    assert ours.config.kv_heads == 2 and ours.config.rope_theta == 5000.0 and not ours.config.tie_embeddings
    ids = torch.tensor([[5, 9, 17, 30, 4, 8, 100, 200]])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), reference(ids).logits, atol=1e-4, rtol=1e-4)
        if quant == "F32":
            torch.testing.assert_close(ours(ids), hf_original(ids).logits, atol=1e-5, rtol=1e-5)


def test_tokenizer_and_chat_template_travel_with_the_model(tmp_path):
    write_tiny_gguf(tmp_path / "tiny.gguf")
    ours = tk.load(tmp_path / "tiny.gguf", device="cpu")
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="tiny.gguf")
    for text in TEXT + ["  leading spaces", "tabs\tand\nnewlines"]:
        assert ours.tokenizer.encode(text).ids == reference(text)["input_ids"]
    assert ours.chat_template.startswith("{% for m in messages %}")


def test_other_architectures_and_quantizations_are_clear_errors(tmp_path):
    write_tiny_gguf(tmp_path / "arch.gguf", architecture="mamba")
    with pytest.raises(CheckpointError, match="GGUF architecture 'mamba' is not supported"):
        tk.load(tmp_path / "arch.gguf", device="cpu")
    write_tiny_gguf(tmp_path / "quant.gguf", quant="Q5_0")
    with pytest.raises(CheckpointError, match="quantization type Q5_0, which is not supported"):
        tk.load(tmp_path / "quant.gguf", device="cpu")


# ------------------------------------------------------------------------------- the real SmolLM2-135M-Instruct

PROMPTS = ["What is the capital of France?", "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n"
           "<|im_start|>assistant\n", "def fibonacci(n):"]


@pytest.fixture(scope="module")
def smollm2(smollm2_model):
    """Ours (loaded once for the whole test run, see conftest.py) and transformers' reading of the same file."""
    from transformerkit.loading import resolve_alias

    path = resolve_alias("smollm2")
    # transformers parses the file once for the config, once for the weights and once for the tokenizer, and
    # rebuilds gguf's name map for every tensor (half a minute here); the same reads, each done once:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf, "GGUFReader", functools.lru_cache(maxsize=1)(gguf.GGUFReader))
        patch.setattr(gguf, "get_tensor_name_map", functools.lru_cache(maxsize=4)(gguf.get_tensor_name_map))
        return smollm2_model, *_transformers_reading(path)


def _transformers_reading(path):
    hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                           dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return hf, tokenizer


def test_smollm2_logits_match_transformers(smollm2):
    ours, hf, _ = smollm2
    for prompt in PROMPTS:
        ids = torch.tensor([ours.tokenizer.encode(prompt).ids])
        with torch.no_grad():
            assert (ours(ids) - hf(ids).logits).abs().max() <= 1e-3


def test_smollm2_greedy_continuation_matches_transformers(smollm2):
    ours, hf, _ = smollm2
    from transformerkit.inference.generate import GenerationOptions, generate_ids

    ids = ours.tokenizer.encode(PROMPTS[1]).ids
    mine = generate_ids(ours, [ids], GenerationOptions(max_new_tokens=64, stop_tokens=[]))[0]
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([ids]), max_new_tokens=64, do_sample=False, eos_token_id=None,
                             pad_token_id=2)[0, len(ids):].tolist()
    assert mine == theirs[:len(mine)] and (len(mine) == 64 or theirs[len(mine)] == ours.config.eos_id)


def test_smollm2_tokenizer_matches_transformers(smollm2):
    ours, _, tokenizer = smollm2
    texts = ["Hello, world!", "Übermäßig schöne Grüße aus Köln.", "한국어 문장을 토큰으로 나눕니다.",
             "emoji 🙂🚀👍🏽 done",
             "def f(x):\n\tif x:\n        return [i ** 2 for i in range(x)]", "spaces     and\n\n\n\nnewlines   ",
             "<|im_start|>user\nhi<|im_end|>"]
    for text in texts:
        assert ours.tokenizer.encode(text).ids == tokenizer(text)["input_ids"], text


def test_smollm2_chat_template_renders_as_transformers(smollm2):
    from transformerkit.inference.chat import render

    ours, _, tokenizer = smollm2
    messages = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "What is 2+2?"}]
    assert render(ours.chat_template, messages) == tokenizer.apply_chat_template(messages, tokenize=False,
                                                                                  add_generation_prompt=True)


def test_generate_and_chat_commands(smollm2_model, monkeypatch, capsys):
    """The commands, run in-process on the model the test run already loaded (the load itself is tested above)."""
    import io

    from transformerkit import loading
    from transformerkit.cli import main
    from transformerkit.inference import step_graph

    monkeypatch.setattr(loading, "load",
                        lambda path, device=None, dtype=None, quantize=None, layout=True: smollm2_model)
    # --compile reaches compile_steps for a float model on the CPU (test_step_graph checks its results; not redone
    # at this size)
    compiled = []
    monkeypatch.setattr(step_graph, "compile_steps", compiled.append)
    assert main(["generate", "smollm2", "--prompt", "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                 "<|im_start|>assistant\n", "--max-new-tokens", "12", "--device", "cpu", "--dtype", "fp32",
                 "--compile"]) == 0
    out, err = capsys.readouterr()
    assert "Paris" in out and compiled == [smollm2_model] and "compiling the decoding step" in err
    monkeypatch.setattr("sys.stdin", io.StringIO("What is the capital of France?\nAnd of Italy?\n"))
    assert main(["chat", "smollm2", "--max-new-tokens", "16", "--device", "cpu", "--dtype", "fp32"]) == 0
    out = capsys.readouterr().out
    replies = [line for line in out.splitlines() if line.strip()]
    assert "Paris" in replies[0] and "Rome" in out
