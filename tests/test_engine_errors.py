"""Bad input to the engine: each a clear error that says what was wrong and what is allowed."""

import re

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


# --------------------------------------------------------- issue 13: no silent wrong result

@pytest.mark.parametrize("strategy", ["forward_only", ckpt.forward_only])
def test_prediction_strategy_has_no_gradients(model, strategy):
    x, y = data()
    with pytest.raises(ValueError, match=r"strategy 'forward_only' builds a prediction schedule .*"
                                         r"use ckpt.forward\(model, x\)"):
        ckpt.gradients(model, x, y, strategy=strategy)


def test_built_in_strategy_needs_replace(model):
    with pytest.raises(ValueError, match=r"'store_all' is a built-in strategy; .* pass replace=True"):
        ckpt.register_strategy("store_all", ckpt.recompute)
    assert ckpt.make_schedule("store_all", 4).forward_steps == 4          # untouched
    try:
        ckpt.register_strategy("store_all", ckpt.recompute, replace=True)
        assert ckpt.make_schedule("store_all", 4).forward_steps == 10
    finally:
        ckpt.register_strategy("store_all", ckpt.store_all, replace=True)


def test_user_strategy_may_be_registered_again():
    ckpt.register_strategy("test_errors_mine", ckpt.store_all)
    ckpt.register_strategy("test_errors_mine", ckpt.recompute)             # a re-run notebook cell
    assert ckpt.make_schedule("test_errors_mine", 4).forward_steps == 10


def test_unknown_strategy_option(model):
    x, y = data()
    with pytest.raises(TypeError, match="strategy 'store_all' takes no option 'segments'; its options: none"):
        ckpt.gradients(model, x, y, segments=2)
    with pytest.raises(TypeError, match="strategy 'sqrt_n' takes no option 'slots'; its options: segments"):
        ckpt.make_schedule("sqrt_n", 4, slots=2)


def test_empty_batch(model):
    x, y = data(batch=0)
    with pytest.raises(ValueError, match=r"the batch is empty \(x has shape \(0, 4\)\); pass at least one row"):
        ckpt.gradients(model, x, y)


@pytest.mark.parametrize("dtype,name", [(complex, "complex128"), (bool, "bool"), (np.int64, "int64")])
def test_mse_targets_must_be_real_floats(model, dtype, name):
    x, y = data()
    with pytest.raises(ValueError, match=f"mse needs real floating-point targets y, got {name}"):
        ckpt.gradients(model, x, y.astype(dtype))


def test_mse_integer_targets_hint_cross_entropy(model):
    x, _ = data()
    with pytest.raises(ValueError, match="for class labels use loss='cross_entropy'"):
        ckpt.gradients(model, x, np.zeros((2, 3), dtype=int))


def test_cross_entropy_probabilities_must_be_distributions():
    m = ckpt.MLP([4, 3], loss="cross_entropy")
    x, _ = data()
    with pytest.raises(ValueError, match=r"probabilities must sum to 1 in each row .* got 15 in row 0"):
        ckpt.gradients(m, x, np.full((2, 3), 5.0))
    with pytest.raises(ValueError, match=r"probabilities must be ≥ 0, got -0.5 \(row 1\)"):
        ckpt.gradients(m, x, np.array([[0.5, 0.5, 0.0], [1.5, -0.5, 0.0]]))
    ok = ckpt.gradients(m, x, np.array([[0.2, 0.3, 0.5], [0.0, 1.0, 0.0]]))
    assert np.isfinite(ok.loss)


@pytest.mark.parametrize("y,match", [
    (np.array([True, False]), r"integer labels of shape \(2,\) .* got bool \(2,\)"),
    (np.array([0.0, 1.0]), r"integer labels of shape \(2,\) .* got float64 \(2,\)"),
    (np.array([-1, 2]), r"labels must lie in 0..2, got -1..2"),
])
def test_cross_entropy_labels(y, match):
    m = ckpt.MLP([4, 3], loss="cross_entropy")
    with pytest.raises(ValueError, match=match):
        ckpt.gradients(m, data()[0], y)


def test_predict_memory_checks_the_strategy_in_predict_mode(model):
    with pytest.raises(ValueError, match="unknown strategy 'nope'; known: "):
        ckpt.predict_memory(model, "nope", batch=2, mode="predict")
    with pytest.raises(ValueError, match="batch must be an int ≥ 1, got True"):
        ckpt.predict_memory(model, batch=True)


def exploding(stage: int, scale: float):
    m = ckpt.MLP([4, 8, 8, 8, 3], activation="relu")
    m.stages[stage - 1].W *= scale
    return m


