"""What the radio modules need to know, and nothing more: `RadioSettings`.

The playlist writer, the station script, the play log and the service's radio worker used to
take the whole `Config`; they need only the ``[radio]`` section, this device's id and folders,
and (for the station script's header) which config file it came from. `recorder.app` builds
this from the configuration, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from recorder.config import RadioConfig, StorageConfig
from recorder.layout import Layout

PLAYLIST_DIR = "radio"
STATION_NAME = "station.m3u"


@dataclass(frozen=True)
class RadioSettings:
    """The ``[radio]`` section and where this device's radio files live."""

    radio: RadioConfig
    layout: Layout  # this device's id and folders (the one rule for where they are)
    state_dir: Path
    config_path: Path | None = None  # named in the station script's header

    @classmethod
    def of(cls, radio: RadioConfig, device_id: str, storage: StorageConfig,
           config_path: Path | None = None) -> RadioSettings:
        return cls(radio, Layout.of(device_id, storage), storage.state_dir, config_path)

    @property
    def device_id(self) -> str:
        return self.layout.device_id

    @property
    def sync_root(self) -> Path:
        return self.layout.sync_root

    @property
    def playlist_dir(self) -> Path:
        """``<sync_root>/<device-id>/radio``: where this device's playlist files live."""
        return self.layout.device_folder / PLAYLIST_DIR

    @property
    def station_playlist(self) -> Path:
        """``<state_dir>/radio/station.m3u``: the station's playlist (absolute paths)."""
        return self.state_dir / PLAYLIST_DIR / STATION_NAME


__all__ = ["PLAYLIST_DIR", "STATION_NAME", "RadioSettings"]
