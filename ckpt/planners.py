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

Two engines compute the same frontiers bit for bit (a test compares them): a C
kernel (``_frontier.c``, compiled on first use by ``ckpt._native``; bottom-up,
two-pointer merges) and the numpy engine below (top-down, every split merged
at once), used where no C compiler is found or with ``CKPT_PLANNER_ENGINE=numpy``.
"""

from __future__ import annotations

import ctypes
import math
import re
import sys
import weakref
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from ._native import frontier_lib
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

class _Front(NamedTuple):
    """A sub-problem's Pareto frontier (peaks rising, times falling) and how each entry is built.

    ``split`` is 0 for the tape option (``right`` indexes the frontier of (a+1, b)) and c − a for a
    checkpoint at c (``right`` and ``left`` index the frontiers of (c, b) and (a, c)).  The C kernel's
    frontiers carry no choices (None): ``_Planner.choice`` rebuilds one entry's.
    """
    peak: np.ndarray          # int64 bytes, relative to G[b]
    time: np.ndarray
    split: np.ndarray | None
    right: np.ndarray | None
    left: np.ndarray | None


class _Row:
    """The frontiers one family of parents splits into, by split point c, with their ends as arrays
    (entries; least and last peak; their times), so that a parent reads them as slices."""

    def __init__(self, n: int, edge: int):
        self.fronts, self.edge = [None] * (n + 1), edge              # edge: the last c filled
        self.size = np.zeros(n + 1, dtype=np.int64)
        self.peaks = np.zeros((n + 1, 2), dtype=np.int64)
        self.times = np.zeros((n + 1, 2))

    def put(self, c: int, front: _Front) -> None:
        """Record the frontier of split point c."""
        self.fronts[c], self.edge = front, c
        if len(front.peak):
            self.size[c] = len(front.peak)
            self.peaks[c] = front.peak[0], front.peak[-1]
            self.times[c] = front.time[0], front.time[-1]

    def ends(self, first: int, last: int, usable: np.ndarray | None = None) -> tuple:
        """(entries, peaks, times) of split points first..last, or of ``usable`` among them."""
        ends = self.size[first:last + 1], self.peaks[first:last + 1], self.times[first:last + 1]
        return ends if usable is None else tuple(column[usable] for column in ends)


_NEVER = np.iinfo(np.int64).max


class _Planner:
    """The dynamic program over sub-problems (a, b): per sub-problem its whole Pareto set of (peak, time).

    Peaks count what the sub-problem holds beyond its callers: δ_b, finished
    gradients, its own checkpoints, tapes and current activation, and x_a
    unless a caller keeps it (``pinned``: x_0, or kept by the tape above).
    Sub-problems are keyed by content (x_a's bytes, stages a+1..b's costs,
    ``pinned``, ``pending``) with peaks relative to G[b], the gradients of the
    stages after b (held throughout), so equal sub-chains at different depths
    share one frontier.  With a ``cap`` (a budget), entries above the cap less
    the least G[b] of the content's occurrences are dropped: no plan within the
    budget can use them.  A sub-problem's frontier is built once, whole, from
    its children's: every split at once in numpy (``_combine``), then one
    Pareto filter; so one solve answers every budget up to the cap.  Entries
    are only ever dropped when another entry kept peaks no higher and is no
    slower, so the frontier is exact.
    """

    def __init__(self, profile: Profile, cap: int | None = None, first_only: bool = False):
        p, n = profile, len(profile)
        self.n, self.first_only, self.memo, self.pool = n, first_only, {}, None
        self.right_rows, self.left_rows = {}, {}                  # by (b, pending) and by (a, pinned)
        self.X = [p.activation_bytes(j) for j in range(n + 1)]
        self.f = [0] + [s.forward_transient for s in p.stages]
        self.r = [0] + [s.backward_transient for s in p.stages]
        self.kin = [False] + [s.tape_keeps_input for s in p.stages]
        self.kout = [False] + [s.tape_keeps_output for s in p.stages]
        self.own = [0] + [p.tape_own_bytes(i) for i in range(1, n + 1)]
        self.F = [0.0] + [s.forward_time for s in p.stages]
        self.Bt = [0.0] + [s.backward_time for s in p.stages]
        self.Fsum = np.cumsum(self.F, dtype=np.float64)
        grads = [0] + [s.grad_bytes for s in p.stages] + [0]
        self.G = [sum(grads[b + 1:]) for b in range(n + 1)]
        self.Gnp = np.array(self.G, dtype=np.int64)
        self.loss_transient, self.loss_time = p.loss_transient, p.loss_time
        # the loss value's bytes (Profile.loss_bytes) are held from Loss() to the step's end: in every
        # peak after the loss (backwards, sub-problems past it), in none of the first sweep's forwards
        self.L = p.loss_bytes
        # the forward peak of stage c run without a tape after stage c − 1's: x_{c−1} and its transient
        self.untaped = np.array([0, 0] + [self.X[c - 1] + self.f[c] for c in range(2, n + 1)], dtype=np.int64)
        self.content, least_g = self._content_ids()
        self.cap = {cid: math.inf if cap is None else cap - g for cid, g in least_g.items()}

    def _content_ids(self) -> tuple[list[list[int]], dict]:
        """content[a][b]: one id per distinct sub-problem content, and the least G[b] of each id's occurrences.

        Ids are interned incrementally: content[a][b] from content[a][b−1] and stage b's costs.
        """
        intern, n, G = {}, self.n, self.G
        stage = [intern.setdefault(("stage", self.X[i], self.f[i], self.r[i], self.kin[i], self.kout[i], self.own[i],
                                    self.F[i], self.Bt[i], G[i - 1] - G[i]), len(intern))
                 for i in range(n + 1)]
        content, least_g = [], {}
        for a in range(n + 1):
            row = [intern.setdefault(("start", self.X[a]), len(intern))]
            for b in range(a + 1, n + 1):
                row.append(intern.setdefault((row[-1], stage[b]), len(intern)))
            for b, cid in enumerate(row, start=a):
                least_g[cid] = min(least_g.get(cid, G[b]), G[b])
            content.append([None] * a + row)
        return content, least_g

    def solve(self, a: int, b: int, pinned: bool, pending: bool) -> _Front:
        """Frontier of sub-problem (a, b) (memoised; ``pending``: the loss is still to run)."""
        pinned = pinned or a == 0
        key = (self.content[a][b], pinned, pending)
        found = self.memo.get(key)
        if found is None:
            found = self.memo[key] = self._front(a, b, pinned, pending, self.cap[key[0]])
        return found

    def _front(self, a, b, pinned, pending, cap) -> _Front:
        X = self.X
        base = 0 if pending else X[b] + self.L
        cur = 0 if pinned else X[a]
        if a == b:
            peak = max(cur + self.loss_transient, X[b] + self.L) if pending else base + cur
            one = np.zeros(1, dtype=np.int64)
            return self._pareto(cap, np.array([peak], dtype=np.int64),
                                np.array([self.loss_time if pending else 0.0]), one, one, one)
        parts = [self._tape(a, b, pending, base, cur)]
        last = b if pending else b - 1                     # c = b = n: checkpoint, forward to n, then the loss
        if last > a:
            parts += self._splits(a, b, pinned, pending, base, cur, last, parts[0], cap)
        return self._pareto(cap, *(np.concatenate(column) for column in zip(*parts)))

    def _tape(self, a, b, pending, base, cur):
        i, X, G = a + 1, self.X, self.G
        held = (cur if self.kin[i] else 0) + self.own[i] + (X[i] if self.kout[i] else 0)
        notes = max(base + cur + self.f[i], held + X[i] + G[i] - G[b] + self.r[i] + self.L, X[a] + G[a] - G[b] + self.L)
        child = self.solve(i, b, self.kout[i], pending)
        size = len(child.peak)
        return (np.maximum(notes, held + child.peak), child.time + (self.F[i] + self.Bt[i]),
                np.zeros(size, dtype=np.int64), np.arange(size), np.zeros(size, dtype=np.int64))

    def _splits(self, a, b, pinned, pending, base, cur, last, tape, cap) -> list:
        """Candidates of every checkpoint split c in a+1..last: (peak, time, split, right index, left index) arrays.

        Each split's two corners (both sides at their least peak; both at
        their fastest) are built first; with the tape option they make a
        provisional frontier.  A split whose every candidate is dominated by it
        (its fastest time is reached there at or below its least peak) is
        skipped; of the rest, only peak levels below where the provisional
        frontier reaches the split's fastest time are merged (``_combine``).
        """
        right_row, left_row = self._rights(b, pending, a + 1, last), self._lefts(a, pinned, last)
        usable = np.flatnonzero((right_row.size[a + 1:last + 1] > 0) & (left_row.size[a + 1:last + 1] > 0))
        if not len(usable):
            return []
        rights = [right_row.fronts[c] for c in usable + a + 1]
        lefts = [left_row.fronts[c] for c in usable + a + 1]
        forward = np.maximum.accumulate(np.concatenate(([self.f[a + 1]], self.untaped[a + 2:last + 1])))[usable]
        forward_peak = base + cur + forward
        forward_time = self.Fsum[a + 1:last + 1][usable] - self.Fsum[a]
        grads_between = self.Gnp[a + 1:last + 1][usable] - self.G[b]        # left peaks: relative to G[c]
        corners = _corners(right_row.ends(a + 1, last, usable), left_row.ends(a + 1, last, usable), cur,
                           grads_between, forward_peak, forward_time)
        split = usable + 1
        low, fast = ((peak, time, split, right, left) for peak, time, right, left in corners)
        known_peak, known_time = (np.concatenate(c) for c in zip(tape[:2], low[:2], fast[:2]))
        known = _staircase(known_peak, known_time)
        known_peak, known_time = known_peak[known], known_time[known]
        reach = np.searchsorted(-known_time, -fast[1], side="left")      # first known entry at least as fast
        cutoff = np.append(known_peak, _NEVER)[reach]
        cutoff = np.minimum(cutoff, _NEVER if cap == math.inf else cap + 1)
        alive = np.flatnonzero(cutoff > low[0])
        if not len(alive):
            return [low, fast]
        peak, time, seg, right, left = _combine([rights[s] for s in alive], [lefts[s] for s in alive], cur,
                                                grads_between[alive], forward_peak[alive], forward_time[alive],
                                                cutoff[alive])
        return [low, fast, (peak, time, split[alive][seg], right, left)]

    def _rights(self, b, pending, first, last) -> _Row:
        """The row of sub-problems (c, b) for c in first..last (filled downwards: (c, b) needs (c', b), c' > c)."""
        row = self.right_rows.get((b, pending))
        if row is None:
            row = self.right_rows[(b, pending)] = _Row(self.n, last + 1)
        while row.edge > first:
            row.put(row.edge - 1, self.solve(row.edge - 1, b, False, pending))
        return row

    def _lefts(self, a, pinned, last) -> _Row:
        """The row of sub-problems (a, c) for c in a+1..last (filled upwards: (a, c) needs (a, c'), c' < c)."""
        row = self.left_rows.get((a, pinned))
        if row is None:
            row = self.left_rows[(a, pinned)] = _Row(self.n, a)
        while row.edge < last:
            row.put(row.edge + 1, self.solve(a, row.edge + 1, pinned, False))
        return row

    def solve_native(self, lib) -> _Front:
        """Every sub-problem's frontier by the C kernel (``_frontier.c``, the same recursion and arithmetic,
        bottom-up); returns the whole chain's."""
        n = self.n
        content = np.zeros((n + 1, n + 1), dtype=np.int32)
        for a, row in enumerate(self.content):
            content[a, a:] = row[a:]
        ids = int(content.max()) + 1
        cap = np.full(ids, _NEVER, dtype=np.int64)
        for cid, limit in self.cap.items():
            cap[cid] = _NEVER if limit == math.inf else limit
        start, size = np.full(4 * ids, -1, dtype=np.int64), np.zeros(4 * ids, dtype=np.int64)
        as64 = lambda v: np.ascontiguousarray(v, dtype=np.int64)
        error = ctypes.c_int()
        handle = lib.ckpt_frontier_solve(
            n, as64(self.X), as64(self.f), as64(self.r), np.array(self.kin, dtype=np.uint8),
            np.array(self.kout, dtype=np.uint8), as64(self.own),
            np.array([F + B for F, B in zip(self.F, self.Bt)], dtype=np.float64),
            np.ascontiguousarray(self.Fsum, dtype=np.float64), as64(self.Gnp), as64(self.untaped),
            self.L, self.loss_transient, self.loss_time, content, cap, int(self.first_only), 4 * ids,
            start, size, np.zeros(4 * ids, dtype=np.int64), np.zeros(4 * ids, dtype=np.float64), ctypes.byref(error))
        if not handle:
            raise (MemoryError if error.value == -1 else RuntimeError)(
                f"planners: the C planner kernel failed (code {error.value})")
        weakref.finalize(self, lib.ckpt_frontier_free, handle)    # frontiers stay in C memory, read per key
        self.pool = (lib, handle, start, size)
        return self.front_of(0, n, True, True)

    def front_of(self, a, b, pinned, pending) -> _Front:
        """The built frontier of sub-problem (a, b): from the memo, or copied out of the C kernel's pool
        (peaks and times: the kernel keeps no choices, ``choice`` rebuilds one)."""
        pinned = pinned or a == 0
        cid = self.content[a][b]
        if self.pool is None:
            return self.memo[(cid, pinned, pending)]
        lib, handle, start, size = self.pool
        k = 4 * cid + 2 * pinned + pending
        m = int(size[k])
        peak, time = np.empty(m, np.int64), np.empty(m, np.float64)
        lib.ckpt_frontier_read(handle, int(start[k]), m, peak, time)
        return _Front(peak, time, None, None, None)

    def choice(self, a, b, pinned, pending, k) -> tuple[int, int, int]:
        """How entry ``k`` of sub-problem (a, b) (a < b) is built: (split, right entry, left entry), as in
        ``_Front``."""
        pinned = pinned or a == 0
        if self.pool is None:
            front = self.memo[(self.content[a][b], pinned, pending)]
            return int(front.split[k]), int(front.right[k]), int(front.left[k])
        lib, handle = self.pool[:2]
        found = np.zeros(3, dtype=np.int32)
        if lib.ckpt_frontier_choice(handle, a, b, int(pinned), int(pending), k, found):
            raise RuntimeError(f"planners: the C planner kernel found no option for entry {k} of ({a}, {b})")
        return int(found[0]), int(found[1]), int(found[2])

    def _pareto(self, cap, peak, time, split, right, left) -> _Front:
        chosen = _staircase(peak, time)
        chosen = chosen[:np.searchsorted(peak[chosen], cap, side="right")]
        chosen = chosen[:1] if self.first_only else chosen
        return _Front(peak[chosen], time[chosen], split[chosen], right[chosen], left[chosen])

    def actions(self, a, b, pinned, pending, k, out: list) -> None:
        """Append the actions of entry ``k`` of sub-problem (a, b)'s frontier."""
        pinned = pinned or a == 0
        if a == b:
            out += [Loss()] if pending else []
            return
        split, right, left = self.choice(a, b, pinned, pending, k)
        if split == 0:
            out.append(ForwardTape(a + 1))
            self.actions(a + 1, b, self.kout[a + 1], pending, right, out)
            out.append(Backward(a + 1))
            return
        c = a + split
        out += [Save(a), *(Forward(i) for i in range(a + 1, c + 1))]
        self.actions(c, b, False, pending, right, out)
        out += [Load(a), Free(a)]
        self.actions(a, c, pinned, False, left, out)


def _staircase(peak, time) -> np.ndarray:
    """Indices of the Pareto frontier of points (peaks rising, times falling; the fastest of equal peaks)."""
    order = np.argsort(peak, kind="stable")              # candidates come in sorted runs: a merge
    time = time[order]
    faster = np.empty(len(time), dtype=bool)
    faster[:1] = True
    np.less(time[1:], np.minimum.accumulate(time)[:-1], out=faster[1:])    # than every lower or equal peak before
    order = order[faster]
    peak = peak[order]
    last_of_peak = np.ones(len(peak), dtype=bool)
    np.not_equal(peak[1:], peak[:-1], out=last_of_peak[:-1])
    return order[last_of_peak]          # of equal peaks the last kept is the fastest


def _corners(right_ends, left_ends, held, grads_between, forward_peak, forward_time):
    """Every split's two corner candidates, both sides at their least peak and both at their fastest:
    ((peak, time, right index, left index) arrays) twice, from the sides' ``_Row.ends``."""
    (r_size, r_peaks, r_times), (l_size, l_peaks, l_times) = right_ends, left_ends
    found = []
    for k, right, left in ((0, 0 * r_size, 0 * l_size), (1, r_size - 1, l_size - 1)):
        peak = np.maximum(np.maximum(r_peaks[:, k] + held, l_peaks[:, k] + grads_between), forward_peak)
        found.append((peak, forward_time + r_times[:, k] + l_times[:, k], right, left))
    return found


def _combine(rights, lefts, held, grads_between, forward_peak, forward_time, cutoff):
    """All splits' 'forward to c, solve right (holding ``held``), then solve left' at once: a staircase merge.

    For split s, each candidate peak level (a right peak + held, or a left
    peak) below ``cutoff[s]`` pairs the fastest right entry and the fastest
    left entry at or below it; every Pareto-optimal pair with a peak below the
    cutoff is among these.  Entries are keyed ``s · K + peak`` so one
    ``searchsorted`` serves every split.
    """
    r_size, l_size = np.array([len(r.peak) for r in rights]), np.array([len(l.peak) for l in lefts])
    r_peak = np.concatenate([r.peak for r in rights]) + held
    l_peak = np.concatenate([l.peak for l in lefts]) + np.repeat(grads_between, l_size)
    scale = int(cutoff.max())                     # every level merged lies below its split's cutoff
    if scale == _NEVER:
        scale = int(max(r_peak.max(initial=0), l_peak.max(initial=0))) + 1
    if scale * len(rights) >= 2**62 and len(rights) > 1:          # keys would overflow int64: halve
        h = len(rights) // 2
        low = _combine(rights[:h], lefts[:h], held, grads_between[:h], forward_peak[:h], forward_time[:h],
                       cutoff[:h])
        high = _combine(rights[h:], lefts[h:], held, grads_between[h:], forward_peak[h:], forward_time[h:],
                        cutoff[h:])
        both = [np.concatenate((x, y + h if i == 2 else y)) for i, (x, y) in enumerate(zip(low, high))]
        kept = _staircase(both[0], both[1])
        return tuple(column[kept] for column in both)
    splits = np.arange(len(rights))
    r_seg, l_seg = np.repeat(splits, r_size), np.repeat(splits, l_size)
    r_start, l_start = np.cumsum(r_size) - r_size, np.cumsum(l_size) - l_size
    r_in = np.flatnonzero(r_peak < cutoff[r_seg])        # higher levels are dominated by a known entry
    l_in = np.flatnonzero(l_peak < cutoff[l_seg])
    keys = np.concatenate((r_seg[r_in] * scale + r_peak[r_in], l_seg[l_in] * scale + l_peak[l_in]))
    origin = np.concatenate((r_in, l_in + len(r_peak)))[np.argsort(keys, kind="stable")]   # merges two sorted runs
    from_right = origin < len(r_peak)
    ri = np.maximum.accumulate(np.where(from_right, origin, -1))          # the last right entry at or below
    li = np.maximum.accumulate(np.where(from_right, -1, origin - len(r_peak)))
    seg = np.concatenate((r_seg, l_seg))[origin]
    ok = (ri >= r_start[seg]) & (li >= l_start[seg])                 # both sides have an entry at this level
    ri, li, seg = ri[ok], li[ok], seg[ok]
    r_time = np.concatenate([r.time for r in rights])
    l_time = np.concatenate([l.time for l in lefts])
    peak = np.maximum(np.maximum(r_peak[ri], l_peak[li]), forward_peak[seg])
    time = forward_time[seg] + r_time[ri] + l_time[li]
    kept = _staircase(peak, time)                        # the envelope of all splits: most candidates go here
    ri, li, seg = ri[kept], li[kept], seg[kept]
    return peak[kept], time[kept], seg, ri - r_start[seg], li - l_start[seg]


def _solve_whole(planner: _Planner) -> _Front:
    """The frontier of the whole chain: by the C kernel where it builds, else by the numpy engine (whose
    recursion deepens by one frame triple per nested sub-problem)."""
    lib = frontier_lib()
    if lib is not None:
        return planner.solve_native(lib)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * planner.n + 1000))
    try:
        return planner.solve(0, planner.n, True, True)
    finally:
        sys.setrecursionlimit(limit)


