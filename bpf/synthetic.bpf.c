// SPDX-License-Identifier: GPL-2.0
/* Synthetic high-rate source: one event per getppid() call of one target process. */
#include "demo.h"

/* The tgid to watch, set from userspace; 0 watches nothing. */
BPF_ARRAY(target_tgid, u32, 1);
/* Per-CPU call counter of the target, carried in the v2 `value` field. */
BPF_PERCPU_ARRAY(calls, u64, 1);

TRACEPOINT_PROBE(syscalls, sys_enter_getppid)
{
    u32 zero = 0;
    u64 id = bpf_get_current_pid_tgid();
    u32 *want = target_tgid.lookup(&zero);

    /* Early return for everything but the target process. */
    if (!want || *want == 0 || *want != (u32)(id >> 32))
        return 0;

    struct demo_event ev = {};
    ev.kind = KIND_SYNTH;
    ev.pid = (u32)id;
    ev.aux = (u32)(id >> 32);
    u64 *n = calls.lookup(&zero);
    if (n)
        ev.value = ++(*n);
    emit(args, &ev);
    return 0;
}
