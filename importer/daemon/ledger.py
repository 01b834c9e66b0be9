"""The import ledger: one row per applied file, claimed in the transaction that applies it.

Every kind of file (changes, snapshots, results) is claimed here and only here, after its
signature held: the ledger's primary key ``(stream, seq)`` makes a second application
impossible, even by a second importer, which waits on the row and then finds it taken.

A file that finds its place taken is a duplicate only if it is the same file: the same
``file_id``, which the Response side allocates once per file (a ``changes`` file's rows are
fixed at allocation; a snapshot republished under its number after a crash may be read afresh:
that second reading is taken as a duplicate, and the next snapshot carries what it held). The
sweeper republishing an unpublished file, a resend, a second importer: each is the same file,
in new ciphertext (sealing is randomised, so its digest differs and is not compared). Two
*different* genuine files claiming one place (a ``file_id`` reused under another sequence
number, or a restored Response database that did not notice it was restored and reused numbers)
are a ledger conflict: never silently archived, always quarantined with their own reason and
alerted on.

Places are ``(stream, generation, seq)``. A restored Response database that noticed begins a new,
larger generation (``jobs.numbering``): the claim that first meets it records it in
``sync_generations``, and from then on a ``changes`` or snapshot file of an older generation is
*superseded*: the restore undid what it holds, and the new generation's snapshots carry what the
restored database has instead. Results files are never superseded: the jobs they record ran.

The ledger does not grow without bound (``prune``): per stream it keeps its newest rows (a file
seen again among them is still told from a conflict by its id) and, for ``changes``, every row
above the lowest open gap; older rows go, and the stream's *pruned place* remembers how far, with
the newest export time among them. A ``changes`` or snapshot file at or below that place and
exported no later was applied or superseded long ago: a duplicate (a resend keeps its export
time). One exported later had its number handed out again (a restored Response database that did
not notice): a ledger conflict, as if its row were still there. Results files are applied again
instead (by job id, changing nothing).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import case, delete, func, or_, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert

from exchange.format import CHANGES_STREAM, ExportHeader, FileName
from importer.daemon.standing import Pruned, Standing, standing
from importer.db import RequestSession, RequestSessionMaker
from importer.models import ImportLedger, SyncGap, SyncGeneration, SyncStream, SyncStreamStats

log = logging.getLogger(__name__)


class Claimable(Protocol):
    """A verified file, whatever its kind."""

    @property
    def name(self) -> FileName: ...
    @property
    def header(self) -> ExportHeader: ...
    @property
    def sha256(self) -> str: ...
    @property
    def key_id(self) -> str: ...


@dataclass
class Claim:
    """What a claim found, by sequence number (the files are of one stream)."""

    #: Claimed now: theirs to apply.
    claimed: set[int] = field(default_factory=set)
    #: Another file holds their place (detail text per seq); the rest not claimed are duplicates.
    conflicts: dict[int, str] = field(default_factory=dict)
    #: Of an older generation than the newest seen: not claimed, nothing to apply.
    superseded: set[int] = field(default_factory=set)
    #: A newer generation of the Response database, first seen in this claim.
    began: int | None = None
    #: The newest generation seen, this claim's included.
    generation: int = 0


async def current_generation(session: RequestSession) -> int:
    """The newest generation of the Response database seen here (0 before any restore)."""
    return int(await session.scalar(select(func.max(SyncGeneration.generation))) or 0)


async def _enter(session: RequestSession, files: Sequence[Claimable], result: Claim) -> None:
    newest = max(files, key=lambda f: f.header.generation)
    if newest.header.generation <= result.generation:
        return
    inserted = await session.scalar(
        insert(SyncGeneration)
        .values(
            generation=newest.header.generation,
            first_seen_at=datetime.now(UTC),
            first_file=newest.name.name,
        )
        .on_conflict_do_nothing()
        .returning(SyncGeneration.generation)
    )
    result.generation = newest.header.generation
    if inserted is not None:
        result.began = result.generation


def _below_pruned(file: Claimable, pruned: Pruned) -> str | None:
    """``None`` for a file above the pruned place. At or below it, a file exported no later than
    the newest pruned one is a duplicate (a resend keeps its export time): ``""``; a newer one
    was numbered again, by a restored Response database that did not notice: a conflict."""
    header = file.header
    if header.place > pruned.place:
        return None
    if pruned.exported_at is None or header.created_at <= pruned.exported_at:
        return ""
    return (
        f"{header.stream}/{header.seq} is at or below the pruned ledger"
        f" ({pruned.place[1]}, generation {pruned.place[0]}) but was exported after every pruned"
        " file: its number was handed out again"
    )


async def claim(
    session: RequestSession, files: Sequence[Claimable], read: Standing | None = None
) -> Claim:
    """Insert the files' ledger rows; the files are of one stream. ``read``: its ``Standing``
    if the caller read it already (after the stream's lock), else it is read here."""
    result = Claim()
    if not files:
        return result
    stream = files[0].header.stream
    if read is None:
        read = await standing(session, stream)
    result.generation = read.generation
    await _enter(session, files, result)
    candidates = list(files)
    if files[0].header.kind != "results":
        result.superseded = {f.header.seq for f in files if f.header.generation < result.generation}
        candidates = []
        for f in files:
            if f.header.seq in result.superseded:
                continue
            verdict = _below_pruned(f, read.pruned)
            if verdict is None:
                candidates.append(f)
            elif verdict:
                result.conflicts[f.header.seq] = verdict
    if not candidates:
        return result
    rows = await session.execute(_CLAIM, _claim_params(stream, candidates))
    result.claimed = set(rows.scalars().all())
    others = [f for f in candidates if f.header.seq not in result.claimed]
    result.conflicts.update(await _conflicts(session, others))
    return result


#: The claim in one statement: the ledger rows inserted (a place or a file id already held
#: inserts nothing), and the stream's counters kept in the same statement, from what was
#: inserted (the sync status reads them, never the ledger: constant time however long it grows).
_CLAIM = text(
    f"""
    WITH claimed AS (
        INSERT INTO {ImportLedger.__tablename__} AS l (stream, generation, seq, file_id,
            file_name, sha256, key_id, records, applied_changes, exported_at, applied_at)
        SELECT :stream, f.generation, f.seq, f.file_id, f.file_name, f.sha256, f.key_id,
               f.records, 0, f.exported_at, :now
        FROM unnest(CAST(:generations AS bigint[]), CAST(:seqs AS bigint[]),
                    CAST(:file_ids AS uuid[]), CAST(:file_names AS text[]),
                    CAST(:sha256s AS text[]), CAST(:key_ids AS text[]),
                    CAST(:records AS integer[]), CAST(:exported AS timestamptz[]))
             AS f(generation, seq, file_id, file_name, sha256, key_id, records, exported_at)
        ON CONFLICT DO NOTHING
        RETURNING l.generation, l.seq, l.exported_at
    ), newest AS (
        SELECT generation, seq, exported_at FROM claimed
        ORDER BY generation DESC, seq DESC LIMIT 1
    ), counted AS (
        INSERT INTO {SyncStreamStats.__tablename__} AS s (stream, files_applied, generation,
            last_seq, last_exported_at, last_applied_at)
        SELECT :stream, (SELECT count(*) FROM claimed), generation, seq, exported_at, :now
        FROM newest
        ON CONFLICT (stream) DO UPDATE SET
            files_applied = s.files_applied + excluded.files_applied,
            last_applied_at = excluded.last_applied_at,
            last_exported_at = CASE WHEN (excluded.generation, excluded.last_seq)
                > (s.generation, s.last_seq) THEN excluded.last_exported_at
                ELSE s.last_exported_at END,
            generation = CASE WHEN (excluded.generation, excluded.last_seq)
                > (s.generation, s.last_seq) THEN excluded.generation ELSE s.generation END,
            last_seq = CASE WHEN (excluded.generation, excluded.last_seq)
                > (s.generation, s.last_seq) THEN excluded.last_seq ELSE s.last_seq END
    )
    SELECT seq FROM claimed
    """  # noqa: S608 - table names from the models, values are parameters
)


def _claim_params(stream: str, files: Sequence[Claimable]) -> dict[str, Any]:
    headers = [f.header for f in files]
    return {
        "stream": stream,
        "now": datetime.now(UTC),
        "generations": [h.generation for h in headers],
        "seqs": [h.seq for h in headers],
        "file_ids": [h.file_id for h in headers],
        "file_names": [f.name.name for f in files],
        "sha256s": [f.sha256 for f in files],
        "key_ids": [f.key_id for f in files],
        "records": [h.records for h in headers],
        "exported": [h.created_at for h in headers],
    }


async def _conflicts(session: RequestSession, files: Sequence[Claimable]) -> dict[int, str]:
    if not files:
        return {}
    ledger = ImportLedger
    places = [(f.header.stream, f.header.generation, f.header.seq) for f in files]
    ids = [f.header.file_id for f in files]
    rows = (
        await session.execute(
            select(ledger.stream, ledger.generation, ledger.seq, ledger.file_id).where(
                or_(
                    tuple_(ledger.stream, ledger.generation, ledger.seq).in_(places),
                    ledger.file_id.in_(ids),
                )
            )
        )
    ).all()
    by_place = {(r.stream, r.generation, r.seq): r for r in rows}
    by_id: dict[uuid.UUID, Any] = {r.file_id: r for r in rows}
    conflicts: dict[int, str] = {}
    for file in files:
        header = file.header
        held = by_place.get((header.stream, header.generation, header.seq))
        if held is None:
            other = by_id.get(header.file_id)
            where = f"{other.stream}/{other.seq}" if other is not None else "another place"
            conflicts[header.seq] = f"file id {header.file_id} is already held by {where}"
        elif held.file_id != header.file_id:
            conflicts[header.seq] = (
                f"{header.stream}/{header.seq} is held by file id {held.file_id},"
                f" this file is {header.file_id}"
            )
    return conflicts


#: Per stream, at least this many of the newest ledger rows stay (``NETSYNC_LEDGER_KEEP_FILES``).
KEEP_FILES = 100_000
_PRUNE_BATCH = 5_000


async def _prunable(session: RequestSession, stream: str, keep: int) -> tuple[int, int] | None:
    """The highest place of ``stream`` whose row may go, or ``None``."""
    ledger = ImportLedger
    row = (
        await session.execute(
            select(ledger.generation, ledger.seq)
            .where(ledger.stream == stream)
            .order_by(ledger.generation.desc(), ledger.seq.desc())
            .offset(keep)
            .limit(1)
        )
    ).first()
    if row is None:
        return None
    bound = (int(row.generation), int(row.seq))
    if stream == CHANGES_STREAM:  # every row above the lowest gap stays: its files may come
        held = (
            await session.execute(
                select(SyncStream.generation, SyncStream.high_seq).where(
                    SyncStream.stream == stream
                )
            )
        ).first()
        lowest_gap = (
            await session.scalar(
                select(func.min(SyncGap.first_seq)).where(
                    SyncGap.stream == stream, SyncGap.generation == held.generation
                )
            )
            if held is not None
            else None
        )
        if held is not None and lowest_gap is not None:
            bound = min(bound, (int(held.generation), int(lowest_gap) - 1))
    return bound


async def prune(
    sessions: RequestSessionMaker,
    *,
    keep: int = KEEP_FILES,
    beat: Callable[[], None] | None = None,
) -> int:
    """Delete the ledger rows exactly-once no longer needs, a batch per transaction (claims go
    on meanwhile; ``beat`` is called after each); return how many went. Each stream's bound is
    worked out once per pass: it only ever grows, so deleting up to an older one stays safe."""
    async with sessions() as session:
        streams = (await session.scalars(select(SyncStreamStats.stream))).all()
    removed = 0
    for stream in streams:
        async with sessions() as session:
            bound = await _prunable(session, stream, keep)
        while bound is not None:
            async with sessions() as session, session.begin():
                gone = await _prune_batch(session, stream, bound)
            removed += gone
            if beat is not None:
                beat()
            if gone < _PRUNE_BATCH:
                break
    return removed


async def _prune_batch(session: RequestSession, stream: str, bound: tuple[int, int]) -> int:
    ledger, stats = ImportLedger, SyncStreamStats
    if stream == CHANGES_STREAM:  # a claim of this stream waits, so it sees the new place
        await session.execute(
            select(SyncStream.stream).where(SyncStream.stream == stream).with_for_update()
        )
    batch = (
        select(ledger.generation, ledger.seq)
        .where(ledger.stream == stream, tuple_(ledger.generation, ledger.seq) <= tuple_(*bound))
        .order_by(ledger.generation, ledger.seq)
        .limit(_PRUNE_BATCH)
    )
    gone = (
        await session.execute(
            delete(ledger)
            .where(ledger.stream == stream, tuple_(ledger.generation, ledger.seq).in_(batch))
            .returning(ledger.generation, ledger.seq, ledger.exported_at)
        )
    ).all()
    if not gone:
        return 0
    last = max((int(g), int(q)) for g, q, _ in gone)
    newest = max(e for _, _, e in gone)
    newer = tuple_(*last) > tuple_(stats.pruned_generation, stats.pruned_seq)
    await session.execute(
        update(stats)
        .where(stats.stream == stream)
        .values(
            pruned_generation=case((newer, last[0]), else_=stats.pruned_generation),
            pruned_seq=case((newer, last[1]), else_=stats.pruned_seq),
            pruned_exported_at=func.greatest(stats.pruned_exported_at, newest),
        )
    )
    return len(gone)
