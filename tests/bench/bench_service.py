"""Benchmark of the appliance service (issues 4 and 16): idle cost, recording cost,
trigger-to-capture.

    python3 -m tests.bench.bench_service [--idle-seconds 60] [--seconds 20] [--real-papad]
                                         [--no-workers]

Runs the real `recorder run` on PortAudio through a private PulseAudio pipe source (fed at
real-time pace: a quiet room with a marker click), with gpiozero's mock pins, and, unless
`--no-workers`, every worker on (`tests.bench.appliance`: papad (the imitation, or the kit's
real upstream papad with `--real-papad`), one real Syncthing with the bridge, its event long
poll and the annotation exchange; radio and web page off). Prints:
- idle CPU (% of one core, process CPU time over `--idle-seconds`) and RSS while armed, and the
  wake-ups per second of each thread (voluntary context switches, /proc/PID/task/*/status);
- extra CPU while recording (`--seconds` / 2 of recording);
- trigger-to-capture: a marker played `--lead` seconds before the button press must be in the
  recording; the figure is how much audio before the press the recording holds, and where the
  marker landed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from tests.bench.appliance import Appliance, cpu_seconds, rss_mb, wakeups

RATE = 48000
SETTLE = 5.0  # after arming: start-up work (recovery, the first scans) is not idling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--lead", type=float, default=2.0,
                        help="seconds between the marker and the press")
    parser.add_argument("--real-papad", action="store_true")
    parser.add_argument("--no-workers", action="store_true",
                        help="no papad, no Syncthing: the audio path alone")
    args = parser.parse_args()
    # Quiet noise, then a 50 ms click: fed continuously so the pipe source keeps clocking.
    rng = np.random.default_rng(3)
    marker_at = 30.0 + SETTLE + args.idle_seconds + args.seconds
    total = marker_at + args.lead + 8.0
    pcm = (rng.normal(0, 30, int(total * RATE))).astype(np.int16)
    click = slice(int(marker_at * RATE), int((marker_at + 0.05) * RATE))
    pcm[click] = (np.sin(np.arange(click.stop - click.start) / 3) * 20000).astype(np.int16)
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp, \
            Appliance(Path(tmp), pcm=pcm, real_papad=args.real_papad,
                      workers=not args.no_workers) as app:
        pid = app.pid
        time.sleep(SETTLE)
        w0, c0, t0 = wakeups(pid), cpu_seconds(pid), time.monotonic()
        time.sleep(args.idle_seconds)
        elapsed = time.monotonic() - t0
        idle_cpu = (cpu_seconds(pid) - c0) / elapsed
        w1 = wakeups(pid)
        idle_rss = rss_mb(pid)
        per_thread = {name: round((w1[name] - w0.get(name, 0)) / elapsed, 2)
                      for name in sorted(w1) if w1[name] - w0.get(name, 0) > 0}
        status = app.cmd("status")
        app.cmd("start")
        c0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(args.seconds / 2)
        rec_cpu = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
        rec_rss = rss_mb(pid)
        app.cmd("stop")
        time.sleep(1)
        # Press the button `lead` seconds after the marker was fed.
        press_at = app.fed_at + marker_at + args.lead
        time.sleep(max(0.0, press_at - time.monotonic()))
        app.cmd("pin", pin=17, steps=[["press", 0], ["release", 0.1]])
        time.sleep(2)
        app.cmd("pin", pin=17, steps=[["press", 0], ["release", 0.1]])
        deadline = time.monotonic() + 30
        while app.cmd("status")["published"] < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2)  # the publisher's listeners (papad, Syncthing scan, index postings)
        published_rss = rss_mb(pid)
        docs = sorted(app.data.rglob("recordings/**/*.json")) if args.no_workers else \
            sorted(app.sync_root.rglob("recordings/**/*.json"))
        doc = json.loads(docs[-1].read_text())
        audio, _ = sf.read(docs[-1].with_suffix(".ogg"), dtype="int16")
    loud = np.flatnonzero(np.abs(audio.astype(np.int32)) > 10000)
    marker_in_recording = loud.size > 0
    report = {
        "workers": sorted(status.get("workers", {})),
        "idle_seconds": round(elapsed, 1),
        "idle_cpu_percent_of_one_core": round(idle_cpu * 100, 2),
        "idle_wakeups_per_second": round(sum(per_thread.values()), 1),
        "idle_wakeups_per_second_by_thread": per_thread,
        "idle_rss_mb": round(idle_rss, 1),
        "recording_cpu_percent_of_one_core": round(rec_cpu * 100, 2),
        "extra_cpu_while_recording_percent": round((rec_cpu - idle_cpu) * 100, 2),
        "recording_rss_mb": round(rec_rss, 1),
        "rss_after_publishing_two_mb": round(published_rss, 1),
        "preroll_seconds_in_recording": doc["preroll"],
        "marker_lead_before_press_s": args.lead,
        "marker_in_recording": bool(marker_in_recording),
        "marker_position_s": round(loud[0] / RATE, 3) if marker_in_recording else None,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
