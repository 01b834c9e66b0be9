"""Jobs travel through Redis as JSON, never pickle.

arq serialises job arguments and results with ``pickle`` by default, so anyone who can write a
key into Redis would run code on the workers, which hold the Response Network's signing key. Every
arq client and worker of netsync uses these two functions instead (``OPTIONS``). Job arguments
are ids and names (JSON by nature); a result is what a job function returns (dicts of plain
values), and a failed job's exception is kept as its text, ``"ValueError: …"``.
"""

from __future__ import annotations

from typing import Any

import orjson

from netsync.text import redact

#: For ``Worker(...)``, ``WorkerSettings`` dicts, ``create_pool`` and ``ArqRedis(...)``.
OPTIONS: dict[str, Any] = {}


def _default(value: object) -> object:
    if isinstance(value, BaseException):
        return redact(f"{type(value).__name__}: {value}")[:2000]
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def serialize(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data, default=_default)


def deserialize(data: bytes) -> dict[str, Any]:
    value = orjson.loads(data)
    if not isinstance(value, dict):
        raise ValueError("a job is a JSON object")
    return value


OPTIONS.update(job_serializer=serialize, job_deserializer=deserialize)
