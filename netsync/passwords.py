"""Password hashing, bounded: argon2id for new hashes; legacy bcrypt and argon2 hashes made with
older parameters still verify, and are rehashed at the next successful sign-in.

One argon2id call costs tens of milliseconds of CPU and ``NETSYNC_ARGON2_MEMORY_KIB`` of memory
(64 MiB by default) for as long as it runs, so hashing must never be unbounded: a flood of
sign-ins would exhaust the process. Calls run in a dedicated thread pool sized to the CPU the
process really has (``NETSYNC_HASH_THREADS``, else the cgroup's ``cpu.max`` quota and the
affinity mask, never the node's core count), and a semaphore in front of it admits only that many
at once; a sign-in waits at most ``NETSYNC_HASH_WAIT_S`` (5 s) for a slot, then gets
``HashingBusy`` (the APIs answer 503 with ``Retry-After``). Hashing a new password (an
authenticated change, never a flood from outside) waits up to a minute for its turn. Memory in
hashing is therefore bounded by threads × memory cost, and the event loop never blocks.

Unknown users cost one verification against a dummy hash built off the event loop at start-up
(``warm_up``), so timing does not reveal which usernames exist. Plaintext passwords never leave
the request that carries them: not in a log record, an exception message or a job argument.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bcrypt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from netsync.errors import ServiceUnavailable

_LEGACY = ("$2b$", "$2a$", "$2y$")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def cpu_quota(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may use: the affinity mask, capped by a cgroup CPU quota (v2
    ``cpu.max``, or v1 ``cpu.cfs_quota_us``), rounded up; at least 1."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        try:
            quota_us = int((cgroup_root / "cpu" / "cpu.cfs_quota_us").read_text())
            period_us = int((cgroup_root / "cpu" / "cpu.cfs_period_us").read_text())
            if quota_us > 0:
                cpus = min(cpus, math.ceil(quota_us / period_us))
        except (OSError, ValueError):
            pass
    return max(1, cpus)


#: argon2id parameters: at least OWASP's minimum (m = 19 MiB, t = 2, p = 1). The defaults take
#: RFC 9106's second recommendation's memory and passes (m = 64 MiB, t = 3) with one lane: four
#: lanes make libargon2 start four threads per hash, which the pool below does not see, and two
#: such hashes on two cores left the event loop no CPU (``bench/login_flood.py``).
TIME_COST = _env_int("NETSYNC_ARGON2_TIME_COST", 3)
MEMORY_KIB = _env_int("NETSYNC_ARGON2_MEMORY_KIB", 65536)
PARALLELISM = _env_int("NETSYNC_ARGON2_PARALLELISM", 1)
if TIME_COST < 2 or MEMORY_KIB < 19 * 1024 or PARALLELISM < 1:
    raise RuntimeError("argon2id parameters below OWASP's minimum (m=19456 KiB, t=2, p=1)")


def _default_threads() -> int:
    """One hashing thread per CPU the process may use, keeping one CPU for the event loop."""
    cpus = cpu_quota()
    return max(1, cpus - 1) if cpus > 1 else 1


THREADS = _env_int("NETSYNC_HASH_THREADS", 0) or _default_threads()
#: How long a sign-in waits for a hashing slot before it is told to come back (503) ...
WAIT_S = float(os.environ.get("NETSYNC_HASH_WAIT_S", "") or 5.0)
#: ... and how long hashing a new password may wait.
CHANGE_WAIT_S = 60.0

_hasher = PasswordHasher(time_cost=TIME_COST, memory_cost=MEMORY_KIB, parallelism=PARALLELISM)
_pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="hash")
_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)
_dummy: str | None = None
#: A refused password takes at least this long (seconds), whatever hash the account has or
#: whether it exists: a legacy bcrypt check (cost 12: ~330 ms here) costs more than an argon2id
#: one (~180 ms), so without a floor a failed sign-in would tell a legacy account, still
#: unconverted, from a converted or an unknown one. ``NETSYNC_SIGN_IN_FLOOR_MS`` sets it (0:
#: none); unset, ``warm_up`` measures it: the slower of the costliest accepted argon2 and bcrypt
#: hashes (``acceptable_hash``).
#: The wait is a sleep, not work: it costs a guesser time, the server nothing.
_FLOOR_ENV = os.environ.get("NETSYNC_SIGN_IN_FLOOR_MS", "").strip()
_floor_s: float | None = float(_FLOOR_ENV) / 1000 if _FLOOR_ENV else None
LEGACY_COST = 12
#: The floor is one measurement at start-up; refusals wait this much longer than it, so a
#: slower moment of a bcrypt check does not show above the floor.
FLOOR_MARGIN = 1.2

#: A stored hash's own parameters decide what checking it costs, and hashes arrive from elsewhere
#: (an import, the other network): only hashes of bounded cost are ever verified, and the refusal
#: floor covers the costliest of them, so no accepted hash stands out by timing. bcrypt up to
#: ``NETSYNC_BCRYPT_MAX_COST`` (12, as the previous deployment made them; at most 14: cost 12 is
#: ~330 ms here and each step doubles it, and so the floor); argon2 version 19 whose work,
#: memory in KiB times passes, is at most ``NETSYNC_ARGON2_MAX_WORK`` (at least, and by default,
#: the configured memory times passes), with at most 256 MiB and 4 lanes. Anything else is
#: refused as a wrong password would be, without running it (``$2b$31$`` would take days,
#: ``m=8388608`` 8 GiB); imports refuse such a row with the reason.
MAX_HASH_LENGTH = 512
BCRYPT_MAX_COST = _env_int("NETSYNC_BCRYPT_MAX_COST", LEGACY_COST)
ARGON2_MAX_WORK = max(_env_int("NETSYNC_ARGON2_MAX_WORK", 0), MEMORY_KIB * TIME_COST)
MAX_ARGON2_MEMORY_KIB, MAX_ARGON2_LANES = 262144, 4
if not 4 <= BCRYPT_MAX_COST <= 14:
    raise RuntimeError("NETSYNC_BCRYPT_MAX_COST is a bcrypt cost from 4 to 14")
if ARGON2_MAX_WORK > MAX_ARGON2_MEMORY_KIB * 10:
    raise RuntimeError("NETSYNC_ARGON2_MAX_WORK is at most 2621440 (256 MiB times 10 passes)")
_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|1[0-4])\$[./A-Za-z0-9]{53}", re.ASCII)
_ARGON2 = re.compile(
    r"\$argon2(id|i|d)\$v=19\$m=(\d{1,6}),t=(\d{1,2}),p=(\d)"
    r"\$[A-Za-z0-9+/]{8,88}\$[A-Za-z0-9+/]{16,88}",
    re.ASCII,  # \d is 0-9 only: int() reads other scripts' digits, argon2 cannot
)
#: What the import refusal says of a hash ``acceptable_hash`` refuses.
ACCEPTED_HASHES = (
    f"a bcrypt ($2a$/$2b$/$2y$, cost 4 to {BCRYPT_MAX_COST}) or argon2 (v=19, memory KiB times"
    f" passes at most {ARGON2_MAX_WORK}, m <= 256 MiB, p <= 4) hash"
)


def acceptable_hash(password_hash: str) -> bool:
    """Whether a stored hash is one netsync will verify (format and bounded cost)."""
    if len(password_hash) > MAX_HASH_LENGTH:
        return False
    legacy = _BCRYPT.fullmatch(password_hash)  # the whole string: no trailing newline
    if legacy:
        return int(legacy.group(1)) <= BCRYPT_MAX_COST
    found = _ARGON2.fullmatch(password_hash)
    if not found:
        return False
    memory, passes, lanes = (int(found.group(i)) for i in (2, 3, 4))
    return (
        1 <= lanes <= MAX_ARGON2_LANES
        and 8 * lanes <= memory <= MAX_ARGON2_MEMORY_KIB
        and 1 <= passes <= ARGON2_MAX_WORK // memory
    )


class HashingBusy(ServiceUnavailable):
    code = "busy"

    def __init__(self) -> None:
        super().__init__(
            "too many sign-ins at once: try again in a moment", headers={"Retry-After": "1"}
        )


def hash_password_sync(password: str) -> str:
    return _hasher.hash(password)


def verify_password_sync(password_hash: str, password: str) -> bool:
    if not acceptable_hash(password_hash):
        return False
    if password_hash.startswith(_LEGACY):
        try:
            return bcrypt.checkpw(password.encode(), password_hash.encode())
        except ValueError:
            return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError, ValueError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """Legacy bcrypt, or argon2 with other parameters than the configured ones."""
    if password_hash.startswith(_LEGACY):
        return True
    try:
        return _hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


async def _in_pool(fn: object, *args: str, wait_s: float | None = None) -> object:
    """Run ``fn`` in the hashing pool once a slot is free; ``HashingBusy`` after the wait."""
    slots = _slots.setdefault(asyncio.get_running_loop(), asyncio.Semaphore(THREADS))
    try:
        await asyncio.wait_for(slots.acquire(), WAIT_S if wait_s is None else wait_s)
    except TimeoutError:
        from netsync import metrics

        metrics.HASHING_BUSY.inc()
        raise HashingBusy() from None
    try:
        return await asyncio.get_running_loop().run_in_executor(_pool, fn, *args)  # type: ignore[arg-type]
    finally:
        slots.release()


def _costliest_bcrypt(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=BCRYPT_MAX_COST)).decode()


def _costliest_argon2(password: str) -> str:
    """An argon2id hash of the most work accepted (one lane: the slowest per unit of work)."""
    passes = math.ceil(ARGON2_MAX_WORK / MEMORY_KIB)
    return PasswordHasher(time_cost=passes, memory_cost=MEMORY_KIB, parallelism=1).hash(password)


async def _timed(fn: object, *args: str) -> tuple[str, float]:
    started = time.perf_counter()
    result = str(await _in_pool(fn, *args, wait_s=CHANGE_WAIT_S))
    return result, time.perf_counter() - started


async def warm_up() -> None:
    """Build the dummy hash in the pool (at start-up, off the event loop), and measure the
    floor of a refused sign-in when it is not configured."""
    global _dummy, _floor_s
    argon2_s: float | None = None
    if _dummy is None:
        _dummy, argon2_s = await _timed(hash_password_sync, os.urandom(16).hex())
    if _floor_s is None:
        # the dummy is the costliest accepted argon2 hash, unless more work or fewer lanes are
        # accepted than it has
        if argon2_s is None or ARGON2_MAX_WORK > MEMORY_KIB * TIME_COST or PARALLELISM > 1:
            _, argon2_s = await _timed(_costliest_argon2, os.urandom(16).hex())
        _, bcrypt_s = await _timed(_costliest_bcrypt, os.urandom(16).hex())
        _floor_s = max(argon2_s, bcrypt_s)


async def _refused(started: float) -> bool:
    """A refusal, once the floor has passed since ``started``."""
    await warm_up()
    remaining = (_floor_s or 0.0) * FLOOR_MARGIN - (time.perf_counter() - started)
    if remaining > 0:
        await asyncio.sleep(remaining)
    return False


async def hash_password(password: str) -> str:
    return str(await _in_pool(hash_password_sync, password, wait_s=CHANGE_WAIT_S))


async def verify_password(
    password_hash: str | None, password: str, *, allowed: bool = True
) -> bool:
    """Verify in the hashing pool; a missing user still costs one verification, and every
    refusal takes at least the floor (``_floor_s``), a right password for an account that may
    not sign in (``allowed=False``: deactivated) included, so timing confirms no password."""
    started = time.perf_counter()
    if password_hash is None:
        await warm_up()
        assert _dummy is not None
        await _in_pool(verify_password_sync, _dummy, password)
        return await _refused(started)
    if await _in_pool(verify_password_sync, password_hash, password) and allowed:
        return True
    return await _refused(started)


def refusal_floor_s() -> float | None:
    """The floor in force (None until ``warm_up`` measured it)."""
    return _floor_s
