"""`RadioWorker`: Cow Radio for the running service.

The live stream (an always-on sink the pump feeds while the source delivers the configured
format) and the station playlist, rebuilt whenever a recording is published here or arrives
from a peer. Built by `recorder.app`, which hands it the settings it needs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from recorder.errors import ConfigError
from recorder.publish import Published
from recorder.radio.settings import RadioSettings

if TYPE_CHECKING:
    from recorder.audioid.catalogue import Catalogue
    from recorder.sinks.radio import RadioSink


class RadioWorker:
    """The live sink (None without ``radio.password_file``, or on a hub) and the playlist."""

    name = "radio"

    def __init__(self, settings: RadioSettings, catalogue: Catalogue | None,
                 make_sink: Callable[[], RadioSink] | None, *, in_use: bool) -> None:
        """`catalogue`: where the playlist's recordings come from (None: scan the sidecars).
        `make_sink`: builds the live stream's sink (None: no live stream). `in_use`: the
        configuration turns the radio on by itself (live, station or a live pin), so its
        secrets must be readable now."""
        self.settings = settings
        self.catalogue = catalogue
        self.sink: RadioSink | None = None
        if settings.radio.password_file is not None:
            # A radio that is on needs its secrets: a loose or missing one stops the service at
            # start, as papad's and Syncthing's do. A radio that is off needs none until
            # somebody goes live (`set_live` checks then): an install without Icecast must run
            # with the example config's password_file naming a file that was never made. The
            # stream reads the file again at each connection (a fixed file is picked up without
            # a restart).
            if in_use:
                self._check_secrets()
            if make_sink is not None:
                self.sink = make_sink()
        self._lock = threading.Lock()

    def update_playlist(self, _result: Published | None = None) -> None:
        """Rebuild the playlist files (publisher, bridge and start-up threads may all ask)."""
        from recorder.radio.playlist import catalogue_records, write_playlist

        with self._lock:
            records = (catalogue_records(self.catalogue, self.settings.sync_root,
                                         self.settings.radio.playlist_length)
                       if self.catalogue is not None else None)
            write_playlist(self.settings, records)

    def set_live(self, on: bool) -> None:
        if self.sink is None:
            raise ConfigError("radio.password_file: set it to stream live to Icecast")
        if on:
            self._check_secrets()  # one clear line to whoever asked, never a silent retry loop
        self.sink.set_live(on)

    def _check_secrets(self) -> None:
        from recorder.secrets import read_secret

        radio = self.settings.radio
        read_secret(radio.password_file, "radio.password_file")
        if radio.station and radio.harbor_password_file is not None:
            read_secret(radio.harbor_password_file, "radio.harbor_password_file")

    def start(self) -> None:
        if self.sink is not None:
            self.sink.start()
        self.update_playlist()

    def stop(self) -> None:
        if self.sink is not None:
            self.sink.close()

    def status(self) -> dict[str, Any]:
        return self.sink.status() if self.sink is not None else {"state": "not configured"}


__all__ = ["RadioWorker"]
