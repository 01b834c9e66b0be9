"""Every table of the Response database, imported in one place for Alembic and tests."""

from app.db import ResponseBase
from app.outbox.models import ExportFile, ExportGeneration, ExportStream, OutboxEvent
from app.profile_types.models import ProfileType
from app.scheduling.models import CronTick, DailyStats, ExportedResult, SystemSample
from app.settings.models import Setting
from app.users.models import User

__all__ = [
    "CronTick",
    "DailyStats",
    "ExportFile",
    "ExportGeneration",
    "ExportStream",
    "ExportedResult",
    "OutboxEvent",
    "ProfileType",
    "ResponseBase",
    "Setting",
    "SystemSample",
    "User",
]
