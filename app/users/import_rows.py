"""One row of a users import, checked by the API's rules for a user (``ImportedUser``), with a
hash allowed instead of a password; ``app.imports.rows`` reads the rows, ``app.users.bulk``
writes what passes.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from app.imports.rows import csv_bool
from app.profile_types.schemas import Name as ProfileTypeName
from app.users.schemas import Password, Role, Username
from netsync.passwords import ACCEPTED_HASHES, acceptable_hash

_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_EMAIL = TypeAdapter(EmailStr)


@functools.lru_cache(maxsize=4096)
def _domain(domain: str) -> str:
    """The API's verdict (pydantic's ``EmailStr``, i.e. email_validator) on one domain, and its
    normal form: asked once per domain, where it costs most (IDNA), not once per row."""
    return _EMAIL.validate_python("a@" + domain).rpartition("@")[2]


def import_email(value: str) -> str:
    """``EmailStr``'s answer, fast for the common case: a plain ASCII address whose domain was
    seen before costs a regex. Anything else (quoted or non-ASCII local parts, display names,
    lengths near the limits, a domain refused) goes through ``EmailStr`` itself, so the answer
    and the normal form are always the API's."""
    local, at, domain = value.rpartition("@")
    if at and len(local) <= 64 and len(value) <= 254 and _LOCAL_PART.match(local):
        try:
            return f"{local}@{_domain(domain)}"
        except ValidationError:
            pass
    return _EMAIL.validate_python(value)


class ImportedUser(BaseModel):
    """One row: the API's rules for a user, with a hash allowed instead of a password."""

    model_config = ConfigDict(extra="forbid")

    username: Username
    email: Annotated[str, AfterValidator(import_email)] | None = None
    password: Password | None = None
    password_hash: str | None = None
    role: Role = "user"
    is_active: bool = True
    #: The name of a profile type that exists (imported before the users); absent: the user's
    #: profile type is left as it is.
    profile_type: ProfileTypeName | None = None

    #: The plain password's hash, once ``app.users.bulk.hash_new`` has made it (private: no
    #: row can set it).
    _hashed: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _one_secret(self) -> ImportedUser:
        if (self.password is None) == (self.password_hash is None):
            raise ValueError("give exactly one of password and password_hash")
        if self.password_hash is not None and not acceptable_hash(self.password_hash):
            raise ValueError(f"password_hash is not {ACCEPTED_HASHES}")
        return self


def csv_fields(record: dict[str, Any]) -> dict[str, Any]:
    """A CSV record as ``ImportedUser`` reads it: ``is_active`` is a spreadsheet's yes/no."""
    if "is_active" in record:
        record["is_active"] = csv_bool(record["is_active"])
    return record
