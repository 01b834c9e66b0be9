"""The child processes of sealing: encryption and decryption off this process's GIL (``pyrage``
holds it while it works), on the other core.

Three children, each ``python -I -c`` (no current directory, no ``PYTHONPATH``) running a few
lines of ``pyrage`` and nothing of netsync:

* ``SealingStream`` encrypts a large body as it is written;
* ``UnsealingStream`` decrypts a large body from the importer's private, verified copy (read with
  ``pread`` from a descriptor it inherits) while the importer parses what it already gave;
* ``UnsealingWorker`` is one long-lived child that decrypts the small bodies held in memory
  (``changes`` files), one request at a time: on a burst of one-change files the X25519 and
  ChaCha20 work of each (0.1–0.2 ms) would otherwise hold the GIL the applying thread needs.

Nothing secret is ever in argv or the environment: the sealing child gets public keys as
arguments; the unsealing children get the private keys on stdin. ``exchange.sealing`` decides
what a failure means.
"""

from __future__ import annotations

import contextlib
import struct
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

try:
    import fcntl
except ImportError:  # not on this platform: pipes keep their size
    fcntl = None  # type: ignore[assignment]


#: Pipes to and from a sealing child hold this much (Linux: ``F_SETPIPE_SZ``; 1 MiB is the
#: default ceiling for unprivileged processes): a stream of hundreds of MB crosses in 1 MiB
#: steps instead of 64 KiB ones, with a sixteenth of the wake-ups on both sides.
_PIPE_BYTES = 1 << 20


def _widen(*pipes: IO[bytes] | None) -> None:
    """Enlarge the pipes where the platform allows it; keep them as they are otherwise."""
    setsize = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None
    if setsize is None:
        return
    for pipe in pipes:
        if pipe is not None:
            with contextlib.suppress(OSError):
                fcntl.fcntl(pipe.fileno(), setsize, _PIPE_BYTES)


class StreamFailed(Exception):
    """The unsealing child refused the body; the message is rage's."""


class ChildLost(OSError):
    """The unsealing child failed for a reason that is not the body's: no verdict on the file."""


#: The child that encrypts a stream: plaintext on stdin, ciphertext on stdout, recipients (public
#: keys, nothing secret) as arguments. It needs pyrage and nothing of netsync.
_CHILD = (
    "import sys, pyrage\n"
    "from pyrage import x25519\n"
    "keys = [x25519.Recipient.from_str(r) for r in sys.argv[1:]]\n"
    "pyrage.encrypt_io(sys.stdin.buffer, sys.stdout.buffer, keys)\n"
    "sys.stdout.buffer.flush()\n"
)
_PIPE_BLOCK = 1 << 20


