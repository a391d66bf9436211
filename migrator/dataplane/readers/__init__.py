"""The two readers (consumers) of a channel. Both drain their buffer in batches and return Frames (dataplane/frames.py):
migrator's header of every record as one numpy array and the payloads in one private buffer."""
from migrator.dataplane.readers.perf import PerfConsumer
from migrator.dataplane.readers.ring import RingConsumer

__all__ = ["PerfConsumer", "RingConsumer"]
