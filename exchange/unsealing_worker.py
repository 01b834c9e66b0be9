"""The long-lived child that decrypts the small sealed bodies of a batch off the importer's GIL
(``UnsealingWorker``), beside the streaming children of ``exchange.seal_streams`` whose pipes,
failures and refusal status it shares.
"""

from __future__ import annotations

import contextlib
import struct
import subprocess
import sys
import threading
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from exchange.seal_streams import _REFUSED, ChildLost, StreamFailed, _widen, child_env

__all__ = ["Batch", "UnsealingWorker"]


#: The long-lived child that decrypts small bodies, a batch per request: stdin carries requests,
#: stdout answers, each a fixed header and its bytes. A request is a count, then per body the
#: private keys that open it (one per line; parsed once per set) and its ciphertext; the child
#: reads the whole request before it answers (so neither side can block the other on a full
#: pipe), then answers per body a status (0: the plaintext follows, 3: rage refused the body,
#: its message follows) and a length. The end of stdin ends the child: it never outlives the
#: process that started it.
_WORKER_CHILD = (
    "import struct, sys, pyrage\n"
    "from pyrage import x25519\n"
    "inp, out = sys.stdin.buffer, sys.stdout.buffer\n"
    "held = {}\n"
    "def exact(n):\n"
    "    data = inp.read(n)\n"
    "    if len(data) != n:\n"
    "        sys.exit(0)\n"
    "    return data\n"
    "def keys(blob):\n"
    "    if blob not in held:\n"
    "        held.clear()\n"
    "        held[blob] = [x25519.Identity.from_str(s) for s in blob.decode().split()]\n"
    "    return held[blob]\n"
    "while True:\n"
    "    (count,) = struct.unpack('>I', exact(4))\n"
    "    bodies = []\n"
    "    for _ in range(count):\n"
    "        klen, clen = struct.unpack('>IQ', exact(12))\n"
    "        bodies.append((exact(klen), exact(clen)))\n"
    "    for blob, body in bodies:\n"
    "        try:\n"
    "            answer, status = pyrage.decrypt(body, keys(blob)), 0\n"
    "        except (pyrage.DecryptError, OSError) as exc:\n"  # rage: a bad chunk is an OSError
    "            answer, status = str(exc).encode()[:400], 3\n"
    "        out.write(struct.pack('>BQ', status, len(answer)))\n"
    "        out.write(answer)\n"
    "    del bodies\n"
    "    out.flush()\n"
)
_COUNT = struct.Struct(">I")
#: The most a refusal's message takes (the child cuts rage's message to this many bytes).
_MAX_MESSAGE = 400
_BODY = struct.Struct(">IQ")
_ANSWER = struct.Struct(">BQ")


def _stop_child(proc: subprocess.Popen[bytes]) -> None:
    """Close a worker child's pipes and reap it (end of stdin ends it; a stuck one is killed)."""
    with contextlib.suppress(OSError):
        if proc.stdin is not None:
            proc.stdin.close()
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