@pytest.mark.parametrize("strategy", ["store_all", "sqrt_n", "recompute"])
def test_non_finite_forward_names_the_first_stage(strategy):
    m = exploding(2, 1e200)
    m.stages[2].W *= 1e200                              # stage 3 overflows to inf (stage 2 stays finite)
    with pytest.raises(ckpt.NonFiniteError, match=r"NaN or inf first appeared in stage 3's forward output x_3"):
        ckpt.gradients(m, *data(n_out=3), strategy=strategy)


def test_non_finite_loss_is_named():
    with pytest.raises(ckpt.NonFiniteError, match="first appeared in the loss"):
        ckpt.gradients(exploding(4, 1e160), *data(n_out=3))


def test_non_finite_gradient_is_named():
    m = exploding(1, 1e-200)                            # huge x, tiny W_1: x_1..x_4 ordinary
    x, y = data(n_out=3)
    x *= 1e200
    y += 1e150                                          # loss ~1e300, finite; ∂W_1 = δ_1ᵀ x ~ 1e350 = inf
    with pytest.raises(ckpt.NonFiniteError, match=r"first appeared in stage 1's backward: gradient W_1 "):
        ckpt.gradients(m, x, y)


def test_non_finite_warn_and_ignore():
    m, (x, y) = exploding(4, 1e160), data(n_out=3)
    with pytest.warns(RuntimeWarning, match="first appeared in the loss") as caught:
        r = ckpt.gradients(m, x, y, nonfinite="warn")
    assert len(caught) == 1 and not np.isfinite(r.loss)
    with np.errstate(all="ignore"):
        assert not np.isfinite(ckpt.gradients(m, x, y, nonfinite="ignore").loss)
    with pytest.raises(ValueError, match="nonfinite must be one of raise, warn, ignore, got 'loud'"):
        ckpt.gradients(m, x, y, nonfinite="loud")


def test_float32_mlp_draws_float32_weights_directly():
    import tracemalloc
    tracemalloc.start()
    m = ckpt.MLP([1000, 1000], dtype="float32")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert m.stages[0].W.dtype == np.float32
    assert peak < 4_000_000 + 2**24 + 100_000            # the weights and one 16 MiB float64 block at most
    m64 = ckpt.MLP([1000, 1000], dtype="float64")
    assert np.array_equal(m.stages[0].W, m64.stages[0].W.astype(np.float32))   # same values as before


def test_too_large_model_is_refused(monkeypatch):
    monkeypatch.setattr(ckpt.memcheck, "memory_limits", lambda device="cpu": {"MemAvailable": 2**30})
    with pytest.raises(ckpt.InsufficientMemoryError,
                       match=r"MLP\(\[200000, 200000\], dtype='float32'\) \(its parameters\) needs 149.01 GiB "
                             r"\(160,000,800,000 B\), but this process may use 1.00 GiB .*MemAvailable"):
        ckpt.MLP([200000, 200000], dtype="float32")


@pytest.mark.parametrize("sizes,match", [
    ([3, True, 2], r"layer sizes must be ints ≥ 1, got \[3, True, 2\]"),
    ([3, 2.0, 2], r"layer sizes must be ints ≥ 1"),
    ([3, -4, 2], r"layer sizes must be ints ≥ 1"),
])
def test_bad_sizes_of_every_kind(sizes, match):
    with pytest.raises(ValueError, match=match):
        ckpt.MLP(sizes)
    with pytest.raises(TypeError, match="MLP sizes must be a list of ints"):
        ckpt.MLP(5)


@pytest.mark.parametrize("n", [-1, 2.0, True, "4"])
def test_bad_depths(n):
    with pytest.raises(ValueError, match="depth must be an int ≥ 1"):
        ckpt.make_schedule("store_all", n)


def test_bad_l2_type():
    with pytest.raises(ValueError, match="l2 must be a finite number ≥ 0, got 'big'"):
        ckpt.MLP([3, 2], l2="big")


@pytest.mark.parametrize("shape,match", [
    ((4,), r"needs input of shape \(batch, 4\), got \(4,\)"),
    ((2, 4, 1), r"needs input of shape \(batch, 4\), got \(2, 4, 1\)"),
])
def test_input_with_wrong_ndim(model, shape, match):
    with pytest.raises(ValueError, match=match):
        ckpt.gradients(model, np.zeros(shape), data()[1])


@pytest.mark.parametrize("dtype", [object, "U3", complex, np.int32])
def test_non_float_inputs(model, dtype):
    x, y = data()
    with pytest.raises(ValueError, match=r"x must hold real floating-point numbers \(float64, the model's dtype\)"):
        ckpt.gradients(model, x.astype(dtype), y)


