"""Alembic for two databases: one migration tree each, one async ``env.py`` body for both.

``python -m ops.migrate`` (or ``./run migrate``) upgrades both databases to head; the
Response tree lives in ``migrations/response``, the Request tree in ``migrations/request``.
``alembic -n response …`` / ``alembic -n request …`` work too (see ``alembic.ini``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from netsync.config import to_asyncpg_url

Tree = Literal["response", "request"]
ROOT = Path(__file__).resolve().parent.parent


def alembic_config(tree: Tree, url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"), ini_section=tree)
    cfg.set_main_option("script_location", str(ROOT / "migrations" / tree))
    cfg.set_main_option("sqlalchemy.url", to_asyncpg_url(url).replace("%", "%%"))
    return cfg


def upgrade(tree: Tree, url: str, revision: str = "heads") -> None:
    command.upgrade(alembic_config(tree, url), revision)


def run_env(metadata: MetaData, default_url: Callable[[], str]) -> None:
    """The body of both ``env.py`` files: run migrations online over asyncpg."""
    url = context.config.get_main_option("sqlalchemy.url") or to_asyncpg_url(default_url())

    def _migrate(connection: Connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            compare_type=True,
            transaction_per_migration=True,
        )
        with context.begin_transaction():
            context.run_migrations()

    async def _run() -> None:
        engine = create_async_engine(url, poolclass=pool.NullPool, hide_parameters=True)
        async with engine.connect() as connection:
            await connection.run_sync(_migrate)
        await engine.dispose()

    if context.is_offline_mode():
        context.configure(url=url, target_metadata=metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
    else:
        asyncio.run(_run())


def main(argv: list[str] | None = None) -> None:
    """``python -m ops.migrate [response|request]``: both databases unless one is named
    (each network's site migrates its own database when they are deployed apart)."""
    import sys

    from app.config import ResponseSettings
    from importer.config import RequestSettings

    trees = (argv if argv is not None else sys.argv[1:]) or ["response", "request"]
    for tree in trees:
        if tree == "response":
            upgrade("response", ResponseSettings().database_url)
        elif tree == "request":
            upgrade("request", RequestSettings().database_url)
        else:
            raise SystemExit(f"unknown database {tree!r}: choose response or request")


if __name__ == "__main__":
    main()
