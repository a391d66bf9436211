"""The two consumers. Both drain their channel in batches and return Frames (dataplane/frames.py):
migrator's header of every record as one numpy array and the payloads in one private buffer."""
from migrator.dataplane.channels.perf import PerfConsumer
from migrator.dataplane.channels.ring import RingConsumer

__all__ = ["PerfConsumer", "RingConsumer"]
