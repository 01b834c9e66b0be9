"""``netsync streams``: the export streams' numbering and generations on the Response side.

``show`` lists each stream's last file number and generation, the generations begun here, and
whether the marks in the exports directory say the database was rolled back. ``new-generation``
begins one by hand (``jobs.numbering``): after restoring the exports directory together with the
database (the marks then cannot tell), or when the Request side reports ledger conflicts. It is
always safe: the next files outrank everything earlier on the Request side, and the snapshots it
enqueues bring the Request side to exactly what this database holds.
"""

from __future__ import annotations

from typing import Any

import typer
from sqlalchemy import select

from app.config import ResponseSettings
from app.db import make_sessionmaker
from app.outbox.models import ExportGeneration, ExportStream
from app.queue.client import JobQueue, QueueUnavailable, redis_pool
from exchange.format import SNAPSHOT_STREAMS
from exchange.marks import Mark
from jobs.numbering import begin_generation, read_marks, rollback_evidence
from jobs.worker import export_keys
from netsync.db import make_engine
from ops.cli.output import JsonOption, err, out, print_json, print_table, run

app = typer.Typer(help="Export streams: numbering and generations.", no_args_is_help=True)


async def _show() -> dict[str, Any]:
    settings = ResponseSettings()
    signer, _ = export_keys(settings)
    marks = read_marks(settings.exports_path, signer)
    engine = make_engine(settings.database_url, pool_size=1, application_name="netsync-cli")
    try:
        async with make_sessionmaker(engine)() as session:
            streams = (await session.scalars(select(ExportStream))).all()
            began = (
                await session.scalars(
                    select(ExportGeneration).order_by(ExportGeneration.generation.desc())
                )
            ).all()
    finally:
        await engine.dispose()
    held = {s.stream: Mark(s.generation, s.last_seq) for s in streams}
    return {
        "streams": [
            {
                "stream": s.stream,
                "generation": s.generation,
                "last_seq": s.last_seq,
                "generation_base": s.generation_base,
                "mark": marks[s.stream].seq if s.stream in marks else None,
            }
            for s in sorted(streams, key=lambda s: s.stream)
        ],
        "generations": [
            {
                "generation": g.generation,
                "started_at": g.started_at.isoformat(),
                "reason": g.reason,
                "detail": g.detail,
            }
            for g in began
        ],
        "rolled_back": rollback_evidence(marks, held),
    }


@app.command("show")
def show(as_json: bool = JsonOption) -> None:
    """Each stream's last number and generation, and the generations begun here."""
    done = run(_show())
    if as_json:
        print_json(done)
        return
    print_table(
        "export streams",
        ["stream", "generation", "last seq", "since seq", "mark"],
        [
            [s["stream"], s["generation"], s["last_seq"], s["generation_base"], s["mark"] or "-"]
            for s in done["streams"]
        ],
    )
    for g in done["generations"]:
        out.print(f"generation {g['generation']} began {g['started_at']} ({g['reason']})")
    for line in done["rolled_back"]:
        err.print(f"[red]the database is behind its marks:[/red] {line}")


async def _new_generation(detail: str) -> dict[str, Any]:
    settings = ResponseSettings()
    signer, _ = export_keys(settings)
    # what the exports directory knows still raises the floor: numbers above the marks
    marks = read_marks(settings.exports_path, signer)
    engine = make_engine(settings.database_url, pool_size=1, application_name="netsync-cli")
    try:
        began = await begin_generation(engine, reason="operator", detail=detail, marks=marks)
    finally:
        await engine.dispose()
    assert began is not None  # no expectation given: it always begins
    queue = JobQueue(
        redis_pool(settings.redis_dsn, queue_name=settings.bulk_queue),
        sync_queue=settings.sync_queue,
        bulk_queue=settings.bulk_queue,
    )
    snapshots: list[str] = []
    try:
        for stream in SNAPSHOT_STREAMS.values():
            try:
                snapshots.append(await queue.enqueue_export(stream.removeprefix("snapshot_")))
            except QueueUnavailable:
                break
    finally:
        await queue.close()
    return {"generation": began.generation, "previous": began.previous, "snapshots": snapshots}


@app.command("new-generation")
def new_generation(
    reason: str = typer.Option(
        "operator request", "--reason", help="Why (kept with the generation)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Begin a new generation now and enqueue snapshots of every entity type."""
    done = run(_new_generation(reason[:200]))
    if as_json:
        print_json(done)
        return
    out.print(str(done["generation"]))
    err.print(f"generation {done['generation']} began (was {done['previous']})")
    if len(done["snapshots"]) < len(SNAPSHOT_STREAMS):
        err.print(
            "[yellow]Redis did not take the snapshot jobs[/yellow]: their schedule runs them, or"
            " run netsync export run users (settings, profile_types)"
        )
