"""Wiring: the one place where components are built from the configuration and connected.

Everything else receives its collaborators; only this module decides which ones exist for a
given config (acoupi's "program" idea) and builds each exactly once: the database, the papad
client, the Syncthing client, the catalogue, the outbox and its worker, the bridge with its
annotation exchange, the radio, the publisher with its enrichers and listeners, and the pump
around the source. Components get the settings object or config section they need, never the
whole `Config`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from recorder.config import AudioConfig, Config, SourceSpec
from recorder.db import Database
from recorder.dbrepair import open_database
from recorder.layout import Layout
from recorder.publish import Published, Publisher
from recorder.pump import Pump, PumpEvent, PumpSettings
from recorder.session import RecordingContext, SessionSettings, SinkFactory
from recorder.sinks import AlwaysOnSink, Sink
from recorder.sources import AudioSource, open_source
from recorder.storage import Reserve
from recorder.worker import ServiceRequest, Worker

if TYPE_CHECKING:
    from recorder.audioid.catalogue import Catalogue
    from recorder.mesh.bridge import Bridge
    from recorder.mesh.clockfix import ClockFixer
    from recorder.mesh.keeper import MeshKeeper
    from recorder.mesh.syncthing import SyncthingClient
    from recorder.papad.client import PapadClient
    from recorder.papad.outbox import Outbox, OutboxWorker
    from recorder.radio.nowplaying import PlayLog
    from recorder.sinks.radio import RadioSink
    from recorder.waveform import Waveforms
    from recorder.web.server import WebWorker

log = logging.getLogger(__name__)


class CatalogueHook:
    """Publisher enricher: completes ``audio_id`` with the sha256 and records the recording in
    the Audio ID catalogue, which says whether it duplicates one already known."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue

    def __call__(self, doc: dict[str, Any]) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if isinstance(doc.get("audio_id"), dict):
            extra["audio_id"] = {**doc["audio_id"], "sha256": doc["sha256"]}
        # The index postings are written after publishing (`index_pending`, a listener): their
        # cost grows with the length, stop-to-published must not.
        duplicate_of = self.catalogue.add({**doc, **extra}, defer_index=True)
        if duplicate_of:
            extra["duplicate_of"] = duplicate_of
            log.info("recording %s duplicates %s", doc["recording_id"], duplicate_of)
        return extra

    def published(self, _result: Published) -> None:
        """Publisher listener: the postings `__call__` left for after publishing."""
        self.catalogue.index_pending()


class Registration:
    """papad registration for the service: the durable outbox and, in the service, its
    delivery worker (one-off commands only queue, durably, for the service to deliver)."""

    name = "papad"

    def __init__(self, outbox: Outbox, layout: Layout,
                 worker: OutboxWorker | None = None) -> None:
        self.outbox = outbox
        self.layout = layout
        self.worker = worker

    def on_published(self, result: Published) -> None:
        self.outbox.enqueue(result.sidecar, result.ogg_path)
        self.wake()

    def wake(self) -> None:
        """Deliver now (something was queued) instead of at the next poll."""
        if self.worker is not None:
            self.worker.wake()

    def start(self) -> None:
        # Whatever was published while the service was down (or before a crash between publish
        # and enqueue) is queued now.
        try:
            queued = self.outbox.reconcile(self.layout.device_folder)
        except Exception as exc:  # a full disk: deliver what is queued, reconcile next start
            log.error("papad: recordings on disk not reconciled with the outbox: %s", exc)
            queued = 0
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

    def __init__(self, client: SyncthingClient, layout: Layout) -> None:
        from recorder.mesh.provision import folder_id

        self.client = client
        self.folder = folder_id(layout.device_id)
        self.root = layout.device_folder

    def __call__(self, result: Published) -> None:
        sub = str(result.ogg_path.parent.relative_to(self.root))
        if not self.client.scan_quietly(self.folder, sub=sub):
            log.info("Syncthing did not take the scan request; its watcher will pick it up")


