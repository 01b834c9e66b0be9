"""``python -m importer``: the Request Network's importer daemon (watch mode).

``python -m importer --once`` applies what the directory holds now and exits (for cron-style
deployments and for operators). SIGTERM and SIGINT stop the daemon between batches: the batch
being applied commits or rolls back as a whole, and committed files are archived before it exits.
SIGHUP re-reads the trusted public keys (they are also re-read whenever their directory changes).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from exchange.sealing import KeyFileError
from exchange.signing import Keyring
from importer.config import RequestSettings
from importer.daemon.keys import load_identities
from importer.daemon.loop import Importer
from importer.daemon.probes import importer_probes
from importer.db import make_sessionmaker
from netsync.config import ConfigurationError
from netsync.db import make_engine
from netsync.heap import freeze
from netsync.logging import configure_logging
from netsync.probes import start_probes

log = logging.getLogger("importer")


def load_keyring(settings: RequestSettings) -> Keyring:
    return Keyring.from_sources(settings.trusted_keys_path, settings.trusted_keys_list)


async def main(once: bool = False) -> int:
    settings = RequestSettings()
    configure_logging("importer", level=settings.log_level, fmt=settings.log_format)
    keyring = load_keyring(settings)
    if not keyring.key_ids:
        log.error("no trusted public keys: set NETSYNC_TRUSTED_KEYS_DIR or NETSYNC_TRUSTED_KEYS")
        return 2
    try:
        identities = load_identities(settings)
    except (KeyFileError, ConfigurationError) as exc:
        log.error("refusing to start: %s", exc)
        return 2
    engine = make_engine(
        settings.database_url, pool_size=2, application_name="netsync-importer", pre_ping=False
    )
    importer = Importer(settings, make_sessionmaker(engine), keyring, identities)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, importer.request_key_reload)
    if settings.gc_freeze:  # built what it keeps: the collector's full passes skip it now
        freeze()
    try:
        if once:
            importer.prepare()
            try:
                result = await importer.scan_once()
            finally:
                await asyncio.to_thread(importer.reader.close)  # its unsealing child
            log.info("import pass finished", extra=result.__dict__)
        else:
            probes = await start_probes(
                importer_probes(importer, engine),
                host=settings.metrics_host,
                port=settings.importer_metrics_port,
                name="importer",
            )
            try:
                await importer.run(stop)
            finally:
                if probes is not None:
                    await probes.stop()
    finally:
        await engine.dispose()
    log.info("importer stopped")
    return 0


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m importer", description=__doc__)
    parser.add_argument("--once", action="store_true", help="apply what is there now and exit")
    args = parser.parse_args()
    raise SystemExit(asyncio.run(main(once=args.once)))


if __name__ == "__main__":
    cli()
