"""The planner's two engines, the C kernel and numpy, build the same frontiers bit for bit; the kernel's
build is cached by the source's hash and falls back to numpy (or fails, when asked for) without a compiler."""

import random
from dataclasses import replace

import numpy as np
import pytest

import ckpt
from ckpt import _native, planners
from ckpt.planners import _Planner, _plan, _solve_whole
from tests.planner_engines import needs_a_compiler
from tests.test_optimal import random_profile


def frontier(profile, monkeypatch, which, **options):
    """(planner, chain frontier) solved by one engine."""
    monkeypatch.setenv("CKPT_PLANNER_ENGINE", which)
    planner = _Planner(profile, **options)
    return planner, _solve_whole(planner)


def mlp_profile(widths):
    return ckpt.Profile.from_chain(ckpt.MLP(widths), 64)


def with_float_times(profile, rng):
    """The same bytes, times drawn from a continuum: ties are rare, so near-misses in a pruning show."""
    stages = [replace(s, forward_time=rng.uniform(1, 9), backward_time=rng.uniform(1, 9)) for s in profile.stages]
    return replace(profile, stages=tuple(stages), loss_time=rng.uniform(0, 5))


CHAINS = {
    "random": lambda rng: random_profile(rng.randint(1, 16), rng),
    "random_float_times": lambda rng: with_float_times(random_profile(rng.randint(8, 24), rng), rng),
    "cnn_like": lambda rng: mlp_profile([64] + [64 >> min(3, 4 * i // 24) for i in range(24)]),
    "distinct": lambda rng: mlp_profile([48] + [48 - i for i in range(20)]),
}


@pytest.mark.parametrize("chain", list(CHAINS))
@pytest.mark.parametrize("seed", range(6))
def test_engines_build_equal_frontiers_and_runnable_plans(chain, seed, monkeypatch):
    """Whole frontiers, capped ones and least-peak ones are equal bit for bit on both engines; each of the
    kernel's entries is the plan it reconstructs (the executor's peak, the profile's time)."""
    needs_a_compiler()
    rng = random.Random(seed)
    profile = CHAINS[chain](rng)
    whole = frontier(profile, monkeypatch, "numpy")[1]
    cap = int(whole.peak[len(whole.peak) // 2])
    for options in ({}, {"cap": cap}, {"cap": cap - 1}, {"first_only": True}):
        planner, native = frontier(profile, monkeypatch, "native", **options)
        expected = frontier(profile, monkeypatch, "numpy", **options)[1]
        assert np.array_equal(native.peak, expected.peak) and np.array_equal(native.time, expected.time)
        for k in range(len(native.peak)):
            schedule = _plan(planner, k)
            assert ckpt.predict_memory(profile, schedule).peak_bytes == native.peak[k]
            assert profile.schedule_time(schedule) == pytest.approx(native.time[k], rel=1e-12)   # summed in
            # another order (action by action, not sub-problem by sub-problem): float times may differ in an ulp


@pytest.mark.parametrize("seed", range(6))
def test_engines_agree_on_long_chains_with_float_times(seed, monkeypatch):
    """40-60 random stages with float times: frontiers of dozens of entries, where the kernel's skips over
    dominated stretches (from sketches, and at a gallop) run often; a skip that passes over a pair faster by
    0.1% shows here."""
    needs_a_compiler()
    rng = random.Random(seed)
    profile = with_float_times(random_profile(rng.randint(40, 60), rng), rng)
    native = frontier(profile, monkeypatch, "native")[1]
    expected = frontier(profile, monkeypatch, "numpy")[1]
    assert np.array_equal(native.peak, expected.peak) and np.array_equal(native.time, expected.time)


@pytest.fixture
def fresh_kernel(tmp_path, monkeypatch):
    """An empty kernel cache and a forgotten load, restored after the test."""
    monkeypatch.setenv("CKPT_CACHE_DIR", str(tmp_path / "cache"))
    _native._load.cache_clear()
    yield tmp_path / "cache"
    _native._load.cache_clear()


def test_without_a_compiler_the_planner_falls_back_to_numpy(fresh_kernel, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setenv("CKPT_PLANNER_ENGINE", "auto")
    assert _native.engine() == "numpy"
    profile = random_profile(5, random.Random(3))
    assert ckpt.optimal(profile, ckpt.min_feasible_budget(profile)).validate()
    monkeypatch.setenv("CKPT_PLANNER_ENGINE", "native")
    with pytest.raises(RuntimeError, match="CKPT_PLANNER_ENGINE=native but the C planner kernel did not build"):
        _native.frontier_lib()


def test_a_bad_engine_name_is_refused(monkeypatch):
    monkeypatch.setenv("CKPT_PLANNER_ENGINE", "fortran")
    with pytest.raises(ValueError, match="CKPT_PLANNER_ENGINE='fortran' is not one of auto, native, numpy"):
        ckpt.optimal(random_profile(3, random.Random(0)), 10**9)


def test_an_edited_source_is_never_served_by_a_stale_build(fresh_kernel, monkeypatch, tmp_path):
    """The cached library's name hashes the source: an edited copy builds (and loads) a library of its own."""
    needs_a_compiler()
    monkeypatch.setenv("CKPT_PLANNER_ENGINE", "native")
    assert _native.frontier_lib() is not None
    built = set(fresh_kernel.glob("frontier-*.so"))
    assert len(built) == 1
    edited = tmp_path / "_frontier.c"
    edited.write_text(_native.SOURCE.read_text() + "\n/* edited */\n")
    monkeypatch.setattr(_native, "SOURCE", edited)
    _native._load.cache_clear()
    assert _native.frontier_lib() is not None
    assert len(set(fresh_kernel.glob("frontier-*.so")) - built) == 1
    assert not list(fresh_kernel.glob("*.part"))                     # builds land whole (renamed)


def test_the_counting_build_counts_its_work_and_builds_the_same_frontiers(monkeypatch, tmp_path):
    """``-DCKPT_FRONTIER_COUNTS`` (scripts/bench_planner.py --count) adds counters only: the same frontiers,
    and counts that add up (every split is skipped or walked; every walk step pushes or leaps)."""
    needs_a_compiler()
    lib = _native.counting_lib(tmp_path / "counting.so")
    profile = with_float_times(random_profile(20, random.Random(5)), random.Random(5))
    _, plain = frontier(profile, monkeypatch, "native")
    counted = _Planner(profile).solve_native(lib)
    assert np.array_equal(counted.peak, plain.peak) and np.array_equal(counted.time, plain.time)
    splits, corner, sketch, walks, steps, pushes, leaps, moved = lib.ckpt_frontier_counts()[:8]
    assert walks > 0 and pushes > 0 and leaps > 0 and moved >= 0
    assert corner + sketch + walks <= splits and steps == pushes + leaps
