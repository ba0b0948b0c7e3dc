"""Helpers shared by the source, loader and DLPack tests: fresh random data, and reading batches back
through the low-level iterator with their sample indices, so that every batch is checked against a
reference built from the indices."""

from __future__ import annotations

import ctypes
import os
import random
import struct
from typing import Dict, List, Optional, Tuple

import ferry

# A short timeout so that a leaked batch slot fails a test in seconds instead of stalling it for minutes.
TIMEOUT_MS = 10000


def fresh_rng() -> Tuple[random.Random, int]:
    """A random generator on a fresh seed (returned, for the failure message)."""
    seed = int.from_bytes(os.urandom(8), "little")
    return random.Random(seed), seed


def field_bytes(field: ferry.DLPackField) -> bytes:
    """The bytes of a batch field. Also for kDLCUDA fields of the stand-in driver, whose device memory
    is host memory."""
    return ctypes.string_at(field.data_ptr, field.nbytes)


def read_epoch(it: ferry.Iterator, stream: Optional[int] = None) -> List[Tuple[List[int], Dict[str, bytes]]]:
    """Reads batches until the end of the epoch: [(indices, {field: bytes})]."""
    out = []
    while True:
        b = it.next(stream)
        if b is None:
            return out
        with b:
            fields = {}
            for name in it.field_names:
                f = b.field(name)
                fields[name] = field_bytes(f)
                f.close()
            out.append((b.indices(), fields))


def rows(data: bytes, row_bytes: int, indices: List[int]) -> bytes:
    """The reference for a batch of a flat field: rows ``indices`` of ``data``, back to back."""
    return b"".join(data[i * row_bytes:(i + 1) * row_bytes] for i in indices)


def write_npy(path: str, descr: str, shape: Tuple[int, ...], data: bytes) -> None:
    """Writes a version 1.0 .npy file by hand (no numpy needed)."""
    header = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (
        descr, "".join(f"{n}," for n in shape) if len(shape) == 1 else ", ".join(map(str, shape)))
    total = 10 + len(header) + 1
    header += " " * ((64 - total % 64) % 64) + "\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1") + data)
