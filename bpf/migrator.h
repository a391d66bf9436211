// SPDX-License-Identifier: GPL-2.0
/*
 * migrator.h -- one event channel that can be switched between the perf buffer and the BPF
 * ring buffer at run time, for bcc programs.
 *
 * WHAT IT IS FOR
 *   An operator's bcc program keeps writing its events exactly where it did; every event
 *   becomes a record (32-byte header + the operator's payload) that goes to the perf buffer
 *   (PERF), to both buffers with the same sequence number (DUAL) or to the ring buffer only
 *   (RING). The mode is one map value, changed from userspace without reloading. Every
 *   attempt and every refusal is counted per CPU, so no loss is invisible.
 *
 * USAGE (the 3-line edit; the Python side is migrator.dataplane.rewrite / .channel)
 *     #include <migrator.h>                       // cflags: rewrite.cflags() gives -I<bpf dir>
 *     MIGRATOR_CHANNEL(events, 1 << 22);          // was: BPF_PERF_OUTPUT(events);
 *     MIGRATOR_OUTPUT(events, ctx, &data, sizeof(data));   // was: events.perf_submit(ctx, ...)
 *   then load the text through rewrite.prepare(text) (channel.load() does both). Also:
 *     MIGRATOR_OUTPUT_TYPED(events, ctx, ptr, size, type, type_version)   -> int
 *     MIGRATOR_RESERVE(events, struct foo, e);    // `struct foo *e` in the caller's scope
 *     if (!e) return 0;  e->x = 1;                //  (NULL: ring full in RING mode)
 *     MIGRATOR_SUBMIT(events, ctx, e);   or   MIGRATOR_DISCARD(events, e);
 *     MIGRATOR_RESERVE_TYPED(events, struct foo, e, type, type_version);
 *   MIGRATOR_OUTPUT returns 0 when every channel the mode writes to took the record, else the
 *   first error (perf's, then the ring's; a failed payload copy returns the copy's error).
 *   rewrite.wrap_text() does the 3-line edit itself on an unmodified bcc program text.
 *
 * WHY prepare() IS NEEDED (bcc 0.26)
 *   bcc turns `m.perf_submit()`, `m.lookup()`, `m.ringbuf_output()` ... into helper calls only
 *   where they are written literally in the main program text: inside a macro expansion the
 *   compile fails ("cannot use map function inside a macro"), inside an #included file they
 *   are not rewritten (load fails, "unknown opcode 8d"), and raw helpers given `&map` are not
 *   relocated (verifier: "R1 type=scalar expected=map_ptr"). Map declarations made by macros
 *   work anywhere. So this header holds the declarations, the record layout and the operator
 *   macros, and the per-channel functions that touch maps live in the template at the end of
 *   this file: prepare() pastes it into the main text for every MIGRATOR_CHANNEL(name, bytes);
 *   and rewrites every MIGRATOR_OUTPUT / MIGRATOR_SUBMIT call into a statement expression that
 *   starts with a dead `if (0) name.perf_submit(ctx, ptr, size);`, so that bcc records the
 *   payload type on the anchor map `name` and bpf["name"].event(payload) decodes the
 *   operator's struct. A MIGRATOR_CHANNEL that did not go through prepare() fails to compile
 *   with a message saying so.
 *
 * MAPS of channel `name` (Python table names)
 *   name            BPF_PERF_OUTPUT, type anchor only: never written at run time
 *   name__perf      BPF_PERF_OUTPUT, the perf channel (records = header + payload)
 *   name__ring      BPF_RINGBUF_OUTPUT, ring_bytes (a power of two, at least 4096)
 *   name__mode      BPF_ARRAY(u32, 1): the mode word. Bits 0-1 the mode: 0 PERF, 1 DUAL, 2 RING
 *                   (missing/0 = PERF, 3 = RING); bits 2-7 the epoch (see EPOCHS); bit 8 the
 *                   reader sleeps and must be woken (MIGRATOR_RING_WAKEUP 3, batched)
 *   name__seq       BPF_ARRAY(u64, 1): the channel's sequence, taken after the mode is read
 *   name__cnt       BPF_PERCPU_ARRAY(u64, 2 * MIGRATOR_CNT_MAX): counters, MIGRATOR_CNT_* below,
 *                   one set per epoch parity: index (epoch & 1) * MIGRATOR_CNT_MAX + counter
 *   name__scratch   BPF_PERCPU_ARRAY(struct migrator_record, 1): where records are assembled
 *
 * RECORD: struct migrator_hdr (32 bytes, little endian; MIGRATOR_HDR_FIELDS), then `len` payload bytes.
 *   flags bits 0-1: the mode at emit time; bits 2-7 the epoch at emit time; 0x100 payload
 *   truncated; 0x200 RESERVE/SUBMIT; 0x400 (ring copy, DUAL) perf refused this record.
 *   In DUAL both copies carry the same seq. perf is written first, so when perf refuses a
 *   record its ring copy says so (0x400): that copy is then the record's only one, and the
 *   reader delivers it in perf's place (never worse than perf alone, without any timing guess). perf samples are padded to 8 bytes by the kernel,
 *   so use `len`, not the sample size.
 *
 * EPOCHS (why every window's books balance exactly, also under load)
 *   Every emit reads the mode word ONCE and takes both its mode and its epoch from it: the
 *   record carries the epoch in its flags and is counted in the counter set of the epoch's
 *   parity. Userspace closes a window by writing the word with the next epoch and then waiting
 *   for an RCU grace period (an update of an ARRAY_OF_MAPS map, which the kernel follows with
 *   synchronize_rcu(): BPF programs run inside RCU read-side sections). After it, no program
 *   that read the old epoch is still running, so that epoch's counters are final and each of
 *   its records is in a buffer, consumed, or counted as refused (migrator/dataplane/pipeline.py).
 *
 * BUILD KNOBS (-D cflags; rewrite.cflags(max_payload=, ring_wakeup=) writes them)
 *   MIGRATOR_MAX_PAYLOAD  largest payload in bytes, a power of two, default 4096. A larger
 *                         MIGRATOR_OUTPUT size is truncated to it, flagged 0x100 and counted
 *                         (counter `truncated`); MIGRATOR_RESERVE of a larger type fails to
 *                         compile. The per-CPU scratch is 32 + MIGRATOR_MAX_PAYLOAD bytes.
 *   MIGRATOR_RING_WAKEUP  flags of ringbuf_output/submit/discard: 0 adaptive (default),
 *                         1 BPF_RB_NO_WAKEUP, 2 BPF_RB_FORCE_WAKEUP, 3 batched: no wakeup but
 *                         for a reader that said it sleeps (mode word bit 8: it waits without
 *                         a clock) and every MIGRATOR_WAKEUP_EVERY-th record (default 1024, a
 *                         backstop for readers that never set the bit). The producer pays one
 *                         wakeup per quiet spell of the reader; a busy reader drains on its own
 *                         clock, before the ring is half full at the rate it sees (bcc 0.26
 *                         has no ringbuf_query map method to test the fill here).
 *                         In PERF (any knob) the ring carries no records; a reader that set
 *                         bit 8 is woken by a doorbell instead (__migrator_doorbell): one
 *                         discarded ring reservation per quiet spell, so an idle perf reader
 *                         needs no clock either, whatever perf's watermark.
 *   MIGRATOR_TIME_EVERY   time each channel's emit on one seq in N (a power of two, default
 *                         16; 0: never; a hash of the seq picks them): bpf_ktime_get_ns around perf_submit and around
 *                         ringbuf_output (MIGRATOR_OUTPUT) or ringbuf_submit (MIGRATOR_SUBMIT; the
 *                         reservation is not timed), summed per CPU and epoch parity in the
 *                         counters *_NS and *_TIMED: the producer's cost per event per channel.
 *
 * LIMITS
 *   - "full" is -ENOSPC from perf, -EAGAIN from ringbuf_output or NULL from ringbuf_reserve.
 *   - In DUAL a failed ring reservation is counted (ring attempt + full) and the record goes
 *     to perf from the per-CPU scratch; in RING it makes MIGRATOR_RESERVE yield NULL.
 *   - MIGRATOR_OUTPUT copies the payload once (bpf_probe_read_kernel) into the scratch.
 *   - Everything is inlined (bcc 0.26 has no BPF-to-BPF calls); a channel operation costs
 *     the calling program 4 bytes of its 512-byte stack (one map key) and no register spills.
 *     A program within a few bytes of the limit (stock mountsnoop) no longer compiles, and
 *     LLVM reports that by exiting the process, not by an exception.
 *   - The scratch is per channel and per CPU: one record in flight per channel per CPU (a
 *     program nesting on one CPU, e.g. from NMI, may overwrite a record being assembled), and
 *     in PERF mode at most one outstanding MIGRATOR_RESERVE per channel.
 *   - MIGRATOR_RESERVE declares variables: statement level, one per variable name per scope.
 *   - Ring counters of RESERVE/SUBMIT: attempt+ok at submit, attempt+full at a failed reserve,
 *     nothing at discard (counted in `discard`), so attempts == ok + full + other holds.
 *   - A MIGRATOR_OUTPUT / MIGRATOR_SUBMIT written inside the operator's own #define is not
 *     rewritten by prepare(): it works, but records no payload type on the anchor.
 *   - Never reads kernel struct fields.
 */
