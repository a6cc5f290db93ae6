"""Wiring: the one place where components are built from the configuration and connected.

Everything else receives its collaborators; only this module decides which ones exist for a
given config (acoupi's "program" idea): the source, the per-recording sinks, the publisher with
its enrichers and listeners, and the service's background workers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from recorder.config import Config
from recorder.publish import Published, Publisher
from recorder.pump import Pump
from recorder.session import RecordingContext, SinkFactory
from recorder.sinks import Sink
from recorder.sources import AudioSource, open_source

log = logging.getLogger(__name__)


@dataclass
class Assembly:
    """The components one configuration asks for."""

    publisher: Publisher
    sink_factories: list[SinkFactory] = field(default_factory=list)
    workers: list[Any] = field(default_factory=list)  # start()/stop(), optional status() etc.


def sink_factories(cfg: Config) -> list[SinkFactory]:
    """Per-recording sinks beyond the journal, encoder and level meter every recording has."""
    factories: list[SinkFactory] = []
    if cfg.audioid.enabled:
        from recorder.sinks.fingerprint import FingerprintSink

        def fingerprint(ctx: RecordingContext) -> Sink:
            return FingerprintSink(ctx.samplerate, ctx.channels)

        factories.append(fingerprint)
    return factories


class CatalogueHook:
    """Publisher enricher: completes ``audio_id`` with the sha256 and records the recording in
    the Audio ID catalogue, which says whether it duplicates one already known."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._local = threading.local()  # a catalogue holds one SQLite connection per thread

    def catalogue(self) -> Any:
        cat = getattr(self._local, "catalogue", None)
        if cat is None:
            from recorder import db
            from recorder.audioid.catalogue import Catalogue

            cat = Catalogue.from_config(db.connect(self.cfg.db_path), self.cfg.audioid)
            self._local.catalogue = cat
        return cat

    def __call__(self, doc: dict[str, Any]) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if isinstance(doc.get("audio_id"), dict):
            extra["audio_id"] = {**doc["audio_id"], "sha256": doc["sha256"]}
        duplicate_of = self.catalogue().add({**doc, **extra})
        if duplicate_of:
            extra["duplicate_of"] = duplicate_of
            log.info("recording %s duplicates %s", doc["recording_id"], duplicate_of)
        return extra


class Registration:
    """papad registration for the service: the durable outbox and its delivery worker."""

    name = "papad"

    def __init__(self, cfg: Config, *, deliver: bool) -> None:
        from recorder.papad.client import make_client
        from recorder.papad.outbox import Outbox, OutboxWorker

        self.cfg = cfg
        self.outbox = Outbox(cfg.db_path)
        self.worker = None
        if deliver:
            client = make_client(cfg)  # a bad secret file stops start-up here, clearly
            self.worker = OutboxWorker(self.outbox, client, cfg.papad.concurrency)

    def on_published(self, result: Published) -> None:
        self.outbox.enqueue(result.sidecar, result.ogg_path)
        if self.worker is not None:
            self.worker.wake()

    def start(self) -> None:
        # Whatever was published while the service was down (or before a crash between publish
        # and enqueue) is queued now.
        queued = self.outbox.reconcile(self.cfg.device_folder)
        if queued:
            log.info("papad: queued %d recording(s) found on disk", queued)
        if self.worker is not None:
            self.worker.start()

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()

    def status(self) -> dict[str, Any]:
        return {"depth": self.outbox.depth(), "oldest_age_s": self.outbox.oldest_age(),
                **self.outbox.counts()}


class ScanHandOff:
    """Publisher listener: ask Syncthing to scan the new files now instead of after the
    watcher delay. Publishing never depends on Syncthing being up."""

    def __init__(self, cfg: Config) -> None:
        from recorder.mesh.provision import folder_id
        from recorder.mesh.syncthing import SyncthingClient

        self.client = SyncthingClient.from_config(cfg.syncthing)
        self.folder = folder_id(cfg.device.id)
        self.root = cfg.device_folder

    def __call__(self, result: Published) -> None:
        sub = str(result.ogg_path.parent.relative_to(self.root))
        if not self.client.scan_quietly(self.folder, sub=sub):
            log.info("Syncthing did not take the scan request; its watcher will pick it up")


