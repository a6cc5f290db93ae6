"""The import inbox: a folder the service watches (``[import] inbox``, e.g. the phone bot's
recordings directory) whose finished files become recordings.

A file is taken once it has stopped changing (size, mtime and inode the same for
``import.settle_seconds``: the bot writes a call while it lasts and has no "done" marker), and
an Ogg file (the bot's calls) once its end-of-stream page is written too: a call on hold
pauses the writes, not the stream (`UNFINISHED_OGG_FACTOR`).
Imported files (or ones already imported: the answer names the recording) move to
``inbox/done/`` or are removed (``import.after``); a file that can never be imported moves to
``inbox/rejected/`` with ``<name>.reason.txt`` beside it (one line, written first), and is never
deleted. A full disk stops the round: the file stays in the inbox and is tried again after
`DISK_RETRY_SECONDS` (or ten polls). A file that vanishes before it is read is only logged.

One thread, one file at a time: importing is CPU work (decode, encode, Audio ID) and the
recording in progress comes first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recorder.atomic import atomic_write_text, fsync_dir
from recorder.config import ImportConfig
from recorder.errors import RecorderError
from recorder.importer import Importer, ImportRejected, SourceVanished, is_retryable

log = logging.getLogger(__name__)

DISK_RETRY_SECONDS = 30.0  # at most; ten polls when polling is faster
DONE, REJECTED = "done", "rejected"
# An Ogg file without its end-of-stream page is still being written (a call on hold writes
# nothing for a while): it waits this many settle times before it is taken as it is (the bot
# died mid-call: what it wrote is the call).
UNFINISHED_OGG_FACTOR = 6


def ogg_finished(path: Path) -> bool:
    """False for an Ogg file whose last page is not an end-of-stream page (its writer has not
    closed the stream yet); True for a finished one and for every other kind of file."""
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != b"OggS":
                return True
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 65536))
            tail = fh.read()
    except OSError:
        return True  # the import says what is wrong with it
    at = tail.rfind(b"OggS")
    return at >= 0 and len(tail) > at + 5 and bool(tail[at + 5] & 0x04)


@dataclass
class _Seen:
    signature: tuple[int, int, int]  # size, mtime_ns, inode
    since: float  # monotonic time it last changed


class InboxWorker:
    """The service's inbox watcher (a `recorder.worker.Worker`)."""

    name = "import"

    def __init__(self, settings: ImportConfig, importer: Importer) -> None:
        assert settings.inbox is not None
        self.settings = settings
        self.inbox = settings.inbox
        self.importer = importer
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: dict[str, _Seen] = {}
        self._retry_at = 0.0
        self.counts = {"imported": 0, "duplicate": 0, "rejected": 0, "vanished": 0}
        self.last_error = ""
        self.waiting = 0  # files seen, not yet settled

    def start(self) -> None:
        for sub in (DONE, REJECTED):
            (self.inbox / sub).mkdir(parents=True, exist_ok=True)
        with self.importer.locked():
            self.importer.finish_interrupted()
        self._thread = threading.Thread(target=self._run, name="import-inbox", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)

    def status(self) -> dict[str, Any]:
        return {"inbox": str(self.inbox), "settling": self.waiting, **self.counts,
                "waiting_for_space": self._retry_at > time.monotonic(),
                "last_error": self.last_error}

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:
                log.exception("import inbox round failed; tried again")
            self._stop.wait(self.settings.poll_seconds)

    def poll(self) -> None:
        """One round: look at every entry, import the settled ones."""
        now = time.monotonic()
        if now < self._retry_at:
            return
        try:
            entries = sorted(os.scandir(self.inbox), key=lambda e: e.name)
        except OSError as exc:
            self.last_error = f"cannot read the inbox {self.inbox}: {exc.strerror}"
            return
        present = set()
        settled: list[os.DirEntry[str]] = []
        for entry in entries:
            if entry.name in (DONE, REJECTED) or entry.name.startswith("."):
                continue
            present.add(entry.name)
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            sig = (st.st_size, st.st_mtime_ns, st.st_ino)
            seen = self._seen.get(entry.name)
            if seen is None or seen.signature != sig:
                self._seen[entry.name] = _Seen(sig, now)
                if entry.is_file(follow_symlinks=False):
                    continue  # a regular file is taken once it stopped changing
            elif entry.is_file(follow_symlinks=False) and (
                    now - seen.since < self.settings.settle_seconds
                    or (now - seen.since < UNFINISHED_OGG_FACTOR * self.settings.settle_seconds
                        and not ogg_finished(Path(entry.path)))):
                continue
            settled.append(entry)
        for name in list(self._seen):
            if name not in present:
                del self._seen[name]
        self.waiting = len(present) - len(settled)
        for entry in settled:
            if self._stop.is_set():
                return
            if not self._take(Path(entry.path)):
                return  # the disk: the rest waits too

    def _take(self, path: Path) -> bool:
        """Import one file; False when the disk says "later"."""
        try:
            with self.importer.locked():
                outcome = self.importer.import_file(path)
        except SourceVanished:
            self.counts["vanished"] += 1
            log.info("inbox: %s vanished before it was imported", path.name)
            self._seen.pop(path.name, None)
            return True
        except ImportRejected as exc:
            self._reject(path, str(exc))
            return True
        except RecorderError as exc:
            if is_retryable(exc):
                return self._later(path, exc)
            self._reject(path, str(exc))  # too short, and the like: never importable
            return True
        except OSError as exc:
            if is_retryable(exc):
                return self._later(path, exc)
            self.last_error = f"{path.name}: {exc.strerror or exc}; tried again"
            log.error("inbox: importing %s failed: %s; tried again", path.name, exc)
            return True
        self.counts[outcome.action] += 1
        log.info("inbox: %s %s: %s", path.name, outcome.action, outcome.detail or outcome.path)
        self._done(path)
        self._seen.pop(path.name, None)
        return True

    def _later(self, path: Path, exc: BaseException) -> bool:
        self.last_error = f"{path.name}: {exc}; tried again when there is room"
        log.error("inbox: %s", self.last_error)
        self._retry_at = time.monotonic() + min(DISK_RETRY_SECONDS,
                                                10 * self.settings.poll_seconds)
        return False

    def _done(self, path: Path) -> None:
        try:
            if self.settings.after == "remove":
                path.unlink()
                fsync_dir(path.parent)
            else:
                _move(path, self.inbox / DONE)
        except FileNotFoundError:
            pass  # imported from what was read; somebody took the file away meanwhile
        except OSError as exc:
            # Imported already: next round names the recording it is and tries again.
            self.last_error = f"{path.name}: imported, but not moved: {exc.strerror}"
            log.error("inbox: %s", self.last_error)

    def _reject(self, path: Path, reason: str) -> None:
        """Move `path` to rejected/ after writing its reason; when that cannot be written
        the file stays where it is (tried again)."""
        self.counts["rejected"] += 1
        self._seen.pop(path.name, None)
        line = " ".join(reason.split())
        log.warning("inbox: rejected %s: %s", path.name, line)
        target = _free_name(self.inbox / REJECTED, path.name)
        try:
            atomic_write_text(target.with_name(target.name + ".reason.txt"), line + "\n")
            os.replace(path, target)
            fsync_dir(target.parent)
            fsync_dir(path.parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self.last_error = f"{path.name}: rejected ({line}) but not moved: {exc.strerror}"
            log.error("inbox: %s", self.last_error)


def _free_name(folder: Path, name: str) -> Path:
    """`folder/name`, or `folder/name.N` for the first N not taken."""
    target = folder / name
    n = 1
    while target.exists() or target.is_symlink() or \
            target.with_name(target.name + ".reason.txt").exists():
        target = folder / f"{name}.{n}"
        n += 1
    return target


def _move(path: Path, folder: Path) -> None:
    target = _free_name(folder, path.name)
    os.replace(path, target)
    with contextlib.suppress(OSError):
        fsync_dir(folder)
    fsync_dir(path.parent)
