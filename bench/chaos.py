"""The long fault-injection run: ``./run bench chaos`` (see ``tests/chaos/harness.py``).

Runs the real processes against the machine's PostgreSQL (``NETSYNC_TEST_DATABASE_URL``, an admin
URL; two scratch databases are created and dropped) or an embedded one, with a Redis of its own,
drives ``--changes`` changes and injects ``--kills`` kill -9s, a Redis outage, a Request database
outage and a full exports disk (a tmpfs; needs root), then prints the figures. The defaults are
the documented long run (100,000 changes over 40 minutes; figures in ``docs/reliability.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
from pathlib import Path

from tests.chaos.disk import mount_tmpfs, unique_dir, unmount
from tests.chaos.harness import Chaos, default_faults
from tests.chaos.plan import Plan
from tests.support import make_sandbox, provision_services


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--duration", type=float, default=2400.0, help="spread the changes (s)")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument(
        "--outage", type=float, default=30.0, help="Redis and Request DB outage (s)"
    )
    parser.add_argument("--disk-full", type=float, default=10.0, help="exports disk full (s)")
    parser.add_argument("--password-every", type=int, default=50)
    args = parser.parse_args()
    plan = Plan(
        changes=args.changes,
        duration_s=args.duration,
        users=args.users,
        settings=args.users,
        clients=args.clients,
        workers=args.workers,
        kills=args.kills,
        redis_outage_s=args.outage,
        request_db_outage_s=args.outage,
        disk_full_s=args.disk_full,
        password_every=args.password_every,
        converge_timeout_s=300,
    )
    root = Path(tempfile.mkdtemp(prefix="netsync-chaos-"))
    redis_dir = unique_dir("nsc")
    with provision_services(
        os.environ.get("NETSYNC_TEST_DATABASE_URL"), os.environ.get("NETSYNC_TEST_REDIS_URL")
    ) as services:
        sandbox = make_sandbox(root, services)
        disk = mount_tmpfs(sandbox.exports, size="512M")
        try:
            chaos = Chaos(sandbox, plan, redis_dir)
            report = asyncio.run(chaos.run(default_faults(chaos, disk=disk)))
        finally:
            if disk:
                unmount(sandbox.exports)
            shutil.rmtree(redis_dir, ignore_errors=True)
    print("\n".join(report.lines()))
    if not disk:
        print("(disk-full fault not run: mounting a tmpfs needs root)")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
