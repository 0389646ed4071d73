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
