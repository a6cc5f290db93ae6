"""A recorder "device" for mesh tests: one Syncthing instance, its papad, its service parts.

`Device` wraps a `tests.syncthing_harness.Instance` with a recorder `Config` (papad pointing at
its own papad: a real one from the papad kit, `papad=` a `tests.papad_kit.PapadServer`, or an
in-process fake, current or legacy API), the service workers `recorder run` would start for
the mesh (the papad outbox worker and the bridge) and a `record()` that makes a recording
through the real pipeline (file source) with bookmarks.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from recorder import app
from recorder.audioid.catalogue import Catalogue
from recorder.config import Config, SourceSpec, parse_config
from recorder.db import Database
from recorder.mesh.exchange.bridge import Bridge
from recorder.publish import Published
from tests.fake_papad import FakeLegacyPapad, FakePapad
from tests.papad_setup import TOKEN, write_secret
from tests.syncthing_harness import Instance


def device_config(inst: Instance, papad: dict[str, Any], **sections: Any) -> Config:
    """The harness's config for `inst` plus a `[papad]` section and quick audio settings."""
    raw: dict[str, Any] = {
        "device": {"id": inst.recorder_id},
        "storage": {"data_dir": str(inst.root / "data"), "sync_root": str(inst.sync_root),
                    "reserve_mb": 0},
        "syncthing": {"url": inst.url, "api_key_file": str(inst.key_file),
                      "watcher_delay": 60, "rescan_interval": 3600},
        "audio": {"preroll": 0.0},
        "papad": papad,
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return parse_config(raw)


class Device:
    """One mesh member: Syncthing instance + papad + outbox worker + bridge."""

    def __init__(self, inst: Instance, legacy: bool = False, docroot_host: str = "",
                 export_interval: float = 1.0, rescan_interval: float = 600.0,
                 papad: Any = None) -> None:
        self.inst = inst
        self.id = inst.recorder_id
        self.legacy = legacy
        self.export_interval = export_interval
        self.rescan_interval = rescan_interval
        self.real = papad  # a real papad server (shared: never stopped here)
        if papad is not None:
            self.papad = papad
            section = papad.papad_section(inst.root, timeout=10.0)
        elif legacy:
            self.papad: Any = FakeLegacyPapad().start()
            section = {"api": "papad-api", "url": self.papad.url, "timeout": 5.0,
                       "host": docroot_host or "docroot.invalid",
                       "media_base_url": "http://{host}/{device_id}/"}
        else:
            self.papad = FakePapad().start()
            self.papad.add_user("recorder", token=TOKEN, groups=(1,))
            token = write_secret(inst.root / "papad.token", TOKEN)
            section = {"api": "papad", "url": self.papad.url, "auth": "token",
                       "token_file": str(token), "group": 1, "timeout": 5.0}
        self.cfg = device_config(inst, section, mesh={"export_interval": export_interval,
                                                      "rescan_interval": rescan_interval})
        self.assembly: app.Assembly | None = None
        self.registration: Any = None
        self.bridge: Bridge | None = None

    # -- service -------------------------------------------------------------------------

    def start(self) -> None:
        """Start what `recorder run` starts for the mesh, as it assembles it: the outbox
        worker, then the bridge (no radio)."""
        self.assembly = app.assemble(self.cfg, app.Role.WORKERS)
        self.registration = self.assembly.registration
        self.bridge = self.assembly.bridge
        for worker in self.assembly.workers:
            worker.start()

    def stop(self) -> None:
        if self.assembly is not None:
            for worker in reversed(self.assembly.workers):
                with contextlib.suppress(Exception):
                    worker.stop()
            self.assembly.close()
            self.assembly = None
        self.bridge = None
        if self.real is None:
            self.papad.stop()

    # -- recording -----------------------------------------------------------------------

    def record(self, wav: Path, *, marks: tuple[str, ...] = (), seconds: float = 3.0,
               title: str = "") -> Published:
        """Record `wav` in real time through the real pipeline, bookmarking `marks` (one a
        second after the start, then one a second apart)."""
        assert self.assembly is not None
        pump = app.build_pump(self.assembly, self.cfg.audio,
                              source=SourceSpec.parse(f"file:{wav}"), realtime=True)
        try:
            handle = pump.start_recording("test", title=title, max_seconds=seconds)
            pump.start()
            for label in marks:
                time.sleep(0.8)
                pump.mark(label)
            return handle.done.result(timeout=60)
        finally:
            pump.close()

    # -- inspecting ----------------------------------------------------------------------

    def catalogue(self) -> Catalogue:
        return Catalogue.from_config(Database(self.cfg.db_path), self.cfg.audioid)

    def media(self) -> dict[str, list[str]]:
        """Recording id → papad ids of the media registered for it (more than one: a dup)."""
        out: dict[str, list[str]] = {}
        if self.real is not None:  # only this device's recordings: the server is shared
            for entry in self.registration.outbox.entries():
                ids = [m["uuid"] for m in self.real.media(entry.recording_id)]
                if ids:
                    out[entry.recording_id] = ids
            return out
        with self.papad.lock:
            if self.legacy:
                for r in self.papad.recordings:
                    rid = tagged_recording_id(r.get("tags"))
                    out.setdefault(rid or "?", []).append(r["_id"]["$oid"])
            else:
                for m in self.papad.media:
                    if m.get("_deleted"):
                        continue
                    rid = tagged_recording_id(m.get("tags")) or described_recording_id(m)
                    out.setdefault(rid or "?", []).append(m["uuid"])
        return out

    def media_id(self, recording_id: str) -> str | None:
        if self.real is not None:
            found = self.real.media(recording_id)
            return found[0]["uuid"] if found else None
        ids = self.media().get(recording_id, [])
        return ids[0] if ids else None

    def annotations(self, recording_id: str) -> list[tuple[str, str, tuple[str, ...]]]:
        """(media_target, text, sorted tags) of every annotation on a recording's media."""
        mid = self.media_id(recording_id)
        if mid is None:
            return []
        if self.real is not None:
            return sorted(self.real.annotation_set(mid))
        out = []
        with self.papad.lock:
            if self.legacy:
                for f in self.papad.fragments:
                    if f.get("target", {}).get("recording_id") == mid:
                        tags = tuple(sorted(t for t in f.get("tags", "").split(",") if t))
                        out.append((f["target"]["selector"]["value"], f["body"]["value"], tags))
            else:
                for a in self.papad.annotations:
                    if a["media_reference_id"] == mid and not a.get("_deleted"):
                        tags = tuple(sorted(t["name"] for t in a["tags"]))
                        out.append((a["media_target"], a["annotation_text"], tags))
        return sorted(out)

    def audio_url(self, recording_id: str) -> str | None:
        assert self.legacy
        with self.papad.lock:
            for r in self.papad.recordings:
                if tagged_recording_id(r.get("tags")) == recording_id:
                    return r["audio_url"]
        return None


MARKER = "recorderpi-"  # README: every registered media carries the tag recorderpi-<id>


def described_recording_id(media: dict[str, Any]) -> str | None:
    """The recording id a current-papad media's description names (``Recording id: <id>``,
    README's rule), read here rather than with the product's own parser."""
    for line in str(media.get("description") or "").splitlines():
        if line.startswith("Recording id: "):
            return line.removeprefix("Recording id: ").strip() or None
    return None


def tagged_recording_id(tags: Any) -> str | None:
    """The recording id in a papad item's tags (names, {"name": ...} objects or CSV), read
    here by README's rule rather than with the product's own parser."""
    names = tags.split(",") if isinstance(tags, str) else [
        t.get("name", "") if isinstance(t, dict) else str(t) for t in tags or []]
    for name in (n.strip().lower() for n in names):
        rid = name.removeprefix(MARKER)
        if name.startswith(MARKER) and len(rid) == 26:
            return rid
    return None
