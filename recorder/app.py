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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recorder.config import AudioConfig, Config, GpioConfig, ServiceConfig, SourceSpec
from recorder.db import Database
from recorder.dbrepair import DatabaseSpec, open_database
from recorder.layout import Layout
from recorder.led import NullLed, StatusLed
from recorder.publish import Enricher, Listener, Publisher
from recorder.pump import Pump, PumpListener, PumpSettings
from recorder.radio.settings import RadioSettings
from recorder.recording import Recording
from recorder.recover import RecoverySettings
from recorder.session import RecordingContext, SessionSettings, SinkFactory
from recorder.sinks import AlwaysOnSink, Sink
from recorder.sinks.levels import LevelMeter
from recorder.sources import AudioSource, configured_format, open_source
from recorder.storage import Reserve
from recorder.worker import ServiceRequest, Worker

if TYPE_CHECKING:
    from recorder.audioid.backfill import LandmarkBackfill
    from recorder.audioid.catalogue import Catalogue
    from recorder.audioid.hook import CatalogueHook
    from recorder.budget import Budget
    from recorder.clockfix import ClockFixer
    from recorder.control import ControlServer
    from recorder.importer import ImportSettings
    from recorder.inbox import InboxWorker
    from recorder.mesh.exchange.bridge import Bridge
    from recorder.mesh.exchange.handoff import ScanHandOff
    from recorder.mesh.membership.keeper import MeshKeeper
    from recorder.mesh.net.syncthing import SyncthingClient
    from recorder.papad.client import PapadClient
    from recorder.papad.registration import Registration
    from recorder.radio.nowplaying import PlayLog
    from recorder.radio.worker import RadioWorker
    from recorder.sinks.radio import RadioSink
    from recorder.triggers import Triggers
    from recorder.waveform import Waveforms
    from recorder.web.server import WebWorker

log = logging.getLogger(__name__)


def radio_in_use(cfg: Config) -> bool:
    """True when the configuration turns Cow Radio on by itself: live at start, the station,
    or a live switch on a GPIO pin. Off, the radio's secrets are not needed to run."""
    return cfg.radio.live or cfg.radio.station or cfg.gpio.live_pin is not None


def radio_settings(cfg: Config) -> RadioSettings:
    """What the radio modules (playlist, station, play log, worker) need from `cfg`."""
    return RadioSettings.of(cfg.radio, cfg.device.id, cfg.storage, cfg.source_path)


