"""Benchmark of importing phone calls (issue 25), against ffmpeg decoding the same files.

    python3 -m tests.bench.bench_import [--calls 20] [--seconds 60] [--latency-calls 5]

Prints, on one batch of calls in the Toxbot's format (48 kHz stereo Ogg Opus with its
comments, espeak-ng reading `--seconds` of shuffled words: no two are the same audio):
- `recorder import` of the whole batch as a child process with the default configuration
  (Audio ID, catalogue, waveform on; a fresh data directory): files per minute (wall clock)
  and its CPU (user + system), against `ffmpeg` decoding each file to 48 kHz mono PCM into
  /dev/null (what the import must do at least), one process per file, summed;
- finished-call-to-papad latency through the running service: a call is written into the
  inbox (``settle_seconds`` 2, ``poll_seconds`` 0.5), and the time from its last write to the
  media in papad (the in-process imitation, `tests.fake_papad`) is measured, minimum / median
  / maximum over `--latency-calls` calls, and the same net of the settle time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from recorder.cli.record import demo_clip
from recorder.recording import new_recording_id
from tests.conftest import free_port, toml_config

RATE = 48000
TOKEN = "bench-import-token"


WORDS = ["water", "tank", "market", "school", "festival", "rice", "lemon", "nurse", "camp",
         "road", "bus", "farmer", "rain", "song", "radio", "village", "meeting", "children",
         "teacher", "doctor", "seeds", "well", "field", "river"]


def make_calls(folder: Path, n: int, seconds: int) -> list[Path]:
    """`n` calls as the bot writes them (`<ULID>.opus`, its comments): espeak-ng reading
    shuffled words, so each call is different audio (the same speech twice would rightly be
    imported once)."""
    calls = []
    for i in range(n):
        rng = np.random.default_rng(i)
        text = " ".join(rng.choice(WORDS, size=int(seconds * 2.6)))
        raw = folder / f"call{i}.raw.wav"
        subprocess.run(["espeak-ng", "-s", "150", "-w", str(raw), text], check=True)
        speech, rate = sf.read(raw, dtype="int16")
        raw.unlink()
        import soxr

        mono = soxr.resample(speech, rate, RATE).astype(np.int16)
        wav = folder / f"call{i}.wav"
        sf.write(wav, np.column_stack([mono, mono // 2]), RATE, subtype="PCM_16")
        ulid = new_recording_id(time.time() - 3600 + i).upper()
        out = folder / f"{ulid}.opus"
        comments = {"DATE": time.strftime("%Y-%m-%d %H:%M"), "ULID": ulid,
                    "TOX_FRIEND": f"caller {i}", "TOX_PUBLIC_KEY": "AB" * 38,
                    "TOX_STATUS": "online"}
        args = [a for k, v in comments.items() for a in ("--comment", f"{k}={v}")]
        subprocess.run(["opusenc", "--quiet", *args, str(wav), str(out)], check=True)
        wav.unlink()
        calls.append(out)
    return calls


def child_usage(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, user + system CPU seconds) of one run of `argv` (must exit 0)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[:4]} failed: {err[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def throughput(calls: list[Path], root: Path) -> None:
    cfg = toml_config(root / "recorder.toml", {
        "device": {"id": "bench"}, "storage": {"data_dir": str(root / "data"), "reserve_mb": 0},
        "web": {"listen": "127.0.0.1", "port": free_port()}})
    wall, cpu = child_usage([sys.executable, "-m", "recorder", "--config", cfg, "import",
                             *map(str, calls)])
    ff_cpu = 0.0
    ff_wall = 0.0
    for call in calls:
        w, c = child_usage(["ffmpeg", "-nostdin", "-v", "error", "-i", str(call), "-ac", "1",
                            "-ar", str(RATE), "-f", "s16le", "-y", "/dev/null"])
        ff_cpu += c
        ff_wall += w
    audio = sum(sf.info(c).duration for c in calls)
    n = len(calls)
    print(f"recorder import of {n} calls ({audio / 60:.1f} min of audio): "
          f"{n / wall * 60:.1f} files/min, wall {wall:.1f} s, CPU {cpu:.1f} s "
          f"({cpu / audio * 100:.2f} % of the audio's length)")
    print(f"ffmpeg decoding the same files: wall {ff_wall:.1f} s, CPU {ff_cpu:.1f} s; "
          f"import / ffmpeg CPU = {cpu / ff_cpu:.1f}x")


def latency(calls: list[Path], root: Path) -> None:
    from tests.fake_papad import FakePapad
    from tests.papad_setup import write_secret

    papad = FakePapad().start()
    papad.add_user("recorder", token=TOKEN, groups=(1,))
    inbox = root / "inbox"
    inbox.mkdir()
    data = root / "data"
    settle = 2.0
    cfg = toml_config(root / "recorder.toml", {
        "device": {"id": "bench"}, "storage": {"data_dir": str(data), "reserve_mb": 0},
        "web": {"enabled": False},
        "audio": {"source": f"file:{demo_clip()}"},
        "papad": {"api": "papad", "url": papad.url, "auth": "token", "group": 1,
                  "token_file": str(write_secret(root / "papad.token", TOKEN))},
        "import": {"inbox": str(inbox), "settle_seconds": settle, "poll_seconds": 0.5}})
    proc = subprocess.Popen([sys.executable, "-m", "recorder", "--config", cfg, "run"],
                            env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"},
                            stdout=open(root / "service.log", "wb"),  # noqa: SIM115
                            stderr=subprocess.STDOUT)
    delays = []
    try:
        time.sleep(5)  # started and idle
        for call in calls:
            before = len(papad.media)
            with open(inbox / call.name, "wb") as fh:  # the bot writing the call
                data_bytes = call.read_bytes()
                step = len(data_bytes) // 4 + 1
                for i in range(0, len(data_bytes), step):
                    fh.write(data_bytes[i:i + step])
                    fh.flush()
                    time.sleep(0.2)
            ended = time.monotonic()
            deadline = ended + 300
            while len(papad.media) == before:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the call did not reach papad: "
                                     + (root / "service.log").read_text()[-3000:])
                time.sleep(0.02)
            delays.append(time.monotonic() - ended)
    finally:
        proc.terminate()
        proc.wait(60)
        papad.stop()
    print(f"finished call to papad over {len(delays)} calls: min {min(delays):.2f} s, "
          f"median {statistics.median(delays):.2f} s, max {max(delays):.2f} s "
          f"(of which {settle:g} s is settle_seconds: median "
          f"{statistics.median(delays) - settle:.2f} s beyond it)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--latency-calls", type=int, default=5)
    args = parser.parse_args()
    for tool, package in (("opusenc", "opus-tools"), ("ffmpeg", "ffmpeg"),
                          ("espeak-ng", "espeak-ng")):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install {package}")
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        root = Path(tmp)
        (root / "calls").mkdir()
        calls = make_calls(root / "calls", args.calls, args.seconds)
        (root / "t").mkdir()
        throughput(calls, root / "t")
        (root / "l").mkdir()
        latency(calls[: args.latency_calls], root / "l")


if __name__ == "__main__":
    main()
