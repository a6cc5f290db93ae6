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
from dataclasses import dataclass
from pathlib import Path

from recorder.config import AudioIdConfig, PapadConfig
from recorder.db import Database
from recorder.layout import Layout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatabaseSpec:
    """Where the service database is and what its rebuild reads (built at the CLI / wiring
    edge from ``[storage]``, ``[audioid]``, ``[papad]`` and the device's `Layout`)."""

    path: Path
    layout: Layout
    audioid: AudioIdConfig
    papad: PapadConfig


def open_database(spec: DatabaseSpec) -> Database:
    """The database at ``spec.path``, rebuilt from the files on disk if it was corrupt."""
    return Database(spec.path, rebuild=lambda database: rebuild(database, spec))


def rebuild(database: Database, spec: DatabaseSpec) -> None:
    """Fill `database` (just replaced, empty) from the recordings on disk."""
    catalogued = queued = 0
    if spec.audioid.enabled:
        from recorder.audioid.catalogue import Catalogue

        report = Catalogue.from_config(database, spec.audioid).rebuild(
            spec.layout.sync_root, own_device=spec.layout.device_id)
        catalogued = report.added
    if spec.papad.api != "none":
        from recorder.papad.outbox import Outbox

        queued = Outbox(database).reconcile(spec.layout.device_folder)
    log.warning("database rebuilt from the recordings on disk: %d catalogued, %d queued for "
                "papad (each is looked up on papad before any upload); peers' recordings "
                "are imported again by the bridge's next scan", catalogued, queued)


__all__ = ["DatabaseSpec", "open_database", "rebuild"]
