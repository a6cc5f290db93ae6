"""Open the service database for a configuration, able to rebuild it after corruption.

Everything the database holds can be found again on disk: the Audio ID catalogue from the
published sidecars (own and peers'), the papad outbox by reconciling this device's folder
(papad is asked for each recording's media before anything is uploaded, so nothing is
registered twice), and the bridge's table by the bridge's next scan. `open_database` hands
`recorder.db.Database` the function that does the first two, so every command that opens the
database repairs it the same way (see `Database` for when it runs).
"""

from __future__ import annotations

import logging

from recorder.config import Config
from recorder.db import Database

log = logging.getLogger(__name__)


def open_database(cfg: Config) -> Database:
    """The database at ``cfg.db_path``, rebuilt from the files on disk if it was corrupt."""
    return Database(cfg.db_path, rebuild=lambda database: rebuild(database, cfg))


def rebuild(database: Database, cfg: Config) -> None:
    """Fill `database` (just replaced, empty) from the recordings on disk."""
    catalogued = queued = 0
    if cfg.audioid.enabled:
        from recorder.audioid.catalogue import Catalogue

        report = Catalogue.from_config(database, cfg.audioid).rebuild(
            cfg.storage.sync_root, own_device=cfg.device.id)
        catalogued = report.added
    if cfg.papad.api != "none":
        from recorder.papad.outbox import Outbox

        queued = Outbox(database).reconcile(cfg.layout.device_folder)
    log.warning("database rebuilt from the recordings on disk: %d catalogued, %d queued for "
                "papad (each is looked up on papad before any upload); peers' recordings "
                "are imported again by the bridge's next scan", catalogued, queued)


__all__ = ["open_database", "rebuild"]
