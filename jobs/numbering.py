"""Where file numbers come from: stream rows, generations, and the marks that reveal a restore.

Every stream's files are numbered here, under its ``export_streams`` row lock: the ``changes``
stream in one SQL statement that also takes the pending outbox rows (``ALLOCATE_CHANGES``, run by
``jobs.relay``), snapshots and results through ``lock_stream`` and ``number_file``. Each file is
numbered in its stream's *generation*.

**Why generations.** A Response database restored from a backup numbers files and versions
entities from where the backup left off, so its next files would take numbers the Request side
already holds, and its changes would lose to versions the restore undid. Instead, the database
begins a new generation: a larger number (the time it began, in milliseconds, or one more than
the last if that is larger, so it is newer than any generation of the timeline the restore
undid). Every file header carries its generation and its stream's last number before it
(``since_seq``); on the Request side a newer generation outranks everything older (versions,
ledger places, snapshot marks), its snapshots replace what the restore undid, and files of an
older generation arriving late are superseded. Numbers go on above the restored last one and the
stream's mark, so file names stay unique in the exports directory.

**How a restore is noticed.** After each newly numbered file, the stream's signed mark in the
exports directory records its generation and number (``exchange.marks``). Before a process numbers
its first file, and on every sweeper tick, the marks are read and then the database: a mark the
database is behind means the database was rolled back, and a new generation begins at once (with
snapshots of every entity type, ``on_begin``); until one can, numbering waits (``RolledBack``).
``netsync streams new-generation`` begins one on an operator's word: after restoring the exports
directory too, or before repointing the Response side at another copy of its database.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import ResponseSession, ResponseSessionMaker
from app.outbox.models import ExportFile, ExportStream
from exchange import marks
from exchange.marks import Mark
from exchange.signing import Signer
from netsync import metrics

log = logging.getLogger(__name__)

CURRENT_GENERATION = "SELECT coalesce(max(generation), 0) FROM export_generations"
#: A stream row created now numbers in the current generation, from 1.
ENSURE_STREAM = text(
    f"""
    INSERT INTO export_streams (stream, last_seq, generation, generation_base)
    VALUES (:stream, 0, ({CURRENT_GENERATION}), 0)
    ON CONFLICT (stream) DO NOTHING
    """  # noqa: S608 - a constant
)
#: An automatic new generation this soon after the last one is refused (and logged as an error):
#: two databases writing one exports directory would otherwise take turns beginning them.
MIN_AUTOMATIC_INTERVAL_S = 60.0


#: Allocation in one statement (autocommit, so one round trip): take the oldest pending rows no
#: other relay holds, bump the stream's sequence, record the file as unpublished, stamp the rows
#: with its number, and hand the rows back for writing. Concurrent relays take disjoint rows and
#: get distinct numbers (the stream row's lock orders them). A file is capped by count and by
#: bytes (each record's data plus its fixed fields, ``RECORD_OVERHEAD``): a backlog of large
#: settings makes several files, never one over what the importer accepts. The first row is
#: always taken, so a single large record still leaves.
RECORD_OVERHEAD = 320
ALLOCATE_CHANGES = text(
    f"""
    WITH candidates AS (
        SELECT id, octet_length(coalesce(data::text, '')) + {RECORD_OVERHEAD} AS bytes
        FROM outbox_events
        WHERE export_seq IS NULL
        ORDER BY id
        LIMIT :batch
        FOR UPDATE SKIP LOCKED
    ), pending AS (
        SELECT id FROM (
            SELECT id, sum(bytes) OVER (ORDER BY id) AS running,
                   row_number() OVER (ORDER BY id) AS n
            FROM candidates
        ) AS c
        WHERE running <= :max_bytes OR n = 1
    ), bumped AS (
        UPDATE export_streams SET last_seq = last_seq + 1
        WHERE stream = :stream AND EXISTS (SELECT 1 FROM pending)
        RETURNING last_seq, generation, generation_base
    ), file AS (
        INSERT INTO export_files (stream, seq, file_id, created_at, records, generation, since_seq)
        SELECT :stream, last_seq, :file_id, :created_at, (SELECT count(*) FROM pending),
               generation, generation_base
        FROM bumped
        RETURNING seq, generation, since_seq
    )
    UPDATE outbox_events AS o
    SET export_stream = :stream, export_seq = file.seq
    FROM file
    WHERE o.id IN (SELECT id FROM pending)
    RETURNING file.seq, file.generation, file.since_seq, o.id, o.event_id, o.entity,
              o.entity_id, o.version, o.op, o.data, o.correlation_id, o.created_at
    """  # noqa: S608 - the one interpolation is the constant above
)


async def lock_stream(session: ResponseSession, stream: str) -> ExportStream:
    """The stream's row, locked until the caller's transaction ends (created on first use)."""
    await session.execute(ENSURE_STREAM, {"stream": stream})
    row = await session.get(ExportStream, stream, with_for_update=True, populate_existing=True)
    assert row is not None
    return row


async def unpublished(session: ResponseSession, stream: str) -> ExportFile | None:
    """The oldest file of ``stream`` numbered but never published (a run that died)."""
    return await session.scalar(
        select(ExportFile)
        .where(ExportFile.stream == stream, ExportFile.published_at.is_(None))
        .order_by(ExportFile.seq)
        .limit(1)
    )


def number_file(session: ResponseSession, row: ExportStream, *, records: int) -> ExportFile:
    """Give the next number of the locked stream ``row`` to a new, unpublished file."""
    row.last_seq += 1
    file = ExportFile(
        stream=row.stream,
        seq=row.last_seq,
        file_id=uuid.uuid4(),
        created_at=datetime.now(UTC),
        records=records,
        generation=row.generation,
        since_seq=row.generation_base,
    )
    session.add(file)
    return file


@dataclass(frozen=True)
class Began:
    """A generation that began: its number, the one before, why."""

    generation: int
    previous: int
    reason: str
    detail: str


class RolledBack(RuntimeError):
    """The database is behind its stream marks and no new generation could begin yet (one
    began less than a minute ago): numbering waits, and the job that asked is retried."""


async def begin_generation(
    engine: AsyncEngine,
    *,
    reason: str,
    detail: str,
    expected: int | None = None,
    marks: dict[str, Mark] | None = None,
) -> Began | None:
    """Begin a new generation for every stream; ``None`` if ``expected`` is no longer the
    current one (another process began one first) or an automatic one would follow the last
    too closely.

    ``marks`` (what the exports directory knows) raise the floor: the generation is newer than
    any the marks name, even if this host's clock is behind, and each stream numbers on above
    its mark, so no file of the new generation takes the name of one the restore undid.
    """
    marks = marks or {}
    async with engine.begin() as conn:
        # ACCESS EXCLUSIVE: a stream row being created (which reads the current generation)
        # waits for this to commit, and this waits for one created before
        await conn.execute(text("LOCK TABLE export_generations IN ACCESS EXCLUSIVE MODE"))
        row = (
            await conn.execute(
                text(
                    "SELECT coalesce(max(generation), 0) AS current,"
                    " extract(epoch FROM clock_timestamp() - max(started_at)) AS age_s"
                    " FROM export_generations"
                )
            )
        ).one()
        current = int(row.current)
        if expected is not None and current != expected:
            return None
        recent = row.age_s is not None and float(row.age_s) < MIN_AUTOMATIC_INTERVAL_S
        if expected is not None and recent:
            log.error(
                "a restore was detected again within a minute of the last new generation:"
                " is a second Response database writing to this exports directory?",
                extra={"generation": current, "detail": detail},
            )
            return None
        floor = max([current, *(m.generation for m in marks.values())]) + 1
        generation = int(
            await conn.scalar(
                text(
                    "SELECT greatest(CAST(:floor AS bigint),"
                    " floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint)"
                ),
                {"floor": floor},
            )
        )
        await conn.execute(
            text(
                "INSERT INTO export_generations (generation, started_at, reason, detail)"
                " VALUES (:generation, clock_timestamp(), :reason, :detail)"
            ),
            {"generation": generation, "reason": reason, "detail": detail[:2000]},
        )
        await conn.execute(
            text("UPDATE export_streams SET generation = :generation, generation_base = last_seq"),
            {"generation": generation},
        )
        if marks:
            await conn.execute(
                text(
                    """
                    INSERT INTO export_streams (stream, last_seq, generation, generation_base)
                    VALUES (:stream, :seq, :generation, :seq)
                    ON CONFLICT (stream) DO UPDATE SET
                        last_seq = greatest(export_streams.last_seq, excluded.last_seq),
                        generation_base = greatest(export_streams.last_seq, excluded.last_seq)
                    """
                ),
                [
                    {"stream": stream, "seq": mark.seq, "generation": generation}
                    for stream, mark in sorted(marks.items())
                ],
            )
    began = Began(generation, current, reason, detail)
    metrics.EXPORT_GENERATIONS.labels(reason).inc()
    log.warning(
        "began a new export generation",
        extra={"generation": generation, "previous": current, "reason": reason, "detail": detail},
    )
    return began


def read_marks(exports_dir: Path, signer: Signer) -> dict[str, Mark]:
    """The marks of the exports directory that this side's key signed."""
    return marks.read_marks(exports_dir, signer.private_key.public_key())


