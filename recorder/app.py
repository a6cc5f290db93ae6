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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recorder.config import AudioConfig, Config, GpioConfig, ServiceConfig, SourceSpec
from recorder.db import Database
from recorder.dbrepair import open_database
from recorder.layout import Layout
from recorder.led import NullLed, StatusLed
from recorder.publish import Enricher, Listener, Published, Publisher
from recorder.pump import Pump, PumpListener, PumpSettings
from recorder.recording import Recording
from recorder.recover import RecoverySettings
from recorder.session import RecordingContext, SessionSettings, SinkFactory
from recorder.sinks import AlwaysOnSink, Sink
from recorder.sinks.levels import LevelMeter
from recorder.sources import AudioSource, open_source
from recorder.storage import Reserve
from recorder.worker import ServiceRequest, Worker

if TYPE_CHECKING:
    from recorder.audioid.catalogue import Catalogue
    from recorder.audioid.hook import CatalogueHook
    from recorder.budget import Budget
    from recorder.control import ControlServer
    from recorder.inbox import InboxWorker
    from recorder.mesh.bridge import Bridge
    from recorder.mesh.clockfix import ClockFixer
    from recorder.mesh.handoff import ScanHandOff
    from recorder.mesh.keeper import MeshKeeper
    from recorder.mesh.syncthing import SyncthingClient
    from recorder.papad.client import PapadClient
    from recorder.papad.registration import Registration
    from recorder.radio.nowplaying import PlayLog
    from recorder.sinks.radio import RadioSink
    from recorder.triggers import Triggers
    from recorder.waveform import Waveforms
    from recorder.web.server import WebWorker

log = logging.getLogger(__name__)


