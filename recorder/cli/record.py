"""``recorder record``, ``recorder recover``, ``recorder devices`` and ``recorder demo``."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

# The pipeline (recorder.app: numpy, soundfile, the sinks) is imported by the handlers that
# run it, so `--help`, `ctl` and the other light commands do not pay for it.
if TYPE_CHECKING:
    from recorder.config import Config
    from recorder.publish import Published


def register(sub: Any) -> None:
    p = sub.add_parser("record", help="record one recording and publish it")
    p.add_argument("--seconds", type=float, help="stop after this much audio (default: Ctrl-C)")
    p.add_argument("--source", help="audio source: device name/index or file:PATH")
    p.add_argument("--fast", action="store_true", help="replay a file source as fast as possible")
    p.add_argument("--title", default="", help="title of the recording")
    p.add_argument("--tag", action="append", default=[], help="a tag (repeatable)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=cmd_record, overrides=source_override)

    p = sub.add_parser("recover", help="salvage recordings left in staging by a crash")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser("devices", help="list audio input devices")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("demo", help="the appliance end to end on a bundled clip: simulated "
                       "button presses, no microphone or Pi needed")
    p.add_argument("--data-dir", type=Path, help="where to put the demo's data "
                   "(default: ./recorderpi-demo)")
    p.add_argument("--quick", action="store_true",
                   help="skip the service: record the whole clip as fast as possible")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_demo, overrides=_demo_override)


def source_override(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Config overrides for a ``--source`` option (validated like the config file)."""
    return {"audio": {"source": args.source}} if args.source else {}


def summary(result: Published) -> dict[str, Any]:
    doc = result.sidecar
    return {
        "path": str(result.ogg_path),
        "sidecar": str(result.sidecar_path),
        "recording_id": doc["recording_id"],
        "duration": doc["duration"],
        "sha256": doc["sha256"],
        "stop_reason": doc["stop_reason"],
        "levels": doc["levels"],
        "bookmarks": doc["bookmarks"],
    }


def record_once(cfg: Config, *, seconds: float | None, realtime: bool, title: str = "",
                tags: list[str] | None = None, trigger: str = "cli") -> Published:
    """Open the source, record one recording until `seconds`, end of input or SIGINT/SIGTERM,
    publish it and return the result."""
    from recorder import app

    parts = app.assemble(cfg)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        pump = app.build_pump(parts, cfg.audio, realtime=realtime)
        try:
            # Started before the source, so the recording holds the input from its first frame.
            handle = pump.start_recording(trigger, title=title, tags=tags or [],
                                          max_seconds=seconds)
            pump.start()
            pump.wait_first_block(cfg.audio.device_wait)
            while pump.recording and not stop.wait(0.05):
                pass
            if pump.recording:
                pump.stop_recording()
            result = handle.done.result(timeout=60)
        finally:
            pump.close()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        parts.close()
    return result


# Stop reasons that cut a recording short because of the disk: published, but said so.
_DISK_STOPS = {"disk_full": "the disk is full", "disk_reserve": "free space reached the reserve",
               "write_error": "a write to the disk failed"}


def hand_over(cfg: Config) -> bool:
    """Tell a running service that a recording was queued, so it delivers it now instead of
    at its next poll; quiet and quick when no service runs. True if the service took it."""
    from recorder.control import send_command
    from recorder.errors import ServiceError

    try:
        send_command(cfg.service.control_socket, "queued", timeout=2.0)
    except ServiceError:
        return False
    return True


def cmd_record(args: argparse.Namespace, cfg: Config) -> int:
    result = record_once(cfg, seconds=args.seconds, realtime=not args.fast, title=args.title,
                         tags=args.tag)
    hand_over(cfg)
    if args.json:
        print(json.dumps(summary(result), indent=2))
    else:
        print(result.ogg_path)
    why = _DISK_STOPS.get(result.sidecar["stop_reason"])
    if why:
        print(f"recorder: warning: recording stopped after {result.sidecar['duration']:.1f} s "
              f"because {why}; what was recorded is published", file=sys.stderr)
    return 0


def cmd_recover(args: argparse.Namespace, cfg: Config) -> int:
    """Exit 0 when nothing is left in staging (or only recordings in progress), 4 when some
    wait for free space, 1 when some could not be recovered for another reason."""
    from recorder import app
    from recorder.recover import FAILED, WAITING, recover

    parts = app.assemble(cfg)
    try:
        outcomes = recover(parts.recovery, parts.publisher, parts.sink_factories)
    finally:
        parts.close()
    if args.json:
        print(json.dumps([o.__dict__ for o in outcomes], indent=2))
    else:
        for o in outcomes:
            print(f"{o.recording_id}: {o.action}: {o.detail} {o.path}".rstrip())
        if not outcomes:
            print("nothing to recover")
    actions = {o.action for o in outcomes}
    return 4 if WAITING in actions else 1 if FAILED in actions else 0


