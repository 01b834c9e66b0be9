"""Keeping the garbage collector's full passes off the objects a process built while starting.

Python's cyclic collector runs a full pass (generation 2) every few tens of thousands of
allocations that survive, and a full pass walks every tracked object in the process. A netsync
process holds about 110,000 of them before it does any work (modules, pydantic and SQLAlchemy
schemas, compiled statements), nearly all of which live as long as the process. The importer
applying a burst of 1,000-record files allocates and keeps records for a batch at a time, which
sets off those full passes: 15 of them in a 100,000-change burst, 110 ms each here, 1.7 s of a
5.8 s burst in which both of its threads stand still (``docs/performance.md``).

``freeze`` moves what exists at start-up into the collector's permanent generation
(``gc.freeze``), which no pass walks: a full pass then costs what the process is working on. The
price is that a reference cycle among those start-up objects, should one become garbage later,
is never freed (the first pool connections replaced after an outage, a keyring replaced on a
reload): a leak bounded by the start-up heap, once. Settings turn it off (``gc_freeze``) where
one process hosts many short-lived apps, a test run.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

_frozen = False


def freeze() -> int:
    """Collect once, then exempt every object alive now from later passes; call it when the
    process has built what it keeps (after start-up, before the work). Only the first call in
    a process does it (a test process starts many apps: the first start's objects are enough).
    Returns how many objects are frozen."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()
    return gc.get_freeze_count()


@dataclass
class Pauses:
    """The collector's passes while a block ran: how many, and the seconds they stopped the
    process for, per generation (for the benchmarks, which print where the time goes)."""

    seconds: dict[int, float] = field(default_factory=lambda: dict.fromkeys(range(3), 0.0))
    passes: dict[int, int] = field(default_factory=lambda: dict.fromkeys(range(3), 0))

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def __str__(self) -> str:
        each = ", ".join(f"gen {g}: {self.passes[g]} in {self.seconds[g]:.2f} s" for g in range(3))
        return f"collector pauses {self.total:.2f} s ({each})"


@contextmanager
def counting_pauses() -> Iterator[Pauses]:
    """Count the collector's passes (``gc.callbacks``) for as long as the block runs."""
    pauses = Pauses()
    started = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            generation = info["generation"]
            pauses.seconds[generation] += time.perf_counter() - started[0]
            pauses.passes[generation] += 1

    gc.callbacks.append(callback)
    try:
        yield pauses
    finally:
        gc.callbacks.remove(callback)
