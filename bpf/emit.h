// SPDX-License-Identifier: GPL-2.0
/*
 * The shared emit path. Every probe fills a struct event payload and calls emit(); emit()
 * stamps the header, reads the mode map and writes the record to the perf buffer, the ring
 * buffer, or both, counting every attempt and every refusal per CPU and per channel so that
 * no loss is invisible.
 *
 * Build-time knobs (bcc cflags, never string replacement):
 *   -DRING_PAGES=N            ring size in pages (power of two), default 4096 (16 MiB)
 *   -DRING_SUBMIT_OUTPUT=0|1  0: bpf_ringbuf_reserve/submit (default), 1: bpf_ringbuf_output
 *   -DRING_WAKEUP_FLAGS=0|1|2 0 adaptive, 1 BPF_RB_NO_WAKEUP, 2 BPF_RB_FORCE_WAKEUP
 *
 * bcc rewrites map method calls only in its main file, so the loader (migrator/bpf_loader.py)
 * inlines this header into each probe before compiling; keep the probes' #include "emit.h".
 *
 * Never read kernel struct fields here: the headers on these machines do not match the
 * running kernel. Tracepoint args, __sk_buff fields and helpers only.
 */
#ifndef MIGRATOR_EMIT_H
#define MIGRATOR_EMIT_H

#ifndef RING_PAGES
#define RING_PAGES 4096
#endif
#ifndef RING_SUBMIT_OUTPUT
#define RING_SUBMIT_OUTPUT 0
#endif
#ifndef RING_WAKEUP_FLAGS
#define RING_WAKEUP_FLAGS 0
#endif

#define RING_BYTES ((u64)RING_PAGES * 4096)

#ifndef ENOSPC
#define ENOSPC 28
#endif

/* Bump when struct event changes; userspace keeps a parser for every version shipped.
 * Tests build old (or unknown) producers with -DSCHEMA_VERSION=N to prove the parser copes. */
#ifndef SCHEMA_VERSION
#define SCHEMA_VERSION 2
#endif

/* Mode map values. Zero (an untouched map) is PERF: the safe default. */
#define MODE_PERF 0
#define MODE_DUAL 1
#define MODE_RING 2

#define CH_PERF 0
#define CH_RING 1

/* Event kinds, one per probe source. */
#define KIND_SYNTH 1
#define KIND_FORK 2
#define KIND_EXEC 3
#define KIND_EXIT 4
#define KIND_PACKET 5

struct event_hdr {
    u16 schema_version;
    u16 flags;          /* low 2 bits: the mode in force when the event was emitted */
    u32 cpu;
    u64 seq;            /* one global counter across CPUs, so cross-CPU order is observable */
    u64 ktime_ns;       /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
};

/* Version 2 layout, 64 bytes. Version 1 was the same without `value` (56 bytes). */
struct event {
    struct event_hdr hdr;
    u32 kind;
    u32 pid;
    u32 aux;            /* fork: child pid; exec: old pid; packet: protocol */
    u32 len;            /* exit: prio; packet: skb->len */
    char comm[16];
    u64 value;          /* v2: probe-specific 64-bit value (synthetic: call number) */
};

_Static_assert(sizeof(struct event) == 64, "migrator/schema.py LAYOUTS[2] must match");

/* Bytes written per record: a version 1 producer wrote the layout without `value`. */
#if SCHEMA_VERSION == 1
#define EMIT_SIZE 56
#else
#define EMIT_SIZE sizeof(struct event)
#endif

struct chan_counters {
    u64 attempts;
    u64 ok;
    u64 full;           /* ring: no room (BPF_RB_AVAIL_DATA says full); perf: -ENOSPC, perf's "lost" */
    u64 other;          /* any other refusal */
};

/* Maps: mode (one u32), the global sequence, per-CPU counters per channel, both channels. */
BPF_ARRAY(mode_map, u32, 1);
BPF_ARRAY(seq_map, u64, 1);
BPF_PERCPU_ARRAY(counters, struct chan_counters, 2);
BPF_PERF_OUTPUT(events_perf);
BPF_RINGBUF_OUTPUT(events_ring, RING_PAGES);
/* The ring again, as an inner map: bcc of this vintage cannot pass `&events_ring` to a raw
 * helper, but a map pointer from a map-in-map lookup is accepted by bpf_ringbuf_query().
 * The loader stores the ring's fd at index 0. */
BPF_ARRAY_OF_MAPS(ring_ref, "events_ring", 1);

static __always_inline void emit_perf(void *ctx, struct event *ev)
{
    u32 ch = CH_PERF;
    struct chan_counters *c = counters.lookup(&ch);
    if (!c)
        return;
    c->attempts++;
    int err = events_perf.perf_submit(ctx, ev, EMIT_SIZE);
    if (err == 0)
        c->ok++;
    else if (err == -ENOSPC)
        c->full++;
    else
        c->other++;
}

static __always_inline void emit_ring(struct event *ev)
{
    u32 ch = CH_RING;
    struct chan_counters *c = counters.lookup(&ch);
    if (!c)
        return;
    c->attempts++;
#if RING_SUBMIT_OUTPUT
    int err = events_ring.ringbuf_output(ev, EMIT_SIZE, RING_WAKEUP_FLAGS);
#else
    int err = -ENOSPC;
    struct event *slot = events_ring.ringbuf_reserve(EMIT_SIZE);
    if (slot) {
        __builtin_memcpy(slot, ev, EMIT_SIZE);
        events_ring.ringbuf_submit(slot, RING_WAKEUP_FLAGS);
        err = 0;
    }
#endif
    if (err == 0) {
        c->ok++;
        return;
    }
    /* Attribute the refusal: "full" when the unconsumed data leaves no room for this record
     * (8-byte record header included); anything else is "other". */
    u32 zero = 0;
    void *rb = ring_ref.lookup(&zero);
    u64 avail = rb ? bpf_ringbuf_query(rb, BPF_RB_AVAIL_DATA) : 0;
    if (rb && avail + EMIT_SIZE + 8 > RING_BYTES)
        c->full++;
    else
        c->other++;
}

static __always_inline void emit(void *ctx, struct event *ev)
{
    u32 zero = 0;
    u32 *modep = mode_map.lookup(&zero);
    u32 mode = modep ? *modep : MODE_PERF;
    u64 *seqp = seq_map.lookup(&zero);
    if (!seqp)
        return;

    /* Stamp the header once, so both channels carry the identical record. */
    ev->hdr.schema_version = SCHEMA_VERSION;
    ev->hdr.flags = mode & 3;
    ev->hdr.cpu = bpf_get_smp_processor_id();
    ev->hdr.seq = __sync_fetch_and_add(seqp, 1);
    ev->hdr.ktime_ns = bpf_ktime_get_ns();

    if (mode != MODE_RING)
        emit_perf(ctx, ev);
    if (mode != MODE_PERF)
        emit_ring(ev);
}

#endif /* MIGRATOR_EMIT_H */
