import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transformerkit import runtime
from transformerkit.nn import linear as linear_module
from transformerkit.nn.linear import Linear, add_linear, can_pack_weights, linear
from transformerkit.training.losses import linear_cross_entropy

onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="a PyTorch build without oneDNN")


@pytest.fixture
def route(monkeypatch):
    """Force the machine's answer (oneDNN pays or not) and count the products that go to oneDNN."""
    calls = []
    product = linear_module.onednn_product

    def counted(*args):
        calls.append(args[0].shape)
        return product(*args)

    monkeypatch.setattr(linear_module, "onednn_product", counted)

    def force(pays: bool, weight_gradients: bool | None = None):
        """`pays`: products with a weight through oneDNN; `weight_gradients` (default: the same) theirs too."""
        monkeypatch.setattr(runtime, "onednn_matmul_pays", lambda: pays)
        both = pays if weight_gradients is None else weight_gradients
        monkeypatch.setattr(runtime, "onednn_weight_gradient_pays", lambda: both)
        return calls

    return force


@onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("weight_gradients", [True, False])
def test_the_onednn_product_and_its_gradients_equal_f_linear(route, bias, weight_gradients):
    calls = route(True, weight_gradients)
    torch.manual_seed(0)
    x = torch.randn(3, 200, 96, requires_grad=True)  # (B, T, in): 600 rows
    weight = torch.randn(80, 96, requires_grad=True)
    b = torch.randn(80, requires_grad=True) if bias else None
    grad_out = torch.randn(3, 200, 80)
    leaves = [t for t in (x, weight, b) if t is not None]

    ours = linear(x, weight, b)
    ours_grads = torch.autograd.grad(ours, leaves, grad_out)
    # the product and the input's gradient, then the weight's where it goes through oneDNN too
    assert len(calls) == (3 if weight_gradients else 2)
    reference = F.linear(x, weight, b)
    reference_grads = torch.autograd.grad(reference, leaves, grad_out)
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-4)
    for got, want in zip(ours_grads, reference_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-3)


@onednn
def test_transposed_weights_and_inputs_give_the_same_product(route):
    calls = route(True)
    x, weight = torch.randn(96, 600).t(), torch.randn(96, 80).t()  # (600, 96) and (80, 96), both transposed views
    torch.testing.assert_close(linear(x, weight), x.contiguous() @ weight.contiguous().t(), rtol=1e-5, atol=1e-4)
    assert len(calls) == 1


@onednn
def test_the_output_may_be_changed_in_place_as_nn_linear_s_may(route):
    calls = route(True)
    x = torch.randn(4, 150, 96, requires_grad=True)
    weight = torch.randn(80, 96, requires_grad=True)
    out = linear(x, weight)
    out.relu_()  # nn.ReLU(inplace=True), or a residual added in place
    out.sum().backward()
    reference = F.linear(x.detach(), weight.detach()).relu()
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-4)
    assert calls and weight.grad is not None


def test_small_products_single_rows_other_dtypes_and_autocast_stay_with_f_linear(route):
    calls = route(True)
    weight = torch.randn(64, 64)
    linear(torch.randn(8, 64), weight)  # 32k multiply-adds: below the call overhead's break-even
    linear(torch.randn(1, 4096), torch.randn(4096, 4096))  # one row: a matrix-vector product
    linear(torch.randn(512, 64).bfloat16(), weight.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        linear(torch.randn(512, 64), weight)
    assert calls == []
    calls = route(False)  # a machine where oneDNN does not pay
    linear(torch.randn(512, 64), weight)
    assert calls == []


@onednn
@pytest.mark.parametrize("pays, weight_gradients", [(True, True), (True, False), (False, False)])
def test_add_linear_adds_the_product_to_a_running_sum(route, pays, weight_gradients):
    calls = route(pays, weight_gradients)
    out, x, weight = torch.randn(80, 96), torch.randn(80, 600), torch.randn(96, 600)
    expected = out + x @ weight.t()
    running = out.clone()
    result = add_linear(running, x, weight)
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-3)
    assert (result is running) != weight_gradients  # MKL adds in place; oneDNN returns a new sum
    # the fused loss's weight gradient is such a running sum, chunk by chunk
    hidden = torch.randn(1500, 96, requires_grad=True)
    table = torch.randn(700, 96, requires_grad=True)
    target = torch.randint(0, 700, (1500,))
    ours = torch.autograd.grad(linear_cross_entropy(hidden, table, None, target, 0.1), (hidden, table))
    logits = F.linear(hidden.double(), table.double())
    reference = torch.autograd.grad(F.cross_entropy(logits, target, label_smoothing=0.1, reduction="sum"),
                                    (hidden, table))
    for got, want in zip(ours, reference):
        torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-4)
    assert (len(calls) > 0) == pays


