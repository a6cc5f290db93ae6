"""The service's state machine, written once: its states, the events that move it, the disk
and problem it reports, and the LED it shows.

`daemon.Service` owns one `Machine` on its main thread and tells it what happened (typed
events); the machine decides the state, the disk condition, the problem (by kind, never by
the wording of its message) and the LED. Nothing here does I/O or knows about threads, so
the rules can be read, and tested, as a table (docs/ARCHITECTURE.md shows the same tables).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

log = logging.getLogger(__name__)


class ServiceState(StrEnum):
    """What `recorder ctl status` reports as ``state``."""

    STARTING = "starting"
    IDLE = "idle"  # armed: the ring is filling, a press records
    RECORDING = "recording"
    NO_DEVICE = "no_device"
    FAILED = "failed"  # the pump died; it is being restarted
    DISK_FULL = "disk_full"  # armed, but the disk is full: recording refused until space returns
    STOPPING = "stopping"
    HUB = "hub"  # audio.source = "none": records nothing, no audio device or GPIO opened


ARMED = frozenset({ServiceState.IDLE, ServiceState.RECORDING, ServiceState.DISK_FULL})
"""The states in which a pump is open and delivers audio."""


class Disk(StrEnum):
    """The disk as the last check (or the pump) saw it."""

    UNKNOWN = "unknown"  # not checked yet
    OK = "ok"
    LOW = "low"  # below the reserve: no new recording starts
    FULL = "full"  # under 2 MB free (also below the reserve)
    UNAVAILABLE = "unavailable"  # the sync root cannot be read (unmounted, gone)


class ProblemKind(StrEnum):
    """What kind of trouble `last_error` reports: what clears it depends on the kind, never on
    the wording of its message."""

    DISK = "disk"  # full or below the reserve: over once the disk check sees room
    PUBLISH = "publish"  # a recording could not be published (left in staging)
    DEVICE = "device"  # the audio device went away
    PUMP = "pump"  # the audio pump failed
    REFUSED = "refused"  # a button's action was refused


@dataclass(frozen=True)
class Problem:
    kind: ProblemKind
    message: str


# -- the events that change the state ------------------------------------------------------------


@dataclass(frozen=True)
class HubStarted:
    """audio.source is "none": the workers run, nothing will ever be recorded."""


@dataclass(frozen=True)
class Opened:
    """The pump opened and its first block arrived."""


@dataclass(frozen=True)
class OpenFailed:
    """The audio source could not be opened (missing device, unreadable file)."""

    message: str


@dataclass(frozen=True)
class Armed:
    """The open pump's recording flag and the disk, as the main loop sees them now."""

    recording: bool


@dataclass(frozen=True)
class Lost:
    """The open pump's device stopped delivering."""

    source: str  # what the pump reported
    name: str  # the source's name


@dataclass(frozen=True)
class PumpDied:
    """The open pump's thread failed."""

    error: str


@dataclass(frozen=True)
class Stopping:
    """SIGTERM, SIGINT or `request_stop`: the loop has ended."""


StateEvent = HubStarted | Opened | OpenFailed | Armed | Lost | PumpDied | Stopping

_NOT_ARMED = (ServiceState.STARTING, ServiceState.NO_DEVICE, ServiceState.FAILED)
_ALL = tuple(ServiceState)

# (event, the states it may come in, the state it leads to; None: worked out from the event).
# Written once; docs/ARCHITECTURE.md shows the same table.
TRANSITIONS: tuple[tuple[type[StateEvent], tuple[ServiceState, ...], ServiceState | None], ...] = (
    (HubStarted, (ServiceState.STARTING,), ServiceState.HUB),
    (Opened, _NOT_ARMED, ServiceState.IDLE),
    (OpenFailed, _NOT_ARMED, ServiceState.NO_DEVICE),
    (Armed, tuple(ARMED), None),  # recording, else disk_full when the disk is full, else idle
    (Lost, tuple(ARMED), ServiceState.NO_DEVICE),
    (PumpDied, tuple(ARMED), ServiceState.FAILED),
    (Stopping, _ALL, ServiceState.STOPPING),
)


# -- the LED, from the machine, first match wins -------------------------------------------------


def _error(m: Machine, _mesh_degraded: bool) -> bool:
    return (m.state in (ServiceState.NO_DEVICE, ServiceState.FAILED)
            or m.disk is Disk.UNAVAILABLE or (m.problem is not None and not m.disk_low))


LedRule = Callable[["Machine", bool], bool]
LED_TABLE: tuple[tuple[str, str, LedRule], ...] = (
    ("off", 'a hub (audio.source = "none"): no audio, nothing to show',
     lambda m, _: m.state is ServiceState.HUB),
    ("error", "no device, the pump failed, the sync root unavailable, or a problem while "
     "the disk is not low", _error),
    ("recording", "state recording", lambda m, _: m.state is ServiceState.RECORDING),
    ("disk_low", "disk full or below the reserve", lambda m, _: m.disk_low),
    ("mesh_degraded", "the mesh keeper reports a degraded mesh", lambda _, degraded: degraded),
    ("idle", "armed, or anything else", lambda _m, _d: True),
)


