"""Planners: Revolve (counts), an exact byte-budget planner (``optimal``) and Chen's greedy baseline.

Budgets are bytes of the executor's ``Stats.peak_bytes`` — everything one step
allocates (activations, checkpoints, tapes, δ, parameter gradients, transients),
the input and parameters excluded — predicted by running the schedule on
``ProfileBackend``: the same memory model that checks every schedule.  A
budget is an int or a string such as ``"6GiB"`` or ``"512MB"``.

The class of schedules ``optimal`` searches (and is optimal over)
-----------------------------------------------------------------
Every schedule built by the recursion below, for every choice at every step
(the class of Beaumont et al. 2019, "Optimal checkpointing for heterogeneous
chains", with the tape "x̄" option).  A sub-problem (a, b) starts with x_a as
the current activation and δ_b held (or, when b = n on the first sweep, the
loss still to run) and ends having backwarded stages b..a+1:

* **tape**: ``ForwardTape(a+1)``, solve (a+1, b), ``Backward(a+1)``;
* **checkpoint at c** (a < c < b; c = b = n allowed before the loss):
  ``Save(a)``, ``Forward(a+1..c)``, solve (c, b), ``Load(a)``, ``Free(a)``,
  solve (a, c);
* (a, a): nothing, or ``Loss()`` on the first sweep.

So the part before ``Loss()`` is one forward sweep 1..n, a checkpoint x_a is
kept exactly while it is needed, and tapes are kept from their forward to their
backward.  Within this class the planner is exact: peaks are the executor's
peaks to the byte (a test re-executes every plan), times are the profile's sums.
"""

from __future__ import annotations

import bisect
import math
import re
from functools import lru_cache

from .profile import Profile
from .schedule import Backward, Forward, ForwardTape, Free, Load, Loss, Save, Schedule
from .strategies import _check_depth, _segmented, register_strategy

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def check_profile(profile, planner: str) -> None:
    """Raise unless ``profile`` is a ``ckpt.Profile`` (what planners read)."""
    if not isinstance(profile, Profile):
        raise TypeError(f"planners: {planner} plans from a ckpt.Profile (Profile.from_chain(model, batch), "
                        f"Profile.from_torch(stages, x) or Profile.load(path)), got {type(profile).__name__}")


def parse_bytes(budget) -> int:
    """Bytes from an int or a string like "6GiB", "512MB", "1.5 GiB" (SI kB/MB/GB, binary KiB/MiB/GiB)."""
    if isinstance(budget, bool):
        raise TypeError(f"planners: a budget must be an int or a string like '6GiB', got {budget!r}")
    if isinstance(budget, int) or (isinstance(budget, float) and budget.is_integer()):
        value = int(budget)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(budget))
        unit = match and match.group(2).upper()
        if not match or unit not in _UNITS:
            raise ValueError(f"planners: cannot read budget {budget!r}; write an int of bytes or a number "
                             f"and a unit ({', '.join(u for u in ('B', 'KB', 'MB', 'GB', 'KiB', 'MiB', 'GiB'))})")
        value = int(float(match.group(1)) * _UNITS[unit])
    if value < 0:
        raise ValueError(f"planners: a budget must be ≥ 0 bytes, got {budget!r}")
    return value


# ------------------------------------------------------------------- revolve
# Convention (Griewank & Walther 2000): ``slots`` counts every stored
# activation, x_0 included; the tape of the one stage being backwarded is not a
# slot; every forward step counts, taped re-runs included.  Then the total is
#   n + t·n − β(s+1, t−1),  β(s, t) = C(s+t, s),  β(s, t−1) < n ≤ β(s, t)
# (Griewank & Walther 2000, Prop. 1, with the first sweep counted).

def revolve_count(n: int, slots: int) -> int:
    """Closed-form forward steps of ``revolve(n, slots)``."""
    t = 0
    while math.comb(slots + t, slots) < n:
        t += 1
    return n + t * n - math.comb(slots + t, slots + 1)