#ifndef MIGRATOR_H
#define MIGRATOR_H

/* User space (native.c, tests/test_header_layout.py) includes this header for the record layout
 * and its constants alone: -DMIGRATOR_USERSPACE gives it the kernel's fixed-width type names.
 * Nothing else here expands to code unless a BPF program uses the macros. */
#ifdef MIGRATOR_USERSPACE
#include <stdint.h>
typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
#endif

#ifndef MIGRATOR_MAX_PAYLOAD
#define MIGRATOR_MAX_PAYLOAD 4096
#endif
#if MIGRATOR_MAX_PAYLOAD < 8 || (MIGRATOR_MAX_PAYLOAD & (MIGRATOR_MAX_PAYLOAD - 1)) != 0
#error "MIGRATOR_MAX_PAYLOAD must be a power of two, at least 8"
#endif

#ifndef MIGRATOR_RING_WAKEUP
#define MIGRATOR_RING_WAKEUP 0
#endif
#ifndef MIGRATOR_TIME_EVERY
#define MIGRATOR_TIME_EVERY 16
#endif
#if MIGRATOR_TIME_EVERY < 0 || (MIGRATOR_TIME_EVERY & (MIGRATOR_TIME_EVERY - 1)) != 0
#error "MIGRATOR_TIME_EVERY must be 0 or a power of two"
#endif
/* Whether the emit of the record with this seq is timed: one seq in MIGRATOR_TIME_EVERY, chosen by
 * a multiplicative hash rather than by residue, so the sample does not line up with anything else
 * decided by seq (batched wakeups force one every MIGRATOR_WAKEUP_EVERY-th seq). */
