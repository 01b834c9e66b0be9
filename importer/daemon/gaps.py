"""Sequence gaps in a ``changes`` stream: recorded while applying, closed late or by snapshots.

Files are applied as they come, even past a missing sequence number: every record carries its
entity's whole state and version, so nothing waits and nothing older wins. What a gap means is
"some change may not have arrived yet", which an operator must see: each run of missing numbers
is a ``sync_gaps`` row, shown by ``/api/v1/sync/status`` and logged until the missing files arrive
or snapshots taken after them heal it (``heal_through``): snapshots of every entity type, since a
missing file may hold a change of any of them.

Every function here runs inside the caller's transaction after ``lock_stream``: the stream's
``sync_streams`` row is the lock that serialises all bookkeeping (and all applying) per stream.

Numbers are those of the stream's generation: its first file of a newer generation (a restored
Response database, ``jobs.numbering``) counts on from the file's ``since_seq``. Each gap keeps
the generation it opened in. The older generation's gaps stay open (their files will be
superseded if they come; what they held may still be in the restored database) until snapshots
of every entity type in a newer generation cover them. Snapshot marks are ``(generation,
changes_seq)`` pairs, compared as such: a newer generation's mark covers every file of an older
one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import case, delete, func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert

from exchange.format import CHANGES_STREAM, SNAPSHOT_STREAMS
from importer.db import RequestSession
from importer.models import SnapshotMark, SyncGap, SyncStream

log = logging.getLogger(__name__)


Place = tuple[int, int]
"""A place in a stream across generations: ``(generation, seq)``, newer sorts higher."""


@dataclass(frozen=True)
class Locked:
    """A locked stream row: its generation and its high-water sequence number in it."""

    generation: int
    high: int


async def lock_stream(session: RequestSession, stream: str) -> Locked:
    """Lock the stream's row (creating it on first use); return where it stands. The row exists
    from the stream's first file on, so the lock is one statement on every later batch."""
    locking = (
        select(SyncStream.generation, SyncStream.high_seq)
        .where(SyncStream.stream == stream)
        .with_for_update()
    )
    row = (await session.execute(locking)).one_or_none()
    if row is None:
        await session.execute(
            insert(SyncStream)
            .values(stream=stream, high_seq=0, healed_through=0, generation=0)
            .on_conflict_do_nothing()
        )
        row = (await session.execute(locking)).one()
    return Locked(int(row.generation), int(row.high_seq))


async def enter_generation(
    session: RequestSession, stream: str, generation: int, since_seq: int
) -> Locked:
    """The locked stream's first file of a newer ``generation``: numbering starts over after
    ``since_seq`` (the older generation's gaps stay until snapshots cover them)."""
    await session.execute(
        update(SyncStream)
        .where(SyncStream.stream == stream)
        .values(generation=generation, high_seq=since_seq, healed_through=since_seq)
    )
    return Locked(generation, since_seq)


def _split(first: int, last: int, filled: Iterable[int]) -> list[tuple[int, int]]:
    """What remains of the gap ``first..last`` once ``filled`` numbers (inside it) arrived."""
    ranges: list[tuple[int, int]] = []
    start = first
    for seq in sorted(filled):
        if seq > start:
            ranges.append((start, seq - 1))
        start = seq + 1
    if start <= last:
        ranges.append((start, last))
    return ranges


async def record_applied(
    session: RequestSession, stream: str, locked: Locked, seqs: Iterable[int]
) -> int:
    """Account for newly applied files of ``stream`` in its generation (``locked``, as returned
    by ``lock_stream`` or ``enter_generation``): open the gaps they leave, fill the gaps they
    arrived in. Returns the stream's new high-water sequence number, which the caller records
    (``raise_high_sql``) in the statement that ends its transaction's work."""
    now, high, generation = datetime.now(UTC), locked.high, locked.generation
    opened: list[tuple[int, int]] = []
    filled: set[int] = set()
    for seq in sorted(seqs):
        if seq > high + 1:
            opened.append((high + 1, seq - 1))
        if seq > high:
            high = seq
        else:
            filled.add(seq)
    if filled:
        await _fill(session, stream, generation, filled)
    for first, last in opened:
        _open(session, stream, generation, (first, last), now)
        log.warning(
            "sync gap: files missing",
            extra={"stream": stream, "first_seq": first, "last_seq": last},
        )
    if opened or filled:
        await session.flush()
    return high


def raise_high_sql() -> str:
    """A statement (for a data-modifying ``WITH``) that records ``:high`` as the high-water
    sequence number of ``:stream`` if it is higher."""
    return (
        f"UPDATE {SyncStream.__tablename__} SET high_seq = :high"  # noqa: S608 - the model's name
        " WHERE stream = :stream AND high_seq < :high"
    )


