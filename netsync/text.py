"""Text both APIs accept: what PostgreSQL can store, checked as input so it is a 422, never a 500.

PostgreSQL ``text`` refuses the NUL character, and a lone UTF-16 surrogate (which ``json.loads``
produces from ``"\\ud800"``, and which a percent-encoded path can carry) cannot be encoded for the
wire at all. Every string either API takes from a client goes through ``Text``.
"""

from __future__ import annotations

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
