/* The data plane's hot loop in C: wait, drain both channels, and measure each batch as it is
 * drained (window meter, epochs, handover cut, parse checks, payload pairing), so a pipeline that
 * nobody acts on in-process never enters Python between its owner's duties, and one that is acted
 * on enters it only to deliver a batch (pipeline.py NativeLoop; the Python path of Pipeline.poll
 * and Pipeline.drain is this loop's reference and test oracle: tests/test_native_loop.py).
 *
 * All of the loop's configuration, state and results are int64 slots of one array owned by Python
 * (pointers stored as addresses). Their names are LOOP_SLOTS below, the one list: Python reads it
 * from mg_loop_slots() and indexes the array by name. Results are deltas since Python last read
 * and cleared them.
 */
#include <errno.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "native.h"

#define LOOP_SLOTS(X)                                                                           \
    /* the ring: its data area (mapped twice), mask, consumer and producer positions, size, fd */ \
    X(ring_data) X(ring_mask) X(ring_cons) X(ring_prod) X(ring_cap)                              \
    /* perf: per CPU its mmap, data offset and size, room for heads; CPUs, bytes per CPU */      \
    X(perf_pages) X(perf_off) X(perf_size) X(perf_heads) X(ncpu) X(perf_cap)                     \
    /* where the drains go: per channel a copy buffer, headers, payload offsets; their capacity */ \
    X(buf_p) X(hdr_p) X(off_p) X(buf_r) X(hdr_r) X(off_r) X(buf_cap_r) X(rows_cap) X(scratch)   \
    /* the window meters (windows.py ChannelMeter): lag histogram, state, records per epoch */    \
    X(hist_p) X(st_p) X(epoch_p) X(hist_r) X(st_r) X(epoch_r) X(nbins)                           \
    /* the payload pairing (compare.py): table, mask (0: none, nothing compared), evidence room */          \
    X(tseq) X(tdig) X(tside) X(tmask) X(evidence) X(max_evidence)                                \
    /* the handover (handover.py): cut seqs, owners per range (1 perf, 2 ring) */                 \
    X(ncuts) X(cuts) X(owners)                                                                   \
    /* the parse checks (schema.py Registry.check): kinds (type | version << 16), min sizes */    \
    X(nkinds) X(kinds) X(min_sizes)                                                              \
    /* the wait: epoll fd (ring, perf and wake fds), batch clock, policy */                       \
    X(epfd) X(wake_epfd) X(nwake) X(wake_fds) X(batch_ns) X(records_wake) X(announce_sleep) X(drain_on_wake)           \
    X(timer_until) X(stall_until) X(mode_fd) X(mode_size) X(sleep_bit)                           \
    X(trickle) X(ceiling_bps) X(min_step_ns) X(deliver) X(watch_p) X(watch_r)                   \
    /* state kept across calls (Python's path reads and writes the same) */                      \
    X(idle) X(last_drain) X(rate_p) X(rate_r)                                                    \
    /* results since Python last cleared them */                                                  \
    X(n_p) X(n_r) X(acted_p) X(acted_r) X(bytes_p) X(bytes_r) X(err_p) X(err_r) X(lost)          \
    X(peak_p) X(peak_r) X(cpu_p) X(cpu_r) X(parse_p) X(parse_r) X(held) X(filled)               \
    X(first_p) X(first_r) X(compared) X(mismatches) X(skipped) X(evicted) X(found)               \
    X(drains) X(waits)                                                                         \
    /* the last drain's batches, for delivery: records per channel, stride (0: use hdr/off), owned */   \
    X(last_n_p) X(last_n_r) X(last_stride_p) X(last_stride_r) X(last_first_p) X(last_first_r)      \
    X(last_acted_p) X(last_acted_r)

#define SLOT_ENUM(n) S_##n,
#define SLOT_NAME(n) #n ","
enum { LOOP_SLOTS(SLOT_ENUM) S_COUNT };

/* The slot names in order, comma separated: Python's index of the array. */
const char *mg_loop_slots(void) { return LOOP_SLOTS(SLOT_NAME); }

#define P(L, s, T) ((T)(intptr_t)(L)[S_##s])

enum { RUN_TIMEOUT, RUN_WAKE, RUN_SIGNAL, RUN_DELIVER };
enum { PERF = 1, RING = 2 };

