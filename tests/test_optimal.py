"""The exact byte-budget planner: optimal over its class (brute force), within budget, exact peaks."""

import random
from dataclasses import replace

import numpy as np
import pytest

import ckpt
from ckpt import Backward, Forward, ForwardTape, Free, Load, Loss, Profile, Save, Schedule, StageCost
from ckpt.planners import pareto, revolve_count
from profiling.meters import TracemallocMeter


def random_profile(n, rng) -> Profile:
    """Heterogeneous random costs; each tape keeps its input and/or output or neither, plus bytes of its own."""
    X = [rng.randint(1, 60) for _ in range(n + 1)]
    stages = []
    for i in range(1, n + 1):
        keeps_in, keeps_out, own = rng.random() < 0.5, rng.random() < 0.5, rng.randint(0, 80)
        stages.append(StageCost(
            forward_time=rng.randint(1, 9), backward_time=rng.randint(1, 9), output_bytes=X[i],
            tape_bytes=own + keeps_in * X[i - 1] + keeps_out * X[i], tape_keeps_input=keeps_in,
            tape_keeps_output=keeps_out, forward_transient=rng.randint(0, 40),
            backward_transient=rng.randint(0, 40), grad_bytes=rng.randint(0, 10)))
    return Profile(tuple(stages), X[0], loss_time=rng.randint(0, 5), loss_transient=rng.randint(0, 40),
                   loss_bytes=rng.choice([0, rng.randint(1, 50)]))     # a loss value held to the step's end


def every_plan(a, b, loss):
    """Every action list of the planner's class for sub-problem (a, b) (see ckpt.planners)."""
    if a == b:
        yield [Loss()] if loss else []
        return
    for rest in every_plan(a + 1, b, loss):
        yield [ForwardTape(a + 1), *rest, Backward(a + 1)]
    for c in range(a + 1, b + (1 if loss else 0)):
        for right in every_plan(c, b, loss):
            for left in every_plan(a, c, False):
                yield [Save(a), *(Forward(i) for i in range(a + 1, c + 1)), *right, Load(a), Free(a), *left]


def brute_force(profile):
    """(executor peak, profile time) of every schedule of the class."""
    n = len(profile)
    found = []
    for actions in every_plan(0, n, True):
        schedule = Schedule(n, actions).validate()
        found.append((ckpt.predict_memory(profile, schedule).peak_bytes, profile.schedule_time(schedule)))
    return found


@pytest.mark.parametrize("seed", range(12))
def test_no_schedule_of_the_class_beats_optimal_on_any_budget(seed):
    rng = random.Random(seed)
    profile = random_profile(rng.choice([3, 4, 5]), rng)
    plans = brute_force(profile)
    least = min(peak for peak, _ in plans)
    assert ckpt.min_feasible_budget(profile) == least
    for budget in sorted({peak + d for peak, _ in plans for d in (-1, 0)}):       # the full budget ladder
        fitting = [t for peak, t in plans if peak <= budget]
        if not fitting:
            with pytest.raises(ValueError, match=f"least feasible budget is {least:,} B"):
                ckpt.optimal(profile, budget)
            continue
        plan = ckpt.optimal(profile, budget)
        assert ckpt.predict_memory(profile, plan).peak_bytes <= budget
        assert profile.schedule_time(plan) == min(fitting)


@pytest.mark.parametrize("seed", range(8))
def test_repeated_stage_types_share_sub_problems_and_stay_exact(seed):
    """Stages drawn from two types: equal sub-chains at different depths (different gradients held
    after them) share one memo entry; every budget of the ladder still matches exhaustive search."""
    rng = random.Random(500 + seed)
    kinds = []
    for _ in range(2):                       # tapes that keep no input: each type's bytes fit any order
        X, keeps_out, own = rng.randint(1, 60), rng.random() < 0.5, rng.randint(0, 80)
        kinds.append(StageCost(forward_time=rng.randint(1, 9), backward_time=rng.randint(1, 9), output_bytes=X,
                               tape_bytes=own + keeps_out * X, tape_keeps_output=keeps_out,
                               forward_transient=rng.randint(0, 40), backward_transient=rng.randint(0, 40),
                               grad_bytes=rng.randint(0, 10)))
    n = rng.choice([5, 6])
    profile = Profile(tuple(rng.choice(kinds) for _ in range(n)), rng.randint(1, 60))
    plans = brute_force(profile)
    for budget in sorted({peak for peak, _ in plans})[::3]:
        plan = ckpt.optimal(profile, budget)
        assert ckpt.predict_memory(profile, plan).peak_bytes <= budget
        assert profile.schedule_time(plan) == min(t for p, t in plans if p <= budget)