def radio_worker(cfg: Config, catalogue: Catalogue | None) -> RadioWorker:
    """The service's radio: the playlist from the catalogue (with Audio ID on, else the
    sidecars), and the live stream's sink unless this is a hub (nothing to stream)."""
    from recorder.radio.worker import RadioWorker

    def live_sink() -> RadioSink:
        from recorder.sinks.radio import RadioSink

        # Stream metadata while live: "Live: <device>" (the station's playlist carries each
        # recording's own title and device).
        return RadioSink(cfg.radio, cfg.audio.samplerate, cfg.audio.channels,
                         title=f"Live: {cfg.device.id}", artist=cfg.device.id)

    return RadioWorker(radio_settings(cfg), catalogue if cfg.audioid.enabled else None,
                       None if cfg.audio.source.none else live_sink,
                       in_use=radio_in_use(cfg))


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
    landmarks: LandmarkBackfill | None = None  # see `recorder.audioid.backfill`

    @property
    def workers(self) -> list[Worker]:
        """The service's background workers, in start order."""
        return [w for w in (self.registration, self.radio, self.play_log, self.bridge, self.mesh,
                            self.clock, self.web, self.inbox,
                            self.storage, self.landmarks)
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


class Role(Enum):
    """What an assembly is for: which of the workers a configuration asks for it builds.

    ``ONE_OFF``: a command (`recorder record`, `import`, `radio playlist`): no workers; it
    only publishes and queues, durably, for the service to deliver. ``SERVICE``: `recorder
    run`: every worker (papad delivery, radio, the bridge when Syncthing is configured, the
    web page when ``web.enabled`` and a `request` is given, mesh, clock, inbox, storage).
    ``WORKERS``: the service's workers without the radio (tools and tests that run workers by
    hand). ``BRIDGE``: ``WORKERS`` with the bridge even without Syncthing (`recorder mesh
    bridge`: peers' folders arrive by other means too)."""

    ONE_OFF = "one-off"
    SERVICE = "service"
    WORKERS = "workers"
    BRIDGE = "bridge"

    @property
    def workers(self) -> bool:
        return self is not Role.ONE_OFF

    @property
    def radio(self) -> bool:
        return self is Role.SERVICE

    def bridges(self, syncthing: bool) -> bool:
        """Whether the bridge is built (`syncthing`: the Syncthing client is configured)."""
        return self is Role.BRIDGE or (self.workers and syncthing)


def assemble(cfg: Config, role: Role = Role.ONE_OFF, *,
             request: ServiceRequest | None = None) -> Assembly:
    """Build every component `cfg` asks for, once, as `role` says (see `Role`); `request`:
    how the web page asks the running service (the web page is built only with it)."""
    layout = cfg.layout
    database = open_database(DatabaseSpec(cfg.db_path, layout, cfg.audioid, cfg.papad))
    publisher = Publisher(layout)
    parts = Assembly(
        layout=layout, database=database,
        reserve=Reserve(cfg.storage.sync_root, cfg.storage.reserve_mb),
        publisher=publisher, pump_settings=pump_settings(cfg),
        recovery=recovery_settings(cfg, layout),
        sink_factories=sink_factories(cfg),
    )
    workers = role.workers
    bridged = role.bridges(cfg.syncthing.api_key_file is not None)
    if cfg.audioid.enabled or bridged:
        from recorder.audioid.catalogue import Catalogue

        parts.catalogue = Catalogue.from_config(database, cfg.audioid)
    if cfg.papad.api != "none":
        from recorder.papad.outbox import Outbox
        from recorder.papad.registration import Registration

        outbox = Outbox(database)
        worker = None
        if workers:
            from recorder.papad.client import make_client
            from recorder.papad.outbox import OutboxWorker

            parts.papad = make_client(cfg.papad)  # a bad secret file stops start-up here
            if parts.papad is not None:
                worker = OutboxWorker(outbox, parts.papad, cfg.papad.concurrency)
        parts.registration = Registration(outbox, layout, worker)
    scan: ScanHandOff | None = None
    if cfg.syncthing.api_key_file is not None:
        from recorder.mesh.exchange.handoff import ScanHandOff
        from recorder.mesh.net.syncthing import SyncthingClient

        parts.syncthing = SyncthingClient.from_config(cfg.syncthing)
        scan = ScanHandOff(parts.syncthing, layout)
    if role.radio:
        parts.radio = radio_worker(cfg, parts.catalogue)
        if cfg.radio.station:  # the station's play log, into playlist.json
            from recorder.radio.nowplaying import PlayLog

            parts.play_log = PlayLog(radio_settings(cfg))
    if bridged and parts.catalogue is not None:
        parts.bridge = _bridge(cfg, parts)
        bridge_ = parts.bridge
        if parts.registration is not None and parts.registration.worker is not None:
            # A recording papad now has may carry annotations to export: do it at once.
            parts.registration.worker.on_delivered = lambda *_: bridge_.export_soon()
    if workers and parts.syncthing is not None:
        from recorder.mesh.membership import firewall
        from recorder.mesh.membership.keeper import MeshKeeper
        from recorder.mesh.membership.pairing import Membership

        membership = Membership(layout, parts.syncthing, cfg.syncthing, database,
                                yggdrasil_admin=cfg.yggdrasil.admin_endpoint)
        guard = (firewall.Firewall(firewall.Settings.of(cfg.yggdrasil, cfg.web, cfg.radio))
                 if cfg.yggdrasil.firewall else None)
        parts.mesh = MeshKeeper(membership, cfg.mesh, firewall=guard)
    if workers:
        parts.clock = _clock_fixer(parts)
    if cfg.web.enabled:
        from recorder.waveform import Waveforms

        parts.waveforms = Waveforms(database)  # peaks made while recording, stored at publish
        parts.sink_factories.append(parts.waveforms.sink)
        if workers and request is not None:
            parts.web = _web(cfg, parts, request)
    if workers and cfg.imports.inbox is not None:
        parts.inbox = _inbox(cfg, parts)
    if workers:
        parts.storage = _storage_budget(cfg, parts)
    if workers and cfg.audioid.enabled and parts.catalogue is not None:
        from recorder.audioid.backfill import LandmarkBackfill

        parts.landmarks = LandmarkBackfill(parts.catalogue, cfg.storage.sync_root)
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

    importer = Importer(import_settings(cfg, parts.layout), parts.database, parts.publisher,
                        parts.reserve, parts.sink_factories, parts.catalogue)
    return InboxWorker(cfg.imports, importer)


def import_settings(cfg: Config, layout: Layout) -> ImportSettings:
    """The importer's part of the configuration (the inbox and `recorder import` share it)."""
    from recorder.importer import ImportSettings

    return ImportSettings(
        layout=layout, format=configured_format(cfg.audio),
        max_seconds=cfg.storage.max_seconds, encoder=cfg.encoder,
        silence_dbfs=cfg.service.silence_dbfs, duplicate_coverage=cfg.audioid.duplicate_coverage,
        imports=cfg.imports)


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
    from recorder.mesh.exchange.store import BridgeStore
    from recorder.web.server import Collaborators, WebWorker

    assert parts.waveforms is not None
    mesh_status: Callable[[], dict[str, Any]] | None = None
    if parts.syncthing is not None:
        from recorder.mesh.membership.provision import Provisioner

        provisioner = Provisioner(parts.layout, parts.syncthing, cfg.syncthing)

        def mesh_status() -> dict[str, Any]:
            return provisioner.status()

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
    from recorder.clockfix import ClockFixer

    catalogue, syncthing, layout = parts.catalogue, parts.syncthing, parts.layout

    def corrected(rec: Recording, path: Path) -> None:
        if catalogue is not None:
            catalogue.add(rec.to_doc())
        if syncthing is not None:
            from recorder.mesh.membership.provision import folder_id

            syncthing.scan_quietly(folder_id(layout.device_id),
                                   sub=str(path.parent.relative_to(layout.device_folder)))

    return ClockFixer(layout.device_folder, layout.staging_dir, on_corrected=corrected)


def _bridge(cfg: Config, parts: Assembly) -> Bridge:
    """The sync bridge and its annotation exchange, sharing the service's outbox, papad and
    Syncthing clients, catalogue and database."""
    from recorder.mesh.exchange.annotations import AnnotationExchange
    from recorder.mesh.exchange.bridge import Bridge
    from recorder.mesh.exchange.store import BridgeStore

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
                 handler: Callable[[dict[str, Any]], dict[str, Any]], *,
                 pin_driver: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 ) -> ControlServer:
    """The control socket (its thread starts listening at once), answering with `handler`;
    with `pin_driver` (gpiozero's mock pins only: tests, demo) also the ``pin`` command, which
    drives the mock pins (the presses then reach the service as from real buttons)."""
    from recorder.control import ControlServer

    answer = handler
    if pin_driver is not None:
        driver = pin_driver

        def answer(request: dict[str, Any]) -> dict[str, Any]:
            if request.get("command") == "pin":
                return driver(request)
            return handler(request)

    return ControlServer(service_cfg.control_socket, answer, group=service_cfg.socket_group)


