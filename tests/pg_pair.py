"""A PostgreSQL primary and its streaming standby, as real processes on loopback ports.

Built with the machine's own PostgreSQL binaries (``pg_config --bindir``, else Debian's
``/usr/lib/postgresql/<version>/bin``): ``initdb``, ``pg_basebackup -R``, ``pg_ctl``. Replication
is synchronous (the standby is named in ``synchronous_standby_names``), so a commit the primary
acknowledged is on the standby too and survives the primary's loss; the standby's own
``synchronous_standby_names`` is empty, so once promoted it does not wait for a standby it does
not have (what Patroni and CloudNativePG manage for their clusters). PostgreSQL refuses to run as
root: under root the servers run as the ``postgres`` user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

from tests.support import free_port


def pg_bindir() -> Path | None:
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=False)
        candidate = Path(out.stdout.strip())
        if (candidate / "pg_basebackup").exists():
            return candidate
    for found_dir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(found_dir, "pg_basebackup").exists():
            return Path(found_dir)
    return None


class PgPair:
    def __init__(self, root: Path, *, fsync: bool = False) -> None:
        bindir = pg_bindir()
        if bindir is None:
            raise RuntimeError(
                "PostgreSQL's server binaries are missing: apt-get install postgresql"
            )
        self.bin = bindir
        self.root = root
        self.ports = {"primary": free_port(), "standby": free_port()}
        self._as: list[str] = []
        root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(root, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self.primary = "primary"
        self._fsync = fsync
        self._initdb()
        self._run("pg_ctl", "-D", self._dir("primary"), "-w", "-l", self._log("primary"), "start")
        self._basebackup()
        self._run("pg_ctl", "-D", self._dir("standby"), "-w", "-l", self._log("standby"), "start")
        self._wait_streaming()

    # -- addresses ------------------------------------------------------------------------

    def url(self, database: str) -> str:
        """The libpq multi-host form every netsync process is given."""
        hosts = f"127.0.0.1:{self.ports['primary']},127.0.0.1:{self.ports['standby']}"
        return f"postgresql://postgres@{hosts}/{database}?target_session_attrs=read-write"

    def single(self, name: str, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.ports[name]}/{database}"

    # -- building -------------------------------------------------------------------------

    def _dir(self, name: str) -> str:
        return str(self.root / name)

    def _log(self, name: str) -> str:
        return str(self.root / f"{name}.log")

    def _run(self, tool: str, *args: str) -> str:
        done = subprocess.run(
            [*self._as, str(self.bin / tool), *args],
            capture_output=True,
            text=True,
            check=False,
            cwd=self.root,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def _initdb(self) -> None:
        self._run("initdb", "-D", self._dir("primary"), "-U", "postgres", "--auth=trust", "-N")
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.ports["primary"]),
            "unix_socket_directories": f"'{self.root}'",
            "wal_level": "replica",
            "max_wal_senders": "5",
            "hot_standby": "on",
            "synchronous_standby_names": "'standby'",
            "synchronous_commit": "on",
            # the tests are about a process lost, not a power cut; the benchmark turns it on
            "fsync": "on" if self._fsync else "off",
            "max_connections": "200",
        }
        with open(Path(self._dir("primary")) / "postgresql.conf", "a") as conf:
            conf.writelines(f"{k} = {v}\n" for k, v in settings.items())
        with open(Path(self._dir("primary")) / "pg_hba.conf", "a") as hba:
            hba.write("host replication all 127.0.0.1/32 trust\n")

    def _basebackup(self) -> None:
        port = self.ports["primary"]
        self._run(
            "pg_basebackup",
            "-D",
            self._dir("standby"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "postgres",
            "-R",
            "-X",
            "stream",
        )
        with open(Path(self._dir("standby")) / "postgresql.auto.conf", "a") as conf:
            conf.write(
                f"port = {self.ports['standby']}\n"
                f"primary_conninfo = 'host=127.0.0.1 port={port} user=postgres"
                " application_name=standby'\n"
                "synchronous_standby_names = ''\n"
            )

    def _wait_streaming(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        query = "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby'"
        while time.monotonic() < deadline:
            state = self._psql("primary", query)
            if state == "sync":
                return
            time.sleep(0.2)
        raise RuntimeError(f"standby not streaming synchronously in {timeout} s; see {self.root}")

    def _psql(self, name: str, sql: str) -> str:
        psql = str(self.bin / "psql") if (self.bin / "psql").exists() else "psql"
        done = subprocess.run(
            [psql, "-X", "-A", "-t", "-d", self.single(name), "-c", sql],
            capture_output=True,
            text=True,
            check=False,
        )
        return done.stdout.strip()

    # -- faults ---------------------------------------------------------------------------

    def fail_over(self) -> float:
        """Stop the primary with ``-m immediate`` (a crash: no shutdown checkpoint, connections
        cut), promote the standby; returns the moment the promoted server takes writes."""
        self._run("pg_ctl", "-D", self._dir("primary"), "-m", "immediate", "stop")
        self._run("pg_ctl", "-D", self._dir("standby"), "-w", "promote")
        self.primary = "standby"
        deadline = time.monotonic() + 30
        while self._psql("standby", "SELECT pg_is_in_recovery()") != "f":
            if time.monotonic() > deadline:
                raise RuntimeError("the promoted standby still in recovery after 30 s")
            time.sleep(0.05)
        return time.monotonic()

    def stop(self) -> None:
        for name in ("standby", "primary"):
            if Path(self._dir(name), "postmaster.pid").exists():
                with contextlib.suppress(RuntimeError):
                    self._run("pg_ctl", "-D", self._dir(name), "-m", "immediate", "stop")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