def test_six_stages_brute_force():
    rng = random.Random(99)
    profile = random_profile(6, rng)
    plans = brute_force(profile)
    for budget in sorted({peak for peak, _ in plans})[::7]:
        assert profile.schedule_time(ckpt.optimal(profile, budget)) == min(t for p, t in plans if p <= budget)


@pytest.mark.parametrize("seed", range(30))
def test_planner_peaks_and_times_are_the_executors(seed):
    rng = random.Random(1000 + seed)
    profile = random_profile(rng.randint(1, 9), rng)
    for peak, time, schedule in pareto(profile):
        assert ckpt.predict_memory(profile, schedule).peak_bytes == peak
        assert profile.schedule_time(schedule) == time
        before = schedule.actions[:schedule.actions.index(Loss())]
        assert not any(isinstance(a, Load) for a in before)          # one first sweep 1..n
        assert [a.i for a in before if isinstance(a, (Forward, ForwardTape))] == list(range(1, len(profile) + 1))


def homogeneous(n, tape_own):
    """Identical stages whose tape is ``tape_own`` bytes of their own (input and output not kept).

    The backward's transient (300 B) outweighs the current activation, so every
    leaf peaks in its Backward, δ held — also on the first sweep, where no δ
    exists before the loss: memory is then Revolve's model, checkpoints + const.
    """
    stage = StageCost(forward_time=1, backward_time=1, output_bytes=100, tape_bytes=tape_own,
                      backward_transient=300)
    return Profile((stage,) * n, 100)


@pytest.mark.parametrize("n,slots", [(10, 2), (10, 3), (12, 4), (20, 3), (16, 2), (9, 8)])
def test_reproduces_revolve_when_tapes_are_too_large_to_store(n, slots):
    profile = homogeneous(n, tape_own=10_000)          # two tapes never fit where revolve's budget fits
    budget = ckpt.predict_memory(profile, ckpt.revolve(n, slots)).peak_bytes
    plan = ckpt.optimal(profile, budget)
    assert plan.forward_steps == revolve_count(n, slots)


BATCH = 1024        # activations (B × width) outweigh weights (width²): the regime checkpointing is for


def mlp(sizes, activation="relu", seed=0):
    model = ckpt.MLP(sizes, activation=activation)
    rng = np.random.default_rng(seed)
    return model, rng.standard_normal((BATCH, sizes[0])), rng.standard_normal((BATCH, sizes[-1]))


