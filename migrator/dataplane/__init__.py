"""The data plane: from the kernel's buffers to the operator's callback and the window's books.

rewrite (migrator.h into a bcc program), channel (a loaded channel's maps, mode and counters),
readers/ (the ring and perf mmap consumers), pipeline (the wait-and-drain loop over both; its hot
loop runs in C: loop.c, bound by native_loop; the Python path is its reference), router
(which copy of each record is delivered, exactly once), handover (the seq cut of a switch), frames
and schema (records and payload layouts per type and version), windows (per-epoch books, lag and
order), compare (ring payloads against perf's), native.c (the per-record loops in C), demo_probes
and operator (the programs we load: ours, or the operator's)."""
