"""The Audio ID catalogue's part in publishing a recording.

`CatalogueHook` is both a publisher enricher (before the sidecar is written: completes
``audio_id`` with the sha256 and records the recording, which says whether it duplicates one
already known) and, through `published`, a listener (after the files are in place: the index
postings, whose cost grows with the length while stop-to-published must not).
"""

from __future__ import annotations

import logging
from typing import Any

from recorder.audioid.catalogue import Catalogue
from recorder.recording import Recording

log = logging.getLogger(__name__)


class CatalogueHook:
    """Publisher enricher and listener for the Audio ID catalogue (see the module)."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue

    def __call__(self, rec: Recording) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if rec.audio_id is not None:
            extra["audio_id"] = {**rec.audio_id, "sha256": rec.sha256}
        # The index postings are written after publishing (`index_pending`, a listener): their
        # cost grows with the length, stop-to-published must not.
        duplicate_of = self.catalogue.add({**rec.to_doc(), **extra}, defer_index=True)
        if duplicate_of:
            extra["duplicate_of"] = duplicate_of
            log.info("recording %s duplicates %s", rec.recording_id, duplicate_of)
        return extra

    def published(self, _result: object) -> None:
        """Publisher listener (whatever was published): the postings `__call__` left for
        after publishing."""
        self.catalogue.index_pending()
