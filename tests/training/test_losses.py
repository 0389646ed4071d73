import pytest
import torch
import torch.nn.functional as F

from transformerkit.training import losses
from transformerkit.training.losses import linear_cross_entropy


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_fused_loss_and_gradients_equal_cross_entropy(bias, smoothing, monkeypatch):
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 500 * 64)  # several chunks of 64 rows, the last one partial
    monkeypatch.setattr(losses, "MIN_ROWS", 1)
    h = torch.randn(300, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(500, 16, dtype=torch.float64, requires_grad=True)
    b = torch.randn(500, dtype=torch.float64, requires_grad=True) if bias else None
    y = torch.randint(0, 500, (300,))
    params = [h, w] + ([b] if bias else [])
    ours = linear_cross_entropy(h, w, b, y, smoothing)
    reference = F.cross_entropy(F.linear(h, w, b), y, label_smoothing=smoothing, reduction="sum")
    torch.testing.assert_close(ours, reference)
    for got, expected in zip(torch.autograd.grad(3 * ours, params), torch.autograd.grad(3 * reference, params)):
        torch.testing.assert_close(got, expected)


def test_without_gradients_it_only_computes_the_loss():
    h, w, y = torch.randn(50, 8), torch.randn(30, 8), torch.randint(0, 30, (50,))
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(h, w, None, y, 0.1),
                                   F.cross_entropy(h @ w.t(), y, label_smoothing=0.1, reduction="sum"))


def test_bfloat16_autocast_is_close():
    h = torch.randn(200, 32, requires_grad=True)
    w = (torch.randn(300, 32) * 0.1).requires_grad_()
    y = torch.randint(0, 300, (200,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_cross_entropy(h, w, None, y, 0.1)
    reference = F.cross_entropy(h @ w.t(), y, label_smoothing=0.1, reduction="sum")
    assert abs(ours.item() - reference.item()) / reference.item() < 1e-2


def test_bfloat16_autocast_gradients_are_close_over_several_chunks(monkeypatch):
    monkeypatch.setattr(losses, "MIN_ROWS", 16)
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 16 * 300)  # 200 rows in 13 chunks
    h = torch.randn(200, 32, requires_grad=True)
    w = (torch.randn(300, 32) * 0.1).requires_grad_()
    y = torch.randint(0, 300, (200,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = torch.autograd.grad(linear_cross_entropy(h, w, None, y, 0.1), (h, w))
    reference = torch.autograd.grad(F.cross_entropy(h @ w.t(), y, label_smoothing=0.1, reduction="sum"), (h, w))
    for got, want in zip(ours, reference):
        assert got.dtype == torch.float32
        assert (got - want).norm() / want.norm() < 1e-2


def test_a_large_vocabulary_gets_chunks_of_at_least_min_rows(monkeypatch):
    """GPT-2's vocabulary would give 8 MB chunks of 41 rows; each chunk rewrites the whole weight gradient."""
    seen = []
    product = losses.linear
    monkeypatch.setattr(losses, "linear", lambda a, b: seen.append(a.shape[0]) or product(a, b))
    h, w = torch.randn(1200, 8, requires_grad=True), torch.randn(losses.CHUNK_ELEMENTS // 41, 8, requires_grad=True)
    linear_cross_entropy(h, w, None, torch.randint(0, w.shape[0], (1200,)))
    assert seen[0] == losses.MIN_ROWS  # the first logits matmul: MIN_ROWS rows, not 41


def test_rdrop_loss_is_both_passes_cross_entropy_plus_half_their_symmetric_divergence():
    h = torch.randn(2 * 40, 16, dtype=torch.float64)
    w, b = torch.randn(50, 16, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
    y = torch.randint(0, 50, (40,))
    first, second = F.linear(h, w, b).log_softmax(-1).chunk(2)
    divergence = (F.kl_div(second, first, log_target=True, reduction="sum")  # KL(p1 || p2)
                  + F.kl_div(first, second, log_target=True, reduction="sum"))  # KL(p2 || p1)
    both = F.cross_entropy(F.linear(h, w, b), torch.cat([y, y]), label_smoothing=0.1, reduction="sum")
    torch.testing.assert_close(losses.rdrop_loss(h, w, b, y, 0.1, alpha=5.0), both + 2.5 * divergence)
    same = torch.cat([h[:40], h[:40]])  # two passes that agree: nothing to pull together
    torch.testing.assert_close(losses.rdrop_loss(same, w, b, y, 0.1, alpha=5.0),
                               2 * linear_cross_entropy(h[:40], w, b, y, 0.1))


@pytest.mark.parametrize("autocast", [False, True])
def test_a_right_token_far_below_the_best_still_gets_its_true_loss(autocast):
    """The log-sum-exp comes from the right token's probability, which underflows when its logit is far below
    the row's best (exp(-200) is 0 in float32): those rows must still get their finite, exact loss."""
    h = torch.zeros(3, 4)
    h[:, 0] = 1.0
    w = torch.zeros(6, 4)
    w[0, 0], w[1, 0], w[2, 0] = 150.0, -50.0, 2.0  # logits (150, -50, 2, 0, 0, 0) in every row
    y = torch.tensor([1, 2, 0])  # 200 below the best, 148 below, the best
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        ours = linear_cross_entropy(h, w, None, y, 0.1)
    reference = F.cross_entropy(h @ w.t(), y, label_smoothing=0.1, reduction="sum")
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, reference)