#define MIGRATOR_TIMED(seq) \
    (MIGRATOR_TIME_EVERY && (u32)((u32)(seq) * 2654435761u) < (u32)(0xffffffffu / MIGRATOR_TIME_EVERY))
#if MIGRATOR_RING_WAKEUP == 0
#define MIGRATOR_RB_FLAGS 0
#elif MIGRATOR_RING_WAKEUP == 1
#define MIGRATOR_RB_FLAGS 1 /* BPF_RB_NO_WAKEUP */
#elif MIGRATOR_RING_WAKEUP == 2
#define MIGRATOR_RB_FLAGS 2 /* BPF_RB_FORCE_WAKEUP */
#elif MIGRATOR_RING_WAKEUP == 3
#define MIGRATOR_RB_FLAGS 1 /* batched: BPF_RB_NO_WAKEUP unless __migrator_rbflags says otherwise */
#ifndef MIGRATOR_WAKEUP_EVERY
#define MIGRATOR_WAKEUP_EVERY 1024
#endif
#if MIGRATOR_WAKEUP_EVERY < 1 || (MIGRATOR_WAKEUP_EVERY & (MIGRATOR_WAKEUP_EVERY - 1)) != 0
#error "MIGRATOR_WAKEUP_EVERY must be a power of two"
#endif
#else
#error "MIGRATOR_RING_WAKEUP must be 0 (adaptive), 1 (no wakeup), 2 (force wakeup) or 3 (batched)"
#endif
/* The reader sleeps (mode word bit 8); __migrator_mode hands it on as bit 16, which never reaches
 * a record's 16-bit flags. */
