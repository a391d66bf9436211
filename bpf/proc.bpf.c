// SPDX-License-Identifier: GPL-2.0
/* Process lifecycle: fork, exec and exit, from tracepoint arguments only. */
#include "demo.h"

TRACEPOINT_PROBE(sched, sched_process_fork)
{
    struct demo_event ev = {};
    ev.kind = KIND_FORK;
    ev.pid = args->parent_pid;
    ev.aux = args->child_pid;
    /* child_comm is a __data_loc string on this kernel: read it through the tracepoint. */
    TP_DATA_LOC_READ_STR(ev.comm, child_comm, sizeof(ev.comm));
    emit(args, &ev);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    struct demo_event ev = {};
    ev.kind = KIND_EXEC;
    ev.pid = args->pid;
    ev.aux = args->old_pid;
    /* At this tracepoint the task already carries the new program's name. */
    bpf_get_current_comm(&ev.comm, sizeof(ev.comm));
    emit(args, &ev);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    struct demo_event ev = {};
    ev.kind = KIND_EXIT;
    ev.pid = args->pid;
    ev.aux = bpf_get_current_pid_tgid() >> 32;
    ev.len = args->prio;
    bpf_probe_read_kernel_str(&ev.comm, sizeof(ev.comm), args->comm);
    emit(args, &ev);
    return 0;
}
