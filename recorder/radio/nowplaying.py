"""The station's play log: what went on the air when, from Liquidsoap into ``playlist.json``.

The station script (`recorder.radio.station`) keeps its latest plays in memory and serves them
as JSON on its harbor at `PLAYS_PATH`, newest first. `PlayLog`, a service worker, polls that
every `POLL_SECONDS` and adds what is new to the play log in ``playlist.json``
(`recorder.radio.playlist.add_plays`), so Liquidsoap itself needs no write access anywhere.
A station that is down or restarting is reported in `status()`, never an error for the service.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from recorder import sidecar
from recorder.radio import playlist
from recorder.radio.settings import RadioSettings

log = logging.getLogger(__name__)

PLAYS_PATH = "/recorderpi/plays.json"
POLL_SECONDS = 2.0
FETCH_TIMEOUT = 3.0
SOURCES = ("playlist", "live", "jingle")


def fetch_plays(harbor_url: str, timeout: float = FETCH_TIMEOUT) -> list[dict[str, Any]]:
    """The station's latest plays, newest first, as Liquidsoap reports them.

    Raises OSError (URLError included) when the station does not answer, ValueError when it
    answers something that is not its play list.
    """
    with urllib.request.urlopen(harbor_url.rstrip("/") + PLAYS_PATH, timeout=timeout) as resp:
        doc = json.loads(resp.read().decode("utf-8"))
    if not isinstance(doc, list):
        raise ValueError("the station's play list is not a JSON list")
    return [p for p in doc if isinstance(p, dict)]


def to_log_entry(play: dict[str, Any]) -> dict[str, Any] | None:
    """A play as ``playlist.json`` keeps it (``at`` as UTC ISO time), or None if malformed."""
    at, source = play.get("at"), play.get("source")
    if not isinstance(at, (int, float)) or isinstance(at, bool) or source not in SOURCES:
        return None
    entry = {
        "at": sidecar.utc_iso(float(at)),
        "source": source,
        "title": str(play.get("title") or ""),
        "device_id": str(play.get("device_id") or ""),
    }
    if play.get("recording_id"):
        entry["recording_id"] = str(play["recording_id"])
    return entry


class PlayLog:
    """Service worker (``start``/``stop``/``status``): the station's plays into the play log."""

    name = "station"

    def __init__(self, settings: RadioSettings, *, interval: float = POLL_SECONDS,
                 fetch: Callable[[str], list[dict[str, Any]]] = fetch_plays) -> None:
        self.settings = settings
        self.interval = interval
        self._fetch = fetch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._now: dict[str, Any] | None = None
        self._error: str | None = None
        self._logged = 0
        self._polled_at: str | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="station-plays", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(FETCH_TIMEOUT + 2)
            self._thread = None

    def status(self) -> dict[str, Any]:
        """Whether the station answers, what is on the air, how many plays were logged."""
        return {"reachable": self._error is None and self._polled_at is not None,
                "error": self._error, "now_playing": self._now, "plays_logged": self._logged,
                "polled_at": self._polled_at}

    def poll_once(self) -> int:
        """Fetch the station's plays and log the new ones; return how many were new."""
        try:
            plays = self._fetch(self.settings.radio.harbor_url)
        except (OSError, ValueError) as exc:
            self._set_error(f"station not answering at {self.settings.radio.harbor_url}: "
                            f"{_reason(exc)}")
            return 0
        self._set_error(None)
        self._polled_at = sidecar.utc_iso(time.time())
        entries = [e for e in (to_log_entry(p) for p in plays) if e is not None]
        self._now = entries[0] if entries else None
        added = playlist.add_plays(self.settings, entries)
        self._logged += added
        return added

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # a worker thread must outlive any bug or full disk
                log.exception("station play log failed")
            self._stop.wait(self.interval)

    def _set_error(self, error: str | None) -> None:
        if error != self._error:
            if error is None:
                log.info("station answering at %s", self.settings.radio.harbor_url)
            else:
                log.info("%s", error)
        self._error = error


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        return str(getattr(exc.reason, "strerror", None) or exc.reason)
    return str(exc) or type(exc).__name__
