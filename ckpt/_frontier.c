/* The exact byte-budget planner's dynamic program (ckpt/planners.py, class _Planner), in C.
 *
 * Same recursion, same arithmetic, same frontiers as the numpy engine in planners.py: per
 * sub-problem key (content id, pinned, pending) the Pareto frontier of (peak bytes, time), peaks
 * rising and times strictly falling, entries above the content's cap dropped.  Sub-problems are
 * filled bottom-up, b rising and a falling, so every child is ready before its parent; each checkpoint
 * split's two child frontiers are combined by a two-pointer walk over their peak levels and merged
 * into the parent's staircase.  Only pairs the staircase built so far does not dominate are kept:
 * the walk stops at the least peak where the staircase reaches the split's fastest time within the
 * cap, and moves on at once from a side's entry that, even with the other side's fastest entry, is no
 * faster than the staircase at the current level (the other side follows at a gallop).
 *
 * Times are added in the numpy engine's order ((forward + right) + left; child + tape time), so the
 * two engines' frontiers are equal bit for bit; on exact ties the earlier option (tape, then
 * lower split) is kept.  Loaded with ctypes by ckpt/_native.py; no Python API is used.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CKPT_FRONTIER_ABI 6

typedef struct {
    int64_t peak;
    double time;
    int32_t split, right, left, unused;
} Entry;

typedef struct {
    Entry *e;
    int64_t len, cap;
} Vec;

typedef struct {             /* the caller's arrays are read during ckpt_frontier_solve only */
    int n;
    const int64_t *X, *f, *r, *own, *G, *untaped, *cap;
    const uint8_t *kin, *kout;
    const double *tape_time, *Fsum;
    const int32_t *content;
    int64_t L, loss_transient;
    double loss_time;
    int first_only;
    int64_t *start, *size;       /* per key: content * 4 + pinned * 2 + pending; start -1 = not built */
    int64_t *first_peak;         /* per key: its frontier's least peak and least time (corners) */
    double *last_time;
    Vec acc, cand, tmp;
    int64_t *peaks;           /* the pool: every built frontier, column by column */
    double *times;
    int32_t (*choice)[3];     /* split, right, left */
    int64_t pool_len, pool_cap;
} Ctx;

int ckpt_frontier_abi(void) { return CKPT_FRONTIER_ABI; }

static int reserve(Vec *v, int64_t need) {
    if (need <= v->cap)
        return 0;
    int64_t cap = v->cap ? v->cap : 1024;
    while (cap < need)
        cap *= 2;
    Entry *e = realloc(v->e, (size_t)cap * sizeof(Entry));
    if (!e)
        return -1;
    v->e = e;
    v->cap = cap;
    return 0;
}

static int reserve_pool(Ctx *C, int64_t need) {
    if (need <= C->pool_cap)
        return 0;
    int64_t cap = C->pool_cap ? C->pool_cap : 4096;
    while (cap < need)
        cap *= 2;
    int64_t *peaks = realloc(C->peaks, (size_t)cap * sizeof(int64_t));
    if (peaks)
        C->peaks = peaks;
    double *times = realloc(C->times, (size_t)cap * sizeof(double));
    if (times)
        C->times = times;
    int32_t(*choice)[3] = realloc(C->choice, (size_t)cap * sizeof(*choice));
    if (choice)
        C->choice = choice;
    if (!peaks || !times || !choice)
        return -1;
    C->pool_cap = cap;
    return 0;
}

static inline int64_t max64(int64_t x, int64_t y) { return x > y ? x : y; }

/* Append in rising-peak order, keeping a staircase: an entry no faster than the last is dropped;
 * a faster one at the last one's peak replaces it.  Room must be reserved. */