def rollback_evidence(marks: dict[str, Mark], streams: dict[str, Mark]) -> list[str]:
    """What the marks know that the database does not: each line one stream's proof that the
    database was rolled back (``streams``: each row's generation and last number)."""
    found: list[str] = []
    for stream, mark in sorted(marks.items()):
        held = streams.get(stream)
        if held is None:
            found.append(f"{stream}: file {mark.seq} was numbered; the database has no such stream")
        elif mark.generation > held.generation or (
            mark.generation == held.generation and mark.seq > held.seq
        ):
            found.append(
                f"{stream}: file {mark.seq} (generation {mark.generation}) was numbered;"
                f" the database's last is {held.seq} (generation {held.generation})"
            )
    return found


class GenerationWatch:
    """Keeps a process from numbering files on a rolled-back database (one per process)."""

    def __init__(
        self,
        sessions: ResponseSessionMaker,
        exports_dir: Path,
        signer: Signer,
        *,
        on_begin: Callable[[Began], Awaitable[None]] | None = None,
    ) -> None:
        self.sessions = sessions
        self.exports_dir = exports_dir
        self.signer = signer
        self.on_begin = on_begin
        self._checked = False
        self._lock = asyncio.Lock()

    @property
    def _engine(self) -> AsyncEngine:
        engine: AsyncEngine = self.sessions.kw["bind"]
        return engine

    async def ensure(self) -> None:
        """Check once per process, before its first file is numbered."""
        if self._checked:
            return
        async with self._lock:
            if not self._checked:
                await self.check()
                self._checked = True

    async def check(self) -> Began | None:
        """Compare the marks with the database (marks first: a file numbered meanwhile is in
        the database by the time it is read) and begin a generation if the database is behind.
        Raises ``RolledBack`` when it is behind and none could begin yet."""
        evidence: list[str] = []
        for _ in range(2):  # a second look when another process began one meantime
            found = await asyncio.to_thread(read_marks, self.exports_dir, self.signer)
            if not found:
                return None
            async with self.sessions() as session:
                current = int(await session.scalar(text(CURRENT_GENERATION)) or 0)
                rows = (await session.execute(select(ExportStream))).scalars().all()
                streams = {r.stream: Mark(r.generation, r.last_seq) for r in rows}
            evidence = rollback_evidence(found, streams)
            if not evidence:
                return None
            began = await begin_generation(
                self._engine,
                reason="restored",
                detail="; ".join(evidence),
                expected=current,
                marks=found,
            )
            if began is not None:
                if self.on_begin is not None:
                    await self.on_begin(began)
                return began
        raise RolledBack("; ".join(evidence))

    def mark(self, stream: str, generation: int, seq: int) -> None:
        """Record a newly numbered, published file (called in the publishing thread). A mark
        that cannot be written is logged: it only weakens the next check. A higher mark found
        in its place makes the next numbering look again: this database may be behind it."""
        try:
            held = marks.write_mark(self.exports_dir, self.signer, stream, Mark(generation, seq))
        except OSError as exc:
            log.warning(
                "could not write a stream mark", extra={"stream": stream, "error": repr(exc)}
            )
            return
        if held is not None and held.generation >= generation:
            self._checked = False
