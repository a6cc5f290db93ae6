"""Sidecars on disk: which files of a device folder are sidecars and how one is read safely,
and the cleaning of their free text before it is shown or sent.

The sidecar is the JSON document published next to every recording: its fields, the typed
`recorder.recording.Recording` and the strict validator (the gate hostile or broken peer data
must pass) live in `recorder.recording`.
"""

from __future__ import annotations

import os
import re
import stat
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

# The document's rules live in recorder.recording; these names stay importable from here.
from recorder.recording import (
    MAX_SIDECAR_BYTES,
    MIN_RECORDING_SECONDS,
    SCHEMA,
    Recording,
    SidecarError,
    StopReason,
    dumps,
    loads,
    new_recording_id,
    recording_name,
    relative_path,
    utc_iso,
    validate,
)
from recorder.safefile import UnsafeFile, read_regular

__all__ = [
    "MAX_SIDECAR_BYTES", "MIN_RECORDING_SECONDS", "SCHEMA", "SidecarError", "StopReason",
    "dumps", "loads", "new_recording_id", "recording_name", "relative_path", "utc_iso",
    "validate",
]

_SIDECAR_NAME_RE = re.compile(r"^\d{8}T\d{6}Z_[a-z0-9._-]+_[0-9a-z]{8}\.json$")


# What peers' free text may hold once it reaches papad (titles, tags, bookmark labels).
TITLE_MAX = 200
TAG_MAX = 64
LABEL_MAX = 500
# Bidirectional controls reorder what a reader sees ("evil‮gpj.exe"): never shown.
_BIDI = frozenset("؜‎‏‪‫‬‭‮⁦⁧⁨⁩")


def clean_text(value: Any, limit: int = TITLE_MAX, *, ellipsis: bool = True) -> str:
    """Free text from a sidecar, safe to show: one line, no control characters (NUL, escape
    sequences, C1), no bidirectional overrides or isolates, no lone surrogates, whitespace
    runs collapsed, cut to `limit` characters (ending in an ellipsis unless `ellipsis` is
    false: a tag is a name, not prose). Joiners (ZWJ, ZWNJ) stay: Indic scripts and emoji
    need them. Not a string: "".
    """
    if not isinstance(value, str):
        return ""
    kept = []
    for ch in value:
        cat = unicodedata.category(ch)
        if cat in ("Zl", "Zp") or ch.isspace():
            kept.append(" ")
        elif cat in ("Cc", "Cs", "Co", "Cn") or ch in _BIDI:
            continue
        else:
            kept.append(ch)
    text = " ".join("".join(kept).split())
    if len(text) <= limit:
        return text
    return text[: limit - 1].rstrip() + "…" if ellipsis else text[:limit].rstrip()


# --- sidecars on disk ---------------------------------------------------------------------------
# The one rule for which files in a device folder are sidecars and how one is read. The bridge
# (peers' folders), the outbox's reconcile, the catalogue rebuild and the playlist all use it.


def ignored_name(name: str) -> bool:
    """True for names never read as data: Syncthing temporaries, conflict copies, hidden and
    partial files."""
    return (
        name.startswith((".", "~syncthing~"))
        or ".sync-conflict-" in name
        or name.endswith((".tmp", ".partial"))
    )


def is_sidecar_name(name: str) -> bool:
    """True for ``<UTC time>_<device>_<short id>.json``, the only sidecar names there are."""
    return bool(_SIDECAR_NAME_RE.match(name)) and not ignored_name(name)


@dataclass(frozen=True)
class Candidate:
    """A ``.json`` entry under a device folder's ``recordings/``.

    `lstat` is None for an entry that must never be followed: a symlink where a sidecar or a
    directory should be, or a ``recordings`` that is not a directory.
    """

    rel: str  # relative to the device folder
    path: Path
    lstat: os.stat_result | None
    ignored: bool = False  # an ignored name (conflict copy, temporary file): never read


