"""What the JSON API answers: the service's state, the recordings and the mesh, in the words
a field volunteer reads.

Everything here runs on the web server's worker threads and only reads: the service's state
through its `request` entry point (answered by its main loop), the shared components through
their thread-safe APIs. Nothing here knows HTTP (`recorder.web.routes` does).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from recorder.config import EncoderConfig
from recorder.errors import RecorderError
from recorder.layout import Layout
from recorder.mesh.exchange.store import BridgeStore
from recorder.storage import MB

if TYPE_CHECKING:
    from recorder.audioid.catalogue import Catalogue
    from recorder.mesh.net.syncthing import SyncthingClient
    from recorder.papad.outbox import Outbox
    from recorder.waveform import Waveforms
    from recorder.web.listing import ListedRecording, Listing
    from recorder.worker import ServiceRequest

log = logging.getLogger(__name__)

MESH_CACHE_SECONDS = 5.0  # several phones on the mesh page ask Syncthing once
STATUS_TIMEOUT = 10.0
# libvorbis' nominal bitrates (kbit/s, stereo) by quality; a mono recording is about 0.6 of it
# (measured on the bundled speech clip at 48 kHz: q4 mono 74 kbit/s).
VORBIS_STEREO_KBPS = {-1: 45, 0: 64, 1: 80, 2: 96, 3: 112, 4: 128, 5: 160, 6: 192, 7: 224,
                      8: 256, 9: 320, 10: 500}
PAPAD_WORDS = {"delivered": "registered", "pending": "pending", "parked": "parked"}
STATE_WORDS = {
    "recording": "Recording",
    "idle": "Armed: press the button to record",
    "starting": "Starting up",
    "no_device": "No microphone: plug it in (the recorder keeps looking)",
    "failed": "The recorder hit an internal error and is restarting its audio",
    "stopping": "Shutting down",
    "hub": "A hub: it records nothing, and bridges, registers and plays the others' recordings",
}


@dataclass
class Collaborators:
    """What the web page reads and asks, handed over by `recorder.app`."""

    request: ServiceRequest
    layout: Layout
    waveforms: Waveforms
    catalogue: Catalogue | None
    outbox: Outbox | None
    wake_outbox: Callable[[], None] | None
    bridge_store: BridgeStore
    mesh_status: Callable[[], dict[str, Any]] | None  # Syncthing peers and folders
    syncthing: SyncthingClient | None
    yggdrasil_endpoint: str
    encoder: EncoderConfig
    channels: int


def nominal_byte_rate(encoder: EncoderConfig, channels: int) -> float:
    """Bytes per second the configured codec writes, before any recording measured it."""
    if encoder.codec == "opus":
        return encoder.opus_bitrate * 1000 * channels / 8
    q = min(10, max(-1, round(encoder.vorbis_quality)))
    return VORBIS_STEREO_KBPS[q] * 1000 / 8 * (1.0 if channels > 1 else 0.6)


class Views:
    """The API's answers (dicts ready for JSON)."""

    def __init__(self, parts: Collaborators, listing: Listing | None) -> None:
        self.parts = parts
        self.listing = listing
        self._mesh_lock = threading.Lock()
        self._mesh: tuple[float, dict[str, Any]] | None = None

    # -- now -----------------------------------------------------------------------------------
    def service_status(self) -> dict[str, Any]:
        """The service's own status (ServiceError when it does not answer)."""
        return self.parts.request({"command": "status"}, timeout=STATUS_TIMEOUT)

    def status(self) -> dict[str, Any]:
        """The Now page: state, recording, free space and hours left, clock, LED, radio,
        papad and the last error, in plain words."""
        raw = self.service_status()
        audio = raw.get("audio") or {}
        workers = raw.get("workers") or {}
        radio = workers.get("radio")
        if radio is not None and radio.get("state") == "not configured":
            radio = None
        free_mb, reserve_mb = raw.get("free_mb", -1), raw.get("reserve_mb", 0)
        rate = self.byte_rate()
        usable = max(0, free_mb - reserve_mb) * MB if free_mb >= 0 else None
        problems = list(raw.get("warnings") or [])
        if raw.get("last_error") and raw["last_error"] not in problems:
            problems.insert(0, raw["last_error"])
        return {
            "device_id": raw.get("device_id"),
            "state": raw.get("state"),
            "headline": STATE_WORDS.get(raw.get("state", ""), raw.get("state")),
            "recording": audio.get("recording"),
            "led": raw.get("led"),
            "levels": raw.get("levels"),
            "source": audio.get("source"),
            "free_mb": free_mb,
            "reserve_mb": reserve_mb,
            "byte_rate": round(rate, 1),
            "hours_left": None if usable is None else round(usable / rate / 3600, 1),
            "clock_synced": raw.get("clock_synced"),
            "radio": None if radio is None else {
                "state": radio.get("state"), "on_air": radio.get("state") == "live"},
            "papad": workers.get("papad"),
            "storage": workers.get("storage"),  # recorder.budget: space by use, not yet safe
            "published": raw.get("published"),
            "latest": self._latest_own(),
            "last_error": raw.get("last_error"),
            "problems": problems,
            "overflows": {"input": audio.get("input_overflows", 0),
                          "ring_frames": audio.get("ring_overruns", 0)},
        }

    def _latest_own(self) -> dict[str, Any] | None:
        """This device's newest recording, with its papad state (None before the first)."""
        if self.listing is None:
            return None
        items = self._papad_states(self.listing.page(1, origin="own", size=1).items)
        return items[0] if items else None

    def byte_rate(self) -> float:
        """Bytes per second of recording: measured on this device's latest recordings, else
        the codec's nominal rate."""
        measured = self.listing.own_byte_rate() if self.listing is not None else None
        return measured or nominal_byte_rate(self.parts.encoder, self.parts.channels)

    # -- recordings ------------------------------------------------------------------------------
    def recordings(self, page: int = 1, query: str = "", tag: str = "",
                   origin: str = "") -> dict[str, Any]:
        """A page of recordings, newest first, each with its papad state."""
        if self.listing is None:
            return {"items": [], "page": 1, "pages": 1, "total": 0,
                    "note": "no catalogue: enable [audioid] to list recordings"}
        found = self.listing.page(page, query=query, tag=tag, origin=origin)
        return {"items": self._papad_states(found.items), "page": found.page, "pages": found.pages,
                "total": found.total, "query": query, "tag": tag, "origin": origin}

    def recording(self, recording_id: str) -> dict[str, Any] | None:
        """One recording with its papad state, or None."""
        item = self.listing.get(recording_id) if self.listing is not None else None
        return None if item is None else self._papad_states([item])[0]

    def _papad_states(self, items: list[ListedRecording]) -> list[dict[str, Any]]:
        """`items` as the JSON API sends them, each with its papad state."""
        outbox = self.parts.outbox
        states = outbox.states([i.recording_id for i in items]) if outbox else {}
        out = []
        for item in items:
            entry = states.get(item.recording_id)
            out.append({**item.as_dict(), "papad": None if entry is None else {
                **entry, "state": PAPAD_WORDS.get(entry["state"], entry["state"]),
                "reason": entry["last_error"] if entry["state"] == "parked" else None}})
        return out

    # -- mesh ------------------------------------------------------------------------------------
    def mesh(self) -> dict[str, Any]:
        """Peers (Syncthing: connected, last seen, completion), this node's yggdrasil address
        and links, peers' yggdrasil addresses, and what the bridge quarantined, with reasons."""
        with self._mesh_lock:
            now = time.monotonic()
            if self._mesh is not None and now - self._mesh[0] < MESH_CACHE_SECONDS:
                return self._mesh[1]
            out = self._mesh_now()
            self._mesh = (now, out)
            return out

    def _mesh_now(self) -> dict[str, Any]:
        from recorder.mesh.net import timesync, yggdrasil

        out: dict[str, Any] = {"device_id": self.parts.layout.device_id, "syncthing": None,
                               "syncthing_error": None, "peers": [], "folders": []}
        if self.parts.mesh_status is None:
            out["syncthing_error"] = "Syncthing is not configured ([syncthing] api_key_file)"
        else:
            try:
                st = self.parts.mesh_status()
                out.update(syncthing=st.get("syncthing_id"), peers=st.get("peers", []),
                           folders=st.get("folders", []))
                seen = self._last_seen()
                for peer in out["peers"]:
                    peer["last_seen"] = seen.get(peer["syncthing_id"])
            except RecorderError as exc:
                out["syncthing_error"] = str(exc)
        for peer in out["peers"]:
            peer["yggdrasil"] = timesync.peer_yggdrasil_addresses([peer.get("addresses", [])])
        endpoint = self.parts.yggdrasil_endpoint
        out["yggdrasil"] = yggdrasil.status(endpoint, timeout=2.0) if endpoint else None
        out["bridge"] = self.parts.bridge_store.summary()
        out["recordings"] = self.listing.counts() if self.listing is not None else {}
        return out

    def _last_seen(self) -> dict[str, str | None]:
        """When Syncthing last saw each device (ISO time; 1970 for never)."""
        if self.parts.syncthing is None:
            return {}
        stats = self.parts.syncthing.request("GET", "/rest/stats/device") or {}
        return {did: s.get("lastSeen") for did, s in stats.items() if isinstance(s, dict)}

    # -- metrics ---------------------------------------------------------------------------------
    def metrics(self) -> str:
        """The Prometheus text exposition of the recorder's counters."""
        from recorder.web.metrics import render

        status = self.status()
        counts = self.listing.counts() if self.listing is not None else {}
        outbox = self.parts.outbox.counts() if self.parts.outbox is not None else None
        bridge = self.parts.bridge_store.summary(limit=0)
        peers = None
        if self.parts.mesh_status is not None:
            try:
                peers = self.mesh()["peers"]
            except RecorderError:
                peers = None
        return render(status, counts, outbox, bridge, peers)