class SealingStream:
    """A streaming age encryption in a child process, on the other core.

    ``write`` hands plaintext to the child (blocking while its pipe is full, so memory stays
    bounded); a thread hands the child's ciphertext to ``sink``. ``close`` ends the stream and
    raises if anything failed on the way; ``abort`` kills the child.
    """

    def __init__(self, recipients: Iterable[str], sink: Callable[[bytes], None]) -> None:
        self._sink = sink
        self._error: BaseException | None = None
        self._proc = subprocess.Popen(  # noqa: S603 - our interpreter, our code, public keys
            [sys.executable, "-I", "-c", _CHILD, *recipients],  # -I: no cwd, no PYTHONPATH
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            close_fds=True,
            start_new_session=True,  # a Ctrl-C is the worker's to handle, not the child's
        )
        _widen(self._proc.stdin, self._proc.stdout)
        self._thread = threading.Thread(target=self._drain, name="seal-drain", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        out = self._proc.stdout
        assert out is not None
        try:
            while chunk := out.read(_PIPE_BLOCK):
                self._sink(chunk)
        except BaseException as exc:  # a full disk: stop the child, tell the writer
            self._error = exc
            self._proc.kill()

    def _failed(self) -> BaseException:
        if self._error is not None:
            return self._error
        stderr = self._proc.stderr.read()[-400:] if self._proc.stderr else b""
        return OSError(f"the sealing process failed: {stderr.decode(errors='replace').strip()}")

    def write(self, data: bytes) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        try:
            stdin.write(data)
        except (BrokenPipeError, ValueError) as exc:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._thread.join()
            failure = self._failed()  # the child's stderr, read before the pipes close
            self._close_pipes()
            raise failure from exc

    def close(self) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        with contextlib.suppress(BrokenPipeError):
            stdin.close()
        self._thread.join()
        code = self._proc.wait()
        if self._error is not None or code != 0:
            failure = self._failed()
            self._close_pipes()
            raise failure
        self._close_pipes()

    def abort(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()
        self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


#: The child that decrypts a large body: the private keys on stdin (never in argv or the
#: environment), the ciphertext read with ``pread`` from an inherited descriptor (the importer's
#: private, verified copy), the plaintext on stdout. Errors: rage's message on stderr, exit 3.
_UNSEAL_CHILD = (
    "import os, sys, pyrage\n"
    "from pyrage import x25519\n"
    "keys = [x25519.Identity.from_str(s) for s in sys.stdin.read().split()]\n"
    "fd, offset, length = (int(a) for a in sys.argv[1:4])\n"
    "class Source:\n"
    "    def __init__(self):\n"
    "        self.at, self.end = offset, offset + length\n"
    "    def read(self, size=-1):\n"
    "        want = self.end - self.at if size is None or size < 0 else size\n"
    "        try:\n"
    "            data = os.pread(fd, max(0, min(want, self.end - self.at)), self.at)\n"
    "        except OSError as exc:\n"
    "            sys.stderr.write('reading the spool: ' + str(exc)[:300])\n"
    "            os._exit(4)\n"
    "        self.at += len(data)\n"
    "        return data\n"
    "try:\n"
    "    pyrage.decrypt_io(Source(), sys.stdout.buffer, keys)\n"
    "    sys.stdout.buffer.flush()\n"
    "except (pyrage.DecryptError, OSError) as exc:\n"  # rage reports a bad chunk as an OSError
    "    sys.stderr.write(str(exc)[:400])\n"
    "    sys.exit(3)\n"
)
#: The unsealing child's exit status for "rage refused the body": a verdict on the file. Any
#: other failure (killed, out of memory, the spool unreadable) is local and retried.
_REFUSED = 3


class UnsealingStream:
    """A large body decrypted by a child process on the other core while this process parses
    and copies what it already gave. ``rage`` authenticates each 64 KiB chunk before it hands it
    out; a body cut short or altered is found when the stream ends (``read`` or ``readline``
    returning nothing raises ``StreamFailed`` with rage's message, or ``ChildLost`` when the
    child failed for a reason of its own), before whoever reads it commits anything. The child
    has a session of its own: a Ctrl-C or a service stop reaches the importer, which finishes
    the file it is on, not the child."""

    def __init__(self, fd: int, offset: int, length: int, identities: list[Any]) -> None:
        self._proc = subprocess.Popen(  # noqa: S603 - our interpreter, our code; no secret in argv
            [sys.executable, "-I", "-c", _UNSEAL_CHILD, str(fd), str(offset), str(length)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(fd,),
            start_new_session=True,
        )
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        _widen(self._proc.stdout)
        self._out = self._proc.stdout
        try:
            self._proc.stdin.write("\n".join(str(i) for i in identities).encode())
            self._proc.stdin.close()
        except BrokenPipeError:
            pass  # the child died at once: its exit status says why, at the end
        self._done = False

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        code = self._proc.wait()
        if code == 0:
            return
        assert self._proc.stderr is not None
        message = self._proc.stderr.read()[-400:].decode(errors="replace").strip()
        if code == _REFUSED:
            raise StreamFailed(message or "the body did not decrypt")
        raise ChildLost(f"the unsealing process exited {code}: {message[-200:]}")

    def read(self, size: int | None = -1) -> bytes:
        return self._ended_if_empty(self._out.read(-1 if size is None else size))

    def readline(self, size: int | None = -1) -> bytes:
        return self._ended_if_empty(self._out.readline(-1 if size is None else size))

    def _ended_if_empty(self, data: bytes) -> bytes:
        if not data:
            self._finish()
        return data

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for pipe in (self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


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