def candidates(device_folder: Path, *, with_ignored: bool = False) -> Iterator[Candidate]:
    """Every ``.json`` entry below ``<device_folder>/recordings/`` in a stable order, without
    following symlinked directories. Ignored names are skipped, or with `with_ignored`
    yielded marked ``ignored`` (to report them)."""
    root = device_folder / "recordings"
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        yield Candidate("recordings", root, None)
        return
    stack = [root]
    while stack:
        here = stack.pop()
        try:
            entries = sorted(os.scandir(here), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if ignored_name(entry.name):
                if with_ignored and entry.name.endswith(".json"):
                    rel = os.path.relpath(entry.path, device_folder)
                    yield Candidate(rel, Path(entry.path), None, ignored=True)
                continue
            rel = os.path.relpath(entry.path, device_folder)
            try:
                est = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(est.st_mode):
                stack.append(Path(entry.path))
            elif stat.S_ISLNK(est.st_mode):
                if entry.name.endswith(".json") or entry.is_dir():
                    yield Candidate(rel, Path(entry.path), None)
            elif entry.name.endswith(".json"):
                yield Candidate(rel, Path(entry.path), est)


@dataclass(frozen=True)
class SidecarFile:
    """A sidecar read from disk: the validated recording and the bytes it came from."""

    recording: Recording
    data: bytes

    @property
    def doc(self) -> dict[str, Any]:
        """The document (exactly what `data` holds)."""
        return self.recording.to_doc()


def read_sidecar(path: Path, device_folder: Path) -> SidecarFile:
    """Read and validate the sidecar at `path` in `device_folder`.

    It must be a regular file inside the folder (never a symlink: checked on the descriptor
    read), at most MAX_SIDECAR_BYTES, valid, name the folder's device, and lie where its own
    ``path`` says. Raises SidecarError with the reason (FileNotFoundError if it vanished).
    """
    try:
        data = read_regular(path, device_folder, MAX_SIDECAR_BYTES)
    except UnsafeFile as exc:
        raise SidecarError(f"sidecar {exc}") from None
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SidecarError(f"cannot read sidecar: {exc.strerror or exc}") from None
    rec = Recording.from_doc(loads(data, expect_device=device_folder.name))
    expected = str(PurePosixPath(rec.path).with_suffix(".json"))
    rel = os.path.relpath(path, device_folder)
    if expected != rel:
        raise SidecarError(f"sidecar lies at {rel} but its path says {expected}")
    return SidecarFile(rec, data)


@dataclass(frozen=True)
class Found:
    """A sidecar-named file found in a device folder."""

    path: Path
    recording: Recording | None  # the valid sidecar, or None
    problem: str = ""  # why `recording` is None
    ignored: bool = False  # a conflict copy or temporary file: never read

    @property
    def doc(self) -> dict[str, Any] | None:
        """The valid sidecar's document, or None."""
        return None if self.recording is None else self.recording.to_doc()


def published_sidecars(device_folder: Path, *, with_ignored: bool = False) -> Iterator[Found]:
    """Every sidecar in `device_folder`, read with `read_sidecar`; invalid ones come with
    their problem, ignored names (conflict copies, ...) only with `with_ignored`."""
    for cand in candidates(device_folder, with_ignored=with_ignored):
        if cand.ignored:
            yield Found(cand.path, None, "ignored name", ignored=True)
            continue
        if not is_sidecar_name(cand.path.name):
            yield Found(cand.path, None, "not a sidecar name (<UTC time>_<device>_<id>.json)")
            continue
        if cand.lstat is None:
            yield Found(cand.path, None, "sidecar is a symlink or not a regular file")
            continue
        try:
            yield Found(cand.path, read_sidecar(cand.path, device_folder).recording)
        except FileNotFoundError:
            continue
        except SidecarError as exc:
            yield Found(cand.path, None, str(exc))