class RadioWorker:
    """Cow Radio for the service: the live stream (an always-on sink fed by the pump) and the
    station playlist, rebuilt whenever a recording is published here or arrives from a peer."""

    name = "radio"

    def __init__(self, cfg: Config) -> None:
        from recorder.sinks.radio import RadioSink

        self.cfg = cfg
        self.sink = (RadioSink(cfg.radio, cfg.audio.samplerate, cfg.audio.channels,
                               title=f"Live: {cfg.device.id}", artist=cfg.device.id)
                     if cfg.radio.password_file is not None else None)
        self._lock = threading.Lock()

    def update_playlist(self, _result: Any = None) -> None:
        from recorder.radio.playlist import catalogue_records, write_playlist

        with self._lock:  # publisher and bridge threads may both ask
            write_playlist(self.cfg, catalogue_records(self.cfg))

    def write(self, block: Any) -> None:
        if self.sink is not None and block.shape[1] == self.cfg.audio.channels:
            self.sink.write(block)

    def set_live(self, on: bool) -> None:
        if self.sink is None:
            from recorder.errors import ConfigError

            raise ConfigError("radio.password_file: set it to stream live to Icecast")
        self.sink.set_live(on)

    def start(self) -> None:
        if self.sink is not None:
            self.sink.start()
        self.update_playlist()

    def stop(self) -> None:
        if self.sink is not None:
            self.sink.close()

    def status(self) -> dict[str, Any]:
        return self.sink.status() if self.sink is not None else {"state": "not configured"}


def assemble(cfg: Config, *, service: bool = False) -> Assembly:
    """Build the publisher and workers. `service`: also deliver to papad (the running service
    does; one-off commands only queue, durably, for the service to deliver)."""
    publisher = Publisher(cfg)
    assembly = Assembly(publisher, sink_factories(cfg))
    if cfg.audioid.enabled:
        publisher.enrichers.append(CatalogueHook(cfg))
    if cfg.papad.api != "none":
        registration = Registration(cfg, deliver=service)
        publisher.listeners.append(registration.on_published)
        assembly.workers.append(registration)
    if cfg.syncthing.api_key_file is not None:
        publisher.listeners.append(ScanHandOff(cfg))
    if service:
        radio = RadioWorker(cfg)
        publisher.listeners.append(radio.update_playlist)
        assembly.workers.append(radio)
        if cfg.radio.station:  # the station's play log, into playlist.json
            from recorder.radio.nowplaying import PlayLog

            assembly.workers.append(PlayLog(cfg))
    if service and cfg.syncthing.api_key_file is not None:
        from recorder.mesh.bridge import Bridge

        reg = next((w for w in assembly.workers if isinstance(w, Registration)), None)

        def imported() -> None:  # peers' recordings: register now, and put them on the air
            if reg is not None and reg.worker is not None:
                reg.worker.wake()
            radio.update_playlist()

        assembly.workers.append(Bridge(
            cfg, outbox=reg.outbox if reg else None,  # one outbox for own and peers' recordings
            on_queued=imported,
        ))
    return assembly


def build_publisher(cfg: Config) -> Publisher:
    """The publisher with the hooks this configuration asks for."""
    return assemble(cfg).publisher


def build_pump(cfg: Config, *, source_spec: str | None = None, realtime: bool = True,
               loop: bool = False, always_on: Sequence[Sink] = (),
               on_event: Callable[[str, dict[str, Any]], None] | None = None,
               assembly: Assembly | None = None) -> Pump:
    """Open the configured (or given) source and build a pump around it (not started)."""
    assembly = assembly or assemble(cfg)
    source: AudioSource = open_source(source_spec or cfg.audio.source, cfg.audio,
                                      realtime=realtime, loop=loop)
    return Pump(cfg, source, assembly.publisher, always_on=always_on,
                extra_sinks=assembly.sink_factories, on_event=on_event)
