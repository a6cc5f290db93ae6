"""Benchmark of the recording pipeline (issue 2), as ratios against oggenc run side by side.

    python3 -m tests.bench.bench_pipeline [--capture-seconds 60] [--real-minutes 7]

Prints, on the same clip in one run:
- the real command, `recorder record --source file:X.wav --fast` of a `--real-minutes` 48 kHz
  WAV with the default configuration (Audio ID and catalogue on, a fresh data directory each
  run), as a child process: its CPU (user + system) net of the interpreter start (the CPU of
  `recorder --help` subtracted), against `oggenc -q4` on the same WAV, median of 3, interleaved;
- pipeline CPU seconds per audio second in-process (file source, ring, pump, journal, level
  meter, Vorbis q4 encoder) against `oggenc -q4`, and the same with the Audio ID fingerprinter
  and catalogue;
- peak RSS of `recorder record` on a 10-minute recording;
- stop-to-published time for a 1-minute and a 10-minute recording;
- PortAudio input overflows and ring overruns while capturing through PulseAudio with both
  cores busy (needs pulseaudio; skipped with a note otherwise).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from recorder import app
from recorder.cli.record import demo_clip
from recorder.config import SourceSpec, parse_config

RATE = 48000


def make_clip(path: Path, seconds: int) -> Path:
    """The bundled speech looped to `seconds`, with a little noise so loops differ."""
    speech, rate = sf.read(demo_clip(), dtype="int16")
    assert rate == RATE
    reps = int(np.ceil(seconds * RATE / len(speech)))
    audio = np.tile(speech, reps)[: seconds * RATE]
    rng = np.random.default_rng(7)
    audio = np.clip(audio.astype(np.int32) + rng.integers(-60, 60, len(audio)), -32768, 32767)
    sf.write(path, audio.astype(np.int16), RATE, subtype="PCM_16")
    return path


def config(root: Path, audioid: bool = True, **audio):
    return parse_config({"device": {"id": "bench"},
                         "storage": {"data_dir": str(root), "reserve_mb": 0},
                         "audioid": {"enabled": audioid},
                         "audio": {"preroll": 0.0, **audio}})


def pipeline_run(clip: Path, root: Path, audioid: bool = True) -> tuple[float, float]:
    """(CPU seconds, stop-to-published seconds) for recording `clip` as fast as possible."""
    cfg = config(root, audioid)
    pump = app.build_pump(app.assemble(cfg), cfg.audio,
                          source=SourceSpec.parse(f"file:{clip}"), realtime=False)
    cpu0 = time.process_time()
    handle = pump.start_recording("bench")
    pump.start()
    handle.done.result(timeout=600)
    cpu = time.process_time() - cpu0
    pump.close()
    return cpu, pump.last_stop_to_published or float("nan")


def child_cpu(argv: list[str]) -> float:
    """User + system CPU seconds of one run of `argv` (output discarded; must exit 0)."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, argv
    return usage.ru_utime + usage.ru_stime


def console_script() -> list[str]:
    script = Path(sys.executable).parent / "recorder"
    return [str(script)] if script.exists() else [sys.executable, "-m", "recorder"]


def real_command(clip: Path, root: Path, repeats: int) -> dict:
    """The real `recorder record --fast` against oggenc and `recorder --help` (see the module
    docstring), interleaved run by run."""
    import compileall

    import recorder

    # An installed package is byte-compiled (pip does it); a source checkout may not be.
    compileall.compile_dir(Path(recorder.__file__).parent, quiet=1)
    record, oggenc, start = [], [], []
    for i in range(repeats):
        cfg_path = root / f"real{i}.toml"
        cfg_path.write_text(f'[device]\nid = "bench"\n[storage]\ndata_dir = "{root / f"real{i}"}"'
                            '\nreserve_mb = 0\n')
        start.append(child_cpu([*console_script(), "--help"]))
        record.append(child_cpu([*console_script(), "--config", str(cfg_path), "record",
                                 "--source", f"file:{clip}", "--fast"]))
        oggenc.append(child_cpu(["oggenc", "-Q", "-q4", "-o", str(root / f"real{i}.ogg"),
                                 str(clip)]))
    rec, ogg, help_cpu = (statistics.median(x) for x in (record, oggenc, start))
    seconds = sf.info(str(clip)).duration
    return {
        "audio_seconds": round(seconds, 1),
        "recorder_record_cpu_s": round(rec, 3),
        "recorder_help_cpu_s": round(help_cpu, 3),
        "oggenc_q4_cpu_s": round(ogg, 3),
        "net_cpu_ratio_to_oggenc": round((rec - help_cpu) / ogg, 3),
        "gross_cpu_ratio_to_oggenc": round(rec / ogg, 3),
        "runs": {"record": [round(x, 3) for x in record], "oggenc": [round(x, 3) for x in oggenc],
                 "help": [round(x, 3) for x in start]},
    }


