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

PLAYLIST_DIR = "radio"
STATION_NAME = "station.m3u"


@dataclass(frozen=True)
class RadioSettings:
    """The ``[radio]`` section and where this device's radio files live."""

    radio: RadioConfig
    device_id: str
    sync_root: Path
    state_dir: Path
    config_path: Path | None = None  # named in the station script's header

    @classmethod
    def of(cls, radio: RadioConfig, device_id: str, storage: StorageConfig,
           config_path: Path | None = None) -> RadioSettings:
        return cls(radio, device_id, storage.sync_root, storage.state_dir, config_path)

    @property
    def device_folder(self) -> Path:
        return self.sync_root / self.device_id

    @property
    def playlist_dir(self) -> Path:
        """``<sync_root>/<device-id>/radio``: where this device's playlist files live."""
        return self.device_folder / PLAYLIST_DIR

    @property
    def station_playlist(self) -> Path:
        """``<state_dir>/radio/station.m3u``: the station's playlist (absolute paths)."""
        return self.state_dir / PLAYLIST_DIR / STATION_NAME


__all__ = ["PLAYLIST_DIR", "STATION_NAME", "RadioSettings"]
