"""Pausing Python's cyclic garbage collector while per-key records are built in bulk.

Four checkpoints of 20,000 tensors make some 200,000 small objects (header entries, key plans,
chunk tasks). Every few hundred new objects start a collection, and the full ones traverse every
live object, torch's ~170,000 from its import among them: opening, planning and writing the header
of such a run took 1.7 s under cProfile with the collector running and 1.0 s without. These records
hold no reference cycles, so nothing is lost by collecting only once they are built.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Disable the cyclic collector inside the block; re-enable it after if it was on (nested
    pauses and a caller's own ``gc.disable()`` are left as they were)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
