import math

import pytest

from transformerkit import ConfigError
from transformerkit.training.schedules import cosine, inverse_sqrt, make_schedule


def test_inverse_sqrt_is_the_paper_formula():
    d_model, warmup = 512, 4000
    peak = (d_model * warmup) ** -0.5
    lr = inverse_sqrt(peak, warmup)
    for step in (1, 100, 4000, 10000, 100000):
        paper = d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)
        assert math.isclose(lr(step), paper, rel_tol=1e-12)
    assert max(range(1, 20000, 7), key=lr) in range(3995, 4005)


def test_cosine_warms_up_then_decays_to_the_floor():
    lr = cosine(1e-3, 100, 1100, floor=1e-5)
    assert lr(50) == pytest.approx(5e-4) and lr(100) == pytest.approx(1e-3)
    assert lr(600) == pytest.approx((1e-3 + 1e-5) / 2) and lr(1100) == pytest.approx(1e-5)


def test_cosine_needs_a_length():
    with pytest.raises(ConfigError, match="max_steps"):
        make_schedule("cosine", 1e-3, 10, None, 0.0)
    with pytest.raises(ConfigError, match="'linear' is not allowed"):
        make_schedule("linear", 1e-3, 10, 100, 0.0)
