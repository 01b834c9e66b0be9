"""The synced entities, declared once: each entity type's fields, with their kind and limits, and
the tables that hold it on either network.

Everything that handles an entity's data on the way across is derived from this table, so a new
synced field is one declaration here plus its two migrations and ORM columns (which stay explicit,
and ``tests/exchange/test_entities.py`` checks they agree):

- the record contract's data model (``Entity.model``, which ``exchange.format.ChangeRecord``
  validates a record's ``data`` with);
- the outbox payload of the Response side (``Entity.payload``);
- the snapshot query rendering each row as a record line in PostgreSQL (``Entity.snapshot_data``);
- the Request side's fast check of a snapshot's record lines (``Entity.row``), its upsert and merge
  columns with their SQL types (``Entity.sql_columns``), and the Request API's read schemas.

A field kind knows its SQL type, its pydantic type, its fast check and how PostgreSQL renders it as
JSON: the four kinds below (``TEXT``, ``FLAG``, ``REF``, ``JSON``) are all the shapes synced
data takes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from uuid import UUID

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    Strict,
    create_model,
)

_IDENTIFIER = re.compile(r"[a-z][a-z0-9_]{0,62}")
SETTING_KEY_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$"
_INT64 = 2**63


class Invalid(ValueError):
    """A field's value the fast check refuses (the message names the field, never its value)."""


def check_number(value: int | float) -> None:
    """Refuse a JSON number ``jsonb`` or orjson would not keep as it is: the JSON parser reads
    ``NaN``, ``Infinity``, ``1e400`` and integers of any size, which ``jsonb`` refuses or orjson
    writes as ``null``; and ``jsonb`` prints a float such as ``1e22`` as an integer past 64 bits.
    So every number lies between -2^63 and 2^63, which also makes the same rule hold for orjson,
    which reads an integer past 64 bits as a float. The rule of both networks."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite (no NaN or Infinity)")
    if isinstance(value, bool):
        return
    if not -_INT64 <= value < _INT64 or (isinstance(value, float) and abs(value) >= _INT64):
        raise ValueError("numbers must lie between -2^63 and 2^63")


#: The deepest JSON value kept (the Response side refuses more than 32 levels; pydantic's parser
#: more than 200): the model and the fast check refuse the same values.
MAX_JSON_DEPTH = 64
#: A UUID as the Response side writes it (``str(uuid)``): the one form both checks accept.
_UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_UUID_RE = re.compile(_UUID_PATTERN.strip("^$"))


def _storable(value: JsonValue) -> JsonValue:
    """A JSON value as the Request side stores it: every number ``check_number`` accepts, at most
    ``MAX_JSON_DEPTH`` levels (the Response side never sends others: ``app.fields.StoredJson``).
    It runs per snapshot row: a number in range costs one comparison, a refused one is handed to
    ``check_number`` for its reason."""
    _walk([value], 0)
    return value


def _walk(items: Iterable[Any], depth: int) -> None:
    for item in items:
        kind = type(item)
        if kind is int:
            if not -_INT64 <= item < _INT64:
                check_number(item)
        elif kind is float:
            if not -_INT64 < item < _INT64:  # NaN and the infinities fail this too
                check_number(item)
        elif kind is list or kind is dict:
            if depth >= MAX_JSON_DEPTH:
                raise ValueError(f"must not nest deeper than {MAX_JSON_DEPTH} levels")
            _walk(item.values() if kind is dict else item, depth + 1)


@dataclass(frozen=True)
class Kind:
    """A field's kind: the SQL type that holds it and how PostgreSQL renders it as JSON."""

    sql: str
    #: ``{c}`` is the column; the result is JSON text (never SQL NULL: see ``FieldSpec.render``).
    render: str
    #: A tombstone's value: false for a flag, NULL otherwise.
    empty: object = None


TEXT = Kind("text", "to_json({c})::text")
FLAG = Kind("boolean", "CASE WHEN {c} THEN 'true' WHEN NOT {c} THEN 'false' END", empty=False)
REF = Kind("uuid", "'\"' || {c}::text || '\"'")
JSON = Kind("jsonb", "{c}::text")