@lru_cache(maxsize=None)
def _revolve_cost(length: int, slots: int) -> tuple[int, int]:
    """(least forward steps, first split) to backward ``length`` stages from a stored start."""
    if length == 1:
        return 1, 0
    if slots < 1:
        return math.inf, 0
    if slots >= length - 1:                 # store every activation: one re-run per stage
        return 2 * length - 1, 1
    best = (math.inf, 0)
    for c in range(1, length):
        cost = c + _revolve_cost(length - c, slots - 1)[0] + _revolve_cost(c, slots)[0]
        if cost < best[0]:
            best = (cost, c)
    return best


_forward = lru_cache(maxsize=None)(Forward)     # actions are immutable: share them (revolve(300, 1) has 45k)


def _revolve_actions(a: int, b: int, slots: int, loss: bool, out: list) -> None:
    """Backward stages b..a+1 with x_a current (and a checkpoint when b − a ≥ 2)."""
    if b - a == 1:
        out += [ForwardTape(b), *([Loss()] if loss else []), Backward(b)]
        return
    c = a + _revolve_cost(b - a, slots)[1]
    out += map(_forward, range(a + 1, c + 1))
    if b - c >= 2:
        out.append(Save(c))
        _revolve_actions(c, b, slots - 1, loss, out)
        out.append(Free(c))
    else:
        _revolve_actions(c, b, slots - 1, loss, out)
    out.append(Load(a))
    _revolve_actions(a, c, slots, False, out)


@register_strategy("revolve")
def revolve(n: int, slots: int) -> Schedule:
    """Griewank & Walther's binomial checkpointing: fewest forward steps with ``slots`` checkpoints."""
    _check_depth(n)
    if not isinstance(slots, int) or isinstance(slots, bool) or slots < 1:
        raise ValueError(f"planners: revolve needs slots ≥ 1 (x_0 takes one), got {slots!r}")
    if n == 1:
        return Schedule(1, [ForwardTape(1), Loss(), Backward(1)])
    actions = [Save(0)]
    _revolve_actions(0, n, slots, True, actions)
    return Schedule(n, actions + [Free(0)])


# ------------------------------------------------------------------- optimal