class UnsealingWorker:
    """Decrypts small in-memory bodies, a batch at a time, in a long-lived child process.

    ``pyrage`` holds the GIL while it decrypts: on a burst of one-change files the X25519 and
    ChaCha20 work of each (0.1–0.2 ms) is GIL time the thread applying the previous batch
    needs. One request per batch, not per file: each blocking call costs a thread the GIL's
    hand-off under contention, so a round trip per file would cost more than it saves.

    ``send`` hands a batch over and returns; ``receive`` blocks the calling thread (not the GIL)
    for the child's answers: per body its plaintext or a ``StreamFailed`` (rage refused it: a
    verdict on that file); ``ChildLost`` when the child failed (no verdict on any file: they
    stay for the next pass, and the next request starts a new child). One batch in flight at a
    time (a lock held from ``send`` to ``receive``): the caller reads the next files while the
    child decrypts. The child starts at the first request and ends with ``close``, with this
    object's collection, or when this process exits (the end of its stdin).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes]], UnsealingWorker] | None = None
        #: The batch in flight (sent, not yet received): only its own ``receive`` reads answers.
        self._current: Batch | None = None
        #: The last identities sent and their text (the objects held: never a reused id).
        self._blob: tuple[tuple[Any, ...], bytes] = ((), b"")

    def _child(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._drop()
        proc = subprocess.Popen(  # noqa: S603 - our interpreter, our code; no secret in argv
            [sys.executable, "-I", "-c", _WORKER_CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            env=child_env(),
            start_new_session=True,  # a Ctrl-C is the importer's to handle, not the child's
        )
        _widen(proc.stdin, proc.stdout)  # a group's answers wait there until it is received
        self._proc = proc
        self._finalizer = weakref.finalize(self, _stop_child, proc)
        return proc

    def _drop(self, *, kill: bool = False) -> None:
        """Stop the child: at once (``kill``: it failed, or its answers are not wanted), or by
        closing its stdin."""
        if kill and self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.kill()
        if self._finalizer is not None:
            self._finalizer()  # stops the child, once
        self._proc = None
        self._finalizer = None

    def decrypt_many(
        self, bodies: Sequence[tuple[bytes, Iterable[Any]]]
    ) -> list[bytes | StreamFailed]:
        """Decrypt each ``(ciphertext, identities)`` in the child, in one round trip."""
        return self.receive(self.send(bodies))

    def send(self, bodies: Sequence[tuple[bytes, Iterable[Any]]]) -> Batch:
        """Hand a batch to the child, which decrypts it while the caller goes on; the ``Batch``
        returned is what ``receive`` (or ``abandon``) takes. One batch at a time: a second
        ``send`` waits until the first is received or abandoned."""
        batch = Batch([len(ciphertext) for ciphertext, _ in bodies])
        self._lock.acquire()
        try:
            self._current = batch
            if bodies:
                self._write(self._child(), bodies)
        except BaseException as exc:  # a broken pipe, a child that could not start
            self._end(batch, kill=True)
            if isinstance(exc, (OSError, ValueError)):
                raise _lost(exc) from exc
            raise
        return batch

    def receive(self, batch: Batch) -> list[bytes | StreamFailed]:
        """The answers to ``batch``, in its order."""
        if batch is not self._current:
            raise RuntimeError("not the batch in flight")
        try:
            answers = self._answers(batch.sizes) if batch.sizes else []
        except BaseException as exc:
            self._end(batch, kill=True)
            if isinstance(exc, (OSError, ValueError)):
                raise _lost(exc) from exc
            raise
        self._end(batch)
        return answers

    def abandon(self, batch: Batch) -> None:
        """Give up ``batch`` if it is still in flight (its caller failed, or no longer wants
        it): the child is stopped, so no answer of it can be taken for the next batch's."""
        if batch is self._current:
            self._end(batch, kill=bool(batch.sizes))  # an empty batch left the child idle

    def _end(self, batch: Batch, *, kill: bool = False) -> None:
        if batch is not self._current:
            return
        self._current = None
        try:
            if kill:
                self._drop(kill=True)
        finally:
            self._lock.release()

    def _text(self, identities: Iterable[Any]) -> bytes:
        held = tuple(identities)
        if held != self._blob[0]:
            self._blob = (held, "\n".join(str(i) for i in held).encode())
        return self._blob[1]

    def _write(
        self, proc: subprocess.Popen[bytes], bodies: Sequence[tuple[bytes, Iterable[Any]]]
    ) -> None:
        stdin = proc.stdin
        assert stdin is not None
        stdin.write(_COUNT.pack(len(bodies)))
        for ciphertext, identities in bodies:  # buffered: small parts go out together
            blob = self._text(identities)
            stdin.write(_BODY.pack(len(blob), len(ciphertext)))
            stdin.write(blob)
            stdin.write(ciphertext)
        stdin.flush()

    def _answers(self, sizes: list[int]) -> list[bytes | StreamFailed]:
        proc = self._proc
        assert proc is not None
        assert proc.stdout is not None
        answers: list[bytes | StreamFailed] = []
        for size in sizes:
            head = proc.stdout.read(_ANSWER.size)
            if len(head) != _ANSWER.size:
                raise ChildLost(f"the unsealing process ended (exit {proc.poll()})")
            status, length = _ANSWER.unpack(head)
            # age only adds to a body: a longer answer is not one this child gave
            if status not in (0, _REFUSED) or length > max(size, _MAX_MESSAGE):
                raise ChildLost(f"the unsealing process answered {status}/{length}")
            answer = proc.stdout.read(length)
            if len(answer) != length:
                raise ChildLost("the unsealing process ended mid-answer")
            if status == 0:
                answers.append(answer)
            else:
                message = answer.decode(errors="replace") or "the body did not decrypt"
                answers.append(StreamFailed(message))
        return answers

    def close(self) -> None:
        """Stop the child once no batch is in flight (the next ``send`` starts another)."""
        with self._lock:
            self._drop()


@dataclass(eq=False)
class Batch:
    """One request to an ``UnsealingWorker``: the size of each body, to bound each answer."""

    sizes: list[int] = field(default_factory=list)


def _lost(exc: BaseException) -> ChildLost:
    if isinstance(exc, ChildLost):
        return exc
    return ChildLost(f"the unsealing process failed: {exc!r}"[:300])
