/* The exact byte-budget planner's dynamic program (ckpt/planners.py, class _Planner), in C.
 *
 * Same recursion, same arithmetic, same frontiers as the numpy engine in planners.py: per
 * sub-problem key (content id, pinned, pending) the Pareto frontier of (peak bytes, time), peaks
 * rising and times strictly falling, entries above the content's cap dropped.  Sub-problems are
 * filled bottom-up, b rising and a falling, so every child is ready before its parent; each checkpoint
 * split's two child frontiers are combined by a two-pointer walk over their peak levels and merged
 * into the parent's staircase.  Only pairs the staircase built so far does not dominate are kept, and
 * the work avoids the dominated ones without reading them:
 *
 * - every frontier has a sketch (a few of its entries, evenly spaced, in a small array of its own);
 *   from the two sketches alone, a split whose pairs are all dominated is skipped, and the walk of the
 *   others starts at the first level where one might not be;
 * - the walk stops at the least level where the staircase reaches the split's fastest time within the
 *   cap;
 * - from a dominated pair, the walk leaps at a gallop to the last level whose pair is still no faster
 *   than the staircase was at the first (pair times fall as levels rise; the staircase's never rise).
 * - the splits that the neighbouring sub-problems' frontiers use are merged first: they build most of
 *   the staircase, so the other splits' pairs are found dominated early (the order changes the work,
 *   not the staircase).
 *
 * Times are added in the numpy engine's order ((forward + right) + left; child + tape time), so the
 * two engines' frontiers are equal bit for bit.  Loaded with ctypes by ckpt/_native.py; no Python API
 * is used.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CKPT_FRONTIER_ABI 8
#define SKETCH 16                    /* entries per sketch: 4 cache lines */

/* Work counters, compiled in only with -DCKPT_FRONTIER_COUNTS (scripts/bench_planner.py --work):
 * splits judged, skipped at their corners, skipped from the sketches, walked; walk steps, candidates
 * pushed, dominated leaps; staircase entries moved by merges. */
enum { SPLITS, CORNER_SKIPS, SKETCH_SKIPS, WALKS, WALK_STEPS, PUSHES, LEAPS, MOVED, COUNTERS };
#ifdef CKPT_FRONTIER_COUNTS
static int64_t counts[COUNTERS];
const int64_t *ckpt_frontier_counts(void) { return counts; }
#define COUNT(k, by) (counts[k] += (by))
#else
#define COUNT(k, by) ((void)0)
#endif

typedef struct {
    int64_t peak;
    double time;
} Point;

typedef struct {             /* a staircase being built; who[k]: which option made entry k (0 tape, else c - a) */
    Point *e;
    int32_t *who;
    int64_t len, cap;
} Vec;

typedef struct {             /* copies of the caller's arrays, but ``cap``: read during ckpt_frontier_solve only */
    int n;
    int64_t *X, *f, *r, *own, *G, *untaped;
    const int64_t *cap;
    uint8_t *kin, *kout;
    double *tape_time, *Fsum;
    int32_t *content;
    int64_t L, loss_transient;
    double loss_time;
    int first_only;
    int64_t *start, *size;       /* per key: content * 4 + pinned * 2 + pending; start -1 = not built */
    int64_t *first_peak;         /* per key: its frontier's least peak and least time (corners) */
    double *last_time;
    Vec acc, cand, tmp;
    Point *points;               /* the pool: every built frontier, entry after entry */
    int64_t pool_len, pool_cap;
    Point *sketch;               /* per built key, from sketch_at: min(entries, SKETCH) of its entries */
    int64_t *sketch_at, sketch_len, sketch_cap;
    int32_t *won;                /* per built key, from won_at (won_n of them): the splits (c - a) its frontier uses */
    int64_t *won_at, won_len, won_cap;
    int32_t *won_n;
    int64_t *forward;            /* per split c of the sub-problem being built: its forward peak */
    int64_t *seen;               /* per c (or split offset c - a): the stamp of the last pass that marked it */
    int *order;                  /* the splits of the sub-problem being built, in the order they are merged */
    int64_t stamp;               /* counts those passes */
} Ctx;

