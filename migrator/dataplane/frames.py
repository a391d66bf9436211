"""Framed records: migrator's 32-byte header (bpf/migrator.h) followed by the operator's payload.

Both consumers hand out a `Frames` batch: the header fields of every record as one numpy array,
and the bytes of every payload in one private buffer. Sizes vary per record; a run of records
of one size is read as a strided view (no per-record work), anything else by walking headers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HDR_VERSION = 1
# struct migrator_hdr (bpf/migrator.h, MIGRATOR_HDR_FIELDS), field for field and with its names: the
# one Python spelling of the layout (channel.MigratorHdr is built from it); tests/test_header_layout.py
# compiles the header and checks every name, offset and size against this dtype.
HDR_DTYPE = np.dtype([
    ("hdr_version", "<u2"),
    ("flags", "<u2"),  # bits 0-1: the mode in force at emit, 2-7 the epoch; FLAG_TRUNCATED, FLAG_RESERVED, FLAG_PERF_LOST
    ("type", "<u2"),
    ("type_version", "<u2"),
    ("len", "<u4"),  # payload bytes after the header
    ("cpu", "<u4"),
    ("seq", "<u8"),  # per channel, one counter across CPUs
    ("ktime_ns", "<u8"),  # bpf_ktime_get_ns(): CLOCK_MONOTONIC
])
HDR_SIZE = HDR_DTYPE.itemsize
assert HDR_SIZE == 32
# Where the fields that the consumers peek at in place (no dtype view) start in a header.
FLAGS_AT = HDR_DTYPE.fields["flags"][1]
KTIME_AT = HDR_DTYPE.fields["ktime_ns"][1]
FLAG_MODE_MASK = 0x3
FLAG_TRUNCATED = 0x100
FLAG_RESERVED = 0x200
# In a ring copy emitted in DUAL: perf refused the record, so this copy is its only one.
FLAG_PERF_LOST = 0x400
# The epoch a record was emitted in (bits 2-7 of flags and of the mode word; migrator.h EPOCHS).
EPOCH_SHIFT = 2
EPOCHS = 64


_HDR_BYTES = np.dtype(f"V{HDR_SIZE}")


def concat_headers(hdrs: list[np.ndarray]) -> np.ndarray:
    """Header arrays joined, in order: copied as opaque 32-byte items (numpy's concatenate of a
    structured dtype first promotes it field by field in Python, ~10 us a call)."""
    if len(hdrs) == 1:
        return hdrs[0]
    return np.concatenate([h.view(_HDR_BYTES) for h in hdrs]).view(HDR_DTYPE)


@dataclass
class Frames:
    """A batch of records in consumption order: headers, and payloads inside one buffer."""

    hdr: np.ndarray  # HDR_DTYPE, one row per record
    buf: np.ndarray  # uint8: every record's bytes (a private copy, never the kernel's pages)
    off: np.ndarray  # int64: where each record's payload starts in buf

    def __len__(self) -> int:
        return len(self.hdr)

    @property
    def seq(self) -> np.ndarray:
        """Each record's sequence number."""
        return self.hdr["seq"]

    def payload(self, i: int) -> memoryview:
        """The payload bytes of record i."""
        start = int(self.off[i])
        return memoryview(self.buf)[start:start + int(self.hdr["len"][i])]

    def address(self, i: int) -> int:
        """The address of record i's payload, for callbacks that take a C pointer (bcc's shape)."""
        return self.buf.ctypes.data + int(self.off[i])

    def take(self, keep: np.ndarray) -> "Frames":
        """The records where `keep` is True (a boolean mask), in the same order."""
        return Frames(self.hdr[keep], self.buf, self.off[keep])

    @staticmethod
    def empty() -> "Frames":
        """A batch of no records."""
        return Frames(np.empty(0, HDR_DTYPE), np.empty(0, np.uint8), np.empty(0, np.int64))

    @staticmethod
    def concat(parts: list["Frames"]) -> "Frames":
        """One batch from several, in order (their buffers are joined)."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return Frames.empty()
        if len(parts) == 1:
            return parts[0]
        shift = np.cumsum([0] + [len(p.buf) for p in parts[:-1]])
        return Frames(concat_headers([p.hdr for p in parts]), np.concatenate([p.buf for p in parts]),
                      np.concatenate([p.off + s for p, s in zip(parts, shift)]))


def headers_at(buf: np.ndarray, hdr_off: np.ndarray) -> np.ndarray:
    """Gather the 32-byte headers at 4-byte aligned offsets of buf into one HDR_DTYPE array."""
    if len(hdr_off) == 0:
        return np.empty(0, HDR_DTYPE)
    if (hdr_off % 4).any():
        raise ValueError("record headers must start at 4-byte aligned offsets")
    if int(hdr_off.max()) + HDR_SIZE > len(buf):
        raise IndexError("a record header runs past the end of the buffer")
    # Element i of this view is the 32 bytes from byte i: one fancy index copies each header
    # whole (opaque bytes copy as one block; the structured dtype would go field by field).
    at_byte = np.ndarray((len(buf) - HDR_SIZE + 1,), dtype=f"V{HDR_SIZE}", buffer=buf, strides=(1,))
    return at_byte[hdr_off].view(HDR_DTYPE)


def strided_headers(buf: np.ndarray, first: int, stride: int, n: int) -> np.ndarray:
    """The headers of n equally spaced records as a view (no copy): first header at `first`."""
    return np.ndarray((n,), dtype=HDR_DTYPE, buffer=buf, offset=first, strides=(stride,))


def validate(hdr: np.ndarray, room: np.ndarray | int) -> np.ndarray:
    """Mask of records migrator can read: known header version, payload inside its frame."""
    if isinstance(room, (int, np.integer)):  # one room for all (a run of one size): no int64 copy
        if room < HDR_SIZE:
            return np.zeros(len(hdr), dtype=bool)
        return (hdr["hdr_version"] == HDR_VERSION) & (hdr["len"] <= int(room) - HDR_SIZE)
    return (hdr["hdr_version"] == HDR_VERSION) & (hdr["len"].astype(np.int64) + HDR_SIZE <= room)