CHAINS = {  # heterogeneous numpy chains of 24 stages: activations shrinking with depth; wide ends
    "shrinking": [128] + [128 - 4 * i for i in range(24)],
    "wide_ends": [32, 256] + [32] * 20 + [256, 32],
}


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_plans_run_on_numpy_bitwise_and_within_5_percent(name):
    model, x, y = mlp(CHAINS[name][:13])                  # 12 stages: keeps the tracemalloc runs short
    profile = Profile.from_chain(model, BATCH)
    reference = ckpt.gradients(model, x, y)
    peaks = [peak for peak, _, _ in pareto(profile)]
    for budget in (peaks[0], peaks[len(peaks) // 2], peaks[-1]):
        plan = ckpt.optimal(profile, budget)
        with TracemallocMeter() as meter:
            result = ckpt.execute(plan, ckpt.NumpyBackend(model), x, y)
        assert result.stats.peak_bytes == ckpt.predict_memory(model, plan, batch=BATCH).peak_bytes <= budget
        assert abs(meter.figures["tracemalloc_peak"] - result.stats.peak_bytes) / result.stats.peak_bytes < 0.05
        assert result.loss == reference.loss
        for mine, theirs in zip(result.grads, reference.grads):
            assert all(np.array_equal(mine[k], theirs[k]) for k in theirs)


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_beats_sqrt_n_at_its_peak_and_fits_where_it_cannot(name):
    model, _, _ = mlp(CHAINS[name])
    profile = Profile.from_chain(model, BATCH)
    sqrt_n = ckpt.sqrt_n(len(model))
    at_sqrt = ckpt.predict_memory(profile, sqrt_n).peak_bytes
    assert profile.schedule_time(ckpt.optimal(profile, at_sqrt)) < profile.schedule_time(sqrt_n)
    low = ckpt.predict_memory(profile, "recompute").peak_bytes
    between = (low + at_sqrt) // 2
    assert low < between < at_sqrt
    assert ckpt.predict_memory(profile, ckpt.optimal(profile, between)).peak_bytes <= between


def test_budget_strings_and_errors():
    assert ckpt.parse_bytes("6GiB") == 6 * 2**30 and ckpt.parse_bytes("512MB") == 512 * 10**6
    assert ckpt.parse_bytes("1.5 KiB") == 1536 and ckpt.parse_bytes(4096) == 4096
    with pytest.raises(ValueError, match="cannot read budget"):
        ckpt.parse_bytes("6 parsecs")
    profile = homogeneous(6, 0)
    assert ckpt.optimal(profile, "1GiB").forward_steps == 6
    with pytest.raises(ValueError, match="least feasible budget"):
        ckpt.optimal(profile, 1)


def test_registry_passes_the_profile():
    profile = homogeneous(5, 0)
    assert ckpt.needs_profile("optimal") and not ckpt.needs_profile("sqrt_n")
    plan = ckpt.make_schedule("optimal", 5, profile=profile, budget_bytes="1MiB")
    assert plan.forward_steps == 5
    with pytest.raises(ValueError, match="plans from a cost profile"):
        ckpt.make_schedule("optimal", 5, budget_bytes=10)
    with pytest.raises(ValueError, match="the profile has 5 stages"):
        ckpt.make_schedule("optimal", 4, profile=profile, budget_bytes=10)

    def cheapest_first(profile, k=1):
        return ckpt.store_all(len(profile))
    assert ckpt.make_schedule(cheapest_first, 5, profile=profile, k=2).forward_steps == 5
    assert ckpt.make_schedule("sqrt_n", 5, profile=profile).forward_steps == 8   # profile ignored


def test_chen_greedy_fits_its_budget():
    model, _, _ = mlp(CHAINS["shrinking"])
    profile = Profile.from_chain(model, BATCH)
    store = ckpt.predict_memory(profile, "store_all").peak_bytes
    for budget in (store, (store * 3) // 4):
        try:
            plan = ckpt.chen_greedy(profile, budget)
        except ValueError:
            continue
        assert ckpt.predict_memory(profile, plan).peak_bytes <= budget
        assert profile.schedule_time(ckpt.optimal(profile, budget)) <= profile.schedule_time(plan)


def test_plans_run_on_torch_with_gradients_bitwise_equal_store_all():
    torch = pytest.importorskip("torch")
    from torch import nn
    torch.manual_seed(0)
    widths = [24, 64, 16, 48, 8, 32, 12]
    stages = nn.Sequential(*[nn.Sequential(nn.Linear(a, b), nn.Tanh()) for a, b in zip(widths, widths[1:])])
    x = torch.randn(16, widths[0])
    profile = Profile.from_torch(stages, x, repeats=1)

    def grads(strategy):
        stages.zero_grad(set_to_none=True)
        model = ckpt.CheckpointedSequential(list(stages), strategy=strategy)
        model(x).pow(2).sum().backward()
        return [p.grad.clone() for p in stages.parameters()]

    reference = grads("store_all")
    peaks = [peak for peak, _, _ in pareto(profile)]
    for budget in (peaks[0], peaks[len(peaks) // 2], peaks[-1]):
        plan = ckpt.optimal(profile, budget)
        assert all(torch.equal(a, b) for a, b in zip(grads(lambda n, s=plan: s), reference))
