"""The exact byte-budget planner: optimal over its class (brute force), within budget, exact peaks."""

import random
from dataclasses import replace

import numpy as np
import pytest

import ckpt
from ckpt import Backward, Forward, ForwardTape, Free, Load, Loss, Profile, Save, Schedule, StageCost
from ckpt.planners import _NEVER, _Front, _combine, pareto, revolve_count
from profiling.meters import TracemallocMeter
from tests.planner_engines import engine  # noqa: F401  (fixture: each exactness test runs on both engines)


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
def test_no_schedule_of_the_class_beats_optimal_on_any_budget(seed, engine):
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
def test_repeated_stage_types_share_sub_problems_and_stay_exact(seed, engine):
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


def test_six_stages_brute_force(engine):
    rng = random.Random(99)
    profile = random_profile(6, rng)
    plans = brute_force(profile)
    for budget in sorted({peak for peak, _ in plans})[::7]:
        assert profile.schedule_time(ckpt.optimal(profile, budget)) == min(t for p, t in plans if p <= budget)


@pytest.mark.parametrize("seed", range(30))
def test_planner_peaks_and_times_are_the_executors(seed, engine):
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
def test_reproduces_revolve_when_tapes_are_too_large_to_store(n, slots, engine):
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


@pytest.mark.parametrize("seed", range(4))
def test_budgeted_solve_matches_the_whole_frontier_on_longer_chains(seed, engine):
    """Beyond brute force: the capped solve (which drops entries and splits by dominance) answers every
    budget of the uncapped frontier's ladder with the frontier's time, within the budget."""
    rng = random.Random(2000 + seed)
    profile = random_profile(rng.randint(10, 14), rng)
    front = pareto(profile)
    for budget in sorted({peak + d for peak, _, _ in front for d in (0, 1)})[::2]:
        plan = ckpt.optimal(profile, budget)
        assert ckpt.predict_memory(profile, plan).peak_bytes <= budget
        assert profile.schedule_time(plan) == min(time for peak, time, _ in front if peak <= budget)


def staircase_of(points):
    """The Pareto frontier of (peak, time) points, peaks rising."""
    front = []
    for peak, time in sorted(set(points)):
        if not front or time < front[-1][1]:
            front.append((peak, time))
    return front


@pytest.mark.parametrize("unit", [1, 2**58])
def test_combining_splits_is_the_envelope_of_every_pair(unit):
    """``_combine`` (every split merged at once, keys split · scale + peak; in halves where keys would pass
    int64, as with unit = 2**58) returns the Pareto envelope of every (right, left) pair of every split."""
    rng = random.Random(unit % 97)

    def frontier():
        peaks = sorted(rng.sample(range(1, 12), rng.randint(1, 5)))
        times = sorted(rng.sample(range(1, 60), len(peaks)), reverse=True)
        return _Front(np.array(peaks, dtype=np.int64) * unit, np.array(times, dtype=np.float64), *[None] * 3)

    splits = 6
    rights, lefts = [frontier() for _ in range(splits)], [frontier() for _ in range(splits)]
    held, grads = 2 * unit, np.array([rng.randint(0, 3) * unit for _ in range(splits)], dtype=np.int64)
    forward_peak = np.array([rng.randint(1, 14) * unit for _ in range(splits)], dtype=np.int64)
    forward_time = np.array([rng.randint(1, 9) for _ in range(splits)], dtype=np.float64)
    peak, time, seg, right, left = _combine(rights, lefts, held, grads, forward_peak, forward_time,
                                            np.full(splits, _NEVER, dtype=np.int64))
    expected = staircase_of([(max(int(forward_peak[s]), int(rp) + held, int(lp) + int(grads[s])),
                              forward_time[s] + rt + lt)
                             for s in range(splits) for rp, rt in zip(rights[s].peak, rights[s].time)
                             for lp, lt in zip(lefts[s].peak, lefts[s].time)])
    assert list(zip(peak.tolist(), time.tolist())) == expected
    for k, s in enumerate(seg):                                   # each entry is the pair it names
        r, l = rights[s], lefts[s]
        assert peak[k] == max(forward_peak[s], r.peak[right[k]] + held, l.peak[left[k]] + grads[s])
        assert time[k] == forward_time[s] + r.time[right[k]] + l.time[left[k]]


def test_bytes_near_the_int64_range_stay_exact(engine):
    """Peaks near 2**62 bytes (no float rounding, no int64 overflow, merges in halves): every plan matches
    the same profile in small units."""
    rng, unit = random.Random(0), 2**59
    stages = [StageCost(forward_time=rng.randint(1, 9), backward_time=rng.randint(1, 9),
                        output_bytes=rng.randint(1, 2), tape_bytes=rng.randint(0, 1),
                        forward_transient=rng.randint(0, 1), backward_transient=rng.randint(0, 1),
                        grad_bytes=rng.randint(0, 1)) for _ in range(8)]
    small = Profile(tuple(stages), 1)
    big = Profile(tuple(replace(s, output_bytes=s.output_bytes * unit, tape_bytes=s.tape_bytes * unit,
                                forward_transient=s.forward_transient * unit,
                                backward_transient=s.backward_transient * unit, grad_bytes=s.grad_bytes * unit)
                        for s in stages), unit)
    front = pareto(small)
    assert len(front) > 2 and front[0][0] * unit * 2 >= 2**62          # two splits' keys pass 2**62
    for peak, time, _ in front:
        plan = ckpt.optimal(big, peak * unit)
        assert ckpt.predict_memory(big, plan).peak_bytes <= peak * unit
        assert big.schedule_time(plan) == time
