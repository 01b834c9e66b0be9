"""What the settings API accepts and returns.

Keys are dotted lowercase names (``app.title``, ``mail.smtp_port``): the exchange contract's
``SETTING_KEY_PATTERN``, so a key accepted here is accepted by the Request Network too.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from app.fields import StoredJson, Text
from exchange.entities import SETTING_KEY_PATTERN

KEY_DESCRIPTION = "A dotted lowercase name, e.g. `app.title` or `mail.smtp_port`."
SettingKey = Annotated[
    str,
    Field(min_length=1, max_length=200, pattern=SETTING_KEY_PATTERN, description=KEY_DESCRIPTION),
]
Description = Annotated[Text, Field(max_length=2000)]


class SettingCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: SettingKey
    value: StoredJson = Field(description="Any JSON value (finite numbers, 64 KiB at most).")
    description: Description | None = None


class SettingUpdate(BaseModel):
    """The new value; the description changes only when it is given (``null`` clears it)."""

    model_config = ConfigDict(extra="forbid")

    value: StoredJson = Field(description="Any JSON value (finite numbers, 64 KiB at most).")
    description: Description | None = None


class SettingOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    key: str
    value: JsonValue
    description: str | None
    version: int
    created_at: datetime
    updated_at: datetime


class SettingChanged(SettingOut):
    """The setting after the change, and the sync job that carries it (``null`` when the
    request changed nothing, so nothing was sent)."""

    sync_job_id: str | None
