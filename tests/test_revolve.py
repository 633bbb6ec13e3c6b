"""Revolve: forward-step counts equal Griewank & Walther's closed form; never more than s checkpoints."""

import math

import pytest

import ckpt
from ckpt.planners import revolve_count
from ckpt.schedule import Forward, Load, Loss, _Walk


def beta(s, t):
    return math.comb(s + t, s)


def closed_form(n, s):
    """n + t·n − β(s+1, t−1) with β(s, t−1) < n ≤ β(s, t) (written out again, independently)."""
    t = next(t for t in range(n + 1) if beta(s, t) >= n)
    return n + t * n - (beta(s + 1, t - 1) if t >= 1 else 0)


def most_checkpoints(schedule) -> int:
    """Most checkpoints held at once, by the schedule's own state walk."""
    walk, most = _Walk(schedule.n), 0
    for a in schedule:
        assert walk.step(a) is None
        most = max(most, len(walk.checkpoints))
    return most


def test_issue_examples():
    assert [ckpt.revolve(10, s).forward_steps for s in (1, 2, 3, 9)] == [55, 30, 25, 19]


def test_closed_form_helper_agrees():
    assert all(revolve_count(n, s) == closed_form(n, s) for n in range(1, 301) for s in range(1, 11))


@pytest.mark.parametrize("s", range(1, 11))
def test_counts_every_n_up_to_300(s):
    for n in range(1, 301):
        schedule = ckpt.revolve(n, s)
        assert schedule.forward_steps == closed_form(n, s), (n, s)
        if n <= 60 or n % 20 == 0:         # the full state walk on a spread of n keeps this fast
            schedule.validate()
            assert most_checkpoints(schedule) <= s


def test_n_100_every_slot_count():
    for s in range(1, 100):
        schedule = ckpt.make_schedule("revolve", 100, slots=s)
        assert schedule.forward_steps == closed_form(100, s), s
        assert most_checkpoints(schedule) <= s


@pytest.mark.parametrize("n,s", [(10, 3), (37, 4), (64, 2), (5, 1)])
def test_first_sweep_is_one_forward_pass(n, s):
    actions = ckpt.revolve(n, s).actions
    before = actions[:actions.index(Loss())]
    assert not any(isinstance(a, Load) for a in before)
    assert [a.i for a in before if hasattr(a, "i") and not isinstance(a, (ckpt.Save, ckpt.Free))] == list(range(1, n + 1))


def test_gradients_bitwise_equal_store_all():
    import numpy as np
    model = ckpt.MLP([6, 9, 7, 8, 5, 4, 6, 3], activation="tanh")
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((5, 6)), rng.standard_normal((5, 3))
    reference = ckpt.gradients(model, x, y)
    for s in (1, 2, 3, 7):
        result = ckpt.gradients(model, x, y, strategy="revolve", slots=s)
        assert result.loss == reference.loss
        for mine, theirs in zip(result.grads, reference.grads):
            assert all(np.array_equal(mine[k], theirs[k]) for k in theirs)


def test_bad_slots_are_refused():
    with pytest.raises(ValueError, match="slots ≥ 1"):
        ckpt.revolve(5, 0)
