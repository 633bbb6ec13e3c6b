"""Gradients: every strategy bitwise equal to store_all; store_all equal to calculus and to torch."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckpt
from ckpt.layers import ACTIVATIONS, LOSSES

STRATEGIES = ["store_all", "recompute", "sqrt_n"]


def make_problem(sizes, activation, loss, l2=0.0, batch=3, seed=0, dtype="float64", targets="labels"):
    model = ckpt.MLP(sizes, activation=activation, loss=loss, l2=l2, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for p in model.params:                       # non-zero biases exercise ∂b
        p["b"][...] = 0.1 * rng.standard_normal(p["b"].shape)
    x = rng.standard_normal((batch, sizes[0])).astype(dtype)
    if loss == "mse":
        y = rng.standard_normal((batch, sizes[-1])).astype(dtype)
    elif targets == "labels":
        y = rng.integers(0, sizes[-1], batch)
    else:
        y = rng.dirichlet(np.ones(sizes[-1]), batch).astype(dtype)
    return model, x, y


def flat(grads):
    return np.concatenate([g[k].ravel() for g in grads for k in ("W", "b")])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(depth=st.integers(1, 40), data=st.data(), activation=st.sampled_from(sorted(ACTIVATIONS)),
       loss=st.sampled_from(sorted(LOSSES)), l2=st.sampled_from([0.0, 0.03]),
       batch=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_every_strategy_is_bitwise_store_all(depth, data, activation, loss, l2, batch, seed):
    sizes = data.draw(st.lists(st.integers(1, 9), min_size=depth + 1, max_size=depth + 1))
    if loss == "cross_entropy":
        sizes[-1] = max(sizes[-1], 2)
    model, x, y = make_problem(sizes, activation, loss, l2, batch, seed)
    ref = ckpt.gradients(model, x, y, "store_all")
    segments = data.draw(st.none() | st.integers(1, depth + 2))
    runs = [ckpt.gradients(model, x, y, "recompute"), ckpt.gradients(model, x, y, "sqrt_n", segments=segments)]
    for got in runs:
        assert got.loss == ref.loss
        assert np.array_equal(got.dx, ref.dx)
        for g, r in zip(got.grads, ref.grads):
            assert np.array_equal(g["W"], r["W"]) and np.array_equal(g["b"], r["b"])


def objective(model, x, y):
    return ckpt.gradients(model, x, y, "store_all").loss


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("loss,targets", [("mse", None), ("cross_entropy", "labels"), ("cross_entropy", "probs")])
@pytest.mark.parametrize("l2", [0.0, 0.1])
def test_store_all_matches_central_differences(activation, loss, targets, l2):
    model, x, y = make_problem([4, 5, 6, 3], activation, loss, l2, batch=3, targets=targets)
    got = ckpt.gradients(model, x, y, "store_all")
    eps, numeric = 1e-6, []
    for p in model.params:
        for name in ("W", "b"):
            a = p[name]
            for idx in np.ndindex(a.shape):
                keep = a[idx]
                a[idx] = keep + eps
                up = objective(model, x, y)
                a[idx] = keep - eps
                down = objective(model, x, y)
                a[idx] = keep
                numeric.append((up - down) / (2 * eps))
    numeric, analytic = np.array(numeric), flat(got.grads)
    assert np.linalg.norm(numeric - analytic) / np.linalg.norm(numeric + analytic) < 1e-6


def torch_reference(model, x, y, activation, loss, l2):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    acts = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "identity": lambda z: z}
    params = [{k: torch.tensor(v, requires_grad=True) for k, v in p.items()} for p in model.params]
    xt = torch.tensor(x, requires_grad=True)
    a = xt
    for k, p in enumerate(params):
        a = F.linear(a, p["W"], p["b"])
        if k < len(params) - 1:
            a = acts[activation](a)
    if loss == "mse":
        J = 0.5 * ((a - torch.tensor(y)) ** 2).sum() / x.shape[0]
    else:
        J = F.cross_entropy(a, torch.tensor(y))
    J = J + 0.5 * l2 * sum((p["W"] ** 2).sum() for p in params)
    J.backward()
    grads = [{k: v.grad.numpy() for k, v in p.items()} for p in params]
    return J.item(), grads, xt.grad.numpy()


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("loss,targets", [("mse", None), ("cross_entropy", "labels"), ("cross_entropy", "probs")])
def test_store_all_matches_torch_autograd(activation, loss, targets):
    model, x, y = make_problem([6, 8, 8, 8, 4], activation, loss, l2=0.05, batch=5, targets=targets)
    got = ckpt.gradients(model, x, y, "store_all")
    J, grads, dx = torch_reference(model, x, y, activation, loss, 0.05)
    rel = lambda a, b: np.linalg.norm(a - b) / np.linalg.norm(b)
    assert abs(got.loss - J) / abs(J) < 1e-12
    assert rel(flat(got.grads), flat(grads)) < 1e-10
    assert rel(got.dx, dx) < 1e-10


def test_float32_runs_in_float32():
    model, x, y = make_problem([4, 6, 3], "tanh", "mse", dtype="float32")
    r = ckpt.gradients(model, x, y, "sqrt_n")
    assert r.dx.dtype == np.float32 and all(g[k].dtype == np.float32 for g in r.grads for k in g)
    r64 = ckpt.gradients(*make_problem([4, 6, 3], "tanh", "mse"), "store_all")
    assert np.allclose(flat(r.grads), flat(r64.grads), rtol=1e-4, atol=1e-5)


def test_forward_equals_the_training_forward():
    model, x, y = make_problem([4, 6, 6, 3], "sigmoid", "mse")
    out = ckpt.forward(model, x)
    a = x
    for p in model.params[:-1]:
        a = 1 / (1 + np.exp(-(a @ p["W"].T + p["b"])))
    expected = a @ model.params[-1]["W"].T + model.params[-1]["b"]
    assert np.allclose(out, expected, rtol=1e-13)
