"""The mesh keeper: the service's worker that keeps pairings and mesh health up to date.

One thread (``mesh``) long-polls Syncthing's events and, on the ones that matter, runs

- the roster's reconcile (`pairing`: a device knocking with an invite: ``PendingDevicesChanged``,
  ``DeviceRejected``; a folder offered: ``PendingFoldersChanged``, ``FolderRejected``; a peer's
  roster file arrived: ``ItemFinished`` for ``mesh/members.json``; a peer connected), and every
  `RECONCILE_INTERVAL` seconds anyway;
- `health.HealthTracker.check` (connections and folder summaries changed, and every
  `HEALTH_INTERVAL` seconds), which also reverts local changes in receive-only copies;
- the dead-connection probe every ``[mesh] probe_interval`` seconds;
- with ``[yggdrasil] firewall``, `firewall.Firewall.sync` after every reconcile, on every
  Syncthing config change (``ConfigSaved``: a device added or removed) and every
  ``firewall.CHECK_INTERVAL`` seconds (a flushed rule set is loaded again).

The service's main thread reads `degraded` (for the LED) and `status()` (``ctl status``); both
return copies made under a lock, so the main thread never waits for Syncthing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from recorder.errors import RemoteError
from recorder.mesh.membership.firewall import CHECK_INTERVAL as FIREWALL_CHECK
from recorder.mesh.membership.health import HealthTracker
from recorder.mesh.membership.provision import owner_of
from recorder.mesh.membership.roster import ROSTER_PATH

if TYPE_CHECKING:
    from recorder.config import MeshConfig
    from recorder.mesh.membership.firewall import Firewall
    from recorder.mesh.membership.pairing import Membership

log = logging.getLogger(__name__)

RECONCILE_INTERVAL = 30.0
HEALTH_INTERVAL = 10.0
# Two devices adding each other at the same moment both have their first dial refused and
# Syncthing then waits about 30 s before dialling again (measured on 1.19.2): a device added
# and still not connected after NUDGE_AFTER seconds is paused and resumed once, which makes
# Syncthing dial it at once.
NUDGE_AFTER = 3.0
CONFIRM_AFTER = 1.0  # seconds before a peer that missed a ping is pinged again
MIN_GAP = 1.0  # events can come in bursts: at most one pass of each kind per second
POLL_MAX = 5.0  # the long poll's longest wait, so stop() is never kept waiting long
RECONCILE_EVENTS = {"PendingDevicesChanged", "PendingFoldersChanged", "DeviceRejected",
                    "FolderRejected", "DeviceConnected"}
HEALTH_EVENTS = {"DeviceConnected", "DeviceDisconnected", "DevicePaused", "DeviceResumed",
                 "FolderSummary", "FolderErrors"}
FIREWALL_EVENTS = {"ConfigSaved"}
EVENT_TYPES = tuple(sorted(RECONCILE_EVENTS | HEALTH_EVENTS | FIREWALL_EVENTS
                           | {"ItemFinished"}))


class MeshKeeper:
    """Pairing reconcile, mesh health and dead-connection probes for the service (a Worker).

    `membership` is this device's (its Syncthing client and database are the service's);
    `settings` is ``[mesh]``; `firewall`, when given (``[yggdrasil] firewall``), is kept in
    step with the roster. `ping` and `clock` are seams for tests."""

    name = "mesh"

    def __init__(self, membership: Membership, settings: MeshConfig, *,
                 firewall: Firewall | None = None,
                 ping: Callable[[str, float], bool] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.membership = membership
        self.client = membership.client
        self.database = membership.database
        self.ping = ping
        self.clock = clock
        self.probe_interval = settings.probe_interval
        self.tracker = HealthTracker(membership.device_id, settings.degraded_after, clock=clock)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._reconcile_due = threading.Event()
        self._health: dict[str, Any] = {"degraded": False, "problems": []}
        self._last: dict[str, Any] = {"reconcile_at": None, "changes": [], "accepted": [],
                                      "conflicts": [], "roster_errors": [], "errors": 0,
                                      "events": "off"}
        self._logged: set[str] = set()
        self._nudges: dict[str, float] = {}  # device -> when to nudge it (monotonic)
        self.firewall = firewall

    # -- worker --------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="mesh", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = POLL_MAX + 5.0) -> None:
        """Stop after the pass in hand (an event long poll ends within POLL_MAX seconds)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None

    def wake(self) -> None:
        """Reconcile at the next turn (a pairing was changed from the command line)."""
        self._reconcile_due.set()

    @property
    def degraded(self) -> bool:
        """True while the last health check found a problem (read by the main thread)."""
        with self._lock:
            return bool(self._health.get("degraded"))

    def problems(self) -> list[str]:
        with self._lock:
            return list(self._health.get("problems", []))

    def status(self) -> dict[str, Any]:
        with self._lock:
            fw = None if self.firewall is None else {"applied": self.firewall.applied,
                                                      "error": self.firewall.error}
            return {**self._health, "pairing": dict(self._last), "firewall": fw,
                    "running": self._thread is not None}

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        since: int | None = None
        next_reconcile = next_health = next_probe = next_firewall = 0.0
        while not self._stopping.is_set():
            now = self.clock()
            if self._reconcile_due.is_set() or now >= next_reconcile:
                self._reconcile_due.clear()
                self._reconcile()
                next_reconcile = self.clock() + RECONCILE_INTERVAL
                next_health = min(next_health, self.clock())
                next_firewall = 0.0
            if self.probe_interval and now >= next_probe:
                self.tracker.probe(self.client, self.ping)
                # A missed answer is confirmed (or cleared) at once, not a whole interval later.
                again = CONFIRM_AFTER if self.tracker.suspects else self.probe_interval
                next_probe = self.clock() + min(again, self.probe_interval)
                next_health = min(next_health, self.clock())
            self._nudge()
            if self.firewall is not None and self.clock() >= next_firewall:
                self.firewall.sync(self.client, self.database)
                next_firewall = self.clock() + FIREWALL_CHECK
            if self.clock() >= next_health:
                self._check()
                next_health = self.clock() + HEALTH_INTERVAL
            dues = [next_reconcile, next_health, *self._nudges.values()]
            dues += [next_probe] if self.probe_interval else []
            dues += [next_firewall] if self.firewall is not None else []
            wait = max(MIN_GAP, min(min(dues) - self.clock(), POLL_MAX))
            since, kinds = self._events(since, wait)
            if "reconcile" in kinds:
                next_reconcile = min(next_reconcile, self.clock() + MIN_GAP)
            if "health" in kinds:
                next_health = min(next_health, self.clock() + MIN_GAP)
            if "firewall" in kinds:
                next_firewall = 0.0

    def _events(self, since: int | None, wait: float) -> tuple[int | None, set[str]]:
        """Wait up to `wait` s for Syncthing events; return the new cursor and what is due."""
        kinds: set[str] = set()
        try:
            if since is None:
                latest = self.client.events(since=0, timeout=0, types=EVENT_TYPES)
                since = latest[-1]["id"] if latest else 0
                self._last["events"] = "on"
                return since, {"reconcile", "health"}
            events = self.client.events(since=since, timeout=wait, types=EVENT_TYPES)
        except Exception as exc:
            if since is not None:
                log.info("mesh: Syncthing events unavailable (%s); polling", exc)
            self._last["events"] = "unavailable"
            self._stopping.wait(wait)
            return None, kinds
        for event in events:
            since = max(since, int(event.get("id", since)))
            kind = event.get("type")
            data = event.get("data") or {}
            if kind in RECONCILE_EVENTS:
                kinds.add("reconcile")
            if kind in HEALTH_EVENTS:
                kinds.add("health")
            if kind in FIREWALL_EVENTS:
                kinds.add("firewall")
            if kind == "ItemFinished" and data.get("item") == ROSTER_PATH and \
                    owner_of(str(data.get("folder", ""))) not in (None, self.membership.device_id):
                kinds.add("reconcile")
        return since, kinds

    def _reconcile(self) -> None:
        try:
            report = self.membership.reconcile()
        except RemoteError as exc:
            self._last["errors"] += 1
            self._note(f"mesh: reconcile postponed: {exc}", logging.INFO)
            return
        except Exception:  # the keeper must outlive any bug or database hiccup
            self._last["errors"] += 1
            log.exception("mesh: reconcile failed")
            return
        for line in report.changes:
            log.info("mesh: %s", line)
        findings = [f"mesh: {line}" for line in report.conflicts + report.roster_errors]
        self._logged &= set(findings)
        for line in findings:
            self._note(line, logging.ERROR)
        for did in report.added:
            self._nudges[did] = self.clock() + NUDGE_AFTER
        with self._lock:
            self._last.update(reconcile_at=time.time(), changes=report.changes[-20:],
                              accepted=report.accepted, conflicts=report.conflicts,
                              roster_errors=report.roster_errors)

    def _nudge(self) -> None:
        now = self.clock()
        for did, due in list(self._nudges.items()):
            if due > now:
                continue
            del self._nudges[did]
            try:
                if self.client.dial_unless_connected(did):
                    log.info("mesh: asked Syncthing to dial %s now", did[:7])
            except RemoteError:
                pass

    def _check(self) -> None:
        with self._lock:
            known = list(self._last["conflicts"]) + list(self._last["roster_errors"])
        try:
            health = self.tracker.check(self.client, known)
        except Exception:
            log.exception("mesh: health check failed")
            return
        was = self.degraded
        with self._lock:
            self._health = health
        if health["degraded"] and not was:
            log.warning("mesh degraded: %s", "; ".join(health["problems"]))
        elif was and not health["degraded"]:
            log.info("mesh healthy again")

    def _note(self, line: str, level: int) -> None:
        """Log a recurring finding once (until it goes away and comes back)."""
        if line not in self._logged:
            self._logged.add(line)
            log.log(level, "%s", line)


__all__ = ["MeshKeeper"]