class Machine:
    """The service's state, disk and problem; changed only by the methods below (one thread,
    the service's main loop)."""

    def __init__(self) -> None:
        self.state: ServiceState = ServiceState.STARTING
        self.disk: Disk = Disk.UNKNOWN
        self.problem: Problem | None = None
        self.free_mb = -1
        self.free_bytes = -1
        # Why the device is missing (state no_device), why the sync root cannot be read
        # (disk unavailable): what `warnings` show.
        self._device_detail: str | None = None
        self._storage_detail: str | None = None
        # Free bytes the recordings left in staging wait for (0: retry at the next disk
        # check); None: nothing waits.
        self.waiting_need: int | None = None

    # -- the state ---------------------------------------------------------------------------
    def fire(self, event: StateEvent) -> ServiceState:
        """Move by `event` as TRANSITIONS says; an event the table does not allow in the
        current state is logged and changes nothing (a service never crashes on it)."""
        for kind, sources, target in TRANSITIONS:
            if isinstance(event, kind):
                if self.state not in sources:
                    log.error("state %s: %s ignored (not a transition)", self.state,
                              type(event).__name__)
                    return self.state
                self.state = target if target is not None else self._armed(event)
                self._entered(event)
                return self.state
        raise TypeError(f"not a state event: {event!r}")

    def _armed(self, event: StateEvent) -> ServiceState:
        assert isinstance(event, Armed)
        if event.recording:
            return ServiceState.RECORDING
        return ServiceState.DISK_FULL if self.disk is Disk.FULL else ServiceState.IDLE

    def _entered(self, event: StateEvent) -> None:
        if isinstance(event, Opened):
            self._device_detail = None
        elif isinstance(event, OpenFailed):
            self._device_detail = event.message
        elif isinstance(event, Lost):
            self._device_detail = f"audio from {event.name!r} stopped"
            self.problem = Problem(ProblemKind.DEVICE, f"audio device lost: {event.source}")
        elif isinstance(event, PumpDied):
            self.problem = Problem(ProblemKind.PUMP, f"audio pump failed: {event.error}")

    @property
    def armed(self) -> bool:
        return self.state in ARMED

    @property
    def device_error(self) -> str | None:
        """Why there is no audio (state ``no_device``), else None."""
        return self._device_detail if self.state is ServiceState.NO_DEVICE else None

    # -- the disk ----------------------------------------------------------------------------
    @property
    def disk_low(self) -> bool:
        return self.disk in (Disk.LOW, Disk.FULL)

    @property
    def disk_full(self) -> bool:
        return self.disk is Disk.FULL

    @property
    def storage_error(self) -> str | None:
        return self._storage_detail if self.disk is Disk.UNAVAILABLE else None

    def disk_checked(self, free_mb: int, free_bytes: int, *, low: bool, full: bool) -> bool:
        """A disk check's reading; clears a disk problem once there is room. Returns whether
        "full" changed (the caller logs it)."""
        was_full = self.disk_full
        self.free_mb, self.free_bytes = free_mb, free_bytes
        self.disk = Disk.FULL if full else Disk.LOW if low else Disk.OK
        if not low and self.problem is not None and self.problem.kind is ProblemKind.DISK:
            self.problem = None  # the disk trouble it reported is over (the LED says so)
        return full != was_full

    def disk_unavailable(self, message: str) -> None:
        self.disk = Disk.UNAVAILABLE
        self._storage_detail = message

    def disk_low_seen(self, message: str) -> None:
        """The pump refused or stopped for want of space before the next disk check."""
        if self.disk is not Disk.FULL:
            self.disk = Disk.LOW
        self.problem = Problem(ProblemKind.DISK, message)

    # -- problems ----------------------------------------------------------------------------
    def published(self) -> None:
        self.problem = None

    def publish_failed(self, message: str, *, disk_full: bool) -> None:
        self.problem = Problem(ProblemKind.DISK if disk_full else ProblemKind.PUBLISH,
                               f"publishing failed: {message}")
        if self.waiting_need is None:
            self.waiting_need = 0  # left in staging: recover at the next disk check

    def refused(self, problem: Problem) -> None:
        self.problem = problem

    # -- the LED -----------------------------------------------------------------------------
    def led(self, mesh_degraded: bool = False) -> str:
        """The LED state: the first row of LED_TABLE that holds."""
        return next(led for led, _, holds in LED_TABLE if holds(self, mesh_degraded))


__all__ = ["ARMED", "LED_TABLE", "TRANSITIONS", "Armed", "Disk", "HubStarted", "Lost",
           "Machine", "OpenFailed", "Opened", "Problem", "ProblemKind", "PumpDied",
           "ServiceState", "StateEvent", "Stopping"]
