/* The data plane's per-record loops, in C: what Python pays per record (and per numpy call)
 * was most of the agent's CPU (README, "What the agent costs"). Loaded by native.py, which
 * builds this file with the system's C compiler; each function is one pass over one drain (the
 * takes) or over the batches of one measuring pass (meter, pairing).
 *
 * Record layouts (the Python side documents them in readers/ring.py, readers/perf.py and
 * frames.py): migrator's 32-byte header is struct migrator_hdr of bpf/migrator.h, included here
 * (native.py builds with -I<bpf dir>); every header field is read through HDR_GET, which takes
 * the field's offset and width from that struct.
 *
 * The takes' results go to `res` (int64 slots, R_* below) so one call answers everything.
 */
#include "native.h"

/* Whether migrator can read a record given `room` bytes: known header version, payload inside. */
static inline int readable(const uint8_t *rec, uint64_t room)
{
    return room >= HDR_SIZE && HDR_GET(rec, hdr_version) == MIGRATOR_HDR_VERSION &&
           (uint64_t)HDR_GET(rec, len) + HDR_SIZE <= room;
}

/* Collects the readable records of one drain: their headers copied out, their payload offsets,
 * and whether they are equally spaced records of one size (then the caller may use a strided
 * view instead: the decode and compare paths have a faster form for it). */
struct gather {
    uint8_t *hdr;
    int64_t *off;
    uint64_t cap, n, errors;
    int64_t stride, first, last, size; /* stride -1: not uniform */
};

static inline void take_record(struct gather *g, const uint8_t *buf, int64_t at, uint64_t room)
{
    const uint8_t *rec = buf + at;
    if (!readable(rec, room) || g->n >= g->cap) {
        g->errors++;
        g->stride = -1;
        return;
    }
    memcpy(g->hdr + HDR_SIZE * g->n, rec, HDR_SIZE);
    g->off[g->n] = at + HDR_SIZE;
    if (g->n == 0) {
        g->first = at;
        g->size = (int64_t)room;
        g->stride = 0;
    } else if (g->stride >= 0) {
        int64_t step = at - g->last;
        if ((int64_t)room != g->size || (g->stride && step != g->stride))
            g->stride = -1;
        else
            g->stride = step;
    }
    g->last = at;
    g->n++;
}

static void finish(const struct gather *g, int64_t *res)
{
    res[R_N] = (int64_t)g->n;
    res[R_ERRORS] = (int64_t)g->errors;
    /* a single record counts as uniform with its own size as stride */
    res[R_STRIDE] = g->n == 0 || g->stride < 0 ? 0 : (g->n == 1 ? 8 : g->stride);
    res[R_FIRST] = g->n ? g->first : 0;
}

/* Ring: the committed records from the consumer position up to the first busy one (at most
 * max_records, at most max_bytes), gathered where they lie: the data area is mapped twice back to
 * back, so the run from data + (cons & mask) never wraps, and the payload offsets are relative to
 * that address. Nothing is released. Discarded records are skipped; unreadable ones counted
 * (R_ERRORS). R_END: the position after the run; R_BYTES: its bytes. */
void mg_ring_gather(const uint8_t *data, uint64_t mask, const uint64_t *cons_p, const uint64_t *prod_p,
                    uint64_t max_records, uint64_t max_bytes, uint8_t *hdr, int64_t *off, uint64_t cap, int64_t *res)
{
    uint64_t cons = __atomic_load_n(cons_p, __ATOMIC_RELAXED); /* ours alone to write */
    uint64_t prod = __atomic_load_n(prod_p, __ATOMIC_ACQUIRE);
    const uint8_t *base = data + (cons & mask);
    uint64_t pos = cons, count = 0;
    struct gather g = {hdr, off, cap, 0, 0, -1, 0, 0, 0};
    while (prod - pos >= RB_HDR && count < max_records) {
        uint32_t len = __atomic_load_n((const uint32_t *)(base + (pos - cons)), __ATOMIC_ACQUIRE);
        if (len & RB_BUSY)
            break;
        uint64_t size = len & ~RB_DISCARD, stride = (size + RB_HDR + 7) & ~7ULL;
        if (pos + stride - cons > max_bytes)
            break;
        if (!(len & RB_DISCARD))
            take_record(&g, base, (int64_t)(pos - cons + RB_HDR), size);
        else
            g.stride = -1;
        pos += stride;
        count++;
    }
    finish(&g, res);
    res[R_END] = (int64_t)pos;
    res[R_BYTES] = (int64_t)(pos - cons);
    res[R_LOST] = 0;
}

