"""Schedules as data: validation names the first bad action; counts need no arrays."""

import pytest

from ckpt import (Backward, Forward, ForwardTape, Free, Load, Loss, Save, Schedule, ScheduleError,
                  forward_only, store_all)


def bad(n, actions, match):
    with pytest.raises(ScheduleError, match=match):
        Schedule(n, actions).validate()


def test_store_all_is_valid_and_readable():
    s = store_all(3).validate()
    assert s.actions == (ForwardTape(1), ForwardTape(2), ForwardTape(3), Loss(),
                         Backward(3), Backward(2), Backward(1))
    text = str(s)
    assert text.splitlines()[0] == "Schedule(n=3: 7 actions, 3 forward, 3 backward)"
    assert "ForwardTape(i=2)" in text
    assert (s.forward_steps, s.backward_steps, s.is_training, s.peak_stored) == (3, 3, True, 4)


def test_actions_round_trip_through_repr_and_compare_by_value():
    for a in (Forward(2), ForwardTape(1), Save(0), Load(3), Free(3), Loss(), Backward(4)):
        assert eval(repr(a)) == a
    assert store_all(4) == store_all(4) and store_all(4) != store_all(5)


def test_schedule_is_immutable():
    s = store_all(2)
    with pytest.raises(AttributeError):
        s.n = 3
    assert isinstance(s.actions, tuple)


def test_forward_needs_previous_activation():
    bad(2, [Forward(2)], r"action #0 Forward\(i=2\): needs x_1 as the current activation, but it is x_0")


def test_backward_needs_its_tape():
    bad(2, [Forward(1), ForwardTape(2), Loss(), Backward(2), Backward(1)],
        r"action #4 Backward\(i=1\): needs tape 1, but it is not kept")


def test_backward_in_reverse_order_only():
    bad(2, [ForwardTape(1), ForwardTape(2), Loss(), Backward(1)], r"#3 .*needs δ_1, but the backward sweep holds δ_2")


def test_backward_before_loss():
    bad(1, [ForwardTape(1), Backward(1)], r"no δ yet \(Loss\(\) first\)")


def test_loss_needs_last_activation_and_runs_once():
    bad(2, [ForwardTape(1), Loss()], r"needs x_2 as the current activation, but it is x_1")
    bad(1, [ForwardTape(1), Loss(), Backward(1), Loss()], "already evaluated")


def test_load_and_free_need_a_checkpoint():
    bad(2, [Load(1)], r"x_1 is not a checkpoint \(Save\(1\) it first\)")
    bad(2, [Free(0)], "x_0 is not a checkpoint")
    bad(2, [Save(1)], "needs x_1 as the current activation")
    bad(2, [Save(0), Save(0)], "already a checkpoint")


def test_end_state_rules():
    bad(2, [ForwardTape(1), ForwardTape(2), Loss(), Backward(2)], r"stopped at δ_1; Backward\(1\)")
    bad(1, [Save(0), ForwardTape(1), Loss(), Backward(1)], r"checkpoints \[0\] are never freed")
    bad(2, [ForwardTape(1), Forward(2)], "a prediction schedule keeps no tapes")
    bad(2, [Forward(1)], "must end at x_2")
    bad(1, [Save(0), ForwardTape(1), Load(0), ForwardTape(1)], "tape 1 is already kept")


def test_index_and_type_errors():
    bad(2, [Forward(3)], r"stage index must be an int in 1..2")
    bad(2, [Forward(0)], r"stage index must be an int in 1..2")
    bad(2, [Save(-1)], r"activation index must be an int in 0..2")
    bad(2, ["Forward(1)"], "is not an action; allowed: Forward, ForwardTape")
    bad(0, [], "at least one stage")


def test_forward_only_is_a_prediction_schedule():
    s = forward_only(4).validate()
    assert not s.is_training and s.forward_steps == 4 and s.backward_steps == 0 and s.peak_stored == 1


def test_counts_by_type():
    s = store_all(5)
    assert s.count(ForwardTape) == 5 and s.count(Loss) == 1 and s.count(Forward, Backward) == 5


def test_backward_drops_the_current_activation():
    bad(2, [Save(0), Forward(1), ForwardTape(2), Loss(), Backward(2), ForwardTape(1)],
        r"action #5 ForwardTape\(i=1\): needs x_0 as the current activation, but there is none")
