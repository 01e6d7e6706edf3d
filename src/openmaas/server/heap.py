"""Giving freed memory back to the operating system.

glibc's allocator keeps what a thread freed in that thread's arena for reuse, and returns
it to the system only from the top of the main heap. Hostile requests (a prompt of
megabytes, which llama.cpp tokenized whole before its context refused it until such
prompts were refused by their byte count first; 50,000 messages parsed by Python) left
tens to hundreds of MB resident that nothing used again: measured on the embedded models,
RSS went from 570 MB to 650-830 MB after a few such requests and stayed there
(``MALLOC_ARENA_MAX=2`` did not help). ``malloc_trim``
hands the free pages of every arena back; with it, RSS came back to within 15 MB of its
baseline (``tests/e2e/test_memory_soak.py``, ``docs/security.md``).

:func:`trim_heap_every` runs in the server's lifespan (and the engine host's), on a thread every
``OPENMAAS_MEMORY_TRIM_SECONDS``; on a C library without ``malloc_trim`` (musl, macOS) it
does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
from collections.abc import Callable

log = logging.getLogger("openmaas.server.heap")


def malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None where the C library has none."""
    try:  # the C library is already loaded into this process: no search (a subprocess)
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


async def trim_heap_every(seconds: float, trim: Callable[[], object] | None = None) -> None:
    """Trim the heap every ``seconds`` (on a thread: it walks every arena) until cancelled;
    return at once when there is nothing to call."""
    trim = trim or malloc_trim()
    if trim is None or seconds <= 0:
        return
    while True:
        await asyncio.sleep(seconds)
        try:
            await asyncio.to_thread(trim)
        except Exception:  # the next round tries again
            log.exception("trimming the heap failed")