/* Ring: consume every committed record (mg_ring_gather, at most buf_cap bytes), copy them into buf
 * (one memcpy; the payload offsets hold for the copy) and hand the space back to the kernel (release
 * store of the consumer position). */
void mg_ring_take(const uint8_t *data, uint64_t mask, uint64_t *cons_p, const uint64_t *prod_p,
                  uint64_t max_records, uint8_t *buf, uint64_t buf_cap, uint8_t *hdr, int64_t *off,
                  uint64_t cap, int64_t *res)
{
    uint64_t cons = __atomic_load_n(cons_p, __ATOMIC_RELAXED);
    mg_ring_gather(data, mask, cons_p, prod_p, max_records, buf_cap, hdr, off, cap, res);
    memcpy(buf, data + (cons & mask), (uint64_t)res[R_BYTES]);
    __atomic_store_n(cons_p, (uint64_t)res[R_END], __ATOMIC_RELEASE);
}

/* One CPU's records, n bytes from buf + at: samples gathered, a LOST record's count added to
 * *lost, a header too short to move on (corrupt) ends the walk: nothing after it can be trusted. */
static void walk_samples(struct gather *g, const uint8_t *buf, uint64_t at, uint64_t n, uint64_t *lost)
{
    const uint8_t *chunk = buf + at;
    for (uint64_t p = 0; p + 8 <= n;) {
        uint32_t type = ld32(chunk + p);
        uint64_t size = ld16(chunk + p + 6);
        if (size < 8 || p + size > n)
            break;
        if (type == PERF_RECORD_SAMPLE && size >= SAMPLE_HDR) {
            uint64_t raw = ld32(chunk + p + 8);
            if (raw + SAMPLE_HDR > size)
                raw = 0; /* a raw size past its sample: unreadable */
            take_record(g, buf, (int64_t)(at + p + SAMPLE_HDR), raw);
        } else {
            if (type == PERF_RECORD_LOST && size >= 24)
                *lost += ld64(chunk + p + 16);
            g->stride = -1;
        }
        p += size;
    }
}

/* Perf: bytes waiting over every CPU's buffer; heads[i] gets the data_head it saw (acquire), so
 * the take that follows copies exactly what was sized here. */
uint64_t mg_perf_pending(uint8_t *const *pages, int ncpu, uint64_t *heads)
{
    uint64_t total = 0;
    for (int i = 0; i < ncpu; i++) {
        heads[i] = __atomic_load_n((const uint64_t *)(pages[i] + OFF_DATA_HEAD), __ATOMIC_ACQUIRE);
        total += heads[i] - __atomic_load_n((const uint64_t *)(pages[i] + OFF_DATA_TAIL), __ATOMIC_RELAXED);
    }
    return total;
}

/* Perf: copy every CPU's records between its tail and heads[i] into buf, one after the other
 * (stitching the wrap), hand them back (release store of data_tail), and walk them (walk_samples;
 * R_LOST: the LOST records' counts). buf must hold mg_perf_pending's total. */
void mg_perf_take(uint8_t *const *pages, const uint64_t *data_off, const uint64_t *data_size,
                  const uint64_t *heads, int ncpu, uint8_t *buf, uint8_t *hdr, int64_t *off, uint64_t cap,
                  int64_t *res)
{
    struct gather g = {hdr, off, cap, 0, 0, -1, 0, 0, 0};
    uint64_t used = 0, lost = 0;
    for (int i = 0; i < ncpu; i++) {
        uint64_t *tail_p = (uint64_t *)(pages[i] + OFF_DATA_TAIL);
        uint64_t tail = __atomic_load_n(tail_p, __ATOMIC_RELAXED), n = heads[i] - tail;
        if (!n)
            continue;
        const uint8_t *data = pages[i] + data_off[i];
        uint64_t start = tail & (data_size[i] - 1), first = data_size[i] - start;
        uint8_t *chunk = buf + used;
        if (n <= first) {
            memcpy(chunk, data + start, n);
        } else {
            memcpy(chunk, data + start, first);
            memcpy(chunk + first, data, n - first);
        }
        __atomic_store_n(tail_p, heads[i], __ATOMIC_RELEASE);
        walk_samples(&g, buf, used, n, &lost);
        used += n;
    }
    finish(&g, res);
    res[R_END] = 0;
    res[R_BYTES] = (int64_t)used;
    res[R_LOST] = (int64_t)lost;
}