int ckpt_frontier_abi(void) { return CKPT_FRONTIER_ABI; }

/* Grow *array (of *cap items of ``size`` bytes) to hold ``need`` items, doubling. */
static int grow(void **array, int64_t *cap, int64_t need, size_t size) {
    if (need <= *cap)
        return 0;
    int64_t more = *cap ? *cap : 1024;
    while (more < need)
        more *= 2;
    void *moved = realloc(*array, (size_t)more * size);
    if (!moved)
        return -1;
    *array = moved;
    *cap = more;
    return 0;
}

static int reserve(Vec *v, int64_t need) {
    int64_t cap = v->cap;
    if (grow((void **)&v->e, &cap, need, sizeof(Point)))
        return -1;
    return grow((void **)&v->who, &v->cap, need, sizeof(int32_t));
}

static inline int64_t max64(int64_t x, int64_t y) { return x > y ? x : y; }

static inline int64_t min64(int64_t x, int64_t y) { return x < y ? x : y; }

/* Append in rising-peak order, keeping a staircase: an entry no faster than the last is dropped;
 * a faster one at the last one's peak replaces it.  Room must be reserved. */
static inline void push(Vec *v, int64_t peak, double time, int32_t who) {
    if (v->len) {
        Point *last = &v->e[v->len - 1];
        if (time >= last->time)
            return;
        if (peak == last->peak) {
            last->time = time, v->who[v->len - 1] = who;
            return;
        }
    }
    v->who[v->len] = who;
    v->e[v->len++] = (Point){peak, time};
}

static inline int64_t key_of(const Ctx *C, int a, int b, int pinned, int pending) {
    pinned = pinned || a == 0;
    return (int64_t)C->content[(int64_t)a * (C->n + 1) + b] * 4 + pinned * 2 + pending;
}