static int64_t mono_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static int64_t wall_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static int64_t cpu_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Sleep ns; 0 if interrupted by a signal (Python's handler must run). */
static int sleep_ns(int64_t ns)
{
    if (ns <= 0)
        return 1;
    struct timespec t = {ns / 1000000000, ns % 1000000000};
    return clock_nanosleep(CLOCK_MONOTONIC, 0, &t, NULL) != EINTR;
}

#ifndef __NR_epoll_pwait2
#define __NR_epoll_pwait2 441
#endif

/* Wait up to ns on the wake fds alone (their own epoll): 1 one fired, 0 the time passed, -1 a
 * signal came (Python's handler must run). */
static int wait_wakes(int64_t *L, int64_t ns)
{
    if (ns <= 0)
        return 0;
    struct epoll_event ev[4];
    struct timespec t = {ns / 1000000000, ns % 1000000000};
    long n = syscall(__NR_epoll_pwait2, (int)L[S_wake_epfd], ev, 4, &t, NULL, 0);
    if (n < 0)
        return errno == EINTR ? -1 : sleep_ns(ns) ? 0 : -1; /* no epoll_pwait2: a plain sleep */
    return n > 0;
}

static int64_t ring_pending(const int64_t *L)
{
    return (int64_t)(__atomic_load_n(P(L, ring_prod, uint64_t *), __ATOMIC_ACQUIRE) -
                     __atomic_load_n(P(L, ring_cons, uint64_t *), __ATOMIC_RELAXED));
}

/* Bytes waiting in perf: over every CPU (*max: in the fullest one). */
static int64_t perf_pending(const int64_t *L, int64_t *max)
{
    uint8_t *const *pages = P(L, perf_pages, uint8_t *const *);
    int64_t total = 0, most = 0;
    for (int64_t i = 0; i < L[S_ncpu]; i++) {
        int64_t n = (int64_t)(__atomic_load_n((const uint64_t *)(pages[i] + OFF_DATA_HEAD), __ATOMIC_ACQUIRE) -
                              __atomic_load_n((const uint64_t *)(pages[i] + OFF_DATA_TAIL), __ATOMIC_RELAXED));
        total += n;
        most = n > most ? n : most;
    }
    if (max)
        *max = most;
    return total;
}

/* Whether fd is one of the owner's wake fds (eventfds that end an idle wait: its duties changed). */
static int is_wake_fd(const int64_t *L, int fd)
{
    for (int64_t i = 0; i < L[S_nwake]; i++)
        if (P(L, wake_fds, const int32_t *)[i] == fd)
            return 1;
    return 0;
}

static int stalled(const int64_t *L, int64_t now) { return now < L[S_stall_until]; }

/* The mode word's sleep bit (channel.py reader_sleeps), by the bpf syscall on the mode map. */
struct elem_attr {
    uint32_t map_fd, pad;
    uint64_t key, value, flags;
};

static void reader_sleeps(const int64_t *L, int on)
{
    uint32_t key = 0;
    uint64_t word = 0;
    struct elem_attr a = {(uint32_t)L[S_mode_fd], 0, (uint64_t)(uintptr_t)&key, (uint64_t)(uintptr_t)&word, 0};
    if (syscall(__NR_bpf, 1 /* BPF_MAP_LOOKUP_ELEM */, &a, sizeof(a)))
        return;
    word = on ? word | (uint64_t)L[S_sleep_bit] : word & ~(uint64_t)L[S_sleep_bit];
    if (L[S_mode_size] == 4)
        word &= 0xffffffffu;
    syscall(__NR_bpf, 2 /* BPF_MAP_UPDATE_ELEM */, &a, sizeof(a));
}

/* The owner of seq by the handover's cuts: owners[i] owns [cuts[i-1], cuts[i]). */
static inline int owner_of(const int64_t *L, uint64_t seq)
{
    const uint64_t *cuts = P(L, cuts, const uint64_t *);
    int64_t lo = 0, hi = L[S_ncuts];
    while (lo < hi) { /* cuts at or below seq */
        int64_t mid = (lo + hi) / 2;
        if (cuts[mid] <= seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return P(L, owners, const uint8_t *)[lo];
}

/* Records no registered layout reads (schema.py Registry.check): unknown kind, or too short. */
static int64_t parse_errors(const int64_t *L, const uint8_t *hdr, int64_t stride, int64_t n)
{
    int64_t nk = L[S_nkinds], bad = 0, last = -1;
    if (!nk)
        return 0;
    const uint32_t *kinds = P(L, kinds, const uint32_t *), *mins = P(L, min_sizes, const uint32_t *);
    for (int64_t r = 0; r < n; r++) {
        const uint8_t *h = hdr + r * stride;
        uint32_t kind = HDR_GET(h, type) | (uint32_t)HDR_GET(h, type_version) << 16;
        if (last < 0 || kinds[last] != kind) {
            last = -1;
            for (int64_t k = 0; k < nk; k++)
                if (kinds[k] == kind) {
                    last = k;
                    break;
                }
        }
        bad += last < 0 || HDR_GET(h, len) < mins[last];
    }
    return bad;
}

/* One drained batch of channel ch, measured now (consumed at now_ns): the pipeline's _take, the
 * router's route counting and its measuring pass, and the meter's add_batches, for one batch; its
 * payloads are paired with the other channel's by pair_drain. */
struct pairs {
    int64_t n, desc[2 * 7];
};

static void measure(int64_t *L, struct pairs *pairs, int ch, const uint8_t *hdr, int64_t stride, const int64_t *off,
                    const uint8_t *buf, int64_t n, int64_t now_ns, int room)
{
    int perf = ch == PERF;
    L[perf ? S_n_p : S_n_r] += n;
    if (L[perf ? S_watch_p : S_watch_r] && !L[perf ? S_first_p : S_first_r])
        L[perf ? S_first_p : S_first_r] = wall_ns();
    int64_t one = n;
    mg_meter(hdr, stride, (uint64_t)n, &one, &now_ns, 1, perf ? P(L, hist_p, int64_t *) : P(L, hist_r, int64_t *),
             L[S_nbins], perf ? P(L, st_p, int64_t *) : P(L, st_r, int64_t *),
             perf ? P(L, epoch_p, int64_t *) : P(L, epoch_r, int64_t *));
    L[perf ? S_parse_p : S_parse_r] += parse_errors(L, hdr, stride, n);
    /* who acts on which record: by seq, and every record that is its event's only copy */
    int64_t acted = 0, held = 0, filled = 0, dual = 0;
    int alone_owner = L[S_ncuts] == 0 ? P(L, owners, const uint8_t *)[0] : 0;
    for (int64_t r = 0; r < n; r++) {
        const uint8_t *h = hdr + r * stride;
        uint16_t flags = HDR_GET(h, flags);
        dual += (flags & MIGRATOR_FLAG_MODE_MASK) == MIGRATOR_MODE_DUAL;
        int by_seq = alone_owner ? alone_owner : owner_of(L, HDR_GET(h, seq));
        int only = (flags & MIGRATOR_FLAG_MODE_MASK) != MIGRATOR_MODE_DUAL ||
                   (!perf && (flags & MIGRATOR_FLAG_PERF_LOST));
        if (by_seq == ch || only) {
            acted++;
            if (!perf && (flags & MIGRATOR_FLAG_PERF_LOST)) {
                held++;
                filled += by_seq == PERF;
            }
        }
    }
    L[perf ? S_acted_p : S_acted_r] += acted;
    L[perf ? S_last_acted_p : S_last_acted_r] = acted; /* all, none or some: delivery's shortcut */
    L[S_held] += held;
    L[S_filled] += filled;
    /* the payload pairing: set aside for the drain's one pairing pass (pair_drain), DUAL records only */
    if (dual && L[S_tmask]) { /* no table: nobody compares (a pipeline without a router) */
        int64_t *d = pairs->desc + 7 * pairs->n++;
        d[0] = (int64_t)(intptr_t)hdr, d[1] = stride, d[2] = n, d[3] = (int64_t)(intptr_t)buf;
        d[4] = (int64_t)(intptr_t)off, d[5] = ch, d[6] = room;
    }
}

/* One pairing pass over the drain's batches (perf's, then the ring's): both copies of most events
 * come in one drain, and mg_pair compares those byte for byte instead of hashing both. */
static void pair_drain(int64_t *L, const struct pairs *pairs)
{
    if (!pairs->n)
        return;
    int64_t out[5 + 64];
    int64_t room_left = L[S_max_evidence] - L[S_found];
    mg_pair((uint64_t)pairs->n, pairs->desc, P(L, tseq, uint64_t *), P(L, tdig, uint64_t *), P(L, tside, uint8_t *),
            (uint64_t)L[S_tmask], P(L, scratch, uint8_t *), room_left > 64 ? 64 : room_left, out);
    L[S_compared] += out[0];
    L[S_mismatches] += out[1];
    L[S_skipped] += out[2];
    L[S_evicted] += out[3];
    for (int64_t i = 0; i < out[4]; i++)
        P(L, evidence, int64_t *)[L[S_found] + i] = out[5 + i];
    L[S_found] += out[4];
}

/* pair_drain, then the set emptied; returns the thread CPU it took (ns). */
static int64_t pair_timed(int64_t *L, struct pairs *pairs)
{
    int64_t t = cpu_ns();
    pair_drain(L, pairs);
    pairs->n = 0;
    return cpu_ns() - t;
}

/* Whether the payload comparison may spend CPU now (pipeline.py compare_room), after a take;
 * held: ring bytes taken but not released yet (measured in place), not counted as waiting. */
static int compare_room(const int64_t *L, int64_t held)
{
    /* perf: what came after the heads just taken (released or not), in the fullest CPU */
    uint8_t *const *pages = P(L, perf_pages, uint8_t *const *);
    const uint64_t *heads = P(L, perf_heads, const uint64_t *);
    int64_t most = 0;
    for (int64_t i = 0; i < L[S_ncpu]; i++) {
        int64_t n = (int64_t)(__atomic_load_n((const uint64_t *)(pages[i] + OFF_DATA_HEAD), __ATOMIC_ACQUIRE) - heads[i]);
        most = n > most ? n : most;
    }
    return most < L[S_perf_cap] / 4 && ring_pending(L) - held < L[S_ring_cap] / 4;
}

/* What one take (res, native.h R_*) adds to channel ch's results, and where its batch lies for
 * delivery; returns its records. */
static int64_t book_take(int64_t *L, int ch, const int64_t *res)
{
    int perf = ch == PERF;
    L[perf ? S_bytes_p : S_bytes_r] += res[R_BYTES];
    L[perf ? S_err_p : S_err_r] += res[R_ERRORS];
    L[S_lost] += res[R_LOST]; /* perf's LOST records; a ring take reports 0 */
    L[perf ? S_last_n_p : S_last_n_r] = res[R_N];
    L[perf ? S_last_stride_p : S_last_stride_r] = res[R_STRIDE];
    L[perf ? S_last_first_p : S_last_first_r] = res[R_FIRST];
    return res[R_N];
}

/* Consume everything both channels hold now and measure it (pipeline.py drain); returns records. */
int64_t mg_loop_drain(int64_t *L)
{
    int64_t now = mono_ns(), res[R_NRES];
    double dt = (double)(now - L[S_last_drain]) / 1e9;
    dt = dt > 1e-4 ? dt : 1e-4;
    L[S_last_drain] = now;
    L[S_drains]++;
    int64_t c0 = cpu_ns(), n_perf = 0, n_ring = 0, b_perf = 0, b_ring = 0, c_pair = 0;
    struct pairs pairs = {0};
    if (!L[S_deliver])
        L[S_last_n_p] = L[S_last_n_r] = 0; /* else Python cleared them when it delivered */
    int64_t most, total = (int64_t)mg_perf_pending(P(L, perf_pages, uint8_t *const *), (int)L[S_ncpu],
                                                     P(L, perf_heads, uint64_t *));
    if (total) {
        const uint64_t *heads = P(L, perf_heads, const uint64_t *);
        uint8_t *const *pages = P(L, perf_pages, uint8_t *const *);
        most = 0;
        for (int64_t i = 0; i < L[S_ncpu]; i++) {
            int64_t w = (int64_t)(heads[i] - *(const uint64_t *)(pages[i] + OFF_DATA_TAIL));
            most = w > most ? w : most;
        }
        L[S_peak_p] = most > L[S_peak_p] ? most : L[S_peak_p];
        /* copied and released at once: perf's per-CPU buffers are small (64 pages by default), and a
         * measuring pass must not hold them while a burst fills them */
        uint8_t *buf = P(L, buf_p, uint8_t *);
        mg_perf_take(pages, P(L, perf_off, const uint64_t *), P(L, perf_size, const uint64_t *), heads, (int)L[S_ncpu],
                     buf, P(L, hdr_p, uint8_t *), P(L, off_p, int64_t *), (uint64_t)L[S_rows_cap],
                     res);
        n_perf = book_take(L, PERF, res);
        b_perf = res[R_BYTES];
        if (n_perf)
            measure(L, &pairs, PERF, P(L, hdr_p, uint8_t *), HDR_SIZE, P(L, off_p, int64_t *), buf, n_perf, mono_ns(),
                    compare_room(L, 0));
    }
    int64_t c1 = cpu_ns();
    int64_t avail = stalled(L, now) ? 0 : ring_pending(L);
    if (avail > 0) {
        L[S_peak_r] = avail > L[S_peak_r] ? avail : L[S_peak_r];
        const uint8_t *data = P(L, ring_data, const uint8_t *);
        uint64_t *cons_p = P(L, ring_cons, uint64_t *);
        const uint8_t *buf = P(L, buf_r, uint8_t *);
        uint64_t limit = (uint64_t)(avail < L[S_buf_cap_r] ? avail : L[S_buf_cap_r]);
        if (L[S_deliver]) { /* the owner reads the batch after the space is released: a copy */
            mg_ring_take(data, (uint64_t)L[S_ring_mask], cons_p, P(L, ring_prod, const uint64_t *), ~0ULL >> 1,
                         P(L, buf_r, uint8_t *), limit, P(L, hdr_r, uint8_t *), P(L, off_r, int64_t *),
                         (uint64_t)L[S_rows_cap], res);
        } else { /* measured where the records lie, then released */
            buf = data + (*cons_p & (uint64_t)L[S_ring_mask]);
            mg_ring_gather(data, (uint64_t)L[S_ring_mask], cons_p, P(L, ring_prod, const uint64_t *), ~0ULL >> 1,
                           limit, P(L, hdr_r, uint8_t *), P(L, off_r, int64_t *), (uint64_t)L[S_rows_cap], res);
        }
        n_ring = book_take(L, RING, res);
        b_ring = res[R_BYTES];
        if (n_ring)
            measure(L, &pairs, RING, P(L, hdr_r, uint8_t *), HDR_SIZE, P(L, off_r, int64_t *), buf, n_ring, mono_ns(),
                    compare_room(L, L[S_deliver] ? 0 : (int64_t)res[R_BYTES]));
        if (pairs.n)
            c_pair = pair_timed(L, &pairs);
        if (!L[S_deliver])
            __atomic_store_n(cons_p, (uint64_t)res[R_END], __ATOMIC_RELEASE);
    }
    if (pairs.n)
        c_pair = pair_timed(L, &pairs);
    int64_t c2 = cpu_ns();
    /* the pairing pass is shared by records, as pipeline.py shares the router's measuring pass */
    int64_t pair_p = n_perf + n_ring ? c_pair * n_perf / (n_perf + n_ring) : 0;
    L[S_cpu_p] += c1 - c0 + pair_p;
    L[S_cpu_r] += c2 - c1 - pair_p;
    /* bytes per second per channel: fast attack, slow decay (pipeline.py drain) */
    double rp = (double)b_perf / dt, rr = (double)b_ring / dt;
    L[S_rate_p] = (int64_t)(rp > 0.95 * (double)L[S_rate_p] ? rp : 0.95 * (double)L[S_rate_p]);
    L[S_rate_r] = (int64_t)(rr > 0.95 * (double)L[S_rate_r] ? rr : 0.95 * (double)L[S_rate_r]);
    return n_perf + n_ring;
}

/* Seconds (ns) until the fullest buffer reaches half its capacity at the last drain's rate. */
static int64_t headroom_ns(const int64_t *L, int64_t now)
{
    int64_t most;
    perf_pending(L, &most);
    double rp = L[S_rate_p] > 1 ? (double)L[S_rate_p] : 1.0, rr = L[S_rate_r] > 1 ? (double)L[S_rate_r] : 1.0;
    double room = ((double)L[S_perf_cap] / 2 - (double)most) / rp;
    if (!stalled(L, now)) {
        double r = ((double)L[S_ring_cap] / 2 - (double)ring_pending(L)) / rr;
        room = r < room ? r : room;
    }
    return room > 0 ? (int64_t)(room * 1e9) : 0;
}

/* With drain_on_wake: let a trickle in perf form a batch (pipeline.py _let_batch_form). */
static int let_batch_form(const int64_t *L, int64_t end)
{
    int64_t cap = L[S_perf_cap], trickle = L[S_trickle];
    int64_t step = (int64_t)((double)cap / 2 / (double)L[S_ceiling_bps] * 1e9);
    if (step < L[S_min_step_ns])
        return 1;
    int64_t t0 = mono_ns(), p0, p1;
    int64_t until = L[S_last_drain] + L[S_batch_ns];
    until = until < end ? until : end;
    perf_pending(L, &p0);
    if (!(0 < p0 && p0 < cap / trickle) || until <= t0)
        return 1;
    if (!sleep_ns(step < until - t0 ? step : until - t0))
        return 0;
    int64_t t1 = mono_ns();
    perf_pending(L, &p1);
    if (p1 >= cap / trickle || until <= t1)
        return 1;
    double rate = (double)(p1 - p0) / ((double)(t1 - t0 > 1000 ? t1 - t0 : 1000) / 1e9);
    int64_t rest = until - t1;
    if (rate > 0) {
        int64_t fill = (int64_t)((2.0 * (double)cap / (double)trickle - (double)p1) / rate * 1e9);
        rest = fill < rest ? fill : rest;
    }
    return sleep_ns(rest);
}

/* Wait and drain until `timeout_ns` has passed or records end a quiet spell (pipeline.py poll, in a
 * loop while records flow). Returns RUN_TIMEOUT (either of those),
 * RUN_WAKE (a wake fd fired: the owner's duties changed), RUN_SIGNAL (a signal for Python's
 * handler) or RUN_DELIVER (L[deliver] set and the last drain holds records for the owner). */
int mg_loop_run(int64_t *L, int64_t timeout_ns)
{
    int64_t end = mono_ns() + (timeout_ns > 0 ? timeout_ns : 0);
    struct epoll_event ev[16];
    for (;;) {
        int64_t now = mono_ns(), woke = 0, was_idle = L[S_idle];
        int eager = L[S_drain_on_wake] && !stalled(L, now);
        if (was_idle || eager) {
            int long_wait = L[S_records_wake] && now >= L[S_timer_until];
            int64_t wait = end - now;
            if (!long_wait && wait > L[S_batch_ns])
                wait = L[S_batch_ns];
            if (eager && perf_pending(L, NULL)) {
                /* perf holds records (its wakeup may have been seen by another waiter) */
            } else if (stalled(L, now)) {
                if (!sleep_ns(wait < L[S_batch_ns] ? wait : L[S_batch_ns]))
                    return RUN_SIGNAL;
            } else if (wait > 0) {
                int sleeps = long_wait && L[S_announce_sleep] && wait > L[S_batch_ns];
                if (sleeps)
                    reader_sleeps(L, 1);
                /* a record written before the bit was seen wakes nobody: look once more */
                if (!(sleeps && (ring_pending(L) || perf_pending(L, NULL)))) {
                    int n = epoll_wait((int)L[S_epfd], ev, 16, (int)((wait + 999999) / 1000000));
                    L[S_waits]++;
                    if (n < 0 && errno == EINTR) {
                        if (sleeps)
                            reader_sleeps(L, 0);
                        return RUN_SIGNAL;
                    }
                    for (int i = 0; i < n; i++)
                        woke |= is_wake_fd(L, ev[i].data.fd);
                }
                if (sleeps)
                    reader_sleeps(L, 0);
            }
            if (eager && !let_batch_form(L, end))
                return RUN_SIGNAL;
            int64_t ring = stalled(L, mono_ns()) ? 0 : ring_pending(L);
            if (!(ring || perf_pending(L, NULL))) {
                if (woke)
                    return RUN_WAKE;
                if (mono_ns() >= end)
                    return RUN_TIMEOUT;
                continue; /* nothing came: no drain */
            }
        } else {
            int64_t due = L[S_last_drain] + L[S_batch_ns], h = now + headroom_ns(L, now);
            due = h < due ? h : due;
            /* records flow: a wait on the wake fds alone (the data fds stay readable), to the clock */
            int w = wait_wakes(L, (due > end ? end : due) - now);
            if (w < 0)
                return RUN_SIGNAL;
            if (w > 0)
                return RUN_WAKE; /* the owner's duties changed (a new desired mode): it hears at once */
            if (due > end)
                return RUN_TIMEOUT;
        }
        int64_t n = mg_loop_drain(L);
        L[S_idle] = n == 0;
        if (woke)
            return RUN_WAKE;
        if (was_idle && n)
            return RUN_TIMEOUT; /* records ended a quiet spell: the caller hears of it, as from poll() */
        if (L[S_deliver] && (L[S_last_n_p] || L[S_last_n_r]))
            return RUN_DELIVER;
        if (mono_ns() >= end)
            return RUN_TIMEOUT;
    }
}