class RadioWorker:
    """Cow Radio for the service: the live stream (an always-on sink fed by the pump while the
    source delivers the configured format) and the station playlist, rebuilt whenever a
    recording is published here or arrives from a peer."""

    name = "radio"

    def __init__(self, cfg: Config, catalogue: Catalogue | None) -> None:
        self.cfg = cfg  # the playlist writer takes the whole config (device, storage, radio)
        self.catalogue = catalogue
        self.sink: RadioSink | None = None
        if cfg.radio.password_file is not None:
            from recorder.secrets import read_secret
            from recorder.sinks.radio import RadioSink

            # A loose or missing secret stops the service at start, as papad's and Syncthing's
            # do; the stream itself reads the file again at each connection (a fixed file is
            # picked up without a restart).
            read_secret(cfg.radio.password_file, "radio.password_file")
            if cfg.radio.station and cfg.radio.harbor_password_file is not None:
                read_secret(cfg.radio.harbor_password_file, "radio.harbor_password_file")
            # Stream metadata while live: "Live: <device>" (the station's playlist carries each
            # recording's own title and device).
            self.sink = RadioSink(cfg.radio, cfg.audio.samplerate, cfg.audio.channels,
                                  title=f"Live: {cfg.device.id}", artist=cfg.device.id)
        self._lock = threading.Lock()

    def update_playlist(self, _result: Published | None = None) -> None:
        from recorder.radio.playlist import catalogue_records, write_playlist

        with self._lock:  # publisher and bridge threads may both ask
            records = (catalogue_records(self.catalogue, self.cfg.storage.sync_root,
                                         self.cfg.radio.playlist_length)
                       if self.catalogue is not None and self.cfg.audioid.enabled else None)
            write_playlist(self.cfg, records)

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


@dataclass
class Assembly:
    """The components one configuration asks for, each built once by `assemble`.

    The optional parts are None when the configuration does not ask for them. `close()`
    releases the database connections and HTTP sessions (after the workers stopped).
    """

    layout: Layout
    database: Database
    reserve: Reserve
    publisher: Publisher
    pump_settings: PumpSettings
    sink_factories: list[SinkFactory] = field(default_factory=list)
    catalogue: Catalogue | None = None
    papad: PapadClient | None = None
    syncthing: SyncthingClient | None = None
    registration: Registration | None = None
    radio: RadioWorker | None = None
    play_log: PlayLog | None = None
    bridge: Bridge | None = None
    waveforms: Waveforms | None = None
    web: WebWorker | None = None
    mesh: MeshKeeper | None = None
    clock: ClockFixer | None = None

    @property
    def workers(self) -> list[Worker]:
        """The service's background workers, in start order."""
        return [w for w in (self.registration, self.radio, self.play_log, self.bridge, self.mesh,
                            self.clock, self.web)
                if w is not None]

    @property
    def stream_sinks(self) -> list[AlwaysOnSink]:
        """Always-on sinks besides the service's level meter (the live radio stream)."""
        return [self.radio.sink] if self.radio is not None and self.radio.sink else []

    def close(self) -> None:
        for client in (self.papad, self.syncthing):
            if client is not None:
                client.close()
        self.database.close()


def pump_settings(cfg: Config) -> PumpSettings:
    """The pump's and the session's settings from their config sections."""
    return PumpSettings(
        preroll=cfg.audio.preroll,
        max_seconds=cfg.storage.max_seconds,
        stall_seconds=cfg.service.stall_seconds,
        session=SessionSettings(
            device_id=cfg.device.id,
            staging_dir=cfg.storage.staging_dir,
            encoder=cfg.encoder,
            flush_seconds=cfg.storage.flush_seconds,
            silence_dbfs=cfg.service.silence_dbfs,
        ),
    )