#define MIGRATOR_WORD_READER_SLEEPS 0x100
#define MIGRATOR_READER_SLEEPS (1u << 16)

#define MIGRATOR_HDR_VERSION 1
#define MIGRATOR_MODE_PERF 0
#define MIGRATOR_MODE_DUAL 1
#define MIGRATOR_MODE_RING 2
#define MIGRATOR_FLAG_MODE_MASK 0x0003
#define MIGRATOR_FLAG_EPOCH_MASK 0x00fc /* bits 2-7, in the mode word and in the record flags */
#define MIGRATOR_FLAG_TRUNCATED 0x0100
#define MIGRATOR_FLAG_RESERVED 0x0200
#define MIGRATOR_FLAG_PERF_LOST 0x0400 /* in a DUAL ring copy: perf refused the record */

/* Counter indexes in name__cnt (per CPU). */
#define MIGRATOR_CNT_PERF_ATTEMPTS 0
#define MIGRATOR_CNT_PERF_OK 1
#define MIGRATOR_CNT_PERF_FULL 2 /* bpf_perf_event_output() == -ENOSPC */
#define MIGRATOR_CNT_PERF_OTHER 3
#define MIGRATOR_CNT_RING_ATTEMPTS 4
#define MIGRATOR_CNT_RING_OK 5
#define MIGRATOR_CNT_RING_FULL 6 /* ringbuf_output() == -EAGAIN, ringbuf_reserve() == NULL */
#define MIGRATOR_CNT_RING_OTHER 7
#define MIGRATOR_CNT_TRUNCATED 8
#define MIGRATOR_CNT_COPY_FAIL 9 /* bpf_probe_read_kernel() of the payload failed */
#define MIGRATOR_CNT_NO_SCRATCH 10
#define MIGRATOR_CNT_DISCARD 11 /* MIGRATOR_DISCARD calls */
#define MIGRATOR_CNT_PERF_NS 12 /* ns spent in timed perf emits (MIGRATOR_TIME_EVERY) */
#define MIGRATOR_CNT_PERF_TIMED 13 /* timed perf emits */
#define MIGRATOR_CNT_RING_NS 14 /* ns spent in timed ring emits */
#define MIGRATOR_CNT_RING_TIMED 15 /* timed ring emits */
#define MIGRATOR_CNT_MAX 16 /* counters per epoch parity; the map holds two sets */

/* Where a reservation lives; the low 2 bits are the mode written into the header. */
#define MIGRATOR_ST_PERF 0         /* PERF: scratch, submit goes to perf */
#define MIGRATOR_ST_DUAL 1         /* DUAL: ring reservation, submit goes to perf and ring */
#define MIGRATOR_ST_RING 2         /* RING: ring reservation, submit goes to the ring */
#define MIGRATOR_ST_DUAL_SCRATCH 5 /* DUAL, ring full: scratch, submit goes to perf */

/* The record header, declared once: struct migrator_hdr and the front of struct migrator_record.
 * The Python side reads it as frames.HDR_DTYPE and the native loops (native.c) take its offsets
 * from this struct; tests/test_header_layout.py compiles this header and checks the dtype's
 * field names, offsets and sizes against it. */
#define MIGRATOR_HDR_FIELDS                                                                      \
    u16 hdr_version;                                                                             \
    u16 flags; /* bits 0-1 mode, 2-7 epoch, MIGRATOR_FLAG_* */                                   \
    u16 type;                                                                                    \
    u16 type_version;                                                                            \
    u32 len; /* payload bytes after the header */                                                \
    u32 cpu;                                                                                     \
    u64 seq; /* per channel, one counter across CPUs */                                          \
    u64 ktime_ns; /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */

struct migrator_hdr {
    MIGRATOR_HDR_FIELDS
};

/* The header fields FLAT (not a nested struct migrator_hdr), then the payload: bcc's Python side
 * cannot turn a nested struct into ctypes ("Type: 'struct migrator_hdr' not recognized"), and this
 * is the type bcc records for name__perf. */
struct migrator_record {
    MIGRATOR_HDR_FIELDS
    u8 data[MIGRATOR_MAX_PAYLOAD];
};