@dataclass(frozen=True)
class FieldSpec:
    """One synced field. ``text``-kind fields have a length range (``low``, ``high``), and may have
    a ``pattern`` or a fixed set of ``choices``; ``names`` is a list of short strings."""

    name: str
    kind: Kind
    null: bool = False
    low: int = 0
    high: int = 0
    pattern: str | None = None
    choices: tuple[str, ...] = ()
    #: A list of names (each ``low``-``high`` characters) rather than a JSON value.
    names: bool = False
    #: Kept on the Request side but never shown by its API (the password hash).
    secret: bool = False

    def annotation(self) -> tuple[Any, Any]:
        """The pydantic type and default of the record contract's data model."""
        if self.choices:
            base: Any = Literal.__getitem__(self.choices)
        elif self.kind is TEXT:
            base = Annotated[
                str, Field(min_length=self.low, max_length=self.high, pattern=self.pattern)
            ]
        elif self.kind is FLAG:
            base = Annotated[bool, Strict()]
        elif self.kind is REF:
            # the text form, matched in pydantic's core (the column's cast makes it a uuid)
            base = Annotated[str, Field(pattern=_UUID_PATTERN)]
        elif self.names:
            item = Annotated[str, Field(min_length=self.low, max_length=self.high)]
            return list[item], Field(default_factory=list)
        else:
            base = Annotated[JsonValue, AfterValidator(_storable)]
        return (base | None, None) if self.null else (base, ...)

    def shown(self) -> Any:
        """The type a read of the replica shows (a tombstone's fields are NULL, a flag false)."""
        if self.kind is FLAG:
            return bool
        if self.kind is REF:
            return UUID | None
        if self.kind is JSON:
            return list[str] | None if self.names else JsonValue
        return str | None

    def render(self) -> str:
        """The SQL that renders this column as the JSON of its value."""
        rendered = self.kind.render.format(c=self.name)
        return f"coalesce({rendered}, 'null')" if self.null else rendered

    def check(self) -> Check:
        """The fast check of a snapshot record's value: what the model accepts, as the column
        stores it (JSON as text), without building a model (ten times cheaper per record)."""
        if self.kind is FLAG:
            return _flag_check(self)
        if self.kind is JSON:
            return _names_check(self) if self.names else _json_check(self)
        if self.kind is REF:
            return _ref_check(self)
        return _text_check(self)


#: A fast check: a record's data in, the field's column value out (``Invalid`` if refused).
Check = Callable[[Mapping[str, Any]], Any]


def _flag_check(spec: FieldSpec) -> Check:
    name, null = spec.name, spec.null

    def flag(d: Mapping[str, Any]) -> Any:
        value = d.get(name)
        if type(value) is bool or (value is None and null):
            return value
        raise Invalid(f"{name} must be a boolean")

    return flag


def _names_check(spec: FieldSpec) -> Check:
    name, low, high = spec.name, spec.low, spec.high

    def names(d: Mapping[str, Any]) -> Any:
        value = d.get(name, [])
        if type(value) is not list or not all(
            type(v) is str and low <= len(v) <= high for v in value
        ):
            raise Invalid(f"{name} must be a list of names")
        return orjson.dumps(value).decode()

    return names


def _json_check(spec: FieldSpec) -> Check:
    name, null = spec.name, spec.null

    def json(d: Mapping[str, Any]) -> Any:
        if name not in d:
            if null:
                return None
            raise Invalid(f"{name} is missing")
        # orjson already refused NaN and Infinity; integers of 2**63 and up, and the depth, are
        # checked as the model does (orjson reads integers past 2**64 as floats)
        try:
            return orjson.dumps(_storable(d[name])).decode()
        except ValueError as exc:
            raise Invalid(f"{name} {exc}") from None

    return json


def _ref_check(spec: FieldSpec) -> Check:
    name, null = spec.name, spec.null

    def ref(d: Mapping[str, Any]) -> Any:
        value = d.get(name)
        if value is None and null:
            return None
        if type(value) is not str or not _UUID_RE.fullmatch(value):
            raise Invalid(f"{name} must be a UUID")
        return value

    return ref


def _text_check(spec: FieldSpec) -> Check:
    name, low, high, null = spec.name, spec.low, spec.high, spec.null
    refused = f"{name} is not a valid value"
    choices = frozenset(spec.choices)
    # the pattern without anchors or captures, for fullmatch: twice as fast per record
    pattern = re.compile(spec.pattern.strip("^$").replace("(", "(?:")) if spec.pattern else None

    def text(d: Mapping[str, Any]) -> Any:
        value = d.get(name)
        if value is None and null:
            return None
        if choices:
            if value not in choices or type(value) is not str:
                raise Invalid(refused)
            return value
        if type(value) is not str or not low <= len(value) <= high:
            raise Invalid(f"{name} must be a string of {low}-{high} characters")
        if pattern is not None and not pattern.fullmatch(value):
            raise Invalid(refused)
        return value

    return text


