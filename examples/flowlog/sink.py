"""flowlog's consumer for `migrator agent` ([source] sink = "sink:handle" in canary.toml).

The agent compiles flowlog.bpf.c, attaches tc_flowlog, reads the channel and calls handle()
with every decoded batch of the acting channel: a numpy structured array with migrator's
header fields (seq, ktime_ns, cpu, ...) and struct flow_event's fields (saddr, daddr, sport,
dport, proto, cap_len, pkt_len, payload; payload bytes past cap_len are zeros). The counts are
logged every second and written to $FLOWLOG_OUT (default flowlog-<host>.json in the agent's
working directory) when the agent exits.
"""
import atexit
import logging
import os

from flowlog_common import FlowTable

HOST = os.environ.get("MIGRATOR_HOST", "local")  # set by the agent before it imports this module
log = logging.getLogger("flowlog")
table = FlowTable(os.environ.get("FLOWLOG_OUT", f"flowlog-{HOST}.json"), log=log.info)
atexit.register(table.dump)


def handle(batch):
    table.add_batch(batch)
    table.tick()
