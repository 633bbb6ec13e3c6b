"""Bad input to the engine: each a clear error that says what was wrong and what is allowed."""

import numpy as np
import pytest

import ckpt


@pytest.fixture
def model():
    return ckpt.MLP([4, 6, 3], activation="tanh", loss="mse")


def data(batch=2, n_in=4, n_out=3, dtype="float64"):
    rng = np.random.default_rng(0)
    return rng.standard_normal((batch, n_in)).astype(dtype), rng.standard_normal((batch, n_out)).astype(dtype)


def test_input_features_mismatch(model):
    x, y = data(n_in=5)
    with pytest.raises(ValueError, match=r"Dense\(4 → 6\) needs input of shape \(batch, 4\), got \(2, 5\)"):
        ckpt.gradients(model, x, y)


def test_target_shape_mismatch(model):
    x, y = data(n_out=4)
    with pytest.raises(ValueError, match=r"mse needs y of the output's shape \(2, 3\), got \(2, 4\)"):
        ckpt.gradients(model, x, y)


def test_cross_entropy_targets():
    m = ckpt.MLP([4, 3], loss="cross_entropy")
    x, _ = data()
    with pytest.raises(ValueError, match=r"integer labels of shape \(2,\) or probabilities of shape \(2, 3\)"):
        ckpt.gradients(m, x, np.zeros(5, dtype=int))
    with pytest.raises(ValueError, match=r"labels must lie in 0..2, got 0..3"):
        ckpt.gradients(m, x, np.array([0, 3]))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_and_targets(model, bad):
    x, y = data()
    x[1, 2] = bad
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        ckpt.gradients(model, x, y)
    x, y = data()
    y[0, 0] = bad
    with pytest.raises(ValueError, match="y contains NaN or inf"):
        ckpt.gradients(model, x, y)


def test_dtype_mismatch(model):
    x, y = data(dtype="float32")
    with pytest.raises(ValueError, match=r"input dtype float32 does not match the model's float64; pass x.astype"):
        ckpt.gradients(model, x, y)


def test_non_array_inputs(model):
    with pytest.raises(TypeError, match="x must be a numpy array, got list"):
        ckpt.gradients(model, [[0.0] * 4], data()[1])


def test_depth_zero_everywhere():
    with pytest.raises(ValueError, match=r"an MLP needs at least \[in, out\] sizes \(depth ≥ 1\)"):
        ckpt.MLP([5])
    with pytest.raises(ValueError, match="at least one stage"):
        ckpt.Chain([])
    with pytest.raises(ValueError, match="depth must be an int ≥ 1"):
        ckpt.make_schedule("sqrt_n", 0)


def test_schedule_for_another_depth(model):
    x, y = data()
    with pytest.raises(ValueError, match="schedule is for 3 stages but the model has 2; build the schedule with n=2"):
        ckpt.execute(ckpt.store_all(3), ckpt.NumpyBackend(model), x, y)


def test_invalid_schedule_is_refused_before_running(model):
    x, y = data()
    bad = ckpt.Schedule(2, [ckpt.ForwardTape(1), ckpt.Loss()])
    with pytest.raises(ckpt.ScheduleError, match=r"action #1 Loss\(\): needs x_2"):
        ckpt.execute(bad, ckpt.NumpyBackend(model), x, y)
    with pytest.raises(TypeError, match="expected a ckpt.Schedule, got list"):
        ckpt.execute([ckpt.Loss()], ckpt.NumpyBackend(model), x, y)


def test_training_needs_targets(model):
    with pytest.raises(ValueError, match="needs targets y"):
        ckpt.execute(ckpt.store_all(2), ckpt.NumpyBackend(model), data()[0])


@pytest.mark.parametrize("kwargs,match", [
    (dict(activation="gelu"), "unknown activation 'gelu'; allowed: identity, relu, sigmoid, tanh"),
    (dict(loss="hinge"), "unknown loss 'hinge'; allowed: mse, cross_entropy"),
    (dict(dtype="float16"), "dtype must be one of float32, float64, got 'float16'"),
    (dict(l2=-1.0), "l2 must be a finite number ≥ 0"),
])
def test_bad_model_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ckpt.MLP([3, 4, 2], **kwargs)


def test_bad_sizes():
    with pytest.raises(ValueError, match=r"layer sizes must be ints ≥ 1, got \[3, 0, 2\]"):
        ckpt.MLP([3, 0, 2])


def test_set_params_checks_shapes(model):
    params = [{k: v.copy() for k, v in p.items()} for p in model.params]
    params[1]["W"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match=r"stage 2 W has shape \(3, 6\), got \(2, 2\)"):
        model.set_params(params)
    with pytest.raises(ValueError, match="expected parameters for 2 stages, got 1"):
        model.set_params(params[:1])


def test_predict_memory_bad_options(model):
    with pytest.raises(ValueError, match="mode must be 'train' or 'predict', got 'eval'"):
        ckpt.predict_memory(model, batch=2, mode="eval")
    with pytest.raises(ValueError, match="batch must be an int ≥ 1, got 0"):
        ckpt.predict_memory(model, batch=0)
