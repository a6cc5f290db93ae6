"""Handing a new recording to Syncthing at once."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from recorder.layout import Layout
from recorder.mesh.membership.provision import folder_id
from recorder.mesh.net.syncthing import SyncthingClient

if TYPE_CHECKING:
    from recorder.publish import Published

log = logging.getLogger(__name__)


class ScanHandOff:
    """Publisher listener: ask Syncthing to scan the new files now instead of after the
    watcher delay. Publishing never depends on Syncthing being up."""

    def __init__(self, client: SyncthingClient, layout: Layout) -> None:
        self.client = client
        self.folder = folder_id(layout.device_id)
        self.root = layout.device_folder

    def __call__(self, result: Published) -> None:
        sub = str(result.ogg_path.parent.relative_to(self.root))
        if not self.client.scan_quietly(self.folder, sub=sub):
            log.info("Syncthing did not take the scan request; its watcher will pick it up")