static inline void push(Vec *v, int64_t peak, double time, int32_t split, int32_t right, int32_t left) {
    if (v->len) {
        Entry *last = &v->e[v->len - 1];
        if (time >= last->time)
            return;
        if (peak == last->peak) {
            last->time = time, last->split = split, last->right = right, last->left = left;
            return;
        }
    }
    Entry *e = &v->e[v->len++];
    e->peak = peak, e->time = time, e->split = split, e->right = right, e->left = left;
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
static int64_t last_at_or_below(const int64_t *peaks, int64_t n, int64_t level) {
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = (lo + hi) / 2;
        if (peaks[mid] <= level)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo - 1;
}

/* Last index in [from, n) whose peak is <= level, galloping from ``from`` (whose peak is <= level). */
static int64_t last_from(const int64_t *peaks, int64_t n, int64_t from, int64_t level) {
    int64_t step = 1;
    while (from + step < n && peaks[from + step] <= level)
        from += step, step *= 2;
    int64_t hi = from + step < n ? from + step : n;           /* peaks[hi] > level, or hi = n */
    return from + last_at_or_below(peaks + from, hi - from, level);
}

/* A walk's place on the staircase: its last entry at or under the level (below), the next one's peak
 * and the time there. */
typedef struct {
    const Entry *e;
    int64_t len, below, next;
    double time;
} AccCursor;

static inline void acc_to(AccCursor *at, int64_t level) {
    while (at->next <= level) {
        at->below++;
        at->time = at->e[at->below].time;
        at->next = at->below + 1 < at->len ? at->e[at->below + 1].peak : INT64_MAX;
    }
}

/* The pair time bound of one side's entry k with the other side's fastest, added in the pair's order. */
static inline double bound(const double *times, int64_t k, double fT, double other_fastest, int right) {
    return right ? (fT + times[k]) + other_fastest : (fT + other_fastest) + times[k];
}

/* The last k from ``from`` on whose bound is still >= ``time`` (the staircase's time at the current level,
 * the highest it is at any level to come): all of them are ruled out.  Bounds fall with k, so gallop. */
static int64_t ruled_out_to(const double *times, int64_t n, int64_t from, double fT, double other_fastest,
                            int right, double time) {
    int64_t step = 1;
    while (from + step < n && bound(times, from + step, fT, other_fastest, right) >= time)
        from += step, step *= 2;
    int64_t lo = from, hi = from + step < n ? from + step : n;     /* bound(lo) >= time; hi: < time or n */
    while (hi - lo > 1) {
        int64_t mid = lo + (hi - lo) / 2;
        if (bound(times, mid, fT, other_fastest, right) >= time)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
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
        const Entry *e = (j >= cand->len || (i < i1 && acc->e[i].peak <= cand->e[j].peak)) ? &acc->e[i++]
                                                                                         : &cand->e[j++];
        push(tmp, e->peak, e->time, e->split, e->right, e->left);
    }
    memmove(acc->e + i0 + tmp->len, acc->e + i1, (size_t)(acc->len - i1) * sizeof(Entry));
    memcpy(acc->e + i0, tmp->e, (size_t)tmp->len * sizeof(Entry));
    acc->len += tmp->len - (i1 - i0);
    return 0;
}

/* The candidates of the checkpoint split at c, into cand: x_a saved, stages a+1..c forwarded
 * (forward peak ``fp``), right solved holding ``cur``, then left (its peaks relative to G[c]). */
static int split_candidates(Ctx *C, int a, int b, int c, int pinned, int pending, int64_t cur, int64_t fp,
                            int64_t cap) {
    const int64_t kr = key_of(C, c, b, 0, pending), kl = key_of(C, a, c, pinned, 0);
    const int64_t nr = C->size[kr], nl = C->size[kl];
    C->cand.len = 0;
    if (C->start[kr] < 0 || C->start[kl] < 0)
        return -2;                                   /* a child not built: an ordering bug */
    if (!nr || !nl)
        return 0;
    const double fT = C->Fsum[c] - C->Fsum[a];
    const int64_t g = C->G[c] - C->G[b];
    {   /* from the children's corners alone (no frontier touched, often out of cache): every pair peaks at
         * or above the least level and is no faster than both sides' fastest; dominated if the staircase
         * is already that fast there */
        const int64_t least = max64(max64(C->first_peak[kr] + cur, C->first_peak[kl] + g), fp);
        if (least > cap || reach(&C->acc, (fT + C->last_time[kr]) + C->last_time[kl]) <= least)
            return 0;
    }
    const int64_t *Rp = C->peaks + C->start[kr], *Lp = C->peaks + C->start[kl];
    const double *Rt = C->times + C->start[kr], *Lt = C->times + C->start[kl];
    /* the split's fastest within the cap: each side's last entry whose level fits */
    const int64_t r_top = last_at_or_below(Rp, nr, cap - cur), l_top = last_at_or_below(Lp, nl, cap - g);
    if (r_top < 0 || l_top < 0)
        return 0;
    const int64_t stop = reach(&C->acc, (fT + Rt[r_top]) + Lt[l_top]);
    const int64_t top = cap < stop - 1 ? cap : stop - 1;          /* levels above are dropped or dominated */
    if (reserve(&C->cand, nr + nl))
        return -1;
    const Entry *acc = C->acc.e;
    const int64_t acc_len = C->acc.len;
    /* (i, j): each side's last entry at or under the level, i.e. the fastest pair there */
    int64_t peak = max64(max64(Rp[0] + cur, Lp[0] + g), fp);
    int64_t i = last_from(Rp, nr, 0, peak - cur), j = last_from(Lp, nl, 0, peak - g);
    AccCursor at = {acc, acc_len, first_at_or_above(&C->acc, 0, peak + 1) - 1, 0, INFINITY};
    at.next = at.below + 1 < acc_len ? acc[at.below + 1].peak : INT64_MAX;
    at.time = at.below >= 0 ? acc[at.below].time : INFINITY;
    while (peak <= top) {
        acc_to(&at, peak);
        /* Levels only rise and acc's time only falls with them, so when right entry i with left's fastest
         * is no faster than acc here, every later pair with this i is dominated: run right on past all
         * such entries, then bring left up to the level at a gallop; likewise for left with right's
         * fastest. */
        if ((fT + Rt[i]) + Lt[l_top] >= at.time) {
            do {
                i = ruled_out_to(Rt, nr, i, fT, Lt[l_top], 1, at.time);
                if (++i >= nr || (peak = Rp[i] + cur) > top)
                    return 0;
                acc_to(&at, peak);
            } while ((fT + Rt[i]) + Lt[l_top] >= at.time);
            j = last_from(Lp, nl, j, peak - g);
            continue;
        }
        if ((fT + Rt[r_top]) + Lt[j] >= at.time) {
            do {
                j = ruled_out_to(Lt, nl, j, fT, Rt[r_top], 0, at.time);
                if (++j >= nl || (peak = Lp[j] + g) > top)
                    return 0;
                acc_to(&at, peak);
            } while ((fT + Rt[r_top]) + Lt[j] >= at.time);
            i = last_from(Rp, nr, i, peak - cur);
            continue;
        }
        const double time = (fT + Rt[i]) + Lt[j];
        if (time < at.time)                                        /* else acc dominates it */
            push(&C->cand, peak, time, c - a, (int32_t)i, (int32_t)j);
        const int64_t next_r = i + 1 < nr ? Rp[i + 1] + cur : INT64_MAX;
        const int64_t next_l = j + 1 < nl ? Lp[j + 1] + g : INT64_MAX;
        if (next_r == INT64_MAX && next_l == INT64_MAX)
            break;
        if (next_r <= next_l)
            i++;
        if (next_l <= next_r)
            j++;
        peak = next_r < next_l ? next_r : next_l;
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
    const int64_t *X = C->X, *G = C->G;
    const int64_t base = pending ? 0 : X[b] + C->L, cur = pinned ? 0 : X[a];
    Vec *acc = &C->acc;
    acc->len = 0;
    if (a == b) {
        const int64_t peak = pending ? max64(cur + C->loss_transient, X[b] + C->L) : base + cur;
        if (reserve(acc, 1))
            return -1;
        const double time = pending ? C->loss_time : 0.0;
        if (peak <= cap)
            push(acc, peak, time, 0, 0, 0);
    } else {
        const int i = a + 1;
        const int64_t held = (C->kin[i] ? cur : 0) + C->own[i] + (C->kout[i] ? X[i] : 0);
        const int64_t notes = max64(max64(base + cur + C->f[i], held + X[i] + G[i] - G[b] + C->r[i] + C->L),
                                    X[a] + G[a] - G[b] + C->L);
        const int64_t kt = key_of(C, i, b, C->kout[i], pending);
        if (C->start[kt] < 0)
            return -2;
        const int64_t *Tp = C->peaks + C->start[kt];
        const double *Tt = C->times + C->start[kt];
        if (reserve(acc, C->size[kt] + 1))
            return -1;
        for (int64_t k = 0; k < C->size[kt]; k++) {
            const int64_t peak = max64(notes, held + Tp[k]);
            if (peak > cap)
                break;
            push(acc, peak, Tt[k] + C->tape_time[i], 0, (int32_t)k, 0);
        }
        const int last = pending ? b : b - 1;        /* c = b = n: checkpoint, forward to n, then the loss */
        int64_t forward = C->f[a + 1];
        for (int c = a + 1; c <= last; c++) {
            if (c >= a + 2)
                forward = max64(forward, C->untaped[c]);
            int err = split_candidates(C, a, b, c, pinned, pending, cur, base + cur + forward, cap);
            if (err)
                return err;
            if (C->cand.len && merge(C))
                return -1;
        }
    }
    if (C->first_only && acc->len > 1)
        acc->len = 1;
    if (reserve_pool(C, C->pool_len + acc->len))
        return -1;
    for (int64_t k = 0; k < acc->len; k++) {
        const Entry *e = &acc->e[k];
        const int64_t at = C->pool_len + k;
        C->peaks[at] = e->peak, C->times[at] = e->time;
        C->choice[at][0] = e->split, C->choice[at][1] = e->right, C->choice[at][2] = e->left;
    }
    C->start[key] = C->pool_len;
    C->size[key] = acc->len;
    if (acc->len)
        C->first_peak[key] = acc->e[0].peak, C->last_time[key] = acc->e[acc->len - 1].time;
    C->pool_len += acc->len;
    return 0;
}

void ckpt_frontier_free(Ctx *C) {
    if (!C)
        return;
    free(C->peaks), free(C->times), free(C->choice), free(C->acc.e), free(C->cand.e), free(C->tmp.e);
    free(C);
}

/* Every sub-problem's frontier, shortest first.  Returns a handle (read with ckpt_frontier_read,
 * released with ckpt_frontier_free), or NULL with *error set: -1 out of memory, -2 ordering bug. */
Ctx *ckpt_frontier_solve(int n, const int64_t *X, const int64_t *f, const int64_t *r, const uint8_t *kin,
                         const uint8_t *kout, const int64_t *own, const double *tape_time, const double *Fsum,
                         const int64_t *G, const int64_t *untaped, int64_t L, int64_t loss_transient,
                         double loss_time, const int32_t *content, const int64_t *cap, int first_only,
                         int64_t *start, int64_t *size, int64_t *first_peak, double *last_time, int *error) {
    Ctx *C = calloc(1, sizeof(Ctx));
    *error = -1;
    if (!C)
        return NULL;
    C->n = n, C->X = X, C->f = f, C->r = r, C->kin = kin, C->kout = kout, C->own = own;
    C->tape_time = tape_time, C->Fsum = Fsum, C->G = G, C->untaped = untaped, C->L = L;
    C->loss_transient = loss_transient, C->loss_time = loss_time, C->content = content, C->cap = cap;
    C->first_only = first_only, C->start = start, C->size = size;
    C->first_peak = first_peak, C->last_time = last_time;
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
    *error = 0;
    return C;
}

/* Copy ``count`` pool entries from ``start``: peaks, times and (split, right, left) triples. */
void ckpt_frontier_read(const Ctx *C, int64_t start, int64_t count, int64_t *peaks, double *times, int32_t *choice) {
    memcpy(peaks, C->peaks + start, (size_t)count * sizeof(int64_t));
    memcpy(times, C->times + start, (size_t)count * sizeof(double));
    memcpy(choice, C->choice + start, (size_t)count * sizeof(*C->choice));
}