class _Planner:
    """The dynamic program over sub-problems (a, b): per sub-problem the Pareto set of (peak, time).

    A frontier is a list of (peak, time, plan) with peaks rising and times
    falling.  Peaks count what the sub-problem holds beyond its callers: δ_b,
    finished gradients, its own checkpoints, tapes and current activation, and
    x_a unless a caller keeps it (``pinned``: x_0, or kept by the tape above).
    """

    def __init__(self, profile: Profile, cap: int | None = None, first_only: bool = False):
        p, n = profile, len(profile)
        self.n, self.cap, self.first_only, self.memo = n, cap, first_only, {}
        self.X = [p.activation_bytes(j) for j in range(n + 1)]
        self.xs = [0] + self.X[1:]                    # x_0 is the caller's input: never counted
        st = (None, *p.stages)
        self.f = [0] + [s.forward_transient for s in p.stages]
        self.r = [0] + [s.backward_transient for s in p.stages]
        self.kin = [False] + [s.tape_keeps_input for s in p.stages]
        self.kout = [False] + [s.tape_keeps_output for s in p.stages]
        self.own = [0] + [p.tape_own_bytes(i) for i in range(1, n + 1)]
        self.F = [0.0] + [s.forward_time for s in p.stages]
        self.Bt = [0.0] + [s.backward_time for s in p.stages]
        self.Fsum = [0.0]
        for i in range(1, n + 1):
            self.Fsum.append(self.Fsum[-1] + self.F[i])
        # the loss value's bytes (Profile.loss_bytes) are held from Loss() to the step's end, as the finished
        # gradients are: counted in G after the loss, left out of the first sweep's base (pending)
        self.L = p.loss_bytes
        self.G = [sum(s.grad_bytes for s in st[b + 1:]) + self.L for b in range(n + 1)]
        self.loss_transient, self.loss_time = p.loss_transient, p.loss_time

    def solve(self, a: int, b: int, pinned: bool, pending: bool) -> list:
        """Frontier of sub-problem (a, b) (memoised; ``pending``: the loss is still to run)."""
        pinned = pinned or a == 0
        key = (a, b, pinned, pending)
        found = self.memo.get(key)
        if found is None:
            found = self.memo[key] = self._pareto(self._options(a, b, pinned, pending))
        return found

    def _options(self, a, b, pinned, pending):
        X, xs = self.X, self.xs
        base = self.G[b] - self.L if pending else X[b] + self.G[b]
        cur = 0 if pinned else xs[a]
        if a == b:
            if pending:
                return [(max(cur + self.loss_transient, X[b] + self.L), self.loss_time, ("loss",))]
            return [(base + cur, 0.0, ("none",))]
        options = self._tape(a, b, pinned, pending, base, cur)
        fw = self.f[a + 1]
        for c in range(a + 1, b + (1 if pending else 0)):
            if c > a + 1:
                fw = max(fw, X[c - 1] + self.f[c])
            right = self.solve(c, b, False, pending)
            left = self.solve(a, c, pinned, False)
            options += _combine(base + cur + fw, cur, right, left, self.Fsum[c] - self.Fsum[a], c - a)
        return options

    def _tape(self, a, b, pinned, pending, base, cur):
        i = a + 1
        held = (cur if self.kin[i] else 0) + self.own[i] + (self.X[i] if self.kout[i] else 0)
        notes = max(base + cur + self.f[i], held + self.X[i] + self.G[i] + self.r[i], self.X[a] + self.G[a])
        extra = self.F[i] + self.Bt[i]
        return [(max(notes, held + pc), tc + extra, ("tape", entry))
                for entry in self.solve(i, b, self.kout[i], pending) for pc, tc in [entry[:2]]]

    def _pareto(self, options: list) -> list:
        options.sort(key=lambda e: (e[0], e[1]))
        front = []
        for e in options:
            if not front or e[1] < front[-1][1]:
                if front and front[-1][0] == e[0]:
                    front[-1] = e
                else:
                    front.append(e)
        if self.cap is not None:
            front = [e for e in front if e[0] <= self.cap] or front[:1]
        return front[:1] if self.first_only else front

    def actions(self, a, b, pinned, pending, plan, out: list) -> None:
        """Append the actions of ``plan`` for sub-problem (a, b)."""
        kind = plan[0]
        if kind == "loss":
            out.append(Loss())
        elif kind == "tape":
            out.append(ForwardTape(a + 1))
            self.actions(a + 1, b, self.kout[a + 1], pending, plan[1][2], out)
            out.append(Backward(a + 1))
        elif kind == "ckpt":
            _, split, right, left = plan
            c = a + split
            out += [Save(a), *(Forward(i) for i in range(a + 1, c + 1))]
            self.actions(c, b, False, pending, right[2], out)
            out += [Load(a), Free(a)]
            self.actions(a, c, pinned, False, left[2], out)


def _combine(forward_peak, held, right: list, left: list, forward_time: float, split: int) -> list:
    """Frontier of 'forward to a + split, solve right (holding ``held``), then solve left': a two-pointer merge."""
    out, i, j = [], 0, 0
    while True:
        r, l = right[i], left[j]
        peak = max(forward_peak, held + r[0], l[0])
        time = forward_time + r[1] + l[1]
        if not out or time < out[-1][1]:
            entry = (peak, time, ("ckpt", split, r, l))
            if out and out[-1][0] == peak:
                out[-1] = entry
            else:
                out.append(entry)
        next_r = held + right[i + 1][0] if i + 1 < len(right) else math.inf
        next_l = left[j + 1][0] if j + 1 < len(left) else math.inf
        if next_r == next_l == math.inf:
            return out
        if next_r <= next_l:
            i += 1
        if next_l <= next_r:
            j += 1


def _plan(planner: _Planner, entry) -> Schedule:
    actions = []
    planner.actions(0, planner.n, True, True, entry[2], actions)
    return Schedule(planner.n, actions)


def pareto(profile: Profile) -> list[tuple[int, float, Schedule]]:
    """Every (predicted peak bytes, predicted time, schedule) on the memory-vs-time frontier, peaks rising.

    Exact, and one solve answers every budget; but on heterogeneous chains the
    frontiers of sub-problems grow with the number of distinct byte sums, so keep
    it to n ≲ 30 (``optimal`` searches one budget and goes further).
    """
    planner = _Planner(profile)
    front = planner.solve(0, len(profile), True, True)
    return [(e[0], e[1], _plan(planner, e)) for e in front]


