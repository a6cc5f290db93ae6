"""Where things live on disk: the storage layout one device works in.

``<sync_root>/<device-id>/`` is this device's own synced folder (``recordings/...``,
``papad/annotations.json``, ``radio/``); every other safe name under the sync root is a peer's
folder, held receive-only. ``staging_dir`` is on the same filesystem, outside every synced
folder: temporary files are written there and renamed into place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class StorageFolders(Protocol):
    """Where the synced tree and staging are (``[storage]``: `recorder.config.StorageConfig`)."""

    @property
    def sync_root(self) -> Path: ...

    @property
    def staging_dir(self) -> Path: ...


@dataclass(frozen=True)
class Layout:
    """This device's folders (built from ``[storage]`` and the device id in `recorder.app`)."""

    device_id: str
    sync_root: Path
    staging_dir: Path

    @classmethod
    def of(cls, device_id: str, storage: StorageFolders) -> Layout:
        return cls(device_id, storage.sync_root, storage.staging_dir)

    @property
    def device_folder(self) -> Path:
        """This device's own folder in the Syncthing tree."""
        return self.sync_root / self.device_id

    def folder_of(self, device_id: str) -> Path:
        """The folder of `device_id` (this device's or a peer's)."""
        return self.sync_root / device_id


def origin_label(device_id: str, own_id: str | None) -> str:
    """How the catalogue and the outbox name where a recording came from: ``own`` or
    ``peer:<device-id>``."""
    return "own" if own_id is None or device_id == own_id else f"peer:{device_id}"


def device_folders(sync_root: Path) -> list[Path]:
    """Every device folder under `sync_root` (own and peers'): directories, never symlinks,
    whose names are safe device ids, in name order."""
    from recorder.deviceid import is_device_id

    try:
        entries = sorted(os.scandir(sync_root), key=lambda e: e.name)
    except OSError:
        return []
    return [Path(e.path) for e in entries
            if is_device_id(e.name) and e.is_dir(follow_symlinks=False)]