def test_linear_is_a_drop_in_nn_linear():
    torch.manual_seed(0)
    ours = Linear(12, 7)
    torch.manual_seed(0)
    theirs = nn.Linear(12, 7)
    assert isinstance(ours, nn.Linear)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
    x = torch.randn(5, 12)
    torch.testing.assert_close(ours(x), theirs(x))


packing = pytest.mark.skipif(not can_pack_weights(), reason="a PyTorch build without oneDNN's packed weights")


@pytest.mark.parametrize("layout, dtype", [("packed", torch.float32), ("packed", torch.bfloat16),
                                           ("float32", torch.bfloat16)])
def test_a_packed_layer_gives_the_same_outputs_where_no_gradient_is_needed(layout, dtype):
    if layout == "packed" and not can_pack_weights(dtype):
        pytest.skip(f"oneDNN cannot pack {dtype} weights here")
    torch.manual_seed(0)
    layer = Linear(96, 80).to(dtype)
    x = torch.randn(3, 5, 96, dtype=dtype)  # (B, T, in)
    with torch.no_grad():
        plain = layer(x)
        layer.pack(layout)
        packed = layer(x)
    assert layer.packed is not None and layer.packed.dtype == (torch.float32 if layout == "float32" else dtype)
    assert packed.dtype == dtype
    tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(packed, plain, **tolerance)
    out = layer(x)  # with a gradient to compute, the weight itself is read
    out.float().sum().backward()
    assert layer.weight.grad is not None


@packing
def test_a_packed_copy_is_dropped_when_the_weight_changes_and_left_behind_by_copies():
    layer = Linear(96, 80)
    layer.pack()
    x = torch.randn(4, 96)
    with torch.no_grad():
        layer.weight.mul_(2)  # in place: the packed copy is now stale
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    assert layer.packed is None
    layer.pack()
    layer.double().float()  # moved or cast: dropped at once
    assert layer.packed is None
    layer.pack()
    layer.load_state_dict({"weight": torch.randn(80, 96), "bias": torch.zeros(80)})
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    layer.pack()
    for copied in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert copied.packed is None
        with torch.no_grad():
            torch.testing.assert_close(copied(x), F.linear(x, layer.weight, layer.bias))


@packing
def test_packed_copies_serve_few_rows_and_leave_large_products_to_linear(route):
    calls = route(True)
    layer = Linear(96, 80)
    layer.pack()
    with torch.no_grad():
        layer(torch.randn(8, 1, 96))  # a decoding step of 8 sequences: the packed copy
        assert len(calls) == 1 and layer.packed is not None
        x = torch.randn(4, 300, 96)  # a prompt's prefill: through `linear`, plain weight
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    assert len(calls) == 2 and calls[-1] == (1200, 96)  # the flattened rows: `linear`'s call, not the packed one


