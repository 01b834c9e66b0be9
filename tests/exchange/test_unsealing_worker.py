"""The unsealing worker: one long-lived child that decrypts a batch of small bodies off the
importer's GIL. Each body gets its own verdict, a child that dies is no verdict on any body and
is replaced, and the child never outlives the process that started it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from exchange.seal_streams import ChildLost, StreamFailed
from exchange.sealing import Recipients, SealReason, decrypt_error, generate_identity
from exchange.unsealing_worker import UnsealingWorker
from tests.support import TEST_IDENTITIES, TEST_RECIPIENTS

KEYS = TEST_IDENTITIES.to_open(TEST_RECIPIENTS.seal(b"probe"), TEST_RECIPIENTS.key_ids)


def _gone(pid: int, within: float = 10.0) -> bool:
    """True once ``pid`` has exited (a zombie nobody reaps counts as exited)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_each_body_of_a_batch_gets_its_own_verdict() -> None:
    good = TEST_RECIPIENTS.seal(b"line one\nline two\n")
    big = TEST_RECIPIENTS.seal(os.urandom(300_000))  # several chunks, larger than a pipe
    # cut after its fourth chunk (64 KiB + a 16-byte tag each): the last chunk is missing
    truncated = big[: -(300_000 - 4 * 65_536 + 16)]
    stranger = Recipients.of([generate_identity()[1]]).seal(b"not for us")
    worker = UnsealingWorker()
    try:
        answers = worker.decrypt_many(
            [(good, KEYS), (truncated, KEYS), (stranger, KEYS), (big, KEYS)]
        )
    finally:
        worker.close()
    assert answers[0] == b"line one\nline two\n"
    assert isinstance(answers[1], StreamFailed)
    assert decrypt_error(answers[1]).reason is SealReason.TRUNCATED
    assert isinstance(answers[2], StreamFailed)
    assert decrypt_error(answers[2]).reason is SealReason.UNKNOWN_RECIPIENT
    assert isinstance(answers[3], bytes)
    assert len(answers[3]) == 300_000


def test_a_killed_child_is_no_verdict_and_the_next_batch_gets_a_new_one() -> None:
    body = TEST_RECIPIENTS.seal(b"payload\n")
    worker = UnsealingWorker()
    try:
        assert worker.decrypt_many([(body, KEYS)]) == [b"payload\n"]
        first = worker._proc
        assert first is not None
        first.kill()
        first.wait()
        # a dead child found at the next request is replaced before the request is sent
        assert worker.decrypt_many([(body, KEYS)]) == [b"payload\n"]
        assert worker._proc is not None
        assert worker._proc.pid != first.pid
    finally:
        worker.close()


def test_a_child_that_dies_mid_request_raises_child_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    # a child that reads the start of a request and dies (the OOM killer, a stop signal)
    monkeypatch.setattr(
        "exchange.unsealing_worker._WORKER_CHILD",
        "import sys; sys.stdin.buffer.read(4); sys.exit(9)",
    )
    worker = UnsealingWorker()
    try:
        for size in (200_000, 100):  # dies while the request is written, or after it
            with pytest.raises(ChildLost):
                worker.decrypt_many([(TEST_RECIPIENTS.seal(b"x" * size), KEYS)])
            assert worker._proc is None  # dropped: the next request starts afresh
        monkeypatch.undo()  # the real child again: the worker is not stuck (its lock is free)
        assert worker.decrypt_many([(TEST_RECIPIENTS.seal(b"back"), KEYS)]) == [b"back"]
    finally:
        worker.close()


def test_only_a_batch_in_flight_is_received_and_an_abandoned_one_is_never_answered() -> None:
    worker = UnsealingWorker()
    try:
        first = worker.send([(TEST_RECIPIENTS.seal(b"first"), KEYS)])
        worker.abandon(first)  # its caller failed: the child that has it is stopped
        with pytest.raises(RuntimeError):
            worker.receive(first)
        second = worker.send([(TEST_RECIPIENTS.seal(b"second"), KEYS)])
        assert worker.receive(second) == [b"second"]  # never the first one's answer
        worker.abandon(second)  # received already: nothing happens
        assert worker.decrypt_many([(TEST_RECIPIENTS.seal(b"third"), KEYS)]) == [b"third"]
    finally:
        worker.close()


def test_a_child_that_claims_more_than_it_was_given_is_not_believed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    liar = (
        "import struct, sys\n"
        "sys.stdin.buffer.read(4 + 12)\n"
        "sys.stdout.buffer.write(struct.pack('>BQ', 0, 1 << 40)); sys.stdout.buffer.flush()\n"
        "sys.stdin.buffer.read()\n"
    )
    monkeypatch.setattr("exchange.unsealing_worker._WORKER_CHILD", liar)
    worker = UnsealingWorker()
    try:
        with pytest.raises(ChildLost, match="answered"):
            worker.decrypt_many([(TEST_RECIPIENTS.seal(b"short"), KEYS)])
    finally:
        worker.close()


def test_the_child_ends_with_close_and_with_the_process_that_started_it() -> None:
    body = TEST_RECIPIENTS.seal(b"payload\n")
    worker = UnsealingWorker()
    worker.decrypt_many([(body, KEYS)])
    proc = worker._proc
    assert proc is not None
    worker.close()
    assert proc.returncode is not None  # exited and reaped

    # a process that dies without closing anything (SIGKILL, os._exit): its child follows
    script = textwrap.dedent(
        """
        import os, sys
        from exchange.unsealing_worker import UnsealingWorker
        from tests.support import TEST_IDENTITIES, TEST_RECIPIENTS
        body = TEST_RECIPIENTS.seal(b"payload")
        keys = TEST_IDENTITIES.to_open(body, TEST_RECIPIENTS.key_ids)
        worker = UnsealingWorker()
        assert worker.decrypt_many([(body, keys)]) == [b"payload"]
        print(worker._proc.pid, flush=True)
        os._exit(0)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=os.getcwd(),
    )
    assert _gone(int(done.stdout.split()[0]))
