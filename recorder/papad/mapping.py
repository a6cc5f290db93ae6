"""Sidecar fields → papad fields: names, tags, descriptions and bookmark fragments.

Every media this appliance registers carries its recording id and sha256 in the description
(``Recording id: <id>``): that is how a later attempt recognises a media an earlier attempt
created (papad itself never deduplicates). The legacy papad-api also gets a machine tag
``recorderpi-<recording id>``; current papad does not, because it nests the whole tag list of a
group (every tag of every media, with counts) in each media it returns: one tag per recording
made every answer grow with the archive (69 KB per media at 1,000 recordings, measured).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from recorder.recording import Recording
from recorder.sidecar import LABEL_MAX, clean_text

MARKER_PREFIX = "recorderpi-"
_MARKER_RE = re.compile(r"^recorderpi-([0-9a-hjkmnp-tv-z]{26})$")
BOOKMARK_TAG = "bookmark"
FALLBACK_TAG = "recorderpi"  # sent when an annotation has no tag: papad needs a non-empty one
# papad's column sizes (media name varchar(300), tag name varchar(100)): on PostgreSQL a
# longer value is a 500, on SQLite it is stored whole. Cut before sending.
MAX_NAME = 300
MAX_TAG = 100


def marker_tag(recording_id: str) -> str:
    """The machine tag naming a recording on papad."""
    return f"{MARKER_PREFIX}{recording_id}"


def recording_id_from_tags(tags: Iterable[str]) -> str | None:
    """The recording id carried by a machine tag among `tags`, if any."""
    for tag in tags:
        match = _MARKER_RE.match(tag.strip().lower())
        if match:
            return match.group(1)
    return None


def description_marker(recording_id: str) -> str:
    """The line of a media description that names the recording id."""
    return f"Recording id: {recording_id}"


def normalise_tags(tags: Iterable[str]) -> list[str]:
    """Lowercase, stripped, non-empty, first-seen order, no duplicates.

    A comma inside a tag splits it: papad's wire format is comma-separated, so the server
    would split it anyway and the lookup must see the same tags papad stores. Each tag is cut
    to `MAX_TAG` characters.
    """
    seen: dict[str, None] = {}
    for tag in tags:
        if not isinstance(tag, str):
            continue
        for part in tag.split(","):
            part = clean_text(part, MAX_TAG, ellipsis=False).lower()
            if part:
                seen.setdefault(part, None)
    return list(seen)


def wire_tags(tags: Iterable[str]) -> str:
    """papad's ``tags`` form field: normalised tags, comma-separated, never an empty one.

    papad needs the field and turns an empty item into a 500 on PostgreSQL (``""``, ``a,,b``),
    so an empty list is sent as `FALLBACK_TAG`.
    """
    return ",".join(normalise_tags(tags)) or FALLBACK_TAG


def media_name(rec: Recording) -> str:
    """The title, else ``Recording 2026-11-28 17:01 UTC (device)``: control and bidi
    characters removed and cut to a title's length (`sidecar.clean_text`), well inside papad's
    `MAX_NAME`."""
    title = clean_text(rec.start.title)
    if title:
        return title
    return f"Recording {rec.started:%Y-%m-%d %H:%M} UTC ({rec.device_id})"


def media_tags(rec: Recording, marker: bool = True) -> list[str]:
    """The sidecar's tags, normalised, plus (`marker`) the machine tag naming the recording."""
    extra = [marker_tag(rec.recording_id)] if marker else []
    return normalise_tags([*rec.start.tags, *extra])


def format_duration(seconds: float) -> str:
    """``1:02:03.4`` / ``2:03.4`` style duration."""
    tenths = round(max(0.0, float(seconds)) * 10)
    minutes, tenth_secs = divmod(tenths, 600)
    hours, minutes = divmod(minutes, 60)
    secs = f"{tenth_secs / 10:04.1f}"
    return f"{hours}:{minutes:02d}:{secs}" if hours else f"{minutes}:{secs}"


def media_description(rec: Recording) -> str:
    """Device, UTC time, duration, recording id and sha256, one fact a line."""
    when = rec.started.strftime("%Y-%m-%d %H:%M:%S UTC")
    if not rec.start.clock_synced:
        when += " (device clock was not synchronised)"
    lines = [
        f"Recorded on device {rec.device_id} at {when}.",
        f"Duration: {format_duration(rec.duration)} ({float(rec.duration):.1f} s).",
    ]
    if rec.recovered:
        lines.append("Recovered after an interruption (power loss or crash).")
    lines += [description_marker(rec.recording_id), f"sha256: {rec.sha256}"]
    return "\n".join(lines)


def format_seconds(value: float) -> str:
    """Seconds with up to 3 decimals and no trailing zeros: ``12``, ``12.5``, ``12.345``."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def fragment_range(at: float, duration: float, span: float) -> tuple[float, float]:
    """The ``t=start,end`` range of a bookmark at `at`, clipped to the recording.

    start = max(0, at) and end = min(duration, at + span); a mark past the end is pulled back to
    the end so the range is never inverted.
    """
    start = min(max(0.0, float(at)), float(duration))
    end = max(start, min(float(duration), float(at) + float(span)))
    return round(start, 3), round(end, 3)


def media_fragment(start: float, end: float) -> str:
    """Media Fragments temporal syntax without ``#``: ``t=12.5,22.5``."""
    return f"t={format_seconds(start)},{format_seconds(end)}"


@dataclass(frozen=True)
class Annotation:
    """One bookmark as papad sees it."""

    index: int
    start: float
    end: float
    media_target: str
    text: str
    tags: tuple[str, ...]

    @property
    def key(self) -> tuple[str, str]:
        """What identifies this annotation among a media's existing ones."""
        return (self.media_target, self.text)


def bookmark_annotations(rec: Recording, span: float) -> list[Annotation]:
    """One :class:`Annotation` per sidecar bookmark, in sidecar order."""
    out = []
    for index, bookmark in enumerate(rec.start.bookmarks):
        mark = bookmark.to_doc()  # the label, or a peer's note/text/title, and tags
        start, end = fragment_range(bookmark.at, rec.duration, span)
        text = ""
        for key in ("label", "note", "text", "title"):
            if isinstance(mark.get(key), str) and mark[key].strip():
                text = clean_text(mark[key], LABEL_MAX)
                break
        if not text:
            text = f"Bookmark at {format_duration(start)}"
        extra = mark.get("tags")
        tags = normalise_tags([BOOKMARK_TAG, *(extra if isinstance(extra, list) else [])])
        out.append(
            Annotation(
                index=index,
                start=start,
                end=end,
                media_target=media_fragment(start, end),
                text=text,
                tags=tuple(tags),
            )
        )
    return out
