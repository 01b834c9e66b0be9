"""The migrations build exactly the schema the models describe, on both networks.

Alembic's autogenerate comparison runs against databases migrated to ``heads``: a model changed
without a migration (or a migration that drifts from its model) fails here, before it reaches a
deployment that would find out at run time.
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, MetaData

from app.db import ResponseBase
from importer.db import RequestBase
from netsync.db import make_engine
from tests.support import Services

MODELS = [
    "app.outbox.models",
    "app.profile_types.models",
    "app.scheduling.models",
    "app.settings.models",
    "app.users.models",
    "importer.models",
]


def _diff(connection: Connection, metadata: MetaData) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


@pytest.mark.parametrize("side", ["response", "request"])
async def test_migrated_schema_matches_the_models(services: Services, side: str) -> None:
    for module in MODELS:
        importlib.import_module(module)
    metadata = ResponseBase.metadata if side == "response" else RequestBase.metadata
    url = services.response_url if side == "response" else services.request_url
    engine = make_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(_diff, metadata)
    finally:
        await engine.dispose()
    assert diff == []
