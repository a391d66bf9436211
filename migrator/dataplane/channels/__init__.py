"""The two consumers. Both drain their channel in batches and return numpy structured arrays of
decoded records (dtype migrator.dataplane.schema.EVENT_DTYPE); bcc_ref keeps bcc's callback consumers as a
reference path for the benchmark."""
from migrator.dataplane.channels.perf import PerfConsumer
from migrator.dataplane.channels.ring import RingConsumer

__all__ = ["PerfConsumer", "RingConsumer"]
