"""``/metrics``: the recorder's figures in Prometheus' text exposition format (version 0.0.4).

Gauges and counters a monitoring server scrapes: recordings catalogued (own and peers'),
published since start, input overflows and ring overruns, the papad outbox, peers connected,
files the bridge quarantined, free disk and the reserve, state, clock and radio.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from recorder.storage import MB

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Out:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[dict[str, str], float]]) -> None:
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for labels, value in samples:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in sorted(labels.items()))
            number = str(int(value)) if float(value).is_integer() else repr(float(value))
            self.lines.append(f"{name}{{{text}}} {number}" if text else f"{name} {number}")


def render(status: dict[str, Any], recordings: dict[str, int], outbox: dict[str, int] | None,
           bridge: dict[str, Any], peers: list[dict[str, Any]] | None) -> str:
    """The exposition text from the Now page's status, the catalogue counts per origin, the
    outbox counts per state (None: no papad), the bridge summary and the Syncthing peers
    (None: no Syncthing)."""
    out = _Out()
    out.metric("recorder_recordings", "gauge", "Recordings in the catalogue, by origin.",
               [({"origin": "own" if o == "own" else "peer", "device": o.removeprefix("peer:")
                  if o != "own" else str(status.get("device_id") or "")}, n)
                for o, n in sorted(recordings.items())])
    out.metric("recorder_published_total", "counter",
               "Recordings published since the service started.",
               [({}, status.get("published") or 0)])
    out.metric("recorder_recording", "gauge", "1 while recording.",
               [({}, 1 if status.get("state") == "recording" else 0)])
    out.metric("recorder_state", "gauge", "The service state (1 for the current one).",
               [({"state": str(status.get("state"))}, 1)])
    overflows = status.get("overflows") or {}
    out.metric("recorder_input_overflows_total", "counter",
               "Audio input overflows reported by the device since the source opened.",
               [({}, overflows.get("input", 0))])
    out.metric("recorder_ring_overrun_frames_total", "counter",
               "Frames lost because the ring buffer overran since the source opened.",
               [({}, overflows.get("ring_frames", 0))])
    if outbox is not None:
        out.metric("recorder_outbox_entries", "gauge", "papad outbox entries, by state.",
                   [({"state": s}, n) for s, n in sorted(outbox.items())])
        out.metric("recorder_outbox_depth", "gauge",
                   "papad registrations not delivered yet (pending plus parked).",
                   [({}, outbox.get("pending", 0) + outbox.get("parked", 0))])
    if peers is not None:
        out.metric("recorder_peers", "gauge", "Syncthing peers configured.", [({}, len(peers))])
        out.metric("recorder_peers_connected", "gauge", "Syncthing peers connected now.",
                   [({}, sum(1 for p in peers if p.get("connected")))])
    quarantined = sum(c.get("quarantined", 0) for c in (bridge.get("peers") or {}).values())
    out.metric("recorder_bridge_quarantined", "gauge", "Peer files the bridge refused.",
               [({}, quarantined)])
    free_mb = status.get("free_mb", -1)
    if free_mb is not None and free_mb >= 0:
        out.metric("recorder_disk_free_bytes", "gauge", "Free bytes on the recordings' disk.",
                   [({}, free_mb * MB)])
    out.metric("recorder_disk_reserve_bytes", "gauge", "Disk reserve: no recording below it.",
               [({}, (status.get("reserve_mb") or 0) * MB)])
    if status.get("hours_left") is not None:
        out.metric("recorder_recording_hours_left", "gauge",
                   "Hours of recording the free space above the reserve holds.",
                   [({}, status["hours_left"])])
    storage = status.get("storage") or {}
    if "own_mb" in storage:  # recorder.budget's last pass
        out.metric("recorder_storage_bytes", "gauge", "Space used on the card, by use.",
                   [({"use": use}, storage[f"{use}_mb"] * MB)
                    for use in ("own", "peers", "staging")])
        out.metric("recorder_own_not_safe", "gauge",
                   "Own recordings not yet held by storage.safe_copies other devices.",
                   [({}, storage["own_not_safe"])])
        out.metric("recorder_storage_freed_bytes_total", "counter",
                   "Bytes the storage budget freed since the service started.",
                   [({}, storage["freed_mb_total"] * MB)])
        if storage.get("days_left") is not None:
            out.metric("recorder_storage_days_left", "gauge",
                       "Days until own recordings fill the room above the reserve.",
                       [({}, storage["days_left"])])
    out.metric("recorder_clock_synced", "gauge", "1 when the clock is NTP-synchronised.",
               [({}, 1 if status.get("clock_synced") else 0)])
    radio = status.get("radio")
    if radio is not None:
        out.metric("recorder_radio_on_air", "gauge", "1 while streaming live to Icecast.",
                   [({}, 1 if radio.get("on_air") else 0)])
    return "\n".join(out.lines) + "\n"
