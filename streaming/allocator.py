"""Keeps freed memory in the stream's process instead of handing it back to the OS after every batch.

Each micro-batch allocates and frees the same few megabytes: kafka-python's fetch buffers (above
glibc's 128 KiB mmap threshold, so each one is a fresh ``mmap``), the decoded beats and about two
output records per beat at 100 % anomalies with a scores topic. By default glibc returns the top of
its heap to the OS once more than 128 KiB is free there and unmaps every large block when it is
freed, so the next batch faults the same pages in again. Where a page fault is expensive (virtual
machines: 3.4-3.8 µs a 4 KiB page measured on this project's Firecracker VMs, against ~0.1-0.25 µs
on bare metal) that is most of the cost of an output record: ``orjson.dumps`` of a score record took
10 µs when the 2,048 results of a batch were kept until sent, 2.1 µs with the settings below
(docs/streaming.md, "Memory kept between batches").

``retain_freed_memory(megabytes)`` sets glibc's ``M_TOP_PAD`` and ``M_TRIM_THRESHOLD`` (free memory
kept at the top of the heap) and raises ``M_MMAP_THRESHOLD`` to its ceiling (32 MiB), so those
blocks are reused from the heap. The process then keeps up to about ``megabytes`` more resident
memory than it uses at that moment. It is a no-op (with one debug line) where the C library is not
glibc; ``megabytes`` 0 leaves the allocator as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

LOGGER = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_CEILING = 32 << 20  # glibc refuses larger values on 64-bit (HEAP_MAX_SIZE / 2)


def retain_freed_memory(megabytes: int) -> bool:
    """Keeps up to ``megabytes`` MiB of freed memory for reuse (see the module doc); True when applied."""
    if megabytes < 0:
        raise ValueError(f"megabytes must be >= 0, got {megabytes}")
    if megabytes == 0:
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError) as error:  # not glibc (musl, macOS): nothing to tune
        LOGGER.debug("no glibc mallopt (%s): the allocator keeps its defaults", error)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    pad = min(megabytes << 20, 2 ** 31 - 1)
    applied = all(mallopt(parameter, value) == 1 for parameter, value in (
        (M_TOP_PAD, pad), (M_TRIM_THRESHOLD, pad), (M_MMAP_THRESHOLD, min(pad, MMAP_THRESHOLD_CEILING))))
    if not applied:
        LOGGER.debug("mallopt refused a setting: the allocator may keep some of its defaults")
    return applied
