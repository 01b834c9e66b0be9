"""What claiming and applying a stream's files depend on besides the ledger, read in one
statement (``importer.daemon.ledger`` claims with it, ``importer.daemon.apply`` filters records
by its snapshot marks)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import orjson
from sqlalchemy import text

from importer.daemon.gaps import Place
from importer.db import RequestSession
from importer.models import SnapshotMark, SyncGeneration, SyncStreamStats


@dataclass(frozen=True)
class Pruned:
    """How far a stream's ledger was pruned, and the newest export time among what went."""

    place: tuple[int, int] = (0, 0)
    exported_at: datetime | None = None


@dataclass(frozen=True)
class Standing:
    """What claiming and applying a stream's files depend on besides the ledger, read in one
    statement: the newest generation seen, how far the stream's ledger was pruned, and the
    snapshot marks per entity type. ``apply_changes`` reads it right after the ``changes``
    stream's lock (``gaps.lock_stream``), under which that stream's pruning and every
    snapshot mark change; a snapshot or results file's claim reads it as its first statement.
    Either way each value is what the separate statements it replaces read (each statement
    of a READ COMMITTED transaction sees what committed before it began), in a third of the
    round trips. Not in the lock's own statement: one that waits for the lock keeps the
    snapshot it began with, and would miss what the holder committed."""

    generation: int
    pruned: Pruned
    marks: dict[str, Place]


_STANDING = text(
    f"""
    SELECT (SELECT max(generation) FROM {SyncGeneration.__tablename__}) AS generation,
           p.pruned_generation, p.pruned_seq, p.pruned_exported_at,
           (SELECT json_agg(json_build_array(entity, generation, changes_seq))::text
              FROM {SnapshotMark.__tablename__}) AS marks
    FROM (SELECT 1) AS one
    LEFT JOIN {SyncStreamStats.__tablename__} AS p ON p.stream = :stream
    """  # noqa: S608 - table names from the models, the stream a parameter
)


async def standing(session: RequestSession, stream: str) -> Standing:
    """Read the ``Standing`` of ``stream`` (in the caller's transaction, after its lock)."""
    row = (await session.execute(_STANDING, {"stream": stream})).one()
    pruned = (
        Pruned((int(row.pruned_generation), int(row.pruned_seq)), row.pruned_exported_at)
        if row.pruned_seq is not None
        else Pruned()
    )
    marks = {e: (int(g), int(q)) for e, g, q in orjson.loads(row.marks or "[]")}
    return Standing(int(row.generation or 0), pruned, marks)
