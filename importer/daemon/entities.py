"""What every synced table of the Request database keeps besides its entity's data
(``exchange.entities``, where the entities and their columns are declared once).

Applying ``changes`` files (``importer.daemon.apply``) and snapshots (``importer.daemon.snapshots``)
both write these columns; the ORM models (``importer.models``) and migrations declare them
explicitly, and ``tests/exchange/test_entities.py`` checks that they agree.
"""

from __future__ import annotations

#: The version guard's pair, the change that wrote the row, and the changes file it came from
#: (NULL: a snapshot).
BOOKKEEPING: dict[str, str] = {
    "id": "uuid",
    "generation": "bigint",
    "version": "int",
    "event_id": "uuid",
    "changed_at": "timestamptz",
    "deleted": "boolean",
    "last_changes_seq": "bigint",
}