def _plan(planner: _Planner, k: int) -> Schedule:
    actions = []
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * planner.n + 1000))
    try:
        planner.actions(0, planner.n, True, True, k, actions)
    finally:
        sys.setrecursionlimit(limit)
    return Schedule(planner.n, actions)


def pareto(profile: Profile) -> list[tuple[int, float, Schedule]]:
    """Every (predicted peak bytes, predicted time, schedule) on the memory-vs-time frontier, peaks rising.

    Exact, and one solve answers every budget; but on heterogeneous chains the
    frontiers of sub-problems grow with the number of distinct byte sums (all of
    them kept: no budget caps them), so keep it to a few dozen distinct stages
    (``optimal`` drops every entry above its budget and goes further).
    """
    check_profile(profile, "pareto")
    planner = _Planner(profile)
    front = _solve_whole(planner)
    return [(int(front.peak[k]), float(front.time[k]), _plan(planner, k)) for k in range(len(front.peak))]


def min_feasible_budget(profile: Profile) -> int:
    """The least budget (bytes) under which any schedule of the class exists."""
    check_profile(profile, "min_feasible_budget")
    return int(_solve_whole(_Planner(profile, first_only=True)).peak[0])


@register_strategy("optimal")
def optimal(profile: Profile, budget_bytes) -> Schedule:
    """Least predicted time whose predicted peak ≤ ``budget_bytes`` (exact bytes; class in module doc)."""
    check_profile(profile, "optimal")
    budget = parse_bytes(budget_bytes)
    planner = _Planner(profile, cap=budget)
    front = _solve_whole(planner)
    if not len(front.peak):
        least = min_feasible_budget(profile)
        raise ValueError(f"planners: no schedule fits a budget of {budget:,} B; the least feasible budget "
                         f"is {least:,} B ({least / 2**20:.2f} MiB): raise the budget or shrink the batch")
    return _plan(planner, len(front.peak) - 1)                  # the last entry within the cap: the fastest


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
