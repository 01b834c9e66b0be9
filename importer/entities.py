"""The synced entities of the Request database, declared once: each one's table and the columns
its data fills, with their SQL types, in the order of the record contract's data.

Applying ``changes`` files (``importer.apply``) and snapshots (``importer.snapshots``) both write
through this list, so a new synced field is one entry here (besides the model and a migration in
``migrations/request``, and the record type in ``exchange/format.py``). Every table also has the
bookkeeping columns in ``BOOKKEEPING``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: What every synced table keeps besides its data: the version guard's pair, the change that
#: wrote the row, and the changes file it came from (NULL: a snapshot).
BOOKKEEPING: dict[str, str] = {
    "id": "uuid",
    "generation": "bigint",
    "version": "int",
    "event_id": "uuid",
    "changed_at": "timestamptz",
    "deleted": "boolean",
    "last_changes_seq": "bigint",
}


@dataclass(frozen=True)
class SyncedEntity:
    name: str
    table: str
    #: The entity's own columns and their SQL types, in the record contract's order.
    columns: dict[str, str]

    def empty(self, column: str) -> object:
        """What a tombstone holds in ``column``: false for a flag, NULL otherwise."""
        return False if self.columns[column] == "boolean" else None


ENTITIES: dict[str, SyncedEntity] = {
    "user": SyncedEntity(
        "user",
        "synced_users",
        {
            "username": "text",
            "email": "text",
            "password_hash": "text",
            "role": "text",
            "is_active": "boolean",
            "profile_type_id": "uuid",
        },
    ),
    "setting": SyncedEntity(
        "setting", "synced_settings", {"key": "text", "value": "jsonb", "description": "text"}
    ),
    "profile_type": SyncedEntity(
        "profile_type",
        "synced_profile_types",
        {"name": "text", "description": "text", "permissions": "jsonb"},
    ),
}
