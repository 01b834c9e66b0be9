"""What sealing adds to one change's way from the API to the Request database, measured apart
from everything else on the path: the export file's write (``publish_export``: sign, seal,
fsync, rename) and the importer's read of it (take, verify, unseal, parse), sealed and
plaintext alternating file by file, so both meet the same machine. Prints the median of each
and their difference. No database, no servers.

    ./run bench sealing_cost [--changes 2000]

The end-to-end latency (``bench/e2e_latency.py``) varies by more than this from run to run on
a shared 2-core machine; this is the figure to compare with the sealing issue's "end-to-end
p50 grows by at most 1 ms".
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exchange.format import FileName  # noqa: E402
from exchange.sealing import Recipients, generate_identity, write_identity  # noqa: E402
from exchange.signing import Keyring, Signer, write_key_pair  # noqa: E402
from exchange.writer import publish_export  # noqa: E402
from importer.config import RequestSettings  # noqa: E402
from importer.daemon.keys import TrustedKeys  # noqa: E402
from importer.daemon.reading import FileReader  # noqa: E402

HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$YmVuY2gtaGFzaC1oYXNoLWhhc2g"


def _record(seq: int) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "entity": "user",
        "entity_id": str(uuid.uuid4()),
        "version": seq,
        "op": "upsert",
        "occurred_at": datetime.now(UTC).isoformat(),
        "data": {
            "username": f"user-{seq}",
            "password_hash": HASH,
            "role": "user",
            "is_active": True,
        },
    }


def main(changes: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="netsync-bench-sealing-"))
    signer = Signer.generate()
    write_key_pair(signer, root / "signing.pem", root / "trusted")
    identity, recipient = generate_identity()
    write_identity(root / "decryption", identity, recipient)
    recipients = Recipients.of([recipient])
    exports = root / "exports"
    exports.mkdir()
    (root / "spool").mkdir()
    settings = RequestSettings(
        _env_file=None,
        env="test",
        state_dir=root,
        exports_dir=exports,
        request_database_url="postgresql://unused@127.0.0.1/unused",
        trusted_keys_dir=root / "trusted",
        decryption_keys_dir=root / "decryption",
        accept_plaintext=True,
    )
    keys = TrustedKeys(
        settings.trusted_keys_path,
        settings.trusted_keys_list,
        Keyring.from_sources(settings.trusted_keys_path),
        identities_dir=settings.decryption_keys_path,
    )
    reader = FileReader(settings, keys, root / "spool")
    times: dict[str, tuple[list[float], list[float]]] = {"sealed": ([], []), "plaintext": ([], [])}
    for seq in range(1, 2 * changes + 1):
        mode = "sealed" if seq % 2 else "plaintext"
        started = time.perf_counter()
        publish_export(
            exports,
            signer,
            recipients=recipients if mode == "sealed" else None,
            stream="changes",
            seq=seq,
            kind="changes",
            file_id=uuid.uuid4(),
            created_at=datetime.now(UTC),
            records=[_record(seq)],
        )
        written = time.perf_counter()
        read = reader.read_one(FileName("changes", seq))
        done = time.perf_counter()
        if read is None or not hasattr(read, "records"):
            raise SystemExit(f"the file did not read back: {read!r}")
        os.unlink(exports / FileName("changes", seq).name)
        times[mode][0].append(written - started)
        times[mode][1].append(done - written)
    medians = {
        mode: (statistics.median(w) * 1e3, statistics.median(r) * 1e3)
        for mode, (w, r) in times.items()
    }
    for mode, (write, read_) in medians.items():
        print(
            f"{mode:>9}: write {write:.3f} ms + read {read_:.3f} ms = {write + read_:.3f} ms"
            f" (median of {changes})"
        )
    extra = sum(medians["sealed"]) - sum(medians["plaintext"])
    print(f"sealing adds {extra:+.3f} ms to one change's way (write and read)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--changes", type=int, default=2000, help="files of each kind")
    main(parser.parse_args().changes)
