"""The child processes of sealing: encryption and decryption off this process's GIL (``pyrage``
holds it while it works), on the other core.

Three children, each ``python -I -c`` (no current directory, no ``PYTHONPATH``) running a few
lines of ``pyrage`` and nothing of netsync:

* ``SealingStream`` encrypts a large body as it is written;
* ``UnsealingStream`` decrypts a large body from the importer's private, verified copy (read with
  ``pread`` from a descriptor it inherits) while the importer parses what it already gave;
* ``exchange.unsealing_worker.UnsealingWorker`` is one long-lived child that decrypts the small
  bodies held in memory (``changes`` files), a batch per request: on a burst of one-change files
  the X25519 and ChaCha20 work of each (0.1–0.2 ms) would otherwise hold the GIL the applying
  thread needs.

Nothing secret is ever in argv or the environment: the sealing child gets public keys as
arguments; the unsealing children get the private keys on stdin; each child's environment is
``child_env()``, which holds none of this process's secrets. ``exchange.sealing`` decides
what a failure means.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterable
from typing import IO, Any

try:
    import fcntl
except ImportError:  # not on this platform: pipes keep their size
    fcntl = None  # type: ignore[assignment]


#: What of this process's environment a child gets: enough for the interpreter to start and
#: nothing else (the environment holds database URLs and tokens; ``-I`` already ignores
#: ``PYTHON*`` variables).
_CHILD_ENV_KEYS = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "LD_LIBRARY_PATH", "TMPDIR", "SYSTEMROOT")


def child_env() -> dict[str, str]:
    """The environment of a sealing child: no secret of this process's in it."""
    return {k: v for k in _CHILD_ENV_KEYS if (v := os.environ.get(k)) is not None}


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


#: The child that encrypts a stream into the file being written: plaintext on stdin, recipients
#: (public keys, nothing secret) as arguments, the staging file as an inherited descriptor. It
#: hashes what the file already holds (the clear envelope), writes the ciphertext and the newline
#: that ends its line after it with ``pwrite``, hashing as it goes, and answers the file's digest
#: and its end on stdout: the writer signs that digest, and never reads the ciphertext back.
#: Errors: a message on stderr, exit 3. It needs pyrage and nothing of netsync. Its stdin is
#: read through a 1 MiB buffer: pyrage asks for 8 KiB at a time, more than ``sys.stdin``'s
#: buffer (the pipe's 4 KiB block) holds, so each would be a read system call (32,862 per
#: 256 MiB; 4,197 with the buffer, 15 % less child CPU).
_CHILD = (
    "import hashlib, os, sys, pyrage\n"
    "from pyrage import x25519\n"
    "fd, start = int(sys.argv[1]), int(sys.argv[2])\n"
    "class Sink:\n"
    "    def __init__(self):\n"
    "        self.at, self.digest = 0, hashlib.sha256()\n"
    "        while self.at < start:\n"
    "            data = os.pread(fd, min(start - self.at, 1 << 20), self.at)\n"
    "            if not data:\n"
    "                raise OSError('the staging file is shorter than its envelope')\n"
    "            self.digest.update(data)\n"
    "            self.at += len(data)\n"
    "    def write(self, data):\n"
    "        self.digest.update(data)\n"
    "        view = memoryview(data)\n"
    "        while view:\n"
    "            done = os.pwrite(fd, view, self.at)\n"
    "            self.at += done\n"
    "            view = view[done:]\n"
    "        return len(data)\n"
    "    def flush(self):\n"
    "        pass\n"
    "try:\n"
    "    keys = [x25519.Recipient.from_str(r) for r in sys.argv[3:]]\n"
    "    sink = Sink()\n"
    "    pyrage.encrypt_io(open(0, 'rb', buffering=1 << 20, closefd=False), sink, keys)\n"
    "    sink.write(b'\\n')\n"
    "except (pyrage.EncryptError, pyrage.RecipientError, OSError, ValueError) as exc:\n"
    "    sys.stderr.write(str(exc)[:400])\n"
    "    sys.exit(3)\n"
    "sys.stdout.write(sink.digest.hexdigest() + ' ' + str(sink.at) + '\\n')\n"
)


class SealingStream:
    """A streaming age encryption in a child process, on the other core, straight into the
    file being written.

    ``write`` hands plaintext to the child (blocking while its pipe is full, so memory stays
    bounded); the child writes the ciphertext into the file after ``start`` (what the file
    holds up to there is hashed first). ``close`` ends the stream and returns the SHA-256 of the
    file's bytes and where they end, or raises if anything failed on the way; ``abort`` kills
    the child.
    """

    def __init__(self, recipients: Iterable[str], fd: int, start: int) -> None:
        self._proc = subprocess.Popen(  # noqa: S603 - our interpreter, our code, public keys
            [sys.executable, "-I", "-c", _CHILD, str(fd), str(start), *recipients],
            bufsize=_PIPE_BYTES,  # the database's 8 KiB pieces cross in 1 MiB writes
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(fd,),  # -I: no cwd, no PYTHONPATH; only this descriptor is inherited
            env=child_env(),
            start_new_session=True,  # a Ctrl-C is the worker's to handle, not the child's
        )
        _widen(self._proc.stdin)

    def _failed(self) -> OSError:
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
            failure = self._failed()  # the child's stderr, read before the pipes close
            self._close_pipes()
            raise failure from exc

    def close(self) -> tuple[bytes, int]:
        stdin, stdout = self._proc.stdin, self._proc.stdout
        assert stdin is not None
        assert stdout is not None
        try:
            with contextlib.suppress(BrokenPipeError):
                stdin.close()
            answer = stdout.read(200)
            code = self._proc.wait()
        except BaseException:  # never leave a child writing into the file
            self.abort()
            raise
        try:
            if code != 0:
                raise self._failed()
            digest, end = answer.split()
            return bytes.fromhex(digest.decode()), int(end)
        except ValueError as exc:
            raise OSError(f"the sealing process answered {answer[:100]!r}") from exc
        finally:
            self._close_pipes()

    def abort(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
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
            env=child_env(),
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