def oggenc_cpu(clip: Path, out: Path) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(["oggenc", "-Q", "-q4", "-o", str(out), str(clip)], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def peak_rss_mb(clip: Path, root: Path) -> float:
    cfg_path = root / "rss.toml"
    cfg_path.write_text(f'[device]\nid = "bench"\n[storage]\ndata_dir = "{root / "rss"}"\n'
                        'reserve_mb = 0\n[audio]\npreroll = 0.0\n')
    proc = subprocess.Popen([sys.executable, "-m", "recorder", "--config", str(cfg_path),
                             "record", "--source", f"file:{clip}", "--fast"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # ru_maxrss of a child counts the parent's pages it had before exec: read the child's own
    # high-water mark instead, until it exits.
    peak = 0
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak = max(peak, int(status.split("VmHWM:")[1].split()[0]))
        except (OSError, IndexError):
            pass
        time.sleep(0.1)
    assert proc.returncode == 0
    return peak / 1024


def _burn(stop_at: float) -> None:
    while time.monotonic() < stop_at:
        pass


def capture_overflows(seconds: float, root: Path) -> dict:
    """Capture from PulseAudio through PortAudio for `seconds` with both cores busy."""
    if not shutil.which("pulseaudio"):
        return {"skipped": "pulseaudio not installed"}
    from tests.pulse import PulseServer

    server = PulseServer(root / "pulse").start()
    saved = server.apply_env()
    try:
        cfg = config(root / "cap", source="pulse")
        pump = app.build_pump(app.assemble(cfg), cfg.audio)
        busy = [multiprocessing.Process(target=_burn, args=(time.monotonic() + seconds + 3,))
                for _ in range(os.cpu_count() or 2)]
        for p in busy:
            p.start()
        pump.start()
        pump.wait_first_block(10)
        handle = pump.start_recording("bench", max_seconds=seconds)
        result = handle.done.result(timeout=seconds + 60)
        status = pump.status()
        pump.close()
        for p in busy:
            p.join()
        return {"seconds": result.sidecar["duration"],
                "input_overflows": status["input_overflows"],
                "ring_overruns": status["ring_overruns"], "busy_processes": len(busy)}
    finally:
        server.stop()
        server.restore_env(saved)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capture-seconds", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stop-repeats", type=int, default=5)
    parser.add_argument("--real-minutes", type=float, default=7.0,
                        help="length of the WAV the real command records")
    parser.add_argument("--real-only", action="store_true",
                        help="only the real command against oggenc")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        real_clip = make_clip(root / "real.wav", int(args.real_minutes * 60))
        real = real_command(real_clip, root, args.repeats)
        real_clip.unlink()
        if args.real_only:
            print(json.dumps({"real_command": real}, indent=2))
            return
        one = make_clip(root / "one-minute.wav", 60)
        ten = make_clip(root / "ten-minutes.wav", 600)
        runs, bare, ogg = [], [], []
        for i in range(args.repeats):  # interleaved, so load changes hit all three alike
            runs.append(pipeline_run(one, root / f"p{i}"))
            bare.append(pipeline_run(one, root / f"b{i}", audioid=False))
            ogg.append(oggenc_cpu(one, root / f"o{i}.ogg"))
        pipe_cpu = statistics.median(r[0] for r in runs)
        bare_cpu = statistics.median(r[0] for r in bare)
        ogg_cpu = statistics.median(ogg)
        # Stop-to-published, 1 and 10 minutes interleaved (a few ms: noisy, hence 5 each).
        stops: dict[tuple[int, bool], list[float]] = {}
        for i in range(args.stop_repeats):
            for minutes, clip in ((1, one), (10, ten)):
                for audioid in (False, True):
                    stops.setdefault((minutes, audioid), []).append(
                        pipeline_run(clip, root / f"s{minutes}{audioid}{i}", audioid)[1])
        stop_1, stop_10 = (statistics.median(stops[(m, True)]) for m in (1, 10))
        bare_stop_1, bare_stop_10 = (statistics.median(stops[(m, False)]) for m in (1, 10))
        rss = peak_rss_mb(ten, root)
        cap = capture_overflows(args.capture_seconds, root)
    report = {
        "real_command": real,
        "oggenc_q4_cpu_s_per_audio_s": round(ogg_cpu / 60, 5),
        "recorder_cpu_s_per_audio_s": round(bare_cpu / 60, 5),
        "recorder_cpu_ratio_to_oggenc": round(bare_cpu / ogg_cpu, 3),
        "with_audio_id_cpu_s_per_audio_s": round(pipe_cpu / 60, 5),
        "with_audio_id_cpu_ratio_to_oggenc": round(pipe_cpu / ogg_cpu, 3),
        "with_audio_id_x_realtime": round(60 / pipe_cpu, 1),
        "stop_to_published_ms_1min": round(bare_stop_1 * 1000, 1),
        "stop_to_published_ms_10min": round(bare_stop_10 * 1000, 1),
        "with_audio_id_stop_to_published_ms_1min": round(stop_1 * 1000, 1),
        "with_audio_id_stop_to_published_ms_10min": round(stop_10 * 1000, 1),
        "peak_rss_mb_10min_recording": round(rss, 1),
        "capture_with_cores_busy": cap,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
