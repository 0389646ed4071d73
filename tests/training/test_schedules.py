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


def test_a_budget_plan_fits_steps_and_evaluations_in_the_time_left():
    from transformerkit.training.schedules import plan_budget

    n = plan_budget(budget_seconds=600, elapsed=30, step=30, step_seconds=0.5, eval_seconds=10, evaluations=0,
                    eval_every=100, snapshot_every=0, averaged=False, max_steps=None)
    def cost(total):  # steps, and evaluations every 100 steps and at the end
        return (total - 30) * 0.5 + (total // 100 + 1) * 10

    assert cost(n) <= 0.98 * 600 - 30 - 0.5 < cost(n + 1)  # a step's time kept in reserve
    spread = plan_budget(budget_seconds=120, elapsed=10, step=20, step_seconds=0.5, eval_seconds=2, evaluations=4,
                         eval_every=0, snapshot_every=10, averaged=True, max_steps=None)
    assert spread % 10 == 0  # it ends on a snapshot, so the averaged ones are the last
    assert (spread - 20) * 0.5 + (4 + 1) * 2 <= 0.98 * 120 - 10 - 0.5
    assert plan_budget(budget_seconds=600, elapsed=30, step=30, step_seconds=0.5, eval_seconds=10, evaluations=0,
                       eval_every=100, snapshot_every=0, averaged=False, max_steps=200) == 200


def test_a_re_planned_cosine_continues_without_a_jump_and_ends_at_the_floor():
    from transformerkit.training.schedules import cosine, cosine_progress

    first = cosine(1e-3, 100, 1000, floor=1e-5)
    anchor = (400, cosine_progress(100, 1000, 400))
    longer, shorter = cosine(1e-3, 100, 1600, 1e-5, anchor), cosine(1e-3, 100, 700, 1e-5, anchor)
    for replanned, end in ((longer, 1600), (shorter, 700)):
        assert replanned(400) == pytest.approx(first(400))
        assert replanned(401) == pytest.approx(first(400), rel=0.01)
        assert replanned(end) == pytest.approx(1e-5)
    assert longer(1000) > first(1000) and shorter(650) < first(650)


def test_a_re_plan_with_no_time_left_still_takes_the_decay_to_its_floor():
    from transformerkit.training.schedules import cosine, replanned

    plan = {"planned_steps": 10, "warmup_steps": 2, "anchor": [8, 0.68], "evaluations": [4, 8]}
    short = replanned(plan, 9, 9)  # the step just made used up the time: no step fits any more
    assert short["planned_steps"] == 10 and short["evaluations"] == [4, 8]
    assert cosine(1e-3, 2, 10, 1e-5, short["anchor"])(10) == pytest.approx(1e-5)  # the last step at the floor
    assert replanned(plan, 9, 14)["planned_steps"] == 14  # more time: more steps, as before
    done = {**plan, "planned_steps": 9}
    assert replanned(done, 9, 9)["planned_steps"] == 9  # a plan already at its end is not stretched


def test_a_replan_that_moves_the_evaluation_points_does_not_evaluate_twice_in_a_row():
    from transformerkit.training.schedules import next_evaluation

    steps, last = [], 0
    for done in range(4):  # no re-plan: the plan's evenly spread points, the last at its end
        last = next_evaluation(1000, 4, done, last)
        steps.append(last)
    assert steps == [250, 500, 750, 1000]
    # the 2nd of 8 evaluations made at step 470 of a 1880-step plan; re-planned to 1890 steps, whose 2nd point
    # is step 472, or shrunk to 900 steps, whose 3rd point (337) has passed: the next comes a share of the rest later
    assert next_evaluation(1890, 8, 2, 470) == 707 and next_evaluation(900, 8, 2, 470) == 542
