"""Written-out dropout: the rate, the scale that keeps the expectation, reproducible masks."""

import pytest
import torch

from transformerkit.nn.dropout import Dropout


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_drops_p_of_the_activations_and_keeps_the_expectation(p):
    dropout = Dropout(p).train()
    x = torch.ones(1000, 1000)
    y = dropout(x)
    dropped = float((y == 0).float().mean())
    assert dropped == pytest.approx(p, abs=0.003)  # 1e6 draws: the standard error is about 0.0005
    survivors = y[y != 0]
    assert torch.all(survivors == survivors[0]) and float(survivors[0]) == pytest.approx(1 / (1 - p), rel=1e-4)
    assert float(y.mean()) == pytest.approx(1.0, abs=0.01)


def test_every_position_is_dropped_independently():
    y = Dropout(0.5).train()(torch.ones(64, 4096))
    kept = (y != 0).float()
    # the four 16-bit numbers cut from one 64-bit word must not be correlated: neighbours agree half the time
    agree = float((kept[:, :-1] == kept[:, 1:]).float().mean())
    assert agree == pytest.approx(0.5, abs=0.01)
    assert float(kept.mean(dim=0).std()) < 0.1  # no column is favoured


def test_gradient_is_the_mask_times_the_scale_and_masks_are_reproducible():
    x = torch.randn(8, 16, requires_grad=True)
    torch.manual_seed(3)
    y = Dropout(0.2).train()(x)
    y.sum().backward()
    expected = (y != 0).float() * float((y[y != 0][0] / x[y != 0][0]).detach())
    torch.testing.assert_close(x.grad, expected)
    torch.manual_seed(3)
    torch.testing.assert_close(Dropout(0.2).train()(x), y)


def test_evaluation_and_p_zero_are_the_identity():
    x = torch.randn(4, 5)
    assert Dropout(0.5).eval()(x) is x and Dropout(0.0).train()(x) is x