@packing
def test_a_model_loaded_in_inference_mode_packs_and_runs(tmp_path, monkeypatch):
    import transformerkit as tk

    model = tk.build_model(tk.preset("gpt-tiny")).eval()
    tk.save(model, tmp_path / "ckpt")
    monkeypatch.setattr(runtime, "decoding_layout_choice", lambda out_features, in_features, dtype: "packed")
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.inference_mode():
        loaded = tk.load(tmp_path / "ckpt", device="cpu")
        assert all(m.packed is not None for m in loaded.modules() if isinstance(m, Linear))
        torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=1e-5)


def test_a_float32_copy_is_offered_only_for_small_bfloat16_weights(monkeypatch):
    """decoding_layout_choice times a float32 copy against the other layouts for bfloat16 weights under 1 MB (in
    the caches, where a call's fixed cost is most of its time), never for larger ones or float32 weights. The
    timing is injected: the float32 pool runs fastest wherever it is timed."""
    runtime.decoding_layout_choice.cache_clear()
    monkeypatch.setattr(runtime, "_pool_pass", lambda run, pool: 0.1 if pool[0].dtype == torch.float32 else 1.0)
    monkeypatch.setattr(runtime, "_layout_pool", lambda out_features, in_features, dtype: (
        torch.ones(1, in_features, dtype=dtype), [torch.ones(out_features, in_features, dtype=dtype)]))
    try:
        assert runtime.decoding_layout_choice(128, 128, torch.bfloat16) == "float32"
        assert runtime.decoding_layout_choice(1024, 1024, torch.bfloat16) != "float32"  # 2 MB
        assert runtime.decoding_layout_choice(128, 128, torch.float32) != "float32"
    finally:
        runtime.decoding_layout_choice.cache_clear()


@pytest.mark.skipif(runtime.compile_unavailable("cpu") is not None, reason="inductor cannot build kernels here")
@pytest.mark.parametrize("bias", [False, True])
def test_the_row_kernel_is_timed_against_a_float32_copy_with_or_without_a_bias(monkeypatch, bias):
    """A bias-free bfloat16 weight between the row kernel's 256 KB and the float32 copy's 1 MB (SmolLM2's 576 x 576
    attention weights) is timed against its float32 copy when the layout probe picks that copy."""
    runtime.row_kernel_pays.cache_clear()
    monkeypatch.setattr(runtime, "decoding_layout_choice", lambda out_features, in_features, dtype: "float32")
    try:
        assert runtime.row_kernel_pays(512, 256, torch.bfloat16, bias) in (True, False)
    finally:
        runtime.row_kernel_pays.cache_clear()


def test_pack_names_its_layouts_and_copies_only_what_a_copy_serves():
    with pytest.raises(ValueError, match="unknown layout"):
        Linear(4, 4).pack("fp16")
    with pytest.raises(ValueError, match="float32 already"):
        Linear(4, 4).pack("float32")


compiles = pytest.mark.skipif(runtime.compile_unavailable("cpu") is not None,
                              reason="inductor cannot build kernels here")


def counted_rows(layer: Linear) -> list:
    """Stream the layer's rows and record the input shape of every call of its kernel."""
    layer.stream_rows()
    calls, kernel = [], layer.row_product
    layer.row_product = lambda *args: calls.append(tuple(args[0].shape)) or kernel(*args)
    return calls


@compiles
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_the_row_kernel_gives_f_linears_outputs_for_one_row(dtype, bias):
    torch.manual_seed(0)
    layer = Linear(384, 200, bias=bias).to(dtype)
    calls = counted_rows(layer)
    x = torch.randn(1, 1, 768, dtype=dtype)[..., ::2]  # (B, T, in), every other value: not contiguous
    with torch.no_grad():
        streamed = layer(x)
    tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(streamed, F.linear(x, layer.weight, layer.bias), **tolerance)
    assert streamed.shape == (1, 1, 200) and calls == [(1, 384)]