/* Declarations only: these work inside a macro and inside an #included header. */
#define MIGRATOR_CHANNEL_MAPS(name, ring_bytes)                                                  \
    _Static_assert((ring_bytes) >= 4096 && ((ring_bytes) & ((ring_bytes) - 1)) == 0,             \
                   "MIGRATOR_CHANNEL(" #name "): ring bytes must be a power of two >= 4096");     \
    BPF_PERF_OUTPUT(name);                                                                       \
    BPF_PERF_OUTPUT(name##__perf);                                                               \
    BPF_RINGBUF_OUTPUT(name##__ring, (ring_bytes) / 4096);                                       \
    BPF_ARRAY(name##__mode, u32, 1);                                                             \
    BPF_ARRAY(name##__seq, u64, 1);                                                              \
    BPF_PERCPU_ARRAY(name##__cnt, u64, 2 * MIGRATOR_CNT_MAX);                                    \
    BPF_PERCPU_ARRAY(name##__scratch, struct migrator_record, 1)

/* Only reached when the text did not go through prepare() (or from inside a #define). */
#define MIGRATOR_CHANNEL(name, ring_bytes)                                                       \
    _Static_assert(0, "MIGRATOR_CHANNEL(" #name ") must be at file scope, outside any macro, "    \
                      "and the text must be passed through migrator.dataplane.rewrite.prepare()")

/* The operator macros. prepare() rewrites MIGRATOR_OUTPUT[_TYPED] and MIGRATOR_SUBMIT call
 * sites itself (adding the type anchor); these definitions serve the other uses. */
#define MIGRATOR_OUTPUT_TYPED(name, ctx, ptr, size, type, tver)                                  \
    __migrator_output_##name((ctx), (const void *)(ptr), (u64)(size), (u16)(type), (u16)(tver))
#define MIGRATOR_OUTPUT(name, ctx, ptr, size) MIGRATOR_OUTPUT_TYPED(name, ctx, ptr, size, 0, 0)

#define MIGRATOR_RESERVE_TYPED(name, T, var, type, tver)                                         \
    _Static_assert(sizeof(T) <= MIGRATOR_MAX_PAYLOAD,                                            \
                   "MIGRATOR_RESERVE(" #name ", " #T "): larger than MIGRATOR_MAX_PAYLOAD");      \
    u32 var##__mst = 0;                                                                          \
    T *var = (T *)__migrator_reserve_##name(&var##__mst, sizeof(T), (u16)(type), (u16)(tver))
#define MIGRATOR_RESERVE(name, T, var) MIGRATOR_RESERVE_TYPED(name, T, var, 0, 0)
#define __MIGRATOR_SUBMIT(name, ctx, var)                                                        \
    __migrator_submit_##name((ctx), var##__mst, (void *)(var), sizeof(*(var)))
#define MIGRATOR_SUBMIT(name, ctx, var) __MIGRATOR_SUBMIT(name, ctx, var)
#define MIGRATOR_DISCARD(name, var) __migrator_discard_##name(var##__mst, (void *)(var))

#endif /* MIGRATOR_H */

#if 0
/* The per-channel template, pasted into the main text by rewrite.prepare() with @NAME@
 * replaced by the channel name. It must not be in a macro or an #included file (bcc map
 * method calls), and it must not contain the MIGRATOR_ operator macro names.
 */
MIGRATOR_TEMPLATE_BEGIN
/* Every map key of one operation lives in one stack slot, *k: the program that calls us may
 * already use most of the 512-byte BPF stack. */
static __always_inline void __migrator_cnt_@NAME@(int *k, int idx)
{
    *k = idx;
    u64 *c = @NAME@__cnt.lookup(k);
    if (c)
        *c += 1; /* per CPU: no atomic needed */
}

/* A timed emit: add its ns to counter idx and count it in idx + 1. */
static __always_inline void __migrator_time_@NAME@(int *k, int idx, u64 ns)
{
    *k = idx;
    u64 *c = @NAME@__cnt.lookup(k);
    if (c)
        *c += ns;
    __migrator_cnt_@NAME@(k, idx + 1);
}

/* The mode word, read once per record: the mode (3 read as RING) in bits 0-1, the epoch in 2-7. */
static __always_inline u32 __migrator_mode_@NAME@(int *k)
{
    *k = 0;
    u32 *m = @NAME@__mode.lookup(k);
    u32 w = m ? *m : MIGRATOR_MODE_PERF;
    u32 mode = w & MIGRATOR_FLAG_MODE_MASK;
    return (mode > MIGRATOR_MODE_RING ? MIGRATOR_MODE_RING : mode) | (w & MIGRATOR_FLAG_EPOCH_MASK) |
           ((w & MIGRATOR_WORD_READER_SLEEPS) ? MIGRATOR_READER_SLEEPS : 0);
}

/* Flags of one ring write. w: the word __migrator_mode returned. */
static __always_inline u64 __migrator_rbflags_@NAME@(u32 w, u64 seq)
{
#if MIGRATOR_RING_WAKEUP == 3
    if ((w & MIGRATOR_READER_SLEEPS) || (seq & (MIGRATOR_WAKEUP_EVERY - 1)) == 0)
        return 2; /* BPF_RB_FORCE_WAKEUP: the reader waits for this, or the backstop */
    return 1;     /* BPF_RB_NO_WAKEUP */
#else
    return MIGRATOR_RB_FLAGS;
#endif
}

/* A record went to perf alone (mode PERF): if the reader announced that it sleeps without a clock
 * (mode word bit 8), ring its doorbell: a ring reservation discarded with BPF_RB_FORCE_WAKEUP wakes
 * its epoll wait and is skipped by every ring reader. The word is read again after the perf write:
 * either this load sees the bit or the reader, which sets the bit before it looks at the perf head
 * once more, sees the record. Costs one map load per perf write while the reader is awake. */
static __always_inline void __migrator_doorbell_@NAME@(int *k)
{
    *k = 0;
    u32 *m = @NAME@__mode.lookup(k);
    if (m && (*m & MIGRATOR_WORD_READER_SLEEPS)) {
        void *d = @NAME@__ring.ringbuf_reserve(8);
        if (d)
            @NAME@__ring.ringbuf_discard(d, 2 /* BPF_RB_FORCE_WAKEUP */);
    }
}

/* The first counter index of the set of the epoch in a mode word (or in record flags). */
static __always_inline int __migrator_cb_@NAME@(u32 w)
{
    return (w & 0x4) ? MIGRATOR_CNT_MAX : 0;
}

/* Called after the mode word was read (mode: the word): the sequence is taken here. */
static __always_inline void __migrator_fill_@NAME@(int *k, struct migrator_hdr *h, u32 mode, u32 len,
                                                   u16 type, u16 tver, u16 extra)
{
    u64 seq = 0;
    *k = 0;
    u64 *s = @NAME@__seq.lookup(k);
    if (s)
        seq = __sync_fetch_and_add(s, 1);
    h->hdr_version = MIGRATOR_HDR_VERSION;
    h->flags = (u16)(mode & (MIGRATOR_FLAG_MODE_MASK | MIGRATOR_FLAG_EPOCH_MASK)) | extra;
    h->type = type;
    h->type_version = tver;
    h->len = len;
    h->cpu = bpf_get_smp_processor_id();
    h->seq = seq;
    h->ktime_ns = bpf_ktime_get_ns();
}

/* rec is typed so that bcc records struct migrator_record for name__perf */
/* cb: the counter set of the epoch of the record (__migrator_cb of its flags) */
static __always_inline int __migrator_perf_@NAME@(int *k, void *ctx, struct migrator_record *rec, u64 total, int cb)
{
    __migrator_cnt_@NAME@(k, cb + MIGRATOR_CNT_PERF_ATTEMPTS);
    int rc = @NAME@__perf.perf_submit(ctx, rec, total);
    __migrator_cnt_@NAME@(k, cb + (rc == 0 ? MIGRATOR_CNT_PERF_OK
                                   : rc == -28 /* ENOSPC */ ? MIGRATOR_CNT_PERF_FULL : MIGRATOR_CNT_PERF_OTHER));
    return rc;
}

static __always_inline int __migrator_ring_@NAME@(int *k, struct migrator_record *rec, u64 total, int cb, u64 rbflags)
{
    __migrator_cnt_@NAME@(k, cb + MIGRATOR_CNT_RING_ATTEMPTS);
    int rc = @NAME@__ring.ringbuf_output(rec, total, rbflags);
    __migrator_cnt_@NAME@(k, cb + (rc == 0 ? MIGRATOR_CNT_RING_OK
                                   : rc == -11 /* EAGAIN */ ? MIGRATOR_CNT_RING_FULL : MIGRATOR_CNT_RING_OTHER));
    return rc;
}

/* Variable size: copy min(size, MAX) payload bytes behind a header in the scratch, then write
 * that one record to perf, the ring or both. The header is written into the scratch as soon as
 * each field is known, so few values stay live across helper calls (no stack spills). */
static __always_inline int __migrator_output_@NAME@(void *ctx, const void *ptr, u64 size, u16 type, u16 tver)
{
    int k = 0;
    struct migrator_record *sc = @NAME@__scratch.lookup(&k);
    if (!sc) {
        __migrator_cnt_@NAME@(&k, MIGRATOR_CNT_NO_SCRATCH);
        return -2; /* ENOENT */
    }
    u32 w = __migrator_mode_@NAME@(&k);
    sc->flags = (u16)w; /* the mode and the epoch */
    int cb = __migrator_cb_@NAME@(sc->flags);
    sc->hdr_version = MIGRATOR_HDR_VERSION;
    sc->type = type;
    sc->type_version = tver;
    u64 n = size;
    if (n > MIGRATOR_MAX_PAYLOAD) {
        n = MIGRATOR_MAX_PAYLOAD;
        sc->flags |= MIGRATOR_FLAG_TRUNCATED;
        __migrator_cnt_@NAME@(&k, cb + MIGRATOR_CNT_TRUNCATED);
    }
    /* Without the empty asm clang folds the clamp into a copy of size and the verifier sees
     * an unbounded length ("R2 min value is negative, either use unsigned or var &= const"). */
    asm volatile("" : "+r"(n));
    if (n > MIGRATOR_MAX_PAYLOAD)
        return -7; /* E2BIG, unreachable */
    if (n) {
        int crc = bpf_probe_read_kernel(sc->data, n, ptr);
        if (crc) {
            __migrator_cnt_@NAME@(&k, cb + MIGRATOR_CNT_COPY_FAIL);
            return crc;
        }
    }
    sc->len = n;
    k = 0;
    u64 *s = @NAME@__seq.lookup(&k);
    sc->seq = s ? __sync_fetch_and_add(s, 1) : 0;
    sc->cpu = bpf_get_smp_processor_id();
    sc->ktime_ns = bpf_ktime_get_ns();
    u64 total = sizeof(struct migrator_hdr) + n;
    u32 mode = sc->flags & MIGRATOR_FLAG_MODE_MASK;
    int timed = MIGRATOR_TIMED(sc->seq);
    u64 t0 = 0;
    int rc = 0;
    if (mode != MIGRATOR_MODE_RING) {
        if (timed)
            t0 = bpf_ktime_get_ns();
        rc = __migrator_perf_@NAME@(&k, ctx, sc, total, cb);
        if (timed)
            __migrator_time_@NAME@(&k, cb + MIGRATOR_CNT_PERF_NS, bpf_ktime_get_ns() - t0);
        if (mode == MIGRATOR_MODE_PERF)
            __migrator_doorbell_@NAME@(&k);
    }
    if (mode != MIGRATOR_MODE_PERF) {
        if (rc)
            sc->flags |= MIGRATOR_FLAG_PERF_LOST; /* the ring copy is the only one */
        if (timed)
            t0 = bpf_ktime_get_ns();
        int rrc = __migrator_ring_@NAME@(&k, sc, total, cb, __migrator_rbflags_@NAME@(w, sc->seq));
        if (timed)
            __migrator_time_@NAME@(&k, cb + MIGRATOR_CNT_RING_NS, bpf_ktime_get_ns() - t0);
        if (!rc)
            rc = rrc;
    }
    return rc;
}

/* Fixed size. Reads the mode, then sets *st to a MIGRATOR_ST_* constant on every path, so the
 * verifier can pair each reservation with its submit or discard. */
static __always_inline void *__migrator_reserve_@NAME@(u32 *st, u32 size, u16 type, u16 tver)
{
    int k = 0;
    u32 w = __migrator_mode_@NAME@(&k);
    u32 mode = w & MIGRATOR_FLAG_MODE_MASK;
    int cb = __migrator_cb_@NAME@(w);
    struct migrator_hdr *h = 0;
    if (mode == MIGRATOR_MODE_PERF) {
        *st = MIGRATOR_ST_PERF;
        k = 0;
        h = (struct migrator_hdr *)@NAME@__scratch.lookup(&k);
    } else if (mode == MIGRATOR_MODE_DUAL) {
        h = @NAME@__ring.ringbuf_reserve(sizeof(struct migrator_hdr) + size);
        if (h) {
            *st = MIGRATOR_ST_DUAL;
        } else {
            __migrator_cnt_@NAME@(&k, cb + MIGRATOR_CNT_RING_ATTEMPTS);
            __migrator_cnt_@NAME@(&k, cb + MIGRATOR_CNT_RING_FULL);
            *st = MIGRATOR_ST_DUAL_SCRATCH; /* perf must still get it */
            k = 0;
            h = (struct migrator_hdr *)@NAME@__scratch.lookup(&k);
        }
    } else {
        *st = MIGRATOR_ST_RING;
        h = @NAME@__ring.ringbuf_reserve(sizeof(struct migrator_hdr) + size);
        if (!h) {
            __migrator_cnt_@NAME@(&k, cb + MIGRATOR_CNT_RING_ATTEMPTS);
            __migrator_cnt_@NAME@(&k, cb + MIGRATOR_CNT_RING_FULL);
            return 0;
        }
    }
    if (!h) {
        __migrator_cnt_@NAME@(&k, MIGRATOR_CNT_NO_SCRATCH);
        return 0;
    }
    __migrator_fill_@NAME@(&k, h, w, size, type, tver, MIGRATOR_FLAG_RESERVED);
    return (void *)(h + 1);
}

static __always_inline void __migrator_submit_@NAME@(void *ctx, u32 st, void *p, u32 size)
{
    if (!p)
        return;
    int k = 0;
    struct migrator_hdr *h = ((struct migrator_hdr *)p) - 1;
    int cb = __migrator_cb_@NAME@(h->flags); /* the epoch of the reservation */
    int timed = MIGRATOR_TIMED(h->seq);
    u64 t0 = 0;
    int rc = 0;
    if (st != MIGRATOR_ST_RING) {
        if (timed)
            t0 = bpf_ktime_get_ns();
        rc = __migrator_perf_@NAME@(&k, ctx, (struct migrator_record *)h, sizeof(*h) + size, cb);
        if (timed)
            __migrator_time_@NAME@(&k, cb + MIGRATOR_CNT_PERF_NS, bpf_ktime_get_ns() - t0);
        if (st == MIGRATOR_ST_PERF)
            __migrator_doorbell_@NAME@(&k);
    }
    if (st == MIGRATOR_ST_DUAL || st == MIGRATOR_ST_RING) {
        if (rc)
            h->flags |= MIGRATOR_FLAG_PERF_LOST; /* the ring copy is the only one */
        __migrator_cnt_@NAME@(&k, cb + MIGRATOR_CNT_RING_ATTEMPTS);
#if MIGRATOR_RING_WAKEUP == 3
        u64 rbflags = __migrator_rbflags_@NAME@(__migrator_mode_@NAME@(&k), h->seq);
#else
        u64 rbflags = MIGRATOR_RB_FLAGS;
#endif
        if (timed)
            t0 = bpf_ktime_get_ns();
        @NAME@__ring.ringbuf_submit(h, rbflags);
        if (timed)
            __migrator_time_@NAME@(&k, cb + MIGRATOR_CNT_RING_NS, bpf_ktime_get_ns() - t0);
        __migrator_cnt_@NAME@(&k, cb + MIGRATOR_CNT_RING_OK);
    }
}

static __always_inline void __migrator_discard_@NAME@(u32 st, void *p)
{
    if (!p)
        return;
    int k = 0;
    struct migrator_hdr *h = ((struct migrator_hdr *)p) - 1;
    __migrator_cnt_@NAME@(&k, __migrator_cb_@NAME@(h->flags) + MIGRATOR_CNT_DISCARD);
    if (st == MIGRATOR_ST_DUAL || st == MIGRATOR_ST_RING)
        @NAME@__ring.ringbuf_discard(h, MIGRATOR_RB_FLAGS);
}
MIGRATOR_TEMPLATE_END
#endif
