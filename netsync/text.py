"""Text both APIs accept: what PostgreSQL can store, checked as input so it is a 422, never a 500.

PostgreSQL ``text`` refuses the NUL character, and a lone UTF-16 surrogate (which ``json.loads``
produces from ``"\\ud800"``, and which a percent-encoded path can carry) cannot be encoded for the
wire at all. Every string either API takes from a client goes through ``Text``.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator


def clean_text(value: str) -> str:
    """Refuse strings PostgreSQL cannot store; returns the value unchanged otherwise."""
    if "\x00" in value:
        raise ValueError("must not contain the NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


Text = Annotated[str, AfterValidator(clean_text)]


_ROW_DETAIL = re.compile(r"(Failing row contains |Key )\(.*?(?=\\n|\n|\"|$)")


def redact(text: str) -> str:
    """A database error's text without the row values PostgreSQL puts in its DETAIL (a failing
    row, a duplicate key's value): they can hold a password hash. For logs and job results."""
    return _ROW_DETAIL.sub(lambda m: f"{m.group(1)}(… redacted)", text)
