"""papad registration for the service: every published recording goes into the durable
outbox; in the service its delivery worker sends it (one-off commands only queue, durably, for
the service to deliver)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from recorder.layout import Layout
from recorder.papad.outbox import Outbox, OutboxWorker

if TYPE_CHECKING:
    from recorder.publish import Published

log = logging.getLogger(__name__)


class Registration:
    """The outbox and, in the service, its delivery worker (a `recorder.worker.Worker`)."""

    name = "papad"

    def __init__(self, outbox: Outbox, layout: Layout,
                 worker: OutboxWorker | None = None) -> None:
        self.outbox = outbox
        self.layout = layout
        self.worker = worker

    def on_published(self, result: Published) -> None:
        """Publisher listener: queue the new recording and deliver now."""
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
