"""Strategies: exact forward-step counts, bounded storage, and a registry users extend."""

import math

import numpy as np
import pytest

import ckpt
from ckpt import Backward, ForwardTape, Loss, Schedule
from ckpt.strategies import segment_bounds

NS = range(1, 201)


@pytest.mark.parametrize("n", NS)
def test_forward_step_closed_forms(n):
    assert ckpt.make_schedule("store_all", n).forward_steps == n
    assert ckpt.make_schedule("recompute", n).forward_steps == n + n * (n - 1) // 2
    last = segment_bounds(n, math.ceil(math.sqrt(n)))[-1]
    s = ckpt.make_schedule("sqrt_n", n)
    assert s.forward_steps == 2 * n - (last[1] - last[0] + 1)
    assert s.backward_steps == n
    assert ckpt.every_segment(n, math.ceil(math.sqrt(n))).validate().forward_steps == 2 * n


@pytest.mark.parametrize("n", NS)
def test_stored_values_per_strategy(n):
    k = math.ceil(math.sqrt(n))
    assert ckpt.make_schedule("store_all", n).peak_stored == n + 1
    assert ckpt.make_schedule("recompute", n).peak_stored <= 3
    assert ckpt.make_schedule("sqrt_n", n).peak_stored <= 2 * k + 2


@pytest.mark.parametrize("n,k", [(10, 3), (7, 7), (7, 20), (100, 1), (1, 1), (9, 4)])
def test_sqrt_n_segments_override(n, k):
    bounds = segment_bounds(n, k)
    lengths = [b - a + 1 for a, b in bounds]
    assert len(bounds) == min(k, n) and sum(lengths) == n
    assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths)
    assert [a for a, _ in bounds] == [1] + [b + 1 for _, b in bounds[:-1]]
    assert ckpt.make_schedule("sqrt_n", n, segments=k).forward_steps == 2 * n - lengths[-1]


def test_one_segment_is_store_all():
    assert ckpt.sqrt_n(6, segments=1) == ckpt.store_all(6)


def test_unknown_strategy_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown strategy 'binomial'; known: .*recompute, .*sqrt_n, store_all"):
        ckpt.make_schedule("binomial", 4)


@pytest.mark.parametrize("n", [0, -1, 2.5, "3", True])
def test_depth_must_be_a_positive_int(n):
    with pytest.raises(ValueError, match="depth must be an int ≥ 1"):
        ckpt.make_schedule("store_all", n)


def test_bad_segments():
    with pytest.raises(ValueError, match="segments must be an int ≥ 1, got 0"):
        ckpt.make_schedule("sqrt_n", 4, segments=0)


def test_strategy_must_return_a_valid_schedule_for_n():
    with pytest.raises(TypeError, match="returned list, expected a Schedule"):
        ckpt.make_schedule(lambda n: [], 3)
    with pytest.raises(ValueError, match="built a schedule for n=2, asked for n=3"):
        ckpt.make_schedule(lambda n: ckpt.store_all(2), 3)
    with pytest.raises(ckpt.ScheduleError, match="action #1"):
        ckpt.make_schedule(lambda n: Schedule(n, [ForwardTape(1), Backward(1)]), 1)


def every_other_stage(n):
    """A user strategy: keep tapes for odd stages only, re-run from x_0 for the even ones."""
    actions, taped = [], set()
    from ckpt import Forward, Free, Load, Save
    actions.append(Save(0))
    for i in range(1, n + 1):
        keep = i % 2 == 1 or i == n
        actions.append(ForwardTape(i) if keep else Forward(i))
        taped |= {i} if keep else set()
    actions.append(Loss())
    for i in range(n, 0, -1):
        if i not in taped:
            actions += [Load(0), *(Forward(j) for j in range(1, i)), ForwardTape(i)]
        actions.append(Backward(i))
    # the odd stages' tapes were kept from the first sweep; re-running stage i-1 without tape is harmless
    return Schedule(n, actions + [Free(0)])


def test_user_strategy_works_everywhere_a_builtin_does():
    ckpt.register_strategy("every_other", every_other_stage)
    assert "every_other" in ckpt.strategies()
    model = ckpt.MLP([5, 7, 6, 4, 3], activation="tanh")
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 5)), rng.standard_normal((4, 3))
    ref = ckpt.gradients(model, x, y, "store_all")
    mine = ckpt.gradients(model, x, y, "every_other")
    assert mine.loss == ref.loss
    assert all(np.array_equal(g[k], r[k]) for g, r in zip(mine.grads, ref.grads) for k in g)
    assert ckpt.predict_memory(model, "every_other", batch=4).forward_steps == mine.stats.forward_steps


def test_register_as_decorator_and_bad_names():
    @ckpt.register_strategy("tiny_store_all")
    def tiny(n):
        return ckpt.store_all(n)

    assert ckpt.get_strategy("tiny_store_all") is tiny
    with pytest.raises(ValueError, match="non-empty str"):
        ckpt.register_strategy("", tiny)
    with pytest.raises(TypeError, match="must be callable"):
        ckpt.register_strategy("x", 3)
