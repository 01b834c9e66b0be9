"""Every supported CPython installs the lock and runs the system: the newcomer's two commands.

The whole suite runs on one interpreter; on each of the others found on the machine, a fresh
virtualenv is built from ``requirements.lock`` by ``./run`` itself (all of them at once, when the
first of these tests starts: the installs overlap instead of queueing), then ``./run up`` starts
the whole system on its embedded PostgreSQL and Redis, a password change crosses to the Request
Network, and Ctrl-C (SIGINT) stops every process and server.

The interpreters are the ones CI's machine has (pyenv's and Debian's own ``python3``). One that is
missing is skipped with the command that provides it, never passed silently.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
ADMIN_PASSWORD = "smoke test pass phrase 1"
pytestmark = [pytest.mark.slow, pytest.mark.proof]

#: (label, how to find it, how to get it)
INTERPRETERS = [
    ("debian-3.11.2", "/usr/bin/python3", "apt-get install -y python3 python3-venv"),
    ("pyenv-3.11.7", "~/.pyenv/versions/3.11.7/bin/python", "pyenv install 3.11.7"),
    ("pyenv-3.12.1", "~/.pyenv/versions/3.12.1/bin/python", "pyenv install 3.12.1"),
    ("pyenv-3.13.0", "~/.pyenv/versions/3.13.0/bin/python", "pyenv install 3.13.0"),
]


def _same_as_running(path: Path) -> bool:
    version = subprocess.run(
        [str(path), "-c", "import sys; print(sys.version)"], capture_output=True, text=True
    ).stdout.strip()
    return version == sys.version


@pytest.fixture
def scratch() -> Iterator[Path]:
    # short: the embedded Redis listens on a Unix socket under it (108-byte limit)
    path = Path(tempfile.mkdtemp(prefix="ns-smoke-"))
    path.chmod(0o755)  # as root, the embedded PostgreSQL runs as its own user and must get in
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _others() -> dict[str, Path]:
    """The interpreters here that the suite does not run on, by label."""
    found = {}
    for label, where, _ in INTERPRETERS:
        python = Path(where).expanduser()
        if python.exists() and not _same_as_running(python):
            found[label] = python
    return found


@pytest.fixture(scope="module")
def venvs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """A fresh virtualenv per interpreter, each built by ``./run`` from the lock, all at once;
    with each, what its build printed (a failed build fails its own test, not the others)."""
    root = tmp_path_factory.mktemp("venvs")

    def build(label: str, python: Path) -> tuple[str, tuple[Path, str]]:
        venv = root / label
        env = _base_env(python) | {"NETSYNC_VENV": str(venv)}
        done = subprocess.run(
            [str(ROOT / "run"), "true"], cwd=ROOT, env=env, capture_output=True, text=True
        )
        return label, (venv, f"exit {done.returncode}: {done.stderr[-3000:]}")

    with concurrent.futures.ThreadPoolExecutor() as pool:
        return dict(pool.map(lambda item: build(*item), _others().items()))


def _base_env(python: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NETSYNC_")}
    env.pop("VIRTUAL_ENV", None)
    # the suite's own virtualenv must not shadow the one under test
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT / ".venv"))
    )
    return env | {"PYTHON": str(python)}


def _env(scratch: Path, python: Path, api_port: int, request_port: int) -> dict[str, str]:
    env = _base_env(python)
    env |= {
        "NETSYNC_VENV": str(scratch / "venv"),
        "NETSYNC_STATE_DIR": str(scratch / "state"),
        "NETSYNC_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "NETSYNC_RESPONSE_API_PORT": str(api_port),
        "NETSYNC_REQUEST_API_PORT": str(request_port),
        "NETSYNC_WORKER_METRICS_PORT": str(free_port()),
        "NETSYNC_BULK_WORKER_METRICS_PORT": str(free_port()),
        "NETSYNC_IMPORTER_METRICS_PORT": str(free_port()),
    }
    return env


def _wait_ready(
    client: httpx.Client, url: str, proc: subprocess.Popen[bytes], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"./run up exited with {proc.returncode} before {url} was ready")
        try:
            if client.get(url).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} not ready after {timeout:.0f} s")


def _password_crosses(client: httpx.Client, api: str, req: str) -> float:
    """Create a user, reset the password; seconds until the new one signs in on the Request side."""
    token = client.post(
        f"{api}/api/v1/auth/token", data={"username": "admin", "password": ADMIN_PASSWORD}
    ).json()["access_token"]
    admin = {"Authorization": f"Bearer {token}"}
    created = client.post(
        f"{api}/api/v1/users",
        json={"username": "grace", "password": "first smoke phrase"},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    reset = client.post(
        f"{api}/api/v1/users/{created.json()['id']}/reset-password",
        json={"new_password": "second smoke phrase"},
        headers=admin,
    )
    assert reset.status_code == 200, reset.text
    start = time.monotonic()
    while time.monotonic() - start < 20:
        login = client.post(
            f"{req}/api/v1/auth/login",
            json={"username": "grace", "password": "second smoke phrase"},
        )
        if login.status_code == 200:
            return time.monotonic() - start
        time.sleep(0.25)  # each wrong try counts against the account's sign-in throttle
    pytest.fail("the new password did not reach the Request Network within 20 s")


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,sid="], capture_output=True, text=True).stdout
    rows = [tuple(int(x) for x in line.split()) for line in out.splitlines() if line.strip()]
    children: dict[int, list[int]] = {}
    for child, parent, _ in rows:
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.mark.parametrize(
    ("label", "where", "install"), INTERPRETERS, ids=[i[0] for i in INTERPRETERS]
)
def test_run_up_on_each_python(
    label: str, where: str, install: str, scratch: Path, venvs: dict[str, tuple[Path, str]]
) -> None:
    python = Path(where).expanduser()
    if not python.exists():
        pytest.skip(f"{label} is not installed here ({install})")
    if _same_as_running(python):
        pytest.skip(f"{label} runs the whole suite already")
    venv, built = venvs[label]
    assert (venv / ".netsync-lock").exists(), f"./run did not build the virtualenv: {built}"
    api_port, request_port = free_port(), free_port()
    env = _env(scratch, python, api_port, request_port) | {"NETSYNC_VENV": str(venv)}
    started = time.monotonic()
    log = (scratch / "up.log").open("wb")
    tree: list[int] = []
    proc = subprocess.Popen(
        [str(ROOT / "run"), "up"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        with httpx.Client(timeout=5) as client:
            api, req = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{request_port}"
            _wait_ready(client, f"{api}/ready", proc, timeout=400)
            _wait_ready(client, f"{req}/ready", proc, timeout=60)
            up_s = time.monotonic() - started
            crossed_s = _password_crosses(client, api, req)
        tree = _descendants(proc.pid)
        assert tree, "./run up started no processes"
        proc.send_signal(signal.SIGINT)
        stop_start = time.monotonic()
        code = proc.wait(timeout=60)
        stop_s = time.monotonic() - stop_start
        left = [pid for pid in tree if Path(f"/proc/{pid}").exists()]
        postmaster = scratch / "state" / "pg" / "postmaster.pid"
        print(
            f"\n{label}: up {up_s:.0f} s (venv built beforehand),"
            f" password crossed in {crossed_s * 1000:.0f} ms, "
            f"stopped in {stop_s:.1f} s"
        )
        assert code == 0, (scratch / "up.log").read_text()[-3000:]
        assert not left, f"processes still running after Ctrl-C: {left}"
        assert not postmaster.exists(), "the embedded PostgreSQL is still running"
    finally:
        _stop_everything(proc, tree, scratch)
        log.close()


def _stop_everything(proc: subprocess.Popen[bytes], tree: list[int], scratch: Path) -> None:
    """After a failure part-way: Ctrl-C first, then SIGKILL whatever is left of the stack."""
    tree = tree or _descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError, ValueError):  # pg_ctl's postmaster is not a child
        pid = int((scratch / "state" / "pg" / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