def min_feasible_budget(profile: Profile) -> int:
    """The least budget (bytes) under which any schedule of the class exists (an O(n³) pass)."""
    return _Planner(profile, first_only=True).solve(0, len(profile), True, True)[0][0]


class _Intervals:
    """Budgets [lo, hi] over which a sub-problem's answer is known, disjoint and sorted by lo."""

    def __init__(self):
        self.infeasible, self.lo, self.hi, self.answers = -1, [], [], []

    def add(self, lo, hi, answer) -> None:
        """Record ``answer`` (peak ``lo``) as optimal on [lo, hi]; intervals it overlaps share its time: merge."""
        k = bisect.bisect_left(self.lo, lo)
        if k and self.hi[k - 1] >= lo:                        # the one below reaches in: its plan has the lower peak
            k -= 1
            lo, answer = self.lo[k], self.answers[k]
        j = k
        while j < len(self.lo) and self.lo[j] <= hi:
            hi = max(hi, self.hi[j])
            j += 1
        self.lo[k:j], self.hi[k:j], self.answers[k:j] = [lo], [hi], [answer]


class _BudgetPlanner(_Planner):
    """The same recursion for one budget: least time with peak ≤ m, memoised on intervals of m.

    The answer of a sub-problem is a step function of its budget m: a plan of
    time t and peak q found for budget m answers every budget in [q, m], and
    infeasibility at m answers every budget below.  Splits c are tried in
    rising order and cut off once the time bound (every stage forward and
    backward once, stages a+1..c forward once more) reaches the best time found.
    """

    def __init__(self, profile: Profile):
        super().__init__(profile)
        n = self.n
        self.FB = [0.0]
        for i in range(1, n + 1):
            self.FB.append(self.FB[-1] + self.F[i] + self.Bt[i])
        self.known = {}
        self.content = self._content_ids()
        # Backward(i) holds at least δ_i, finished gradients, its tape and its transient:
        # a lower bound on the peak of any sub-problem containing stage i (input x_{i-1} counted
        # only when it is produced inside the sub-problem: i − 1 > a).
        at = [0] + [X + self.G[i] + self.r[i] + self.own[i] + self.kout[i] * X + self.kin[i] * self.xs[i - 1]
                    for i, X in enumerate(self.X[1:], start=1)]
        self.inner_bound = [[0] * (n + 1) for _ in range(n + 1)]       # max of ``at`` over stages a+2..b
        for a in range(n + 1):
            run = 0
            for b in range(a + 2, n + 1):
                run = max(run, at[b])
                self.inner_bound[a][b] = run

    def _content_ids(self) -> list[list[int]]:
        """content[a][b]: one id per distinct sub-problem content (x_a's bytes and stages a+1..b's costs).

        Sub-problems with equal content have equal answers once budgets and
        peaks are taken relative to G[b] (the gradients of stages after b, held
        throughout), so repeated blocks share their work.  Ids are interned
        incrementally: content[a][b] from content[a][b−1] and stage b's costs.
        """
        intern, n = {}, self.n
        stage = [intern.setdefault(("stage", self.X[i], self.f[i], self.r[i], self.kin[i], self.kout[i], self.own[i],
                                    self.F[i], self.Bt[i], self.G[i - 1] - self.G[i]), len(intern))
                 for i in range(n + 1)]
        content = []
        for a in range(n + 1):
            row = [intern.setdefault(("start", self.X[a]), len(intern))]
            for b in range(a + 1, n + 1):
                row.append(intern.setdefault((row[-1], stage[b]), len(intern)))
            content.append([None] * a + row)
        return content

    def _peak_bound(self, a, b, pinned, base, cur) -> int:
        """A lower bound on the peak of every plan of (a, b): its first forward and its backwards."""
        i = a + 1
        first = (self.X[i] + self.G[i] + self.r[i] + self.own[i] + self.kout[i] * self.X[i]
                 + (self.kin[i] * cur))
        return max(base + cur + self.f[i], first, self.inner_bound[a][b])

    def best(self, a, b, pinned, pending, m):
        """(answer, hi): the fastest plan (time, peak, plan) of (a, b) within budget m, or None; the same
        answer holds for every budget up to hi (so one solve answers a whole step of the budget)."""
        pinned = pinned or a == 0
        key = (self.content[a][b], pinned, pending)
        known = self.known.get(key)
        if known is None:
            known = self.known[key] = _Intervals()
        g = self.G[b]                                     # memo budgets and peaks are relative to G[b]
        rel = m - g
        if rel <= known.infeasible:
            return None, known.infeasible + g
        k = bisect.bisect_right(known.lo, rel) - 1        # the interval starting at or below m
        if k >= 0 and known.hi[k] >= rel:
            time, peak, plan = known.answers[k]
            return (time, peak + g, plan), known.hi[k] + g
        start = known.answers[k] if k >= 0 else None       # fits m: an upper bound on the time
        start = start and (start[0], start[1] + g, start[2])
        floor = (known.answers[k + 1][0], known.hi[k + 1] + g) if k + 1 < len(known.lo) else (-math.inf, 0)
        answer, hi = self._best(a, b, pinned, pending, m, start, floor)
        if answer is None:
            known.infeasible = max(known.infeasible, hi - g)
        else:
            known.add(answer[1] - g, hi - g, (answer[0], answer[1] - g, answer[2]))
        return answer, hi

    def floor(self, a, b, pinned, pending, m):
        """(t, up): every plan of (a, b) within any budget up to ``up`` (≥ m) takes at least t (no search)."""
        pinned = pinned or a == 0
        known = self.known.get((self.content[a][b], pinned, pending))
        fastest = self.FB[b] - self.FB[a] + (self.loss_time if pending else 0)
        if known is None:
            return fastest, math.inf
        g = self.G[b]
        rel = m - g
        if rel <= known.infeasible:
            return math.inf, known.infeasible + g
        k = bisect.bisect_right(known.lo, rel) - 1
        if k >= 0 and known.hi[k] >= rel:
            return known.answers[k][0], known.hi[k] + g
        if k + 1 < len(known.lo):
            return known.answers[k + 1][0], known.hi[k + 1] + g
        return fastest, math.inf

    def _best(self, a, b, pinned, pending, m, start, floor):
        """``best`` without the memo; ``floor`` = (time, hi) of the answer at the next larger known budget.

        hi is the least budget above m at which the search could go otherwise:
        a pruned forward or tape that starts to fit, or a child whose answer
        changes; below it every branch, bound and child answer is m's.
        """
        X = self.X
        base = self.G[b] - self.L if pending else X[b] + self.G[b]
        cur = 0 if pinned else self.xs[a]
        if a == b:
            peak, time, plan = self._options(a, b, pinned, pending)[0]
            return ((time, peak, plan), math.inf) if peak <= m else (None, peak - 1)
        best, (floor_time, floor_hi) = start, floor
        if best is not None and best[0] <= floor_time:
            return best, floor_hi
        if best is None:
            least = self._peak_bound(a, b, pinned, base, cur)
            if least > m:
                return None, least - 1
        i = a + 1
        held = (cur if self.kin[i] else 0) + self.own[i] + (X[i] if self.kout[i] else 0)
        notes = max(base + cur + self.f[i], held + X[i] + self.G[i] + self.r[i], X[a] + self.G[a])
        limit = notes - 1
        if notes <= m:
            child, hi = self.best(i, b, self.kout[i], pending, m - held)
            limit = hi + held
            if child is not None and (best is None or self.F[i] + self.Bt[i] + child[0] < best[0]):
                best = (self.F[i] + self.Bt[i] + child[0], max(notes, held + child[1]), ("tape", (0, 0, child[2])))
        bound = self.FB[b] - self.FB[a] + (self.loss_time if pending else 0)
        fw = self.f[a + 1]
        for c in range(a + 1, b + (1 if pending else 0)):
            forward_time = self.Fsum[c] - self.Fsum[a]
            if best is not None:
                if best[0] <= floor_time:
                    return best, floor_hi
                if bound + forward_time >= best[0]:
                    break                                 # a bound valid at every budget
            if c > a + 1:
                fw = max(fw, X[c - 1] + self.f[c])
            if base + cur + fw > m:
                limit = min(limit, base + cur + fw - 1)
                break                                     # the forward alone no longer fits, nor for larger c
            if best is not None:                          # lower bounds from answers known already: skip
                low_left, up_left = self.floor(a, c, pinned, False, m)
                low_right, up_right = self.floor(c, b, False, pending, m - cur)
                if forward_time + low_left + low_right >= best[0]:
                    limit = min(limit, up_left, up_right + cur)
                    continue
            left, hi = self.best(a, c, pinned, False, m)
            limit = min(limit, hi)
            if left is None:
                continue
            if best is not None and forward_time + left[0] + bound - (self.FB[c] - self.FB[a]) >= best[0]:
                continue                                  # even the right part at its fastest loses: skip it
            right, hi = self.best(c, b, False, pending, m - cur)
            limit = min(limit, hi + cur)
            if right is None:
                continue
            time = forward_time + right[0] + left[0]
            if best is None or time < best[0]:
                peak = max(base + cur + fw, cur + right[1], left[1])
                best = (time, peak, ("ckpt", c - a, (0, 0, right[2]), (0, 0, left[2])))
        return best, limit


