"""The two consumers. Both drain their channel in batches and return numpy structured arrays of
decoded records (dtype migrator.schema.EVENT_DTYPE); bcc_ref keeps bcc's callback consumers as a
reference path for the benchmark."""
from migrator.channels.perf import PerfConsumer
from migrator.channels.ring import RingConsumer

__all__ = ["PerfConsumer", "RingConsumer"]
