"""One host's side of a migration, in the operator's process or an agent of ours.

feed (a channel read through the data plane: the mode to follow, safe mode when the database is
lost, self-protection, windows on the shared clock, metrics), attach (the library: bcc's reader
replaced inside the operator's process), wrap (an unmodified bcc tool run under a Feed), link (the
database link: windows, heartbeats and mode reports out, the desired mode in), loop (the agent
process around a probe), selfprotect (the host's own N-in-a-row rollback), drills (faults on
request), metrics (the host's Prometheus endpoint)."""