def sink_factories(cfg: Config) -> list[SinkFactory]:
    """Per-recording sinks beyond the journal, encoder and level meter every recording has."""
    factories: list[SinkFactory] = []
    if cfg.audioid.enabled:
        from recorder.sinks.fingerprint import FingerprintSink

        def fingerprint(ctx: RecordingContext) -> Sink:
            return FingerprintSink(ctx.format.samplerate, ctx.format.channels, ctx.recording_id)

        factories.append(fingerprint)
    return factories


def assemble(cfg: Config, *, service: bool = False, radio: bool = True,
             bridge: bool | None = None, request: ServiceRequest | None = None) -> Assembly:
    """Build every component `cfg` asks for, once.

    `service`: also the service's workers (papad delivery, radio unless `radio` is false,
    the bridge when Syncthing is configured or `bridge` is true, the web page when
    ``web.enabled`` and the service passes its `request`); one-off commands only publish and
    queue, durably, for the service to deliver.
    """
    layout = Layout.of(cfg.device.id, cfg.storage)
    database = open_database(cfg)
    publisher = Publisher(layout)
    parts = Assembly(
        layout=layout, database=database,
        reserve=Reserve(cfg.storage.sync_root, cfg.storage.reserve_mb),
        publisher=publisher, pump_settings=pump_settings(cfg),
        sink_factories=sink_factories(cfg),
    )
    bridged = service and (cfg.syncthing.api_key_file is not None if bridge is None else bridge)
    if cfg.audioid.enabled or bridged:
        from recorder.audioid.catalogue import Catalogue

        parts.catalogue = Catalogue.from_config(database, cfg.audioid)
    if cfg.audioid.enabled and parts.catalogue is not None:
        publisher.enrichers.append(CatalogueHook(parts.catalogue))
    if cfg.papad.api != "none":
        from recorder.papad.outbox import Outbox

        outbox = Outbox(database)
        worker = None
        if service:
            from recorder.papad.client import make_client
            from recorder.papad.outbox import OutboxWorker

            parts.papad = make_client(cfg)  # a bad secret file stops start-up here, clearly
            if parts.papad is not None:
                worker = OutboxWorker(outbox, parts.papad, cfg.papad.concurrency)
        parts.registration = Registration(outbox, layout, worker)
        publisher.listeners.append(parts.registration.on_published)
    if cfg.syncthing.api_key_file is not None:
        from recorder.mesh.syncthing import SyncthingClient

        parts.syncthing = SyncthingClient.from_config(cfg.syncthing)
        publisher.listeners.append(ScanHandOff(parts.syncthing, layout))
    if service and radio:
        parts.radio = RadioWorker(cfg, parts.catalogue)
        publisher.listeners.append(parts.radio.update_playlist)
        if cfg.radio.station:  # the station's play log, into playlist.json
            from recorder.radio.nowplaying import PlayLog

            parts.play_log = PlayLog(cfg)
    if bridged and parts.catalogue is not None:
        parts.bridge = _bridge(cfg, parts)
        bridge_ = parts.bridge
        if parts.registration is not None and parts.registration.worker is not None:
            # A recording papad now has may carry annotations to export: do it at once.
            parts.registration.worker.on_delivered = lambda *_: bridge_.export_soon()
    if service and parts.syncthing is not None:
        from recorder.mesh.keeper import MeshKeeper

        parts.mesh = MeshKeeper(cfg, parts.syncthing, database)
    if service:
        parts.clock = _clock_fixer(parts)
    if cfg.web.enabled:
        from recorder.waveform import Waveforms

        parts.waveforms = Waveforms(database)  # peaks made while recording, stored at publish
        parts.sink_factories.append(parts.waveforms.sink)
        publisher.enrichers.insert(0, parts.waveforms.enrich)
        if service and request is not None:
            parts.web = _web(cfg, parts, request)
    if cfg.audioid.enabled and parts.catalogue is not None:
        # Last: the papad queue, the Syncthing scan and the playlist do not wait for it.
        publisher.listeners.append(CatalogueHook(parts.catalogue).published)
    return parts


