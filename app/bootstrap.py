"""Create the bootstrap administrator ``admin`` once: ``python -m app.bootstrap``.

Its password comes from ``NETSYNC_ADMIN_PASSWORD``. In development, when that is unset, a strong
one is generated, printed once and kept (mode 0600) in ``<state>/admin-password`` for scripts.
Outside development the variable is required and must pass the password policy. The account is
created through the same outbox as every other user, so it reaches the Request Network too.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys

from app.config import ResponseSettings
from app.db import make_sessionmaker
from app.users import service
from netsync.config import ConfigurationError
from netsync.db import make_engine

ADMIN_USERNAME = "admin"


async def ensure_admin(settings: ResponseSettings) -> str | None:
    """Create ``admin`` if missing; return the generated password when one was generated."""
    engine = make_engine(settings.database_url, pool_size=1, application_name="netsync-bootstrap")
    sessions = make_sessionmaker(engine)
    try:
        async with sessions() as session, session.begin():
            if await service.get_by_username(session, ADMIN_USERNAME) is not None:
                return None
            generated = None
            if settings.admin_password is not None and settings.admin_password.get_secret_value():
                password = settings.admin_password.get_secret_value()
            elif settings.is_development:
                password = generated = secrets.token_urlsafe(18)
            else:
                raise ConfigurationError("NETSYNC_ADMIN_PASSWORD must be set outside development")
            settings.require("admin_password", password, min_length=12)
            await service.create_user(
                session, username=ADMIN_USERNAME, email=None, password=password, role="admin"
            )
        if generated is not None:
            path = settings.state_dir / "admin-password"
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(generated + "\n")
        return generated
    finally:
        await engine.dispose()


def main() -> None:
    settings = ResponseSettings()
    try:
        generated = asyncio.run(ensure_admin(settings))
    except service.WeakPassword as exc:  # a one-line answer, not a traceback, for the operator
        print(f"netsync: NETSYNC_ADMIN_PASSWORD is refused: {exc.detail}", file=sys.stderr)
        raise SystemExit(2) from None
    if generated is not None:
        print(
            f"\n  Created the administrator 'admin' with the generated password: {generated}\n"
            f"  (kept in {settings.state_dir / 'admin-password'}; set NETSYNC_ADMIN_PASSWORD to "
            "choose one)\n",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