/* Perf, for a chunk already copied out (tests, recorded batches): the walk of mg_perf_take. */
void mg_perf_walk(const uint8_t *chunk, uint64_t n, uint8_t *hdr, int64_t *off, uint64_t cap, int64_t *res)
{
    struct gather g = {hdr, off, cap, 0, 0, -1, 0, 0, 0};
    uint64_t lost = 0;
    walk_samples(&g, chunk, 0, n, &lost);
    finish(&g, res);
    res[R_END] = 0;
    res[R_BYTES] = (int64_t)n;
    res[R_LOST] = (int64_t)lost;
}

/* Payload digests (compare.py): h = len * M3 + sum_j W_j * mix(w_j) mod 2^64 over the payload's
 * 64-bit little-endian words w_j (the last one zero padded), mix(x) = y ^ (y >> 29) with
 * y = x * M1 (a bijection, mix(0) = 0), W_j = Q_(j / 8) * K_(j % 8), Q_k = fmix((k + 1) * M2) | 1,
 * K_i = fmix((i + 1) * M1) | 1 (splitmix64's constants and finaliser): every W_j is odd, so a
 * change confined to one word always changes the digest. Record i's payload is off[i] bytes
 * into buf, its length the `len` of its header (hdr + i * hdr_stride). */
#define M1 0x9E3779B97F4A7C15ULL
#define M2 0xBF58476D1CE4E5B9ULL
#define M3 0x94D049BB133111EBULL

static inline uint64_t fmix(uint64_t h)
{
    h ^= h >> 30;
    h *= M2;
    h ^= h >> 27;
    h *= M3;
    h ^= h >> 31;
    return h;
}

static inline uint64_t mix(uint64_t x)
{
    uint64_t y = x * M1;
    return y ^ (y >> 29);
}

static inline uint64_t digest_one(const uint8_t *p, uint64_t len, const uint64_t *K)
{
    uint64_t h = 0, words = len >> 3;
    for (uint64_t k = 0; k * 8 < words; k++) {
        uint64_t q = fmix((k + 1) * M2) | 1, s = 0;
        uint64_t end = words - k * 8 < 8 ? words - k * 8 : 8;
        for (uint64_t i = 0; i < end; i++)
            s += K[i] * mix(ld64(p + 8 * (k * 8 + i)));
        h += q * s;
    }
    if (len & 7) {
        uint64_t w = 0, j = words;
        memcpy(&w, p + 8 * j, len & 7);
        h += (fmix((j / 8 + 1) * M2) | 1) * K[j % 8] * mix(w);
    }
    return h + len * M3;
}

static void word_keys(uint64_t K[8])
{
    for (int i = 0; i < 8; i++)
        K[i] = fmix((uint64_t)(i + 1) * M1) | 1;
}

void mg_digests(const uint8_t *buf, const int64_t *off, const uint8_t *hdr, int64_t hdr_stride, uint64_t n,
                uint64_t *out)
{
    uint64_t K[8];
    word_keys(K);
    for (uint64_t r = 0; r < n; r++)
        out[r] = digest_one(buf + off[r], HDR_GET(hdr + (int64_t)r * hdr_stride, len), K);
}

/* Payload pairing (compare.py PayloadCompare): nb batches in consumption order, each described
 * by 7 int64s: header address, header stride, records, buffer address, payload offsets address,
 * side (1 perf, 2 ring), room (0: the consumer was behind, its DUAL records are only counted as
 * skipped). Only records emitted in DUAL (flags & 3 == DUAL) take part. Per batch, as one step:
 * every record whose seq waits in the direct-mapped table (slot = seq & mask) from the other side
 * is compared with it and frees the slot; then every other one is stored, evicting whatever its
 * slot held. out: [compared, mismatches, skipped, evicted, evidence found, up to max_evidence
 * differing seqs in the order found]. scratch: a byte per record of the largest batch.
 *
 * A stored record is held by place (HELD: tdig = batch << 32 | record) while this call's batches
 * are in memory: its pair in a later batch of the same call is compared byte for byte, and only
 * the records still waiting at the end get their digest. Both copies of most events arrive in one
 * call (perf then ring in one drain), so most pairs cost a memcmp instead of two digests; the
 * results are those of comparing digests (equal bytes and length <=> equal digests, but for a
 * 2^-64 collision). */