def _web(cfg: Config, parts: Assembly, request: ServiceRequest) -> WebWorker:
    """The web page, reading the shared components and asking the service through
    `request`; a bad password file stops start-up here, clearly."""
    from recorder.mesh.store import BridgeStore
    from recorder.web.server import Collaborators, WebWorker

    assert parts.waveforms is not None
    mesh_status: Callable[[], dict[str, Any]] | None = None
    if parts.syncthing is not None:
        from recorder.mesh import provision

        client = parts.syncthing

        def mesh_status() -> dict[str, Any]:
            return provision.status(cfg, client)

    reg = parts.registration
    return WebWorker(cfg.web, Collaborators(
        request=request, layout=parts.layout, waveforms=parts.waveforms,
        catalogue=parts.catalogue, outbox=reg.outbox if reg is not None else None,
        wake_outbox=reg.wake if reg is not None else None,
        bridge_store=parts.bridge.store if parts.bridge is not None
        else BridgeStore(parts.database),
        mesh_status=mesh_status, syncthing=parts.syncthing,
        yggdrasil_endpoint=cfg.yggdrasil.admin_endpoint,
        encoder=cfg.encoder, channels=cfg.audio.channels))


def _clock_fixer(parts: Assembly) -> ClockFixer:
    """Clock correction of this device's recordings, re-registered in the catalogue and handed
    to Syncthing at once."""
    from recorder.mesh.clockfix import ClockFixer

    catalogue, syncthing, layout = parts.catalogue, parts.syncthing, parts.layout

    def corrected(doc: dict[str, Any], path: Any) -> None:
        if catalogue is not None:
            catalogue.add(doc)
        if syncthing is not None:
            from recorder.mesh.provision import folder_id

            syncthing.scan_quietly(folder_id(layout.device_id),
                                   sub=str(path.parent.relative_to(layout.device_folder)))

    return ClockFixer(layout.device_folder, layout.staging_dir, on_corrected=corrected)


def _bridge(cfg: Config, parts: Assembly) -> Bridge:
    """The sync bridge and its annotation exchange, sharing the service's outbox, papad and
    Syncthing clients, catalogue and database."""
    from recorder.mesh.annotations import AnnotationExchange
    from recorder.mesh.bridge import Bridge
    from recorder.mesh.store import BridgeStore

    assert parts.catalogue is not None
    store = BridgeStore(parts.database)
    reg, radio = parts.registration, parts.radio
    exchange = None
    if reg is not None and parts.papad is not None:
        exchange = AnnotationExchange(parts.layout, reg.outbox, parts.papad, store,
                                      syncthing=parts.syncthing,
                                      export_interval=cfg.mesh.export_interval)

    def imported() -> None:  # peers' recordings: register now, and put them on the air
        if reg is not None:
            reg.wake()
        if radio is not None:
            radio.update_playlist()

    return Bridge(parts.layout, store, parts.catalogue,
                  outbox=reg.outbox if reg is not None else None,  # one outbox for all
                  on_queued=imported, syncthing=parts.syncthing, exchange=exchange,
                  rescan_interval=cfg.mesh.rescan_interval)


def build_pump(parts: Assembly, audio_cfg: AudioConfig, *, source: SourceSpec | None = None,
               realtime: bool = True, loop: bool = False,
               always_on: Sequence[AlwaysOnSink] = (),
               on_event: PumpEvent | None = None) -> Pump:
    """Open the source (`source`, else ``audio.source``) and build a pump around it, not
    started. Raises DeviceError / InputFileError when the source cannot be opened."""
    opened: AudioSource = open_source(source or audio_cfg.source, audio_cfg, realtime=realtime,
                                      loop=loop)
    return Pump(parts.pump_settings, opened, parts.publisher, parts.reserve,
                always_on=always_on, extra_sinks=parts.sink_factories, on_event=on_event)


__all__ = ["Assembly", "CatalogueHook", "Registration", "ServiceRequest", "Worker", "assemble",
           "build_pump"]
