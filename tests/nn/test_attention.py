import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from transformerkit import ModelConfig, runtime
from transformerkit.nn import KVCache, MultiHeadAttention, scaled_dot_product_attention
from transformerkit.nn import attention as attention_module
from transformerkit.nn.masks import attention_mask, causal_mask, to_key_padding


def fused_attention(*args):
    """The fused path, forced to PyTorch's flash kernel: on a CPU its math fallback would be the same formula
    as the written-out one, and the test would compare a kernel with itself."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        return attention_module.fused_attention(*args)


def config(**changes):
    return ModelConfig(**{"family": "decoder", "d_model": 32, "n_heads": 4, "d_ff": 64, "vocab_size": 50,
                          "dropout": 0.0, **changes})


def qkv(B=2, H=4, Hkv=4, Tq=5, Tk=5, D=8):
    return torch.randn(B, H, Tq, D), torch.randn(B, Hkv, Tk, D), torch.randn(B, Hkv, Tk, D)


def test_written_out_matches_the_formula():
    q, k, v = qkv()
    out, weights = scaled_dot_product_attention(q, k, v)
    expected_weights = torch.softmax(q @ k.transpose(-2, -1) / 8**0.5, dim=-1)
    torch.testing.assert_close(weights, expected_weights)
    torch.testing.assert_close(out, expected_weights @ v)


@pytest.mark.parametrize("Hkv", [4, 2, 1])
@pytest.mark.parametrize("kind", ["none", "padding", "causal", "both"])
def test_fused_equals_written_out(kind, Hkv):
    q, k, v = qkv(Hkv=Hkv, Tq=6, Tk=6)
    key_mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    padding = key_mask if kind in ("padding", "both") else None
    mask, is_causal = attention_mask(padding, 6, 6, causal=kind in ("causal", "both"))
    written, _ = scaled_dot_product_attention(q, k, v, mask, is_causal)
    torch.testing.assert_close(fused_attention(q, k, v, mask, is_causal), written, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("Hkv", [2, 1])
def test_a_grouped_query_decoding_step_folded_into_its_key_value_heads_equals_written_out(Hkv):
    q, k, v = qkv(Hkv=Hkv, Tq=1, Tk=6)  # one new position against a cache of 6, the second row left-padded
    mask, is_causal = attention_mask(torch.tensor([[True] * 6, [False] * 2 + [True] * 4]), 1, 6, causal=True)
    written, _ = scaled_dot_product_attention(q, k, v, mask, is_causal)
    torch.testing.assert_close(fused_attention(q, k, v, mask, is_causal), written, atol=1e-6, rtol=1e-5)


def test_the_module_runs_the_fused_kernel_where_chosen_and_it_gives_the_written_out_answer(monkeypatch):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    attention = MultiHeadAttention(config(n_kv_heads=2)).eval()
    x = torch.randn(2, 7, 32)
    calls = []
    monkeypatch.setattr(attention_module, "_written_out_is_faster", lambda *_: False)
    monkeypatch.setattr(attention_module, "fused_attention",
                        lambda *a: calls.append(a) or attention_module.F.scaled_dot_product_attention(
                            *a[:3], attn_mask=a[3], is_causal=a[4], dropout_p=a[5], enable_gqa=True))
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        fused = attention(x, is_causal=True)
    assert len(calls) == 1
    attention.fused = False  # always the written-out kernel
    torch.testing.assert_close(fused, attention(x, is_causal=True), atol=1e-6, rtol=1e-5)


def test_the_cpu_crossover_writes_attention_out_for_short_sequences_only():
    short, long = torch.randn(1, 4, 20, 8), torch.randn(1, 4, 300, 8)
    assert attention_module._written_out_is_faster(short, short)
    assert not attention_module._written_out_is_faster(long, long)
    with torch.no_grad():  # bfloat16 without gradients: the same crossover as float32
        assert attention_module._written_out_is_faster(short.bfloat16(), short.bfloat16())
        assert not attention_module._written_out_is_faster(long.bfloat16(), long.bfloat16())


def test_training_in_bfloat16_asks_the_probe_for_the_shapes_size_class(monkeypatch):
    asked = []
    monkeypatch.setattr(runtime, "fused_attention_trains_faster", lambda *a: asked.append(a) or True)
    q, k = torch.randn(3, 4, 20, 8).bfloat16(), torch.randn(3, 4, 200, 8).bfloat16()
    padding = torch.ones(3, 1, 1, 200, dtype=torch.bool)
    assert not attention_module._written_out_is_faster(q, k)  # the probe said fused
    assert not attention_module._written_out_is_faster(q, k, padding)
    assert not attention_module._written_out_is_faster(q, q, None, True)
    # 3 x 4 heads -> 16 slices, 20 queries -> 32, 200 keys -> 256
    assert asked == [(torch.bfloat16, 16, 32, 256, 8, None), (torch.bfloat16, 16, 32, 256, 8, "padding"),
                     (torch.bfloat16, 16, 32, 32, 8, "causal")]
    huge = torch.randn(64, 16, 1000, 8).bfloat16()  # slices capped so that a probe times PROBE_SCORES scores
    attention_module._written_out_is_faster(huge, huge)
    assert asked[-1][1:4] == (attention_module.PROBE_SCORES // 1024 ** 2, 1024, 1024)
    with torch.no_grad():  # not training, float32: the fixed crossover, no probe
        attention_module._written_out_is_faster(q, k)
    attention_module._written_out_is_faster(q.float(), k.float())
    assert len(asked) == 4


@pytest.mark.parametrize("mask", [None, "padding", "causal"])
def test_the_probe_times_both_kernels_and_wants_the_fused_one_10_percent_faster(monkeypatch, mask):
    ran = []

    def timed(fn, repeats):  # runs each kernel once (forward and backward) and reports a fixed time
        fn()
        ran.append(fn.__name__)
        return times[fn.__name__]

    monkeypatch.setattr(runtime, "_fastest", timed)
    for fused, expected in ((0.85, True), (0.95, False)):
        times = {"fused": fused, "written": 1.0}
        runtime.fused_attention_trains_faster.cache_clear()
        assert runtime.fused_attention_trains_faster(torch.bfloat16, 4, 8, 8, 8, mask) is expected
    assert sorted(ran) == ["fused", "fused", "written", "written"]
    runtime.fused_attention_trains_faster.cache_clear()


@torch.no_grad()
def test_a_decoding_step_writes_attention_out_only_in_bfloat16_with_many_keys_and_one_head_per_query():
    def faster(batch: int, keys: int, dtype=torch.bfloat16, kv_heads: int = 4) -> bool:
        q, k = torch.randn(batch, 4, 1, 8, dtype=dtype), torch.randn(batch, kv_heads, keys, 8, dtype=dtype)
        return attention_module._written_out_is_faster(q, k)

    assert not faster(1, 20, torch.float32)  # float32: fused at every length, short ones included
    assert not faster(8, 2000, torch.float32)
    assert not faster(1, 128) and faster(1, 512) and faster(8, 32)  # bfloat16: batch x keys from 256 on
    assert not faster(8, 2000, kv_heads=2)  # grouped-query: the folded fused kernel


def test_weights_sum_to_one_and_are_zero_where_masked():
    q, k, v = qkv(Tq=4, Tk=6)
    key_mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    mask, _ = attention_mask(key_mask, 4, 6, causal=False)
    _, weights = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 4))
    assert (weights[1, :, :, 3:] == 0).all()


@pytest.mark.parametrize("kind", ["padding", "causal", "both"])
def test_written_out_gradients_equal_the_formulas_under_masks(kind):
    """The mask is added to the scores as 0 / -inf: the gradients must be those of the formula with masked
    scores, and keys that are padding get none at all."""
    q, k, v = (t.double().requires_grad_() for t in qkv(Tq=6, Tk=6))
    key_mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    mask, is_causal = attention_mask(key_mask if kind != "causal" else None, 6, 6, causal=kind != "padding")
    out, _ = scaled_dot_product_attention(q, k, v, mask, is_causal)
    allowed = causal_mask(6, 6) if is_causal else mask
    expected = (q @ k.transpose(-2, -1) / 8**0.5).masked_fill(~allowed, float("-inf")).softmax(dim=-1) @ v
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    torch.testing.assert_close(out, expected)
    for grad, expected_grad in zip(grads, torch.autograd.grad(expected, (q, k, v), grad_out)):
        torch.testing.assert_close(grad, expected_grad)
    if kind != "causal":
        assert (grads[1][1, :, 4:] == 0).all() and (grads[2][1, :, 4:] == 0).all()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bfloat16_attention_keeps_the_query_gradient_while_attention_is_still_uniform(seed, causal):
    """A cross-attention that has not learned yet: keys (and values) nearly alike, so the softmax is flat and
    the queries' true gradient is small. A bfloat16 softmax rounds its weights, and its backward then leaves
    an error 20-50x that gradient; computed in float32 the error stays below it (0.4x here). With a mask the
    scores become float32 where the mask is added: the same must hold."""
    torch.manual_seed(seed)
    B, H, Tq, Tk, D = 2, 2, 8, 25, 32
    q = 6 * torch.randn(B, H, Tq, D, dtype=torch.float64)
    k = 0.3 * torch.randn(B, H, 1, D, dtype=torch.float64) + 0.003 * torch.randn(B, H, Tk, D, dtype=torch.float64)
    v = 0.06 * torch.randn(B, H, 1, D, dtype=torch.float64) + 5e-4 * torch.randn(B, H, Tk, D, dtype=torch.float64)
    grad_out = torch.randn(B, H, Tq, D, dtype=torch.float64)

    def query_grad(dtype):
        query = q.to(dtype, copy=True).requires_grad_()
        out, _ = scaled_dot_product_attention(query, k.to(dtype), v.to(dtype), is_causal=causal)
        out.backward(grad_out.to(dtype))
        return query.grad.double()

    exact = query_grad(torch.float64)
    assert (query_grad(torch.bfloat16) - exact).norm() < exact.norm()


def test_causal_mask_is_bottom_right_aligned():
    assert causal_mask(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]
    assert causal_mask(3, 3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]


def test_fully_masked_rows_do_not_produce_nan():
    key_mask = torch.tensor([[False, False, True, True]])  # left padding under a causal mask
    mask, _ = attention_mask(key_mask, 4, 4, causal=True)
    q, k, v = qkv(B=1, Tq=4, Tk=4)
    assert torch.isfinite(fused_attention(q, k, v, mask)).all()
    assert torch.isfinite(scaled_dot_product_attention(q, k, v, mask)[0]).all()


def copy_into_torch(ours: MultiHeadAttention, d_model: int, n_heads: int) -> nn.MultiheadAttention:
    reference = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        reference.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        reference.out_proj.weight.copy_(ours.o_proj.weight)
        reference.out_proj.bias.copy_(ours.o_proj.bias)
    return reference.eval()


@pytest.mark.parametrize("fused", [True, False])
def test_self_attention_matches_torch_with_padding_and_causal_masks(fused, monkeypatch):
    ours = MultiHeadAttention(config()).eval()
    ours.fused = fused
    monkeypatch.setattr(attention_module, "_written_out_is_faster", lambda *_: False)  # fused means fused
    reference = copy_into_torch(ours, 32, 4)
    x = torch.randn(3, 7, 32)
    key_mask = torch.ones(3, 7, dtype=torch.bool)
    key_mask[1, 5:] = False
    key_mask[2, 2:] = False
    mask, is_causal = attention_mask(key_mask, 7, 7, causal=False)
    expected, _ = reference(x, x, x, key_padding_mask=to_key_padding(key_mask))
    torch.testing.assert_close(ours(x, mask=mask, is_causal=is_causal), expected, atol=1e-6, rtol=1e-5)
    # causal: torch wants True = ignore, the upper triangle
    mask, is_causal = attention_mask(None, 7, 7, causal=True)
    expected, _ = reference(x, x, x, attn_mask=~causal_mask(7, 7))
    torch.testing.assert_close(ours(x, mask=mask, is_causal=is_causal), expected, atol=1e-6, rtol=1e-5)


def test_cross_attention_matches_torch():
    ours = MultiHeadAttention(config()).eval()
    reference = copy_into_torch(ours, 32, 4)
    x, memory = torch.randn(2, 5, 32), torch.randn(2, 9, 32)
    memory_mask = torch.ones(2, 9, dtype=torch.bool)
    memory_mask[0, 6:] = False
    expected, _ = reference(x, memory, memory, key_padding_mask=to_key_padding(memory_mask))
    out = ours(x, mask=memory_mask[:, None, None, :], memory_kv=ours.project_memory(memory))
    assert out.shape == (2, 5, 32)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("n_kv_heads", [1, 2])
def test_grouped_query_equals_multi_head_with_shared_key_value_heads(n_kv_heads):
    gqa = MultiHeadAttention(config(n_kv_heads=n_kv_heads, bias=False)).eval()
    mha = MultiHeadAttention(config(bias=False)).eval()
    repeat = 4 // n_kv_heads
    with torch.no_grad():
        mha.q_proj.weight.copy_(gqa.q_proj.weight)
        mha.o_proj.weight.copy_(gqa.o_proj.weight)
        for name in ("k_proj", "v_proj"):  # each key/value head serves `repeat` query heads
            w = getattr(gqa, name).weight.view(n_kv_heads, 8, 32).repeat_interleave(repeat, dim=0)
            getattr(mha, name).weight.copy_(w.reshape(32, 32))
    assert gqa.k_proj.weight.shape == (n_kv_heads * 8, 32)
    x = torch.randn(2, 6, 32)
    torch.testing.assert_close(gqa(x, is_causal=True), mha(x, is_causal=True), atol=1e-6, rtol=1e-5)


def test_kv_cache_step_by_step_equals_full_causal_attention():
    attention = MultiHeadAttention(config(n_kv_heads=2)).eval()
    x = torch.randn(2, 6, 32)
    full = attention(x, is_causal=True)
    cache = KVCache(2, 2, 10, 8, torch.float32, "cpu")
    prefix = attention(x[:, :3], is_causal=True, cache=cache, position=0)
    steps = [attention(x[:, t:t + 1], cache=cache, position=t) for t in range(3, 6)]
    torch.testing.assert_close(torch.cat([prefix, *steps], dim=1), full, atol=1e-6, rtol=1e-5)


@settings(max_examples=25, deadline=None)
@given(tq=st.integers(1, 6), extra=st.integers(0, 4), heads=st.sampled_from([(4, 4), (4, 2), (4, 1)]),
       pad=st.integers(0, 3))
def test_fused_equals_written_out_for_any_shape(tq, extra, heads, pad):
    tk = tq + extra
    q, k, v = qkv(H=heads[0], Hkv=heads[1], Tq=tq, Tk=tk)
    key_mask = torch.ones(2, tk, dtype=torch.bool)
    key_mask[1, tk - min(pad, tk - 1):] = False
    mask, is_causal = attention_mask(key_mask, tq, tk, causal=True)
    written, weights = scaled_dot_product_attention(q, k, v, mask, is_causal)
    torch.testing.assert_close(fused_attention(q, k, v, mask, is_causal), written, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))


def test_the_probe_leaves_the_global_random_state_alone():  # else probing mid-training changes its dropout
    runtime.fused_attention_trains_faster.cache_clear()
    state = torch.get_rng_state()
    runtime.fused_attention_trains_faster(torch.bfloat16, 2, 8, 8, 8, "causal")
    assert torch.equal(torch.get_rng_state(), state)
    runtime.fused_attention_trains_faster.cache_clear()
