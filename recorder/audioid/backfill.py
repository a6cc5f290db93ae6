"""`LandmarkBackfill`: the service computes the landmarks catalogued recordings lack.

Recordings catalogued before landmarks existed, or whose landmarks an upgrade forgot (a new key
definition: `landmark_index.SCHEMA` drops what the present keys cannot search), are invisible to
the landmark search until their audio is read again. A device upgraded in the field must not
wait for somebody to type `recorder index rebuild`: this worker does the same from the service,
one recording at a time, on a thread at low CPU priority (the button's recording comes first),
and stops between recordings when the service stops. With every recording's landmarks present
it asks one query and ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

from recorder.audioid.catalogue import Catalogue

log = logging.getLogger(__name__)

NICE = 10  # the thread's niceness: below the pump, the encoder and the web page


class LandmarkBackfill:
    """A service worker: `Catalogue.fill_landmarks` in the background (see the module)."""

    name = "landmarks"

    def __init__(self, catalogue: Catalogue, sync_root: Path) -> None:
        self.catalogue = catalogue
        self.sync_root = sync_root
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # guards the counts (read by `status` on the main thread)
        self._computed = 0
        self._unreadable = 0
        self._finished = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="landmark-backfill", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)  # at most one recording's decoding in flight

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"computed": self._computed, "unreadable": self._unreadable,
                    "finished": self._finished}

    def _counted(self, computed: bool) -> None:
        with self._lock:
            if computed:
                self._computed += 1
            else:
                self._unreadable += 1

    def _run(self) -> None:
        # Linux: a thread's own niceness (its id is a process id for setpriority); where that
        # is not allowed it runs at the service's priority.
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        try:
            done, failed = self.catalogue.fill_landmarks(
                self.sync_root, should_stop=self._stop.is_set, progress=self._counted)
        except Exception:  # the service goes on without landmarks for the rest
            log.exception("computing missing landmarks failed")
            return
        if done or failed:
            log.info("landmarks computed for %d catalogued recording(s), %d unreadable",
                     done, len(failed))
        with self._lock:
            self._finished = not self._stop.is_set()