@compiles
def test_the_row_kernel_serves_one_row_without_gradients_only_and_is_dropped_by_casts_and_copies():
    layer = Linear(96, 80)
    calls = counted_rows(layer)
    x = torch.randn(1, 1, 96)
    with torch.no_grad():
        layer(x)
        assert calls == [(1, 96)]
        for rows in (torch.randn(2, 1, 96), torch.randn(1, 5, 96)):  # a batch's step, a prompt: not one row
            torch.testing.assert_close(layer(rows), F.linear(rows, layer.weight, layer.bias))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(x)
        with pytest.raises(RuntimeError, match="dtype"):  # another dtype than the weight's: F.linear's error
            layer(x.double())
    out = layer(x)  # a gradient to compute: F.linear's product, which has one
    out.sum().backward()
    assert calls == [(1, 96)] and layer.weight.grad is not None
    layer.weight.requires_grad_(False)  # a frozen weight with a trainable bias: the bias still needs its gradient
    layer(x).sum().backward()
    assert calls == [(1, 96)] and layer.bias.grad is not None
    with torch.no_grad():
        layer.weight.mul_(2)  # read as it is at each call: a change in place needs nothing
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
        assert calls == [(1, 96), (1, 96)]
    for copied in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert copied.row_product is None
    layer.double()
    assert layer.row_product is None


@compiles
def test_a_row_kernel_that_no_longer_fits_its_layer_is_dropped_at_the_next_call():
    """What the kernel was compiled for (shape, dtype, bias, threads) is checked at each call, not assumed."""
    x = torch.randn(1, 96)
    def replace(layer, out_features, dtype):  # as load_state_dict(assign=True) would: new tensors, not a cast
        layer.weight = nn.Parameter(torch.randn(out_features, 96, dtype=dtype))
        layer.bias = nn.Parameter(torch.randn(out_features, dtype=dtype))

    changes = [lambda layer: setattr(layer.weight, "data", layer.weight.data.t().contiguous().t()),  # re-strided
               lambda layer: replace(layer, 80, torch.bfloat16), lambda layer: replace(layer, 70, torch.float32),
               lambda layer: setattr(layer, "bias", None),
               lambda layer: torch.set_num_threads(torch.get_num_threads() + 1)]
    threads = torch.get_num_threads()
    try:
        for change in changes:
            layer = Linear(96, 80)
            calls = counted_rows(layer)
            change(layer)
            with torch.no_grad():
                out = layer(x.to(layer.weight.dtype))
            torch.testing.assert_close(out, F.linear(x.to(layer.weight.dtype), layer.weight, layer.bias))
            assert calls == []
    finally:
        torch.set_num_threads(threads)


@compiles
def test_the_row_kernel_runs_on_a_serving_thread_in_inference_mode():
    import threading

    layer = Linear(96, 80)
    calls = counted_rows(layer)
    x, out = torch.randn(1, 96), []

    def serve():
        with torch.inference_mode():
            out.append(layer(x))

    thread = threading.Thread(target=serve)
    thread.start()
    thread.join()
    torch.testing.assert_close(out[0], F.linear(x, layer.weight, layer.bias).detach())
    assert calls == [(1, 96)]


@compiles
def test_inside_a_compiled_region_a_row_is_the_same_expression_fused():
    """generate --compile: the region traces multiply-and-sum (inductor fuses it) instead of calling the kernel
    or F.linear."""
    torch.manual_seed(0)
    layer = Linear(96, 80)
    layer.stream_rows()
    layer.row_product = lambda *args: pytest.fail("the compiled kernel called from inside a compiled region")
    graphs = []

    def backend(graph, inputs):
        graphs.append(graph)
        return graph.forward

    x = torch.randn(1, 1, 96)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(layer, backend=backend)(x), F.linear(x, layer.weight, layer.bias))
    targets = {str(node.target) for graph in graphs for node in graph.graph.nodes}
    assert not any("linear" in target or "addmm" in target for target in targets)
    assert any("sum" in target for target in targets)