def _open(
    session: RequestSession, stream: str, generation: int, run: tuple[int, int], seen: datetime
) -> None:
    first, last = run
    session.add(
        SyncGap(
            stream=stream, generation=generation, first_seq=first, last_seq=last, first_seen_at=seen
        )
    )


async def _fill(session: RequestSession, stream: str, generation: int, filled: set[int]) -> None:
    # Gaps are few and usually short: a plain range walk is cheaper than clever SQL.
    gaps = (
        await session.scalars(
            select(SyncGap).where(
                SyncGap.stream == stream,
                SyncGap.generation == generation,
                SyncGap.first_seq <= max(filled),
                SyncGap.last_seq >= min(filled),
            )
        )
    ).all()
    for gap in gaps:
        inside = {s for s in filled if gap.first_seq <= s <= gap.last_seq}
        if not inside:
            continue
        first_seen_at, original = gap.first_seen_at, (gap.first_seq, gap.last_seq)
        await session.delete(gap)
        await session.flush()
        rest = _split(gap.first_seq, gap.last_seq, inside)
        for missing in rest:
            _open(session, stream, generation, missing, first_seen_at)
        if not rest:
            log.info(
                "sync gap filled by late files",
                extra={"stream": stream, "first_seq": original[0], "last_seq": original[1]},
            )


async def snapshot_marks(session: RequestSession) -> dict[str, Place]:
    """Per entity type, the highest ``(generation, changes_seq)`` mark of its snapshots here."""
    rows = (
        await session.execute(
            select(SnapshotMark.entity, SnapshotMark.generation, SnapshotMark.changes_seq)
        )
    ).all()
    return {entity: (int(generation), int(seq)) for entity, generation, seq in rows}


async def heal_through(
    session: RequestSession,
    entity: str,
    changes_seq: int,
    *,
    generation: int = 0,
    stream: str = CHANGES_STREAM,
) -> int:
    """A snapshot of ``entity`` covering the ``changes`` files up to ``changes_seq`` of
    ``generation`` (and every file of an older one) was applied.

    Its mark is recorded; what the marks of all entity types cover together (the lowest of
    them: a missing file may hold a change of any type) is then closed. Called by the snapshot
    apply in its own transaction. Returns how many gaps were closed entirely (a gap reaching
    past the covered mark is shortened instead).
    """
    locked = await lock_stream(session, stream)
    stmt = insert(SnapshotMark).values(
        entity=entity,
        generation=generation,
        changes_seq=changes_seq,
        applied_at=func.clock_timestamp(),
    )
    new, old = stmt.excluded, SnapshotMark.__table__.c
    newer = tuple_(new.generation, new.changes_seq) > tuple_(old.generation, old.changes_seq)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[SnapshotMark.entity],
            set_={
                "generation": case((newer, new.generation), else_=old.generation),
                "changes_seq": case((newer, new.changes_seq), else_=old.changes_seq),
                "applied_at": new.applied_at,
            },
        )
    )
    marks = await snapshot_marks(session)
    covered_generation, covered = min(marks.get(e, (0, 0)) for e in SNAPSHOT_STREAMS)
    # gaps of an older generation than every mark are covered whole
    older = await _close_older(session, stream, covered_generation)
    if covered_generation != locked.generation or covered <= await _healed(session, stream):
        return older
    high = locked.high
    current = (SyncGap.stream == stream) & (SyncGap.generation == covered_generation)
    closed = (
        await session.execute(
            delete(SyncGap)
            .where(current, SyncGap.last_seq <= covered)
            .returning(SyncGap.first_seq, SyncGap.last_seq)
        )
    ).all()
    await session.execute(
        update(SyncGap).where(current, SyncGap.first_seq <= covered).values(first_seq=covered + 1)
    )
    await session.execute(
        update(SyncStream)
        .where(SyncStream.stream == stream)
        .values(high_seq=max(high, covered), healed_through=covered)
    )
    for first, last in closed:
        log.info(
            "sync gap healed by snapshots",
            extra={"stream": stream, "first_seq": first, "last_seq": last, "through": covered},
        )
    return older + len(closed)


async def _close_older(session: RequestSession, stream: str, generation: int) -> int:
    closed = (
        await session.execute(
            delete(SyncGap)
            .where(SyncGap.stream == stream, SyncGap.generation < generation)
            .returning(SyncGap.first_seq, SyncGap.last_seq)
        )
    ).all()
    for first, last in closed:
        log.info(
            "sync gap healed by snapshots of a newer generation",
            extra={
                "stream": stream,
                "first_seq": first,
                "last_seq": last,
                "generation": generation,
            },
        )
    return len(closed)


async def _healed(session: RequestSession, stream: str) -> int:
    value = await session.scalar(
        select(SyncStream.healed_through).where(SyncStream.stream == stream)
    )
    return int(value or 0)
