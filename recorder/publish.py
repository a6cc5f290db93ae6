"""Publish a finished recording: OGG first, then its sidecar, each staged, fsynced and renamed.

A watcher of the sync folder (Syncthing, the bridge on a peer, a user) therefore sees either
nothing, or a complete OGG, or a complete OGG with its complete sidecar: never a partial file and
never a sidecar without its audio. Around the renames two kinds of hooks run:

- enrichers, before the sidecar is written, may add fields (the Audio ID catalogue adds
  ``duplicate_of``);
- listeners, after both files are in place, learn of the new recording (the papad outbox, the
  Syncthing scan hand-off, the radio playlist). A failing hook is logged and never undoes a
  publication. A hook that failed because the disk is full (SQLite's "database or disk is
  full", ENOSPC) is remembered and run again by `retry_deferred()` once there is room (the
  service does, when space returns): catalogue adds and outbox enqueues are idempotent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recorder import recording
from recorder.atomic import atomic_write_text, fsync_dir, publish_file
from recorder.layout import Layout
from recorder.session import StagedRecording
from recorder.storage import is_disk_full

log = logging.getLogger(__name__)

# An enricher returns the fields it adds to the recording (``{"duplicate_of": ...}``).
Enricher = Callable[[recording.Recording], Mapping[str, Any]]
Listener = Callable[["Published"], None]


@dataclass(frozen=True)
class Published:
    """A recording in place in the device folder."""

    recording: recording.Recording
    ogg_path: Path
    sidecar_path: Path
    visible_at: float = 0.0  # time.monotonic() when both files were in place

    @property
    def sidecar(self) -> dict[str, Any]:
        """The sidecar document as written."""
        return self.recording.to_doc()


@dataclass
class Publisher:
    """Publishes into the layout's device folder, staging temporary files in its staging
    directory (same filesystem, outside every synced folder)."""

    layout: Layout
    enrichers: list[Enricher] = field(default_factory=list)
    listeners: list[Listener] = field(default_factory=list)
    # Hooks that failed on a full disk, with what they were given (publisher threads append,
    # `retry_deferred` takes them: guarded by the GIL's atomic list operations).
    deferred: list[tuple[Any, Any]] = field(default_factory=list)

    def publish(self, staged: StagedRecording, *, ogg_in_place: bool = False) -> Published:
        """Move `staged` into the device folder and notify listeners; returns the result.

        Either both files are in place, or (OSError, e.g. a full disk) neither is visible and
        the recording is still in staging, for `recorder recover` to publish later.
        `ogg_in_place`: the OGG is already at its published path (recovery of a crash between
        the two renames): only the sidecar is written, and the OGG is left where it is if that
        fails (moving it away would tell every peer to delete it).
        """
        rec = staged.recording
        for enrich in self.enrichers:
            try:
                rec = rec.with_extra(enrich(rec))
            except Exception as exc:
                self._hook_failed(enrich, rec, exc, "sidecar enricher")
        doc = recording.validate(rec.to_doc())
        ogg_target = self.layout.device_folder / rec.path
        json_target = ogg_target.with_suffix(".json")
        if not ogg_in_place:
            publish_file(staged.ogg, ogg_target)
        try:
            atomic_write_text(json_target, recording.dumps(doc),
                              staging_dir=self.layout.staging_dir)
        except BaseException:
            if not ogg_in_place:
                # An OGG without its sidecar must not stay visible: Syncthing would carry it
                # and recovery would re-encode it under a second sha256. Back into staging.
                os.replace(ogg_target, staged.ogg)
                with contextlib.suppress(OSError):
                    fsync_dir(ogg_target.parent)
            raise
        result = Published(rec, ogg_target, json_target, time.monotonic())
        log.info("published %s (%.1f s, %s)", ogg_target, rec.duration, rec.stop_reason)
        for listener in self.listeners:
            try:
                listener(result)
            except Exception as exc:
                self._hook_failed(listener, result, exc, "publish listener")
        # Last: unlinking an hour of journal takes a while, and nobody waits for it.
        for path in staged.staged_files:
            _unlink_quietly(path)
        return result


    def _hook_failed(self, hook: Any, arg: Any, exc: Exception, what: str) -> None:
        if is_disk_full(exc):
            log.error("%s %s failed: disk full; run again once space returns", what, hook)
            self.deferred.append((hook, arg))
        else:
            log.exception("%s %s failed; published without it", what, hook)

    def retry_deferred(self) -> int:
        """Run again the hooks that failed on a full disk; returns how many succeeded (the
        others stay deferred)."""
        pending, self.deferred = self.deferred, []
        done = 0
        for hook, arg in pending:
            try:
                hook(arg)
                done += 1
            except Exception as exc:
                self._hook_failed(hook, arg, exc, "deferred hook")
        return done


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