#define HELD 4

static inline int same_payload(const int64_t *desc, uint64_t held, const uint8_t *p, uint32_t len)
{
    const int64_t *d = desc + 7 * (held >> 32);
    uint64_t r = held & 0xffffffffu;
    const uint8_t *h = (const uint8_t *)d[0] + (int64_t)r * d[1];
    const uint8_t *q = (const uint8_t *)d[3] + ((const int64_t *)d[4])[r];
    return HDR_GET(h, len) == len && memcmp(p, q, len) == 0;
}

void mg_pair(uint64_t nb, const int64_t *desc, uint64_t *tseq, uint64_t *tdig, uint8_t *tside, uint64_t mask,
             uint8_t *scratch, int64_t max_evidence, int64_t *out)
{
    uint64_t K[8];
    word_keys(K);
    int64_t compared = 0, mismatches = 0, skipped = 0, evicted = 0, found = 0;
    int64_t *evidence = out + 5;
    for (uint64_t b = 0; b < nb; b++) {
        const int64_t *d = desc + 7 * b;
        const uint8_t *hdr = (const uint8_t *)d[0], *buf = (const uint8_t *)d[3];
        const int64_t stride = d[1], n = d[2], *off = (const int64_t *)d[4];
        const uint8_t side = (uint8_t)d[5], other = (uint8_t)(3 - d[5]);
        if (!d[6]) {
            for (int64_t r = 0; r < n; r++)
                skipped += HDR_MODE(hdr + r * stride) == MIGRATOR_MODE_DUAL;
            continue;
        }
        for (int64_t r = 0; r < n; r++) {
            const uint8_t *h = hdr + r * stride;
            scratch[r] = 0;
            if (HDR_MODE(h) != MIGRATOR_MODE_DUAL) {
                scratch[r] = 1;
                continue;
            }
            uint64_t seq = HDR_GET(h, seq), slot = seq & mask;
            if ((tside[slot] & 3) == other && tseq[slot] == seq) {
                compared++;
                uint32_t len = HDR_GET(h, len);
                int same = tside[slot] & HELD ? same_payload(desc, tdig[slot], buf + off[r], len)
                                              : digest_one(buf + off[r], len, K) == tdig[slot];
                if (!same) {
                    mismatches++;
                    if (found < max_evidence)
                        evidence[found++] = (int64_t)seq;
                }
                tside[slot] = 0;
                scratch[r] = 1;
            }
        }
        for (int64_t r = 0; r < n; r++) {
            if (scratch[r])
                continue;
            const uint8_t *h = hdr + r * stride;
            uint64_t seq = HDR_GET(h, seq), slot = seq & mask;
            evicted += tside[slot] != 0;
            tseq[slot] = seq;
            tdig[slot] = b << 32 | (uint64_t)r;
            tside[slot] = side | HELD;
        }
    }
    /* what still waits for its pair keeps a digest: the batches' memory is the caller's again */
    for (uint64_t b = 0; b < nb; b++) {
        const int64_t *d = desc + 7 * b;
        if (!d[6])
            continue;
        const uint8_t *hdr = (const uint8_t *)d[0], *buf = (const uint8_t *)d[3];
        const int64_t stride = d[1], n = d[2], *off = (const int64_t *)d[4];
        for (int64_t r = 0; r < n; r++) {
            const uint8_t *h = hdr + r * stride;
            if (HDR_MODE(h) != MIGRATOR_MODE_DUAL)
                continue;
            uint64_t slot = HDR_GET(h, seq) & mask;
            if (tside[slot] & HELD && tseq[slot] == HDR_GET(h, seq) && tdig[slot] == (b << 32 | (uint64_t)r)) {
                tdig[slot] = digest_one(buf + off[r], HDR_GET(h, len), K);
                tside[slot] &= 3;
            }
        }
    }
    out[0] = compared;
    out[1] = mismatches;
    out[2] = skipped;
    out[3] = evicted;
    out[4] = found;
}