def radio_in_use(cfg: Config) -> bool:
    """True when the configuration turns Cow Radio on by itself: live at start, the station,
    or a live switch on a GPIO pin. Off, the radio's secrets are not needed to run."""
    return cfg.radio.live or cfg.radio.station or cfg.gpio.live_pin is not None


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
            from recorder.sinks.radio import RadioSink

            # A radio that is on (live, the station, or a live switch wired) needs its secrets:
            # a loose or missing one stops the service at start, as papad's and Syncthing's do.
            # A radio that is off needs none until somebody goes live (`set_live` checks then):
            # an install without Icecast must run with the example config's password_file
            # naming a file that was never made. The stream reads the file again at each
            # connection (a fixed file is picked up without a restart).
            if radio_in_use(cfg):
                self._check_secrets()
            # Stream metadata while live: "Live: <device>" (the station's playlist carries each
            # recording's own title and device). A hub has no audio to stream: no live sink.
            if not cfg.audio.source.none:
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
        if on:
            self._check_secrets()  # one clear line to whoever asked, never a silent retry loop
        self.sink.set_live(on)

    def _check_secrets(self) -> None:
        from recorder.secrets import read_secret

        read_secret(self.cfg.radio.password_file, "radio.password_file")
        if self.cfg.radio.station and self.cfg.radio.harbor_password_file is not None:
            read_secret(self.cfg.radio.harbor_password_file, "radio.harbor_password_file")

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
    recovery: RecoverySettings
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
    inbox: InboxWorker | None = None  # [import] inbox: see `_inbox`
    storage: Budget | None = None

    @property
    def workers(self) -> list[Worker]:
        """The service's background workers, in start order."""
        return [w for w in (self.registration, self.radio, self.play_log, self.bridge, self.mesh,
                            self.clock, self.web, self.inbox,
                            self.storage)
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


def recovery_settings(cfg: Config, layout: Layout) -> RecoverySettings:
    """What `recorder.recover` needs from the configuration."""
    return RecoverySettings(
        layout=layout, data_dir=cfg.storage.data_dir, encoder=cfg.encoder,
        samplerate=cfg.audio.samplerate, channels=cfg.audio.channels,
        silence_dbfs=cfg.service.silence_dbfs,
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
    layout = cfg.layout
    database = open_database(cfg)
    publisher = Publisher(layout)
    parts = Assembly(
        layout=layout, database=database,
        reserve=Reserve(cfg.storage.sync_root, cfg.storage.reserve_mb),
        publisher=publisher, pump_settings=pump_settings(cfg),
        recovery=recovery_settings(cfg, layout),
        sink_factories=sink_factories(cfg),
    )
    bridged = service and (cfg.syncthing.api_key_file is not None if bridge is None else bridge)
    if cfg.audioid.enabled or bridged:
        from recorder.audioid.catalogue import Catalogue

        parts.catalogue = Catalogue.from_config(database, cfg.audioid)
    if cfg.papad.api != "none":
        from recorder.papad.outbox import Outbox
        from recorder.papad.registration import Registration

        outbox = Outbox(database)
        worker = None
        if service:
            from recorder.papad.client import make_client
            from recorder.papad.outbox import OutboxWorker

            parts.papad = make_client(cfg)  # a bad secret file stops start-up here, clearly
            if parts.papad is not None:
                worker = OutboxWorker(outbox, parts.papad, cfg.papad.concurrency)
        parts.registration = Registration(outbox, layout, worker)
    scan: ScanHandOff | None = None
    if cfg.syncthing.api_key_file is not None:
        from recorder.mesh.handoff import ScanHandOff
        from recorder.mesh.syncthing import SyncthingClient

        parts.syncthing = SyncthingClient.from_config(cfg.syncthing)
        scan = ScanHandOff(parts.syncthing, layout)
    if service and radio:
        parts.radio = RadioWorker(cfg, parts.catalogue)
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
        if service and request is not None:
            parts.web = _web(cfg, parts, request)
    if service and cfg.imports.inbox is not None:
        parts.inbox = _inbox(cfg, parts)
    if service:
        parts.storage = _storage_budget(cfg, parts)
    hook: CatalogueHook | None = None
    if cfg.audioid.enabled and parts.catalogue is not None:
        from recorder.audioid.hook import CatalogueHook

        hook = CatalogueHook(parts.catalogue)  # one hook: enricher and listener
    _hook_up(parts, scan, hook)
    return parts


def _hook_up(parts: Assembly, scan: ScanHandOff | None, catalogue: CatalogueHook | None) -> None:
    """The publisher's hooks, in the order they run (this is the one place that says it).

    Enrichers, before the sidecar is written: the waveform's peaks are stored (adding nothing),
    then the catalogue completes ``audio_id`` and says ``duplicate_of``. Listeners, after both
    files are in place: the papad queue, the Syncthing scan and the playlist, then the
    catalogue's index postings last (none of the others waits for them).
    """
    waveforms, reg, radio = parts.waveforms, parts.registration, parts.radio
    enrichers: list[Enricher | None] = [
        waveforms.enrich if waveforms is not None else None,
        catalogue,
    ]
    listeners: list[Listener | None] = [
        reg.on_published if reg is not None else None,
        scan,
        radio.update_playlist if radio is not None else None,
        catalogue.published if catalogue is not None else None,
    ]
    parts.publisher.enrichers = [e for e in enrichers if e is not None]
    parts.publisher.listeners = [li for li in listeners if li is not None]


# --- the import inbox (issue 25): phone calls and dropped files become recordings ---------


def _inbox(cfg: Config, parts: Assembly) -> InboxWorker:
    """The inbox watcher, importing through the same publisher (and so the catalogue, papad,
    Syncthing and playlist hooks) and per-recording sinks as the button."""
    from recorder.importer import Importer
    from recorder.inbox import InboxWorker

    importer = Importer(cfg, parts.database, parts.publisher, parts.reserve,
                        parts.sink_factories, parts.catalogue)
    return InboxWorker(cfg.imports, importer)


# --- the storage budget (issue 23): peers' audio within [storage] ----------------------


def _storage_budget(cfg: Config, parts: Assembly) -> Budget:
    """The storage budget (recorder.budget): its worker keeps peers' audio within
    ``[storage]`` and the reserve asks it for room before refusing a recording."""
    from recorder.budget import Budget, Policy

    budget = Budget(parts.layout, Policy.of(cfg.storage), parts.syncthing,
                    hubs=cfg.storage.hubs)
    parts.reserve.reclaim = budget.reclaim
    return budget


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

    def corrected(rec: Recording, path: Path) -> None:
        if catalogue is not None:
            catalogue.add(rec.to_doc())
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
               on_event: PumpListener | None = None) -> Pump:
    """Open the source (`source`, else ``audio.source``) and build a pump around it, not
    started. Raises DeviceError / InputFileError when the source cannot be opened."""
    opened: AudioSource = open_source(source or audio_cfg.source, audio_cfg, realtime=realtime,
                                      loop=loop)
    return Pump(parts.pump_settings, opened, parts.publisher, parts.reserve,
                always_on=always_on, extra_sinks=parts.sink_factories, on_event=on_event)


# -- the service's own parts (`recorder run`) ---------------------------------------------------


def build_service_pump(parts: Assembly, audio_cfg: AudioConfig, service_cfg: ServiceConfig, *,
                       source: SourceSpec | None, realtime: bool,
                       on_event: PumpListener) -> tuple[Pump, LevelMeter]:
    """The service's pump, not started: the source opened (looping a file source), the
    always-on level meter at the source's own format, the live stream, and `on_event`, all
    given before its thread starts. Raises DeviceError / RecorderError like `build_pump`."""
    opened: AudioSource = open_source(source or audio_cfg.source, audio_cfg,
                                      realtime=realtime, loop=True)
    meter = LevelMeter(opened.format.samplerate, service_cfg.silence_dbfs)
    pump = Pump(parts.pump_settings, opened, parts.publisher, parts.reserve,
                always_on=[meter, *parts.stream_sinks], extra_sinks=parts.sink_factories,
                on_event=on_event)
    return pump, meter


@dataclass(frozen=True)
class ServiceGpio:
    """The buttons and LED (none without GPIO), and the control socket's simulated presses
    (mock pins only)."""

    triggers: Triggers | None
    led: StatusLed | NullLed
    pin_driver: Callable[[dict[str, Any]], dict[str, Any]] | None = None


def open_gpio(gpio: GpioConfig, on_trigger: Callable[[str, float], None], *,
              pin_factory: Any = None) -> ServiceGpio:
    """The service's buttons (their threads hand presses to `on_trigger`) and LED; without
    GPIO at all, none: the service runs, controlled through `recorder ctl`."""
    from recorder.led import open_status_led
    from recorder.triggers import Triggers, mock_pin_driver

    try:
        triggers = Triggers(gpio, on_trigger, pin_factory=pin_factory)
        led = open_status_led(gpio, pin_factory=pin_factory)
        # Simulated presses over the control socket exist only on gpiozero's mock pins.
        return ServiceGpio(triggers, led, mock_pin_driver(pin_factory, gpio.active_low))
    except Exception as exc:  # gpiozero raises several kinds when there is no GPIO at all
        log.warning("GPIO unavailable (%s): buttons and LED disabled; use `recorder ctl`", exc)
        return ServiceGpio(None, NullLed())


def open_control(service_cfg: ServiceConfig,
                 handler: Callable[[dict[str, Any]], dict[str, Any]]) -> ControlServer:
    """The control socket (its thread starts listening at once), answering with `handler`."""
    from recorder.control import ControlServer

    return ControlServer(service_cfg.control_socket, handler, group=service_cfg.socket_group)


__all__ = ["Assembly", "ServiceGpio", "ServiceRequest", "Worker", "assemble",
           "build_pump", "build_service_pump", "open_control", "open_gpio"]
