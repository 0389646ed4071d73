"""Weight-only quantized layers: their kernels compute what their dequantized weights would, GGUF blocks are kept
exactly, every family quantizes and still decodes with its cache, and a quantized checkpoint loads back."""

import pytest
import torch

import transformerkit as tk
from transformerkit.nn.quantized import Int4Linear, Int8Linear, pack_nibbles, unpack_nibbles
from transformerkit.quantize import quantize_model, weight_bytes

from ..models.conftest import FAMILIES


def test_nibbles_pack_two_to_a_byte_and_back():
    codes = torch.randint(0, 16, (5, 64), dtype=torch.uint8)
    assert pack_nibbles(codes).shape == (5, 32)
    assert torch.equal(unpack_nibbles(pack_nibbles(codes)), codes)


@pytest.mark.parametrize("group", [32, 64, 128])
def test_the_int4_kernel_computes_the_dequantized_matmul(group):
    weight, x = torch.randn(96, 256), torch.randn(5, 256)
    layer = Int4Linear.from_float(weight, group, bias=torch.randn(96))
    dequantized = layer.dequantize()
    torch.testing.assert_close(layer(x), x @ dequantized.t() + layer.bias, atol=1e-4, rtol=1e-5)
    assert (dequantized - weight).abs().max() <= (weight.abs().max() * 2) / 15  # within a step of 16 levels
    layer.kernel_dtype = torch.bfloat16  # what fast CPUs use: bfloat16 activations into the kernel
    assert layer(x).dtype == torch.float32
    torch.testing.assert_close(layer(x), x @ dequantized.t() + layer.bias, atol=0.3, rtol=0.02)


def test_the_int8_kernel_computes_the_dequantized_matmul_and_looks_rows_up():
    weight, x = torch.randn(50, 64), torch.randn(3, 7, 64)
    layer = Int8Linear.from_float(weight)
    torch.testing.assert_close(layer(x), x @ layer.dequantize().t(), atol=1e-4, rtol=1e-5)
    assert (layer.dequantize() - weight).abs().max() <= weight.abs().amax(dim=1).max() / 127
    ids = torch.tensor([[3, 0, 49]])
    torch.testing.assert_close(layer.rows(ids, torch.float32), layer.dequantize()[ids])


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_every_family_quantizes_and_keeps_its_outputs_close(name, kind):
    torch.manual_seed(0)
    config = FAMILIES[name]
    model = tk.build_model(config).eval()
    ids, target = torch.randint(3, 50, (2, 7)), torch.randint(3, 50, (2, 6))
    run = (lambda m: m(ids, target)) if config.family == "encoder-decoder" else \
        (lambda m: m.hidden_states(ids)) if config.family == "encoder" else (lambda m: m(ids))
    with torch.no_grad():
        before = run(model)
        size = weight_bytes(model)
        quantize_model(model, kind)
        after = run(model)
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert weight_bytes(model) < size
    # 256 levels per row keep outputs within ~1%; 16 levels per group of 32 within ~15% on these random tiny models
    assert (after - before).norm() / before.norm() < {"int8": 0.03, "int4": 0.2}[kind]


@pytest.mark.parametrize("name", ["gpt2", "llama", "transformer-2017"])
def test_a_quantized_model_decodes_with_its_cache_as_a_full_forward(name):
    torch.manual_seed(0)
    model = quantize_model(tk.build_model(FAMILIES[name].replace(d_model=64, d_ff=128)).eval(), "int4")
    source, ids = torch.randint(3, 50, (2, 9)), torch.randint(3, 50, (2, 7))
    with torch.no_grad():
        if model.config.family == "encoder-decoder":
            full, state = model(source, ids), model.start(2, 10, source)
        else:
            full, state = model(ids), model.start(2, 10)
        steps = [model.step(ids[:, t:t + 1], state) for t in range(7)]
    torch.testing.assert_close(torch.stack(steps, dim=1), full, atol=1e-4, rtol=1e-4)


def test_a_quantized_checkpoint_loads_back_by_itself(tmp_path):
    torch.manual_seed(0)
    model = tk.build_model(FAMILIES["llama"].replace(d_model=64, d_ff=128, tie_embeddings=True)).eval()
    quantize_model(model, "int4")
    tk.save(model, tmp_path / "q")
    again = tk.load(tmp_path / "q", device="cpu")
    assert again.quantization == {"kind": "int4", "group_size": 32}
    assert type(again.decoder.embed.tokens).__name__ == "QuantizedEmbedding"  # tied to the int8 output layer
    for module in again.modules():
        if hasattr(module, "kernel_dtype"):
            module.kernel_dtype = None  # load chose this machine's fastest kernel dtype; compare like with like
    ids = torch.randint(3, 50, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(again(ids), model(ids), atol=1e-3, rtol=1e-3)


def test_an_int4_layer_keeps_one_copy_of_its_weights_and_saves_the_same_codes_after_running():
    torch.manual_seed(0)
    layer = Int4Linear.from_float(torch.randn(64, 128), 32)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    dequantized, size = layer.dequantize(), weight_bytes(layer)
    layer.kernel_dtype = torch.bfloat16
    layer(torch.randn(2, 128))  # the kernel's layout replaces the portable codes
    assert layer.codes is None and layer.packed is not None
    # what memory holds is counted: the packed codes (as many bytes as before) and the kernel's bfloat16 scales
    assert weight_bytes(layer) == size + layer.scales_and_zeros.numel() * 2
    after = layer.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    torch.testing.assert_close(layer.dequantize(), dequantized, atol=0, rtol=0)
    fresh = Int4Linear.from_float(torch.randn(64, 128), 32)
    fresh(torch.randn(2, 128))
    fresh.load_state_dict(after)  # loading into a layer that has run starts its kernel layout afresh
    assert fresh.packed is None and torch.equal(fresh.codes, before["codes"])
    x = torch.randn(3, 128)
    layer.kernel_dtype = None
    torch.testing.assert_close(fresh(x), layer(x))


def test_joined_projections_compute_what_separate_ones_do_and_save_the_same_checkpoint():
    from transformerkit.quantize import join_projections

    torch.manual_seed(0)
    model = quantize_model(tk.build_model(FAMILIES["llama"].replace(d_model=64, d_ff=128)).eval(), "int4")
    ids = torch.randint(3, 50, (2, 7))
    with torch.no_grad():
        before, saved = model(ids), {k: v.clone() for k, v in model.state_dict().items()}
        calls = int4_calls(lambda: model(ids))
        assert join_projections(model) == 2 * model.config.n_layers  # q, k, v and gate, up in every block
        joined = model(ids)
        assert int4_calls(lambda: model(ids)) == calls * 4 // 7  # q k v o gate up down -> qkv o gateup down
        state = model.start(2, 10)
        steps = torch.stack([model.step(ids[:, t:t + 1], state) for t in range(7)], dim=1)
    torch.testing.assert_close(joined, before, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(steps, before, atol=1e-4, rtol=1e-4)
    attention = model.decoder.layers[0].self_attn
    q, k, v = attention.q_proj, attention.k_proj, attention.v_proj
    assert q.packed.shape[0] == q.out_features + k.out_features + v.out_features  # one layout holds all three
    assert k.packed is None and v.packed is None and k.codes is None
    after = model.state_dict()
    assert after.keys() == saved.keys() and all(torch.equal(after[key], saved[key]) for key in saved)


def int4_calls(run) -> int:
    """How many times `run()` calls the int4 kernel."""
    with torch.profiler.profile() as profile:
        run()
    return sum(event.count for event in profile.key_averages() if event.key == "aten::_weight_int4pack_mm_for_cpu")