/* The window meter (windows.py ChannelMeter) over nb consumed batches whose headers are joined in
 * `hdr` (n records, hdr_stride apart): batch b holds counts[b] records consumed at now_ns[b].
 * Per record: its lag (now - ktime_ns) into the histogram, 8 bins per power of two of
 * nanoseconds (bin = trunc(8 * log2(max(lag, 1))) in doubles, the last bin open-ended: found
 * among the bins' lower edges, which are computed once with that very formula), the
 * largest lag in integers, ordering (an inversion is a seq below the largest seen before it,
 * earlier windows included), the seq range, and, when by_epoch is given, the record's epoch
 * (flags bits 2-7). st: [max_seq, inversions, lag_max_ns, seq_min, seq_max, delivered], -1 for
 * "none yet" in seq_min and seq_max, updated in place. */
#define MAX_BINS 512
static uint64_t bin_edge[MAX_BINS]; /* the smallest lag (ns) in each bin; [0] unused */
static int64_t edges_for = 0;
static uint8_t slot_bin[128]; /* the bin within its octave of a slot's first value (lag_bin) */

static int64_t bin_by_log2(uint64_t x) { return (int64_t)(log2((double)x) * 8.0); }

/* bin_edge[b]: the smallest x >= 1 with bin_by_log2(x) >= b (the formula is monotone in x). */
static void init_edges(int64_t nbins)
{
    for (int64_t b = 1; b < nbins && b < MAX_BINS; b++) {
        uint64_t lo = 1, hi = 1ULL << 62;
        while (lo < hi) {
            uint64_t mid = lo + (hi - lo) / 2;
            if (bin_by_log2(mid) >= b)
                hi = mid;
            else
                lo = mid + 1;
        }
        bin_edge[b] = lo;
    }
    for (int i = 0; i < 128; i++) /* 2^(k + i/128) at k = 44 is an integer: take the bin of that */
        slot_bin[i] = (uint8_t)(bin_by_log2((uint64_t)ldexp(1.0 + i / 128.0, 44)) - 8 * 44);
    edges_for = nbins;
}

/* The lag's bin: its octave k (the double's exponent: exact below 2^53) has bins 8k..8k+7, since
 * log2 of a power of two is exact; the top 7 bits of the mantissa narrow it to one of two bins
 * (a slot is 1/128 of an octave, a bin at least 1/12), and one edge decides. */

static inline int64_t lag_bin(int64_t lag, int64_t nbins)
{
    if (lag <= 1)
        return 0;
    int64_t last = (nbins < MAX_BINS ? nbins : MAX_BINS) - 1;
    union { double d; uint64_t u; } v = {(double)lag};
    int64_t k = (int64_t)(v.u >> 52) - 1023, b = 8 * k + slot_bin[(v.u >> 45) & 127];
    if (b + 1 <= last && k < 53) {
        b += (uint64_t)lag >= bin_edge[b + 1];
        return b;
    }
    b = b < last ? b : last;
    while (b < last && bin_edge[b + 1] <= (uint64_t)lag)
        b++;
    while (b > 0 && bin_edge[b] > (uint64_t)lag)
        b--;
    return b;
}

void mg_meter(const uint8_t *hdr, int64_t hdr_stride, uint64_t n, const int64_t *counts, const int64_t *now_ns,
              uint64_t nb, int64_t *hist, int64_t nbins, int64_t *st, int64_t *by_epoch)
{
    int64_t max_seq = st[0], inv = st[1], lag_max = st[2], smin = st[3], smax = st[4];
    uint64_t r = 0;
    if (edges_for != nbins)
        init_edges(nbins);
    for (uint64_t b = 0; b < nb; b++) {
        int64_t now = now_ns[b];
        for (int64_t k = 0; k < counts[b] && r < n; k++, r++) {
            const uint8_t *h = hdr + (int64_t)r * hdr_stride;
            uint64_t kt = HDR_GET(h, ktime_ns);
            int64_t seq = (int64_t)HDR_GET(h, seq), lag = now - (int64_t)kt;
            if (lag > lag_max)
                lag_max = lag;
            hist[lag_bin(lag, nbins)]++;
            if (seq < max_seq)
                inv++;
            else
                max_seq = seq;
            if (smin < 0 || seq < smin)
                smin = seq;
            if (seq > smax)
                smax = seq;
            if (by_epoch)
                by_epoch[HDR_EPOCH(h)]++;
        }
    }
    st[0] = max_seq;
    st[1] = inv;
    st[2] = lag_max;
    st[3] = smin;
    st[4] = smax;
    st[5] += (int64_t)r;
}
