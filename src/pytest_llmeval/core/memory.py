"""Garbage collection around bulk allocations: paused while building what lives on, frozen between sessions.

A full collection walks every live object, and a run of thousands of cases keeps hundreds of thousands alive
(items, cases, reports; litellm's modules), so each one the interpreter triggers during the run costs 50-150 ms and
the collections at interpreter exit about half a second. What exists when the tests start (collection's work,
litellm once imported) is frozen (gc.freeze: exempt from collections, still freed by reference counting) until the
session ends; then everything is collected once, while pytest still reports exceptions from finalizers, and what
survives is frozen for the exit. A later session in the same process (pytester, an IDE) thaws it first. Only when
cyclic garbage is reclaimed changes: what a session made is reclaimed by its end.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["gc_freeze", "gc_thaw", "paused_gc"]

_FROZEN = [False]


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No automatic garbage collection inside, and what exists afterwards frozen (gc_freeze): for building many
    objects that all live on (a suite's cases and items, the answers found in the cache, litellm's modules). Each
    collection the allocations would trigger walks every object alive and finds nothing to free: parsing 5000 cases
    set off four full ones (~0.25 s), importing litellm five (~0.4 s); and the first one after the block would walk
    all it built (~0.1-0.2 s). Anything cyclic left over is collected at the end of the session."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc_freeze()
        gc.enable()


def gc_freeze() -> None:
    """gc.freeze(), remembered: the end of the session (or the next one in this process) thaws it."""
    gc.freeze()
    _FROZEN[0] = True


def gc_thaw() -> None:
    """Undo gc_freeze (if it was called): what it froze is collectable again."""
    if _FROZEN[0]:
        gc.unfreeze()
        _FROZEN[0] = False
