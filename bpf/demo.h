// SPDX-License-Identifier: GPL-2.0
/*
 * The demo probes' event: one payload type, versioned, emitted through one migrator channel
 * (bpf/migrator.h), exactly as an operator's program would. The demo probes exist for the
 * benches, the lab and the tests; an operator's own program includes migrator.h directly.
 *
 * Build-time knobs (bcc cflags, never string replacement):
 *   -DRING_BYTES=N         the channel's ring size in bytes (power of two), default 16 MiB
 *   -DDEMO_RESERVE=0|1     1: MIGRATOR_RESERVE/SUBMIT (default), 0: MIGRATOR_OUTPUT
 *   -DDEMO_VERSION=N       payload version to emit; tests build old (1) or unknown ones
 *   -DMIGRATOR_RING_WAKEUP=0|1|2   see migrator.h
 *
 * Never read kernel struct fields here: the headers on these machines do not match the
 * running kernel. Tracepoint args, __sk_buff fields and helpers only.
 */
#ifndef MIGRATOR_DEMO_H
#define MIGRATOR_DEMO_H

#include "migrator.h"

#ifndef RING_BYTES
#define RING_BYTES (16 << 20)
#endif
#ifndef DEMO_RESERVE
#define DEMO_RESERVE 1
#endif
/* Bump when struct demo_event changes; userspace keeps a layout for every version shipped. */
#ifndef DEMO_VERSION
#define DEMO_VERSION 2
#endif
#define DEMO_TYPE 1

/* Event kinds, one per probe source. */
#define KIND_SYNTH 1
#define KIND_FORK 2
#define KIND_EXEC 3
#define KIND_EXIT 4
#define KIND_PACKET 5

/* Version 2 payload, 40 bytes. Version 1 was the same without `value` (32 bytes). */
struct demo_event {
    u32 kind;
    u32 pid;
    u32 aux;            /* fork: child pid; exec: old pid; packet: protocol */
    u32 len;            /* exit: prio; packet: skb->len */
    char comm[16];
    u64 value;          /* v2: probe-specific 64-bit value (synthetic: call number) */
};

MIGRATOR_CHANNEL(events, RING_BYTES);

static __always_inline void emit(void *ctx, struct demo_event *ev)
{
#if DEMO_RESERVE && DEMO_VERSION != 1
    /* Fixed size: reserve in the ring (or the per-CPU scratch in PERF), fill, submit. */
    MIGRATOR_RESERVE_TYPED(events, struct demo_event, slot, DEMO_TYPE, DEMO_VERSION);
    if (!slot)
        return;
    __builtin_memcpy(slot, ev, sizeof(*ev));
    MIGRATOR_SUBMIT(events, ctx, slot);
#else
    /* A version 1 producer wrote the layout without `value`. */
    MIGRATOR_OUTPUT_TYPED(events, ctx, ev, DEMO_VERSION == 1 ? 32 : sizeof(*ev), DEMO_TYPE, DEMO_VERSION);
#endif
}

#endif /* MIGRATOR_DEMO_H */