@dataclass(frozen=True)
class ServiceIO:
    """The service's buttons, LED and control socket, all open and given their callbacks."""

    triggers: Triggers | None
    led: StatusLed | NullLed
    control: ControlServer


def open_service_io(gpio_cfg: GpioConfig, service_cfg: ServiceConfig,
                    on_trigger: Callable[[str, float], None],
                    handler: Callable[[dict[str, Any]], dict[str, Any]], *,
                    pin_factory: Any = None, hub: bool = False) -> ServiceIO:
    """Open the GPIO (never on a hub: it has none) and the control socket, each given
    everything before its thread starts: presses go to `on_trigger`, commands to `handler`."""
    gpio = ServiceGpio(None, NullLed()) if hub else open_gpio(gpio_cfg, on_trigger,
                                                              pin_factory=pin_factory)
    control = open_control(service_cfg, handler, pin_driver=gpio.pin_driver)
    return ServiceIO(gpio.triggers, gpio.led, control)


@dataclass(frozen=True)
class ServiceWiring:
    """What `recorder.daemon.Service` is built from: the sections it reads, and the one call
    that assembles its parts (`Role.SERVICE`), given the service's `request` (the web page's
    way to ask it anything), which exists only once the service does."""

    device_id: str
    audio: AudioConfig
    service: ServiceConfig
    gpio: GpioConfig
    assemble: Callable[[ServiceRequest], Assembly]


def service_wiring(cfg: Config) -> ServiceWiring:
    """The service's sections of `cfg` and how its parts are assembled from `cfg`."""

    def parts(request: ServiceRequest) -> Assembly:
        return assemble(cfg, Role.SERVICE, request=request)

    return ServiceWiring(cfg.device.id, cfg.audio, cfg.service, cfg.gpio, parts)


__all__ = ["Assembly", "Role", "ServiceGpio", "ServiceRequest", "ServiceWiring", "Worker",
           "assemble", "build_pump", "build_service_pump", "open_control", "open_gpio",
           "open_service_io", "service_wiring"]