/* The least peak at which the staircase is at least as fast as ``time`` (INT64_MAX if nowhere). */
static int64_t reach(const Vec *acc, double time) {
    int64_t lo = 0, hi = acc->len;              /* times fall along the staircase */
    while (lo < hi) {
        int64_t mid = (lo + hi) / 2;
        if (acc->e[mid].time <= time)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo < acc->len ? acc->e[lo].peak : INT64_MAX;
}

/* Last index in [0, n) whose peak is <= level (-1 if none); peaks rise. */
static int64_t last_at_or_below(const Point *x, int64_t n, int64_t level) {
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = (lo + hi) / 2;
        if (x[mid].peak <= level)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo - 1;
}

/* First index in [lo, acc->len) whose peak is >= peak. */
static int64_t first_at_or_above(const Vec *acc, int64_t lo, int64_t peak) {
    int64_t hi = acc->len;
    while (lo < hi) {
        int64_t mid = (lo + hi) / 2;
        if (acc->e[mid].peak >= peak)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

/* First index in [lo, acc->len) whose time is < time (times fall along the staircase). */
static int64_t first_faster(const Vec *acc, int64_t lo, double time) {
    int64_t hi = acc->len;
    while (lo < hi) {
        int64_t mid = (lo + hi) / 2;
        if (acc->e[mid].time < time)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

/* The last k in [from, n) for which ``holds`` (an expression in k) is true, galloping from ``from``
 * (where it is true; it stays true up to some k, then false).  A macro, so that each test is inlined. */
#define LAST_HOLDING(result, from, n, holds)                                                \
    do {                                                                                   \
        int64_t good_ = (from), step_ = 1, bad_, k;                                        \
        while ((k = good_ + step_) < (n) && (holds))                                       \
            good_ = k, step_ *= 2;                                                         \
        bad_ = k < (n) ? k : (n);                                                          \
        while (bad_ - good_ > 1) {                                                         \
            k = good_ + (bad_ - good_) / 2;                                                \
            if (holds)                                                                     \
                good_ = k;                                                                 \
            else                                                                           \
                bad_ = k;                                                                  \
        }                                                                                  \
        (result) = good_;                                                                  \
    } while (0)

/* A walk's place on the staircase: its last entry at or under the level (below), the next one's peak
 * and the time there. */
typedef struct {
    const Point *e;
    int64_t len, below, next;
    double time;
} AccCursor;

static inline void acc_to(AccCursor *at, int64_t level) {
    if (at->next > level)
        return;
    const Point *e = at->e;
    LAST_HOLDING(at->below, at->below + 1, at->len, e[k].peak <= level);
    at->time = e[at->below].time;
    at->next = at->below + 1 < at->len ? e[at->below + 1].peak : INT64_MAX;
}

/* One side of a split: a child's frontier (m entries), what the parent adds to its peaks to make levels,
 * and its sketch: s = min(m, SKETCH) of its entries, the k-th at index k(m-1)/(s-1). */
typedef struct {
    const Point *x;
    int64_t m, shift;
    const Point *sk;
    int64_t s;
} Side;

static inline int64_t level_of(const Side *side, int64_t k) { return side->x[k].peak + side->shift; }

static inline int64_t next_level(const Side *side, int64_t k) {
    return k + 1 < side->m ? side->x[k + 1].peak + side->shift : INT64_MAX;
}

static inline int64_t sketch_index(const Side *side, int64_t k) {
    return side->s > 1 ? k * (side->m - 1) / (side->s - 1) : 0;
}

/* No entry from sketch point k's up to (not including) point k + 1's is faster than this: point k + 1's
 * time, or point k's own where no entry lies between them. */
static inline double sketch_floor(const Side *side, int64_t k) {
    if (k + 1 >= side->s || sketch_index(side, k + 1) - sketch_index(side, k) == 1)
        return side->sk[k].time;
    return side->sk[k + 1].time;
}

/* Last sketch point at or under the level (-1 if none). */
static inline int64_t sketch_below(const Side *side, int64_t level) {
    int64_t k = -1;
    while (k + 1 < side->s && side->sk[k + 1].peak + side->shift <= level)
        k++;
    return k;
}

/* Last entry at or under the level (-1 if none), searched between the sketch points around it only. */
static int64_t entry_below(const Side *side, int64_t level) {
    const int64_t k = sketch_below(side, level);
    if (k < 0)
        return -1;
    const int64_t lo = sketch_index(side, k), hi = k + 1 < side->s ? sketch_index(side, k + 1) : side->m;
    return lo + last_at_or_below(side->x + lo, hi - lo, level - side->shift);
}

/* Last entry at or under the level, galloping from entry ``from`` (which is at or under it). */
static inline int64_t entry_below_from(const Side *side, int64_t from, int64_t level) {
    int64_t found;
    LAST_HOLDING(found, from, side->m, level_of(side, k) <= level);
    return found;
}

/* The least level from ``level`` up to ``top`` at which some pair of the split may be faster than the
 * staircase, judged from the sketches alone: between two sketch levels no pair is faster than the sum of
 * the sides' sketch floors, and the staircase is at its slowest at the first.  INT64_MAX if none. */
static int64_t first_open_level(const Side *r, const Side *l, double fT, int64_t level, int64_t top,
                                AccCursor *at) {
    int64_t kr = sketch_below(r, level), kl = sketch_below(l, level);
    while (level <= top) {
        acc_to(at, level);
        if ((fT + sketch_floor(r, kr)) + sketch_floor(l, kl) < at->time)
            return level;
        const int64_t next_r = kr + 1 < r->s ? r->sk[kr + 1].peak + r->shift : INT64_MAX;
        const int64_t next_l = kl + 1 < l->s ? l->sk[kl + 1].peak + l->shift : INT64_MAX;
        if (next_r == INT64_MAX && next_l == INT64_MAX)
            break;
        kr += next_r <= next_l, kl += next_l <= next_r;
        level = min64(next_r, next_l);
    }
    return INT64_MAX;
}

/* The walk's pair (i, j) is no faster than ``time``, the staircase's time at its level.  Pair times fall
 * as levels rise and the staircase's time never rises, so every later level whose pair is still no
 * faster than ``time`` is dominated too: move (i, j) to the last such pair, first along the right side
 * at a gallop (the left following each probe's level), then along the left below the right's next
 * level. */
static void skip_dominated(const Side *r, const Side *l, double fT, int64_t top, double time, int64_t *pi,
                           int64_t *pj) {
    int64_t good = *pi, j = *pj, bad = r->m, step = 1;
    while (good + step < r->m) {                   /* gallop; j: the left's entry at good's level */
        const int64_t k = good + step, level = level_of(r, k);
        const int64_t jk = level <= top ? entry_below_from(l, j, level) : -1;
        if (jk < 0 || (fT + r->x[k].time) + l->x[jk].time < time) {
            bad = k;
            break;
        }
        good = k, j = jk, step *= 2;
    }
    while (bad - good > 1) {                       /* bisect, the left searched from good's entry on */
        const int64_t k = good + (bad - good) / 2, level = level_of(r, k);
        const int64_t jk = level <= top ? entry_below_from(l, j, level) : -1;
        if (jk < 0 || (fT + r->x[k].time) + l->x[jk].time < time)
            bad = k;
        else
            good = k, j = jk;
    }
    const int64_t next_r = next_level(r, good);
    const double with_right = fT + r->x[good].time;
    LAST_HOLDING(j, j, l->m, level_of(l, k) < next_r && level_of(l, k) <= top && with_right + l->x[k].time >= time);
    *pi = good, *pj = j;
}

/* acc := staircase of acc ∪ cand, where no cand entry is dominated by acc (split_candidates checks).
 * Only acc's window [i0, i1) can change: entries below cand's least peak stay, and so do entries faster
 * than cand's fastest; the window is merged with cand and the tail moved. */
static int merge(Ctx *C) {
    Vec *acc = &C->acc, *cand = &C->cand, *tmp = &C->tmp;
    const int64_t i0 = first_at_or_above(acc, 0, cand->e[0].peak);
    const int64_t i1 = first_faster(acc, i0, cand->e[cand->len - 1].time);
    if (reserve(tmp, (i1 - i0) + cand->len) || reserve(acc, acc->len + cand->len))
        return -1;
    tmp->len = 0;
    int64_t i = i0, j = 0;
    while (i < i1 || j < cand->len) {
        if (j >= cand->len || (i < i1 && acc->e[i].peak <= cand->e[j].peak))
            push(tmp, acc->e[i].peak, acc->e[i].time, acc->who[i]), i++;
        else
            push(tmp, cand->e[j].peak, cand->e[j].time, cand->who[j]), j++;
    }
    const int64_t tail = acc->len - i1;
    COUNT(MOVED, tail);
    memmove(acc->e + i0 + tmp->len, acc->e + i1, (size_t)tail * sizeof(Point));
    memmove(acc->who + i0 + tmp->len, acc->who + i1, (size_t)tail * sizeof(int32_t));
    memcpy(acc->e + i0, tmp->e, (size_t)tmp->len * sizeof(Point));
    memcpy(acc->who + i0, tmp->who, (size_t)tmp->len * sizeof(int32_t));
    acc->len += tmp->len - (i1 - i0);
    return 0;
}

/* A built key's frontier as one side of a split, its levels shifted by ``shift``. */
static Side side_of(const Ctx *C, int64_t key, int64_t shift) {
    const int64_t m = C->size[key];
    return (Side){C->points + C->start[key], m, shift, C->sketch + C->sketch_at[key], m < SKETCH ? m : SKETCH};
}

/* The candidates of the checkpoint split at c, into cand: x_a saved, stages a+1..c forwarded
 * (forward peak ``fp``), right solved holding ``cur``, then left (its peaks relative to G[c]). */
static int split_candidates(Ctx *C, int a, int b, int c, int pinned, int pending, int64_t cur, int64_t fp,
                            int64_t cap) {
    const int64_t kr = key_of(C, c, b, 0, pending), kl = key_of(C, a, c, pinned, 0);
    C->cand.len = 0;
    COUNT(SPLITS, 1);
    if (C->start[kr] < 0 || C->start[kl] < 0)
        return -2;                                   /* a child not built: an ordering bug */
    if (!C->size[kr] || !C->size[kl])
        return 0;
    const double fT = C->Fsum[c] - C->Fsum[a];
    const int64_t g = C->G[c] - C->G[b];
    /* from the children's corners alone (two small arrays): every pair peaks at or above the least level
     * and is no faster than both sides' fastest; dominated if the staircase is already that fast there */
    int64_t peak = max64(max64(C->first_peak[kr] + cur, C->first_peak[kl] + g), fp);
    if (peak > cap || reach(&C->acc, (fT + C->last_time[kr]) + C->last_time[kl]) <= peak) {
        COUNT(CORNER_SKIPS, 1);
        return 0;
    }
    const Side R = side_of(C, kr, cur), L = side_of(C, kl, g);
    /* the split's fastest within the cap: each side's last entry whose level fits; levels above the least
     * where the staircase is that fast are dominated */
    const int64_t r_top = R.sk[R.s - 1].peak + cur <= cap ? R.m - 1 : entry_below(&R, cap);
    const int64_t l_top = L.sk[L.s - 1].peak + g <= cap ? L.m - 1 : entry_below(&L, cap);
    if (r_top < 0 || l_top < 0)
        return 0;
    const int64_t top = min64(cap, reach(&C->acc, (fT + R.x[r_top].time) + L.x[l_top].time) - 1);
    const int64_t acc_len = C->acc.len;
    AccCursor at = {C->acc.e, acc_len, first_at_or_above(&C->acc, 0, peak + 1) - 1, 0, INFINITY};
    at.next = at.below + 1 < acc_len ? at.e[at.below + 1].peak : INT64_MAX;
    at.time = at.below >= 0 ? at.e[at.below].time : INFINITY;
    if ((peak = first_open_level(&R, &L, fT, peak, top, &at)) > top) {
        COUNT(SKETCH_SKIPS, 1);
        return 0;
    }
    COUNT(WALKS, 1);
    if (reserve(&C->cand, R.m + L.m))
        return -1;
    /* (i, j): each side's last entry at or under the level, i.e. the fastest pair there */
    int64_t i = entry_below(&R, peak), j = entry_below(&L, peak);
    while (peak <= top) {
        acc_to(&at, peak);
        const double time = (fT + R.x[i].time) + L.x[j].time;
        COUNT(WALK_STEPS, 1);
        if (time < at.time) {
            COUNT(PUSHES, 1);
            push(&C->cand, peak, time, c - a);
        } else {
            COUNT(LEAPS, 1);
            skip_dominated(&R, &L, fT, top, at.time, &i, &j);
        }
        const int64_t next_r = next_level(&R, i), next_l = next_level(&L, j);
        if (next_r == INT64_MAX && next_l == INT64_MAX)
            break;
        i += next_r <= next_l, j += next_l <= next_r;
        peak = min64(next_r, next_l);
    }
    return 0;
}

/* Record which checkpoint splits (c - a) the staircase built for ``key`` uses, each once. */
static int store_winners(Ctx *C, int64_t key) {
    const Vec *acc = &C->acc;
    const int64_t mark = ++C->stamp;
    int32_t found = 0;
    if (grow((void **)&C->won, &C->won_cap, C->won_len + acc->len, sizeof(int32_t)))
        return -1;
    for (int64_t k = 0; k < acc->len; k++) {
        const int32_t w = acc->who[k];
        if (w && C->seen[w] != mark)
            C->seen[w] = mark, C->won[C->won_len + found++] = w;
    }
    C->won_at[key] = C->won_len, C->won_n[key] = found, C->won_len += found;
    return 0;
}

/* Copy the staircase built for ``key`` into the pool, with its sketch, corners and winning splits. */
static int store(Ctx *C, int64_t key) {
    const Vec *acc = &C->acc;
    const int64_t m = acc->len, s = m < SKETCH ? m : SKETCH;
    if (grow((void **)&C->points, &C->pool_cap, C->pool_len + m, sizeof(Point))
        || grow((void **)&C->sketch, &C->sketch_cap, C->sketch_len + s, sizeof(Point)))
        return -1;
    memcpy(C->points + C->pool_len, acc->e, (size_t)m * sizeof(Point));
    for (int64_t k = 0; k < s; k++)
        C->sketch[C->sketch_len + k] = acc->e[s > 1 ? k * (m - 1) / (s - 1) : 0];
    C->start[key] = C->pool_len, C->size[key] = m, C->sketch_at[key] = C->sketch_len;
    if (m)
        C->first_peak[key] = acc->e[0].peak, C->last_time[key] = acc->e[m - 1].time;
    C->pool_len += m, C->sketch_len += s;
    return store_winners(C, key);
}

/* A sub-problem (a, b): x_a's bytes unless pinned (cur), what its end holds (base: x_b and the loss
 * value once the loss has run), and its tape option: what the tape holds beside its child (held), the
 * least peak the option has (notes), and the child's key. */
typedef struct {
    int64_t cur, base, held, notes, child;
} Sub;

static Sub sub_of(const Ctx *C, int a, int b, int pinned, int pending) {
    const int64_t *X = C->X, *G = C->G;
    const int i = a + 1;
    Sub sub = {pinned ? 0 : X[a], pending ? 0 : X[b] + C->L, 0, 0, -1};
    if (a < b) {
        sub.held = (C->kin[i] ? sub.cur : 0) + C->own[i] + (C->kout[i] ? X[i] : 0);
        sub.notes = max64(max64(sub.base + sub.cur + C->f[i], sub.held + X[i] + G[i] - G[b] + C->r[i] + C->L),
                          X[a] + G[a] - G[b] + C->L);
        sub.child = key_of(C, i, b, C->kout[i], pending);
    }
    return sub;
}

/* The forward peak of checkpoint split c: x_a's and the stages' a+1..c run from it, by ``forward``, the
 * running maximum over the splits before (c = a + 1 starts it). */
static inline int64_t forward_peak(const Ctx *C, int a, int c, int64_t forward) {
    return c == a + 1 ? C->f[a + 1] : max64(forward, C->untaped[c]);
}

/* Append to order (marking each: seen[c] = mark) the splits c in a+1..last, not yet marked, that a built
 * neighbour's frontier uses, in the order its frontier first uses them; its offsets count from ``from``. */
static int queue_winners(Ctx *C, int64_t neighbour, int from, int a, int last, int64_t mark, int *order) {
    int queued = 0;
    if (neighbour < 0 || C->start[neighbour] < 0)
        return 0;
    const int32_t *won = C->won + C->won_at[neighbour];
    for (int32_t k = 0; k < C->won_n[neighbour]; k++) {
        const int c = from + won[k];
        if (c > a && c <= last && C->seen[c] != mark)
            C->seen[c] = mark, order[queued++] = c;
    }
    return queued;
}

/* Merge every checkpoint split's candidates into acc.  The splits the neighbouring sub-problems' frontiers
 * use go first (the same sub-problem before the loss, (a+1, b), (a, b-1)): on most chains they build
 * nearly the whole staircase, so the other splits' walks find their pairs dominated early.  The order
 * changes the work only: the staircase of a set of points is the same in any order. */
static int merge_splits(Ctx *C, int a, int b, int pinned, int pending, const Sub *sub, int64_t cap) {
    const int last = pending ? b : b - 1;        /* c = b = n: checkpoint, forward to n, then the loss */
    int64_t forward = 0;
    for (int c = a + 1; c <= last; c++)
        C->forward[c] = forward = forward_peak(C, a, c, forward);
    const int64_t mark = ++C->stamp;
    int *order = C->order, queued = 0;
    queued += queue_winners(C, pending ? key_of(C, a, b, pinned, 0) : -1, a, a, last, mark, order + queued);
    queued += queue_winners(C, a + 1 < b ? key_of(C, a + 1, b, 0, pending) : -1, a + 1, a, last, mark, order + queued);
    queued += queue_winners(C, b - 1 > a ? key_of(C, a, b - 1, pinned, 0) : -1, a, a, last, mark, order + queued);
    for (int c = a + 1; c <= last; c++)
        if (C->seen[c] != mark)
            order[queued++] = c;
    for (int k = 0; k < queued; k++) {
        const int c = order[k];
        int err = split_candidates(C, a, b, c, pinned, pending, sub->cur, sub->base + sub->cur + C->forward[c], cap);
        if (err)
            return err;
        if (C->cand.len && merge(C))
            return -1;
    }
    return 0;
}

/* Build the frontier of sub-problem (a, b, pinned, pending) into the pool. */
static int build(Ctx *C, int a, int b, int pinned, int pending) {
    pinned = pinned || a == 0;
    const int64_t key = key_of(C, a, b, pinned, pending);
    if (C->start[key] >= 0)
        return 0;                                    /* the same content was built already */
    const int64_t cap = C->cap[key / 4];
    const Sub sub = sub_of(C, a, b, pinned, pending);
    Vec *acc = &C->acc;
    acc->len = 0;
    if (a == b) {
        const int64_t peak = pending ? max64(sub.cur + C->loss_transient, C->X[b] + C->L) : sub.base + sub.cur;
        if (reserve(acc, 1))
            return -1;
        if (peak <= cap)
            push(acc, peak, pending ? C->loss_time : 0.0, 0);
    } else {
        if (C->start[sub.child] < 0)
            return -2;
        const Point *tape = C->points + C->start[sub.child];
        if (reserve(acc, C->size[sub.child] + 1))
            return -1;
        for (int64_t k = 0; k < C->size[sub.child]; k++) {
            const int64_t peak = max64(sub.notes, sub.held + tape[k].peak);
            if (peak > cap)
                break;
            push(acc, peak, tape[k].time + C->tape_time[a + 1], 0);
        }
        int err = merge_splits(C, a, b, pinned, pending, &sub, cap);
        if (err)
            return err;
    }
    if (C->first_only && acc->len > 1)
        acc->len = 1;
    return store(C, key);
}
void ckpt_frontier_free(Ctx *C) {
    if (!C)
        return;
    free(C->X), free(C->f), free(C->r), free(C->own), free(C->G), free(C->untaped), free(C->kin), free(C->kout);
    free(C->tape_time), free(C->Fsum), free(C->content);
    free(C->points), free(C->sketch), free(C->sketch_at), free(C->won), free(C->won_at), free(C->won_n);
    free(C->forward), free(C->seen), free(C->order);
    free(C->acc.e), free(C->acc.who), free(C->cand.e), free(C->cand.who), free(C->tmp.e), free(C->tmp.who);
    free(C);
}

/* A copy of ``count`` items of ``size`` bytes (NULL when out of memory). */
static void *copy_of(const void *from, size_t count, size_t size) {
    void *to = malloc(count * size);
    if (to)
        memcpy(to, from, count * size);
    return to;
}

/* Every sub-problem's frontier, shortest first.  Returns a handle (read with ckpt_frontier_read and
 * ckpt_frontier_choice, released with ckpt_frontier_free), or NULL with *error set: -1 out of memory,
 * -2 ordering bug.  ``keys``: 4 × the number of content ids (the size of start, size, ...). */
Ctx *ckpt_frontier_solve(int n, const int64_t *X, const int64_t *f, const int64_t *r, const uint8_t *kin,
                         const uint8_t *kout, const int64_t *own, const double *tape_time, const double *Fsum,
                         const int64_t *G, const int64_t *untaped, int64_t L, int64_t loss_transient,
                         double loss_time, const int32_t *content, const int64_t *cap, int first_only,
                         int64_t keys, int64_t *start, int64_t *size, int64_t *first_peak, double *last_time,
                         int *error) {
    Ctx *C = calloc(1, sizeof(Ctx));
    *error = -1;
    if (!C)
        return NULL;
    const size_t stages = (size_t)n + 1, i64 = sizeof(int64_t);
    C->n = n, C->L = L, C->loss_transient = loss_transient, C->loss_time = loss_time, C->cap = cap;
    C->first_only = first_only, C->start = start, C->size = size;
    C->first_peak = first_peak, C->last_time = last_time;
    C->X = copy_of(X, stages, i64), C->f = copy_of(f, stages, i64), C->r = copy_of(r, stages, i64);
    C->own = copy_of(own, stages, i64), C->G = copy_of(G, stages, i64), C->untaped = copy_of(untaped, stages, i64);
    C->kin = copy_of(kin, stages, 1), C->kout = copy_of(kout, stages, 1);
    C->tape_time = copy_of(tape_time, stages, sizeof(double)), C->Fsum = copy_of(Fsum, stages, sizeof(double));
    C->content = copy_of(content, stages * stages, sizeof(int32_t));
    C->sketch_at = calloc((size_t)keys, i64), C->won_at = calloc((size_t)keys, i64);
    C->won_n = calloc((size_t)keys, sizeof(int32_t));
    C->forward = calloc(stages, i64), C->seen = calloc(stages, i64), C->order = calloc(stages, sizeof(int));
    if (!C->X || !C->f || !C->r || !C->own || !C->G || !C->untaped || !C->kin || !C->kout || !C->tape_time
        || !C->Fsum || !C->content || !C->sketch_at || !C->won_at || !C->won_n || !C->forward || !C->seen
        || !C->order) {
        ckpt_frontier_free(C);
        return NULL;
    }
    for (int b = 0; b <= n; b++) {                /* (a, b) needs (c, b) for c > a and (a, c) for c < b: */
        for (int a = b; a >= 0; a--) {           /* the right children are the ones just built, in cache */
            for (int pending = 0; pending <= (b == n); pending++) {      /* (a, n) before (a, n, pending) */
                int err = build(C, a, b, 0, pending);
                if (!err && a > 0 && kout[a])
                    err = build(C, a, b, 1, pending);
                if (err) {
                    *error = err;
                    ckpt_frontier_free(C);
                    return NULL;
                }
            }
        }
    }
    C->cap = NULL;
    *error = 0;
    return C;
}

/* Copy ``count`` pool entries from ``start``: peaks and times. */
void ckpt_frontier_read(const Ctx *C, int64_t start, int64_t count, int64_t *peaks, double *times) {
    for (int64_t k = 0; k < count; k++)
        peaks[k] = C->points[start + k].peak, times[k] = C->points[start + k].time;
}

/* How entry k of sub-problem (a, b) (a < b) is built, into choice: (0, child entry, 0) for the tape
 * option, (c - a, right entry, left entry) for a checkpoint at c.  Choices are not stored: the entry's
 * option is the first (tape, then c rising) whose pair at the entry's peak takes exactly its time
 * (that pair peaks there too: a lower peak with the same time would be the frontier's entry instead).
 * Returns 0, or -3 if no option does (a bug). */
int ckpt_frontier_choice(const Ctx *C, int a, int b, int pinned, int pending, int64_t k, int32_t *choice) {
    pinned = pinned || a == 0;
    const int64_t key = key_of(C, a, b, pinned, pending);
    const Point entry = C->points[C->start[key] + k];
    const Sub sub = sub_of(C, a, b, pinned, pending);
    const Side tape = side_of(C, sub.child, sub.held);
    const int64_t t = entry.peak >= sub.notes ? entry_below(&tape, entry.peak) : -1;
    if (t >= 0 && tape.x[t].time + C->tape_time[a + 1] == entry.time) {
        choice[0] = 0, choice[1] = (int32_t)t, choice[2] = 0;
        return 0;
    }
    const int last = pending ? b : b - 1;
    int64_t forward = 0;
    for (int c = a + 1; c <= last; c++) {
        forward = forward_peak(C, a, c, forward);
        const int64_t kr = key_of(C, c, b, 0, pending), kl = key_of(C, a, c, pinned, 0);
        if (sub.base + sub.cur + forward > entry.peak || !C->size[kr] || !C->size[kl])
            continue;
        const Side R = side_of(C, kr, sub.cur), L = side_of(C, kl, C->G[c] - C->G[b]);
        const int64_t i = entry_below(&R, entry.peak), j = entry_below(&L, entry.peak);
        const double fT = C->Fsum[c] - C->Fsum[a];
        if (i >= 0 && j >= 0 && (fT + R.x[i].time) + L.x[j].time == entry.time) {
            choice[0] = c - a, choice[1] = (int32_t)i, choice[2] = (int32_t)j;
            return 0;
        }
    }
    return -3;
}
