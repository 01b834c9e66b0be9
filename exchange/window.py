"""A window on a file: its first bytes from where it stands, and no more.

The private copy of a verified file ends with bytes that are not the body (the separator and
the trailer); whoever reads the body (the age decryptor, the parser of an unsealed file) gets a
window that ends where the body ends, so that nothing past it can be mistaken for a record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO


class Window:
    """``length`` bytes of ``fh`` from its current position: ``read`` and ``readline``."""

    def __init__(self, fh: BinaryIO, length: int) -> None:
        self._fh = fh
        self._left = max(0, length)

    def read(self, size: int | None = -1) -> bytes:
        return self._take(self._fh.read, size)

    def readline(self, size: int | None = -1) -> bytes:
        return self._take(self._fh.readline, size)

    def _take(self, read: Callable[[int], bytes], size: int | None) -> bytes:
        want = self._left if size is None or size < 0 else min(size, self._left)
        if want <= 0:
            return b""
        data = read(want)
        self._left -= len(data)
        return data
