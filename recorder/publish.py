"""Publish a finished recording: OGG first, then its sidecar, each staged, fsynced and renamed.

A watcher of the sync folder (Syncthing, the bridge on a peer, a user) therefore sees either
nothing, or a complete OGG, or a complete OGG with its complete sidecar: never a partial file and
never a sidecar without its audio. Around the renames two kinds of hooks run:

- enrichers, before the sidecar is written, may add fields (the Audio ID catalogue adds
  ``duplicate_of``);
- listeners, after both files are in place, learn of the new recording (the papad outbox, the
  Syncthing scan hand-off, the radio playlist). A failing hook is logged and never undoes a
  publication.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recorder import sidecar
from recorder.atomic import atomic_write_text, publish_file
from recorder.config import Config
from recorder.session import StagedRecording

log = logging.getLogger(__name__)

Enricher = Callable[[dict[str, Any]], dict[str, Any]]
Listener = Callable[["Published"], None]


@dataclass(frozen=True)
class Published:
    """A recording in place in the device folder."""

    sidecar: dict[str, Any]
    ogg_path: Path
    sidecar_path: Path
    visible_at: float = 0.0  # time.monotonic() when both files were in place


@dataclass
class Publisher:
    cfg: Config
    enrichers: list[Enricher] = field(default_factory=list)
    listeners: list[Listener] = field(default_factory=list)

    def publish(self, staged: StagedRecording) -> Published:
        """Move `staged` into the device folder and notify listeners; returns the result."""
        doc = dict(staged.meta)
        for enrich in self.enrichers:
            try:
                doc.update(enrich(doc))
            except Exception:
                log.exception("sidecar enricher %s failed; publishing without it", enrich)
        sidecar.validate(doc)
        folder = self.cfg.device_folder
        ogg_target = folder / doc["path"]
        json_target = ogg_target.with_suffix(".json")
        publish_file(staged.ogg, ogg_target)
        atomic_write_text(json_target, sidecar.dumps(doc), staging_dir=self.cfg.storage.staging_dir)
        result = Published(doc, ogg_target, json_target, time.monotonic())
        log.info("published %s (%.1f s, %s)", ogg_target, doc["duration"], doc["stop_reason"])
        for listener in self.listeners:
            try:
                listener(result)
            except Exception:
                log.exception("publish listener %s failed", listener)
        # Last: unlinking an hour of journal takes a while, and nobody waits for it.
        for path in staged.staged_files:
            _unlink_quietly(path)
        return result


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
