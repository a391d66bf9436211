// SPDX-License-Identifier: GPL-2.0
/* Mixed-size source, written as an operator would: one event per getppid() call of one
 * target process, its size (24..4096 bytes) chosen deterministically from an event counter. */
#include <migrator.h>

/* The channel's ring size in bytes (a power of two); -DRING_BYTES=N overrides it. */
#ifndef RING_BYTES
#define RING_BYTES (16 << 20)
#endif

/* The operator's event: 24 bytes of fields, then filler up to its size. */
struct mixed_event {
    u64 id;          /* the event counter: 0, 1, 2, ... in emit order */
    u32 size;        /* payload bytes of this event, these fields included */
    u32 pid;         /* the thread that made the call */
    u64 check;       /* id ^ MIXED_CHECK, so a reader can tell a decoded field from garbage */
    u8 data[4072];
};

#define MIXED_CHECK 0x9E3779B97F4A7C15ULL

/* The tgid to watch, set from userspace; 0 watches nothing. */
BPF_ARRAY(target_tgid, u32, 1);
/* The event counter, shared by all CPUs. */
BPF_ARRAY(ids, u64, 1);
/* Where an event is assembled: too large for the 512-byte stack. */
BPF_PERCPU_ARRAY(staging, struct mixed_event, 1);
MIGRATOR_CHANNEL(events, RING_BYTES);

TRACEPOINT_PROBE(syscalls, sys_enter_getppid)
{
    u32 zero = 0;
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 *want = target_tgid.lookup(&zero);

    /* Early return for everything but the target process. */
    if (!want || *want == 0 || *want != (u32)(pid_tgid >> 32))
        return 0;
    /* Take the event's number and its staging slot. */
    u64 *next = ids.lookup(&zero);
    struct mixed_event *e = staging.lookup(&zero);
    if (!next || !e)
        return 0;
    u64 id = __sync_fetch_and_add(next, 1);
    /* Mostly small events, every 64th one of 4096 bytes: sizes 24, 32, ..., 520 and 4096. */
    u32 size = (id & 63) == 63 ? 4096 : 24 + (u32)(id & 63) * 8;
    /* Fill the fields; the filler keeps whatever the slot held. */
    e->id = id;
    e->size = size;
    e->pid = (u32)pid_tgid;
    e->check = id ^ MIXED_CHECK;
    /* Emit `size` bytes through the channel (perf, ring or both, as the mode map says). */
    MIGRATOR_OUTPUT(events, args, e, size);
    return 0;
}