_CONFIG = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Entity:
    """One synced entity type: its name in records, its fields in the contract's order, its table
    on the Response side (``source``) and on the Request side (``replica``). What is derived is
    made once, here (plain attributes: they are read per record)."""

    name: str
    source: str
    replica: str
    fields: tuple[FieldSpec, ...]
    doc: str = ""
    #: The record contract's data model: what the Request Network accepts of the entity.
    model: type[BaseModel] = field(init=False, repr=False, compare=False)
    names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    #: The entity's own columns and their SQL types, in the contract's order.
    sql_columns: dict[str, str] = field(init=False, repr=False, compare=False)
    _checks: tuple[Check, ...] = field(init=False, repr=False, compare=False)
    _allowed: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for identifier in (self.name, self.source, self.replica, *(f.name for f in self.fields)):
            if not _IDENTIFIER.fullmatch(identifier):  # they are written into SQL unquoted
                raise ValueError(f"{identifier!r} is not a lowercase identifier")
        model = create_model(  # type: ignore[call-overload]
            "".join(part.title() for part in self.name.split("_")) + "Data",
            __config__=_CONFIG,
            __doc__=self.doc or None,
            **{f.name: f.annotation() for f in self.fields},
        )
        derived = {
            "model": model,
            "names": tuple(f.name for f in self.fields),
            "sql_columns": {f.name: f.kind.sql for f in self.fields},
            "_checks": tuple(f.check() for f in self.fields),
            "_allowed": frozenset(f.name for f in self.fields),
        }
        for attribute, value in derived.items():
            object.__setattr__(self, attribute, value)  # frozen: set once, at declaration

    @property
    def snapshot_stream(self) -> str:
        return f"snapshot_{self.source}"

    def empty(self, column: str) -> object:
        """What a tombstone holds in ``column``."""
        return next(f.kind.empty for f in self.fields if f.name == column)

    def payload(self, row: object) -> dict[str, Any]:
        """A Response row (a model, or a row a statement returned) as the outbox records it."""
        data: dict[str, Any] = {}
        for f in self.fields:
            value = getattr(row, f.name)
            if value is not None and f.kind is REF:
                value = str(value)
            elif f.names:
                value = list(value)
            data[f.name] = value
        return data

    def snapshot_data(self) -> str:
        """The SQL expression of a snapshot line's ``data`` members (inside its braces)."""
        members = []
        for i, f in enumerate(self.fields):
            comma = "," if i else ""
            members.append(f"""'{comma}"{f.name}":' || {f.render()}""")
        return " || ".join(members)

    def row(self, data: Mapping[str, Any]) -> tuple[Any, ...]:
        """A snapshot record's data, checked, as the values of ``sql_columns``."""
        if not data.keys() <= self._allowed:
            raise Invalid(f"unknown {self.name} field")
        return tuple([check(data) for check in self._checks])


USER = Entity(
    "user",
    "users",
    "synced_users",
    (
        FieldSpec("username", TEXT, low=1, high=150),
        FieldSpec("email", TEXT, null=True, high=320),
        FieldSpec("password_hash", TEXT, low=20, high=512, secret=True),
        FieldSpec("role", TEXT, choices=("admin", "user")),
        FieldSpec("is_active", FLAG),
        FieldSpec("profile_type_id", REF, null=True),
    ),
    doc="What the Request Network keeps of a user: never a plaintext password.",
)
SETTING = Entity(
    "setting",
    "settings",
    "synced_settings",
    (
        FieldSpec("key", TEXT, low=1, high=200, pattern=SETTING_KEY_PATTERN),
        FieldSpec("value", JSON),
        FieldSpec("description", TEXT, null=True, high=2000),
    ),
)
PROFILE_TYPE = Entity(
    "profile_type",
    "profile_types",
    "synced_profile_types",
    (
        FieldSpec("name", TEXT, low=1, high=100),
        FieldSpec("description", TEXT, null=True, high=2000),
        FieldSpec("permissions", JSON, names=True, low=1, high=100),
    ),
)

#: Every synced entity type by its name in records. Tests may add one (and take it away) to show
#: that a new entity crosses with no other change.
ENTITIES: dict[str, Entity] = {e.name: e for e in (USER, SETTING, PROFILE_TYPE)}