def test_model_must_be_a_chain():
    with pytest.raises(TypeError, match="model must be a ckpt.Chain"):
        ckpt.gradients("mlp", *data())


def test_schedule_indices_refuse_bools():
    with pytest.raises(ckpt.ScheduleError, match="stage index must be an int in 1..1"):
        ckpt.Schedule(1, [ckpt.ForwardTape(True), ckpt.Loss(), ckpt.Backward(1)]).validate()


def test_model_must_be_a_chain_everywhere():
    with pytest.raises(TypeError, match="model must be a ckpt.Chain"):
        ckpt.forward([1, 2], np.zeros((2, 4)))
    with pytest.raises(TypeError, match=r"memory: model must be a ckpt.Chain \(e.g. ckpt.MLP"):
        ckpt.predict_memory("mlp", batch=2)


def test_memory_check_must_be_a_bool(model):
    with pytest.raises(TypeError, match="memory_check must be True or False, got 'no'"):
        ckpt.gradients(model, *data(), memory_check="no")


# ------------------------------------------------------------------ found by trying the public API as a user


@pytest.mark.parametrize("strategy, option, example", [("revolve", "slots", "slots=8"),
                                                        ("optimal", "budget_bytes", "budget_bytes='512MiB'")])
def test_a_strategy_without_its_required_option_names_it(model, strategy, option, example):
    x, y = data()
    with pytest.raises(TypeError, match=rf"strategy '{strategy}' needs the option\(s\) '{option}' "
                                        rf"\(e.g. {re.escape(example)}\); none given"):
        ckpt.gradients(model, x, y, strategy)
    with pytest.raises(TypeError, match=rf"'{strategy}' needs the option\(s\) '{option}'"):
        ckpt.predict_memory(model, strategy, batch=2)


def test_gradients_has_no_fused_step(model):
    x, y = data()
    with pytest.raises(TypeError, match=r"gradients returns the gradients, so it has no fused optimizer step; "
                                        r"use ckpt.train_step\(model, x, y, optimizer, strategy, fused=True\)"):
        ckpt.gradients(model, x, y, fused=True)


def test_prediction_has_no_fused_step(model):
    with pytest.raises(ValueError, match=r"fused=True fuses the optimizer step .* prediction \(mode='predict'\) "
                                         r"has neither: leave fused=False"):
        ckpt.predict_memory(model, "store_all", batch=2, mode="predict", fused=True)


@pytest.mark.parametrize("planner", [ckpt.optimal, ckpt.chen_greedy])
@pytest.mark.parametrize("profile", [None, 8, "profile.json"])
def test_planners_need_a_profile(planner, profile):
    with pytest.raises(TypeError, match=rf"planners: {planner.__name__} plans from a ckpt.Profile .* got "):
        planner(profile, 10**6)


def test_register_strategy_refuses_reserved_names_and_odd_arguments():
    with pytest.raises(ValueError, match=r"'all' is reserved .* register yours under another name"):
        ckpt.register_strategy("all", ckpt.recompute)
    with pytest.raises(ValueError, match=r"'forward_only' is reserved"):
        ckpt.register_strategy("forward_only", ckpt.recompute)
    with pytest.raises(TypeError, match=r"replace must be True or False, got 'yes'"):
        ckpt.register_strategy("mine", ckpt.recompute, replace="yes")
    with pytest.raises(TypeError, match=r"strategy 'no_depth' must take the number of stages n .* it takes none"):
        ckpt.register_strategy("no_depth", lambda: None)
    assert "mine" not in ckpt.strategies() and "no_depth" not in ckpt.strategies()


@pytest.mark.parametrize("seed", [-1, 1.5, "a", True])
def test_mlp_seed_must_be_a_natural_number(seed):
    with pytest.raises(ValueError, match=rf"chain: seed must be an int ≥ 0 or None \(fresh randomness\), got "
                                         rf"{re.escape(repr(seed))}"):
        ckpt.MLP([4, 4], seed=seed)


def test_mlp_memory_check_is_a_bool_and_cross_entropy_needs_two_classes():
    with pytest.raises(TypeError, match=r"chain: memory_check must be True or False, got 'no'"):
        ckpt.MLP([4, 4], memory_check="no")
    with pytest.raises(ValueError, match=r"cross_entropy needs ≥ 2 outputs \(one per class\), got 1; "
                                         r"for one output use loss='mse'"):
        ckpt.MLP([4, 1], loss="cross_entropy")


def test_more_sqrt_n_segments_than_stages_is_one_stage_per_segment():
    assert ckpt.make_schedule("sqrt_n", 4, segments=99) == ckpt.make_schedule("sqrt_n", 4, segments=4)