def cmd_devices(args: argparse.Namespace, cfg: Config) -> int:
    from recorder.sources.portaudio import input_devices

    devices = input_devices()
    if args.json:
        print(json.dumps(devices, indent=2))
    else:
        for d in devices:
            print(f"[{d['index']}] {d['name']} ({d['hostapi']}, {d['channels']} ch, "
                  f"{d['default_samplerate']:.0f} Hz)")
    return 0


def demo_clip() -> Path:
    """The speech clip that ships with the package."""
    from importlib import resources

    return Path(str(resources.files("recorder") / "data" / "demo-speech.ogg"))


def _appliance_demo(cfg: Config, say: Any) -> Published:
    """Run the service on the bundled clip with gpiozero's mock pins and press its button."""
    from gpiozero.pins.mock import MockFactory

    from recorder import app
    from recorder.daemon import Service
    from recorder.triggers import drive_mock_pin

    factory = MockFactory()
    service = Service(app.service_wiring(cfg), pin_factory=factory)
    published: list[Any] = []
    service.parts.publisher.listeners.append(published.append)
    runner = threading.Thread(target=service.run, name="service", daemon=True)
    runner.start()
    pin, low = cfg.gpio.record_pin or 17, cfg.gpio.active_low
    try:
        while service.state != "idle":
            if not runner.is_alive():
                raise RuntimeError("the service stopped during start-up")
            time.sleep(0.05)
        say(f"service armed on the bundled clip ({cfg.audio.preroll:g} s pre-roll ring filling)")
        time.sleep(cfg.audio.preroll + 0.5)
        say(f"press   GPIO{pin}: recording starts, {cfg.audio.preroll:g} s before the press")
        drive_mock_pin(factory, pin, [("press", 0), ("release", 0.15)], low)
        time.sleep(5)
        say(f"hold    GPIO{pin} for {cfg.gpio.long_press + 0.3:.1f} s: a bookmark, "
            "recording continues")
        drive_mock_pin(factory, pin, [("press", 0), ("release", cfg.gpio.long_press + 0.3)], low)
        time.sleep(4)
        say(f"press   GPIO{pin}: recording stops and is published")
        drive_mock_pin(factory, pin, [("press", 0), ("release", 0.15)], low)
        deadline = time.monotonic() + 30
        while not published and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        service.request_stop()
        runner.join(30)
    if not published:
        raise RuntimeError("the demo recording was not published")
    return published[0]


def _demo_override(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    data = (args.data_dir or Path("recorderpi-demo")).resolve()
    return {
        "audio": {"source": f"file:{demo_clip()}", "preroll": 0.0 if args.quick else 3.0},
        "service": {"control_socket": str(data / "control.sock")},
        "storage": {"data_dir": str(data), "reserve_mb": 50},
        "device": {"id": "demo-device"},
        "web": {"enabled": False},  # a dozen seconds of demo: no web page on the network
    }


def cmd_demo(args: argparse.Namespace, cfg: Config) -> int:
    say = (lambda *a: None) if args.json else print
    if args.quick:
        say(f"recording the bundled clip {demo_clip().name} through the pipeline ...")
        result = record_once(cfg, seconds=None, realtime=False, title="Lemon rice (demo)",
                             tags=["demo", "recipe"], trigger="demo")
    else:
        result = _appliance_demo(cfg, say)
    if args.json:
        print(json.dumps(summary(result), indent=2))
        return 0
    doc = result.sidecar
    print(f"published {result.ogg_path}")
    print(f"  sidecar  {result.sidecar_path}")
    print(f"  duration {doc['duration']:.2f} s, {doc['bytes']} bytes, sha256 {doc['sha256'][:16]}…")
    levels = doc["levels"]
    print(f"  levels   peak {levels['peak_dbfs']} dBFS, rms {levels['rms_dbfs']} dBFS")
    for mark in doc["bookmarks"]:
        print(f"  bookmark at {mark['at']:.2f} s ({mark['label']})")
    if "audio_id" in doc:
        aid = doc["audio_id"]
        print(f"  audio id {aid['algorithm']} v{aid['version']} over {aid['duration']:.1f} s, "
              f"{aid['fingerprint'][:24]}…")
    if "duplicate_of" in doc:
        print(f"  same audio as recording {doc['duplicate_of']} (kept; marked duplicate)")
    return 0