@register_strategy("optimal")
def optimal(profile: Profile, budget_bytes) -> Schedule:
    """Least predicted time whose predicted peak ≤ ``budget_bytes`` (exact bytes; class in module doc)."""
    import sys
    check_profile(profile, "optimal")
    budget = parse_bytes(budget_bytes)
    planner = _BudgetPlanner(profile)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20 * len(profile) + 1000))      # one frame pair per nested sub-problem
    try:
        answer, _ = planner.best(0, len(profile), True, True, budget)
    finally:
        sys.setrecursionlimit(limit)
    if answer is None:
        least = min_feasible_budget(profile)
        raise ValueError(f"planners: no schedule fits a budget of {budget:,} B; the least feasible budget "
                         f"is {least:,} B ({least / 2**20:.2f} MiB): raise the budget or shrink the batch")
    return _plan(planner, (answer[1], answer[0], answer[2]))


# ------------------------------------------------------------------- Chen et al. 2016

def chen_segments(profile: Profile, threshold: float) -> list[tuple[int, int]]:
    """Chen et al. 2016 greedy: close a segment once the activations since its start exceed ``threshold``."""
    bounds, first, total = [], 1, 0
    for i in range(1, len(profile)):
        total += profile.activation_bytes(i)
        if total > threshold:
            bounds.append((first, i))
            first, total = i + 1, 0
    return bounds + [(first, len(profile))]


def chen_greedy(profile: Profile, budget_bytes) -> Schedule:
    """Chen et al. 2016's budgeted greedy segmentation: the fastest greedy plan under the budget.

    Tries the greedy at thresholds total/k for k = 1..n (Chen's search over
    the segment budget), predicts each plan's peak with the memory model, and
    keeps the least predicted time among those within ``budget_bytes``.
    """
    from .memory import predict_memory
    check_profile(profile, "chen_greedy")
    budget, n = parse_bytes(budget_bytes), len(profile)
    total = sum(profile.activation_bytes(i) for i in range(1, n))
    seen, best, least = set(), None, math.inf
    for k in range(1, n + 1):
        bounds = tuple(chen_segments(profile, total / k))
        if bounds in seen:
            continue
        seen.add(bounds)
        schedule = _segmented(n, list(bounds), tape_last=True)
        peak = predict_memory(profile, schedule).peak_bytes
        least = min(least, peak)
        key = (profile.schedule_time(schedule), peak)
        if peak <= budget and (best is None or key < best[0]):
            best = (key, schedule)
    if best is None:
        raise ValueError(f"planners: no greedy segmentation fits {budget:,} B; its least peak is {least:,} B")
    return best[1]


register_strategy("chen_greedy", chen_greedy)
