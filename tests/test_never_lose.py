"""Never lose a recording (issue 12): fault injection through the real CLI and service.

A small filesystem the test mounts is the data directory (a 20 MB tmpfs: CI runs as root; a
loop-mounted ext4 image if tmpfs is refused), and another writer fills it: during `recorder
record` (real time and --fast), during `recorder run` (control socket), before the service
starts, while `recover` runs. Inode exhaustion makes a bookmark's metadata rewrite fail inside
the pump thread while the audio files still grow. Then: the corrupt database, unusable data
directories, odd input files, a peer's garbage OGG with a matching sha256, hostile peer text,
secret file modes, temporaries left by a kill, a kill between the OGG's and the sidecar's
renames, and `mesh status` with Syncthing down.

Every case asserts what the issue promises: no audio lost, never an OGG without its sidecar,
a one-line error with the documented exit code, never a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from recorder import sidecar as sc
from tests.clips import RATE, best_lag, speech, write_wav
from tests.conftest import IN_CI, free_port, run_cli, terminate, toml_config, wait_until

MiB = 1024 * 1024


# --- a small disk and somebody filling it --------------------------------------------------


def _mount(mnt: Path, options: str) -> str:
    """Mount a tmpfs with `options` at `mnt`, else a loop ext4 image; returns which."""
    mnt.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)],
                          capture_output=True, text=True, timeout=30)
    if done.returncode == 0:
        return "tmpfs"
    image = mnt.with_suffix(".img")
    size = next((o.split("=")[1] for o in options.split(",") if o.startswith("size=")), "20m")
    steps = [["truncate", "-s", size.upper() if size[-1].isalpha() else size, str(image)],
             ["mkfs.ext4", "-q", "-F", "-m", "0", str(image)],
             ["mount", "-o", "loop", str(image), str(mnt)]]
    for step in steps:
        loop = subprocess.run(step, capture_output=True, text=True, timeout=60)
        if loop.returncode != 0:
            msg = (f"cannot mount a small filesystem (tmpfs: {done.stderr.strip()}; loop ext4: "
                   f"{loop.stderr.strip()}): run the tests as root, as CI does")
            if IN_CI:
                pytest.fail(msg)
            pytest.skip(msg)
    return "ext4"


@pytest.fixture
def small_disk(tmp_path):
    """Mount a filesystem (``size=20m``, or the options given) under tmp_path; unmounted
    afterwards (lazily: a service the test killed may still hold it for a moment)."""
    mounts: list[Path] = []

    def mount(options: str = "size=20m") -> Path:
        mnt = tmp_path / f"disk{len(mounts)}"
        _mount(mnt, options)
        mounts.append(mnt)
        return mnt

    yield mount
    for mnt in mounts:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


class Filler:
    """Another writer: fills the filesystem of `folder` until the kernel says ENOSPC."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files: list[Path] = []

    def fill(self) -> None:
        path = self.folder / f"filler{len(self.files)}.bin"
        self.files.append(path)
        with open(path, "wb", buffering=0) as fh:
            for size in (MiB, 64 * 1024, 4096, 512, 1):
                block = b"\xa5" * size
                with contextlib.suppress(OSError):
                    while True:
                        fh.write(block)

    def fill_inodes(self) -> None:
        """Use up every inode (files stay writable: appends need no new inode)."""
        d = self.folder / f"inodes{len(self.files)}"
        d.mkdir()
        self.files.append(d)
        n = 0
        with contextlib.suppress(OSError):
            while True:
                (d / str(n)).touch()
                n += 1

    def free(self) -> None:
        for path in self.files:
            if path.is_dir():
                for child in path.iterdir():
                    child.unlink()
                path.rmdir()
            else:
                path.unlink()
        self.files = []


def _config(folder: Path, data: Path, **sections) -> str:
    base = {"device": {"id": "testdev01"},
            "storage": {"data_dir": str(data), "reserve_mb": 0}}
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return toml_config(folder / "recorder.toml", base)


def _sidecars(data: Path) -> list[dict]:
    found = sorted((data / "sync").rglob("recordings/**/*.json"))
    return [json.loads(p.read_text()) for p in found]


def _oggs(data: Path) -> list[Path]:
    return sorted((data / "sync").rglob("recordings/**/*.ogg"))


def _assert_pairs_complete(data: Path) -> list[dict]:
    """Every published OGG has its sidecar and matches it byte for byte; returns them."""
    docs = _sidecars(data)
    oggs = _oggs(data)
    assert len(oggs) == len(docs), f"an OGG without its sidecar: {oggs}"
    for doc in docs:
        ogg = data / "sync" / doc["device_id"] / doc["path"]
        blob = ogg.read_bytes()
        assert hashlib.sha256(blob).hexdigest() == doc["sha256"] and len(blob) == doc["bytes"]
        assert sf.info(str(ogg)).frames == doc["frames"]
    return docs


def _no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text and "Exception ignored" not in text, text[-3000:]


@pytest.fixture(scope="session")
def long_wav(tmp_path_factory) -> Path:
    """Four minutes of noisy tones at 48 kHz mono (23 MB of journal: more than the disk)."""
    path = tmp_path_factory.mktemp("never_lose") / "long.wav"
    t = np.arange(240 * RATE) / RATE
    rng = np.random.default_rng(12)
    audio = 6000 * np.sin(2 * np.pi * (200 + 50 * np.sin(t / 3)) * t) + rng.normal(0, 800, t.size)
    return write_wav(path, audio.astype(np.int16))


# --- recorder record -------------------------------------------------------------------------


def test_record_fast_fills_the_disk_and_publishes_what_was_recorded(small_disk, long_wav):
    disk = small_disk()
    data = disk / "data"
    cfg = _config(disk, data)
    out = run_cli("--config", cfg, "record", "--source", f"file:{long_wav}", "--fast", "--json",
                  timeout=120)
    _no_traceback(out.stderr)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["stop_reason"] == "disk_full"
    assert "warning: recording stopped after" in out.stderr and "disk is full" in out.stderr
    (doc,) = _assert_pairs_complete(data)
    assert doc["duration"] > 60  # most of the 20 MB went to the journal before it filled
    ogg, _ = sf.read(data / "sync" / "testdev01" / doc["path"], dtype="int16")
    original, _ = sf.read(long_wav, dtype="int16")
    lag, corr = best_lag(original[: RATE * 20], ogg[: RATE * 10])
    assert lag == 0 and corr > 0.95
    assert not list((data / "staging").iterdir()), "the journal is gone once published"


def test_record_disk_filled_by_another_writer_mid_recording(small_disk, speech_wav):
    disk = small_disk()
    data = disk / "data"
    cfg = _config(disk, data, audio={"preroll": 0.0})
    proc = subprocess.Popen([sys.executable, "-m", "recorder", "--config", cfg, "record",
                             "--source", f"file:{speech_wav}", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    staging = data / "staging"
    wait_until(lambda: any(p.stat().st_size > 3 * RATE for p in staging.glob("*.pcm")),
               what="1.5 s in the journal")
    Filler(disk).fill()  # every last byte: the next journal write gets ENOSPC
    stdout, stderr = proc.communicate(timeout=60)
    _no_traceback(stderr)
    assert proc.returncode == 0, stderr
    assert json.loads(stdout)["stop_reason"] == "disk_full"
    assert "No space left on device" in stderr  # the write that failed, said in one line
    (doc,) = _assert_pairs_complete(data)
    assert doc["stop_reason"] == "disk_full" and doc["duration"] >= 1.5
    ogg, _ = sf.read(data / "sync" / "testdev01" / doc["path"], dtype="int16")
    original, _ = sf.read(speech_wav, dtype="int16")
    lag, corr = best_lag(original[: len(ogg) + RATE], ogg)
    assert lag == 0 and corr > 0.98
    assert not list(staging.glob("*.meta.json"))


_FILL_BEFORE_SIDECAR = """
import os, sys
import recorder.publish as publish
real = publish.atomic_write_text
def fill_then_write(target, *a, **k):
    if str(target).endswith(".json"):  # the OGG is in place: now another writer fills it all
        with open(os.environ["FILLER"], "wb", buffering=0) as fh:
            for size in (1 << 20, 4096, 1):
                try:
                    while True:
                        fh.write(b"x" * size)
                except OSError:
                    pass
    return real(target, *a, **k)
publish.atomic_write_text = fill_then_write
from recorder.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_disk_filled_during_publish_keeps_the_ogg_in_staging(small_disk, speech_wav):
    disk = small_disk()
    data = disk / "data"
    cfg = _config(disk, data)
    filler = disk / "filler.bin"
    out = subprocess.run([sys.executable, "-c", _FILL_BEFORE_SIDECAR, "--config", cfg,
                          "record", "--source", f"file:{speech_wav}", "--fast"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "FILLER": str(filler)})
    _no_traceback(out.stderr)
    assert out.returncode == 4, out.stderr
    (error,) = [line for line in out.stderr.splitlines() if line.startswith("recorder: error")]
    assert "disk full" in error and "kept in staging" in error
    assert not _oggs(data), "an OGG without its sidecar must not stay in the synced folder"
    (staged,) = (data / "staging").glob("*.ogg")
    staged_sha = hashlib.sha256(staged.read_bytes()).hexdigest()
    filler.unlink()
    out = run_cli("--config", cfg, "recover", "--json", timeout=60)
    assert out.returncode == 0, out.stderr
    (outcome,) = json.loads(out.stdout)
    assert "complete staged OGG" in outcome["detail"]
    (doc,) = _assert_pairs_complete(data)
    assert doc["sha256"] == staged_sha  # the very file, not a re-encode
    assert not any((data / "staging").iterdir())


def _kill_mid_recording(cfg: str, data: Path, wav: Path, seconds: float = 3.5) -> dict:
    """`recorder record` killed (SIGKILL) `seconds` into a recording; its staged metadata."""
    proc = subprocess.Popen([sys.executable, "-m", "recorder", "--config", cfg, "record",
                             "--source", f"file:{wav}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = data / "staging"
    wait_until(lambda: any(p.stat().st_size > 2 * RATE * seconds for p in staging.glob("*.pcm")),
               what="audio in the journal")
    proc.kill()
    proc.wait(30)
    (meta,) = [json.loads(p.read_text()) for p in staging.glob("*.meta.json")]
    return meta


def test_record_on_a_failing_card_keeps_the_journal_for_recover(tmp_path, speech_wav):
    """EIO on every write (tests.powercut's failing card): one line, exit 1, the audio stays
    in staging, and `recover` publishes it once the card works again."""
    from tests.conftest import need
    from tests.powercut import EIO_SWITCH, PowerCut

    need("fusermount3", "fuse3")
    card, mount = tmp_path / "card", tmp_path / "mnt"
    disk = PowerCut(card, mount)
    try:
        cfg = _config(tmp_path, mount, audio={"preroll": 0.0},
                      storage={"state_dir": str(tmp_path / "state")})
        proc = subprocess.Popen([sys.executable, "-m", "recorder", "--config", cfg, "record",
                                 "--source", f"file:{speech_wav}"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_until(lambda: any(p.stat().st_size > 3 * RATE
                               for p in (mount / "staging").glob("*.pcm")),
                   what="1.5 s in the journal")
        (mount / EIO_SWITCH).touch()  # the card starts failing every write
        _, stderr = proc.communicate(timeout=60)
        _no_traceback(stderr)
        assert proc.returncode == 1, stderr
        (error,) = [line for line in stderr.splitlines() if line.startswith("recorder: error")]
        assert "Input/output error" in error and "kept in staging" in error
        assert not _oggs(mount)
        (mount / EIO_SWITCH).unlink()  # mended (or the card moved to a working reader)
        out = run_cli("--config", cfg, "recover", "--json", timeout=60)
        assert out.returncode == 0, out.stderr
        (outcome,) = json.loads(out.stdout)
        assert outcome["action"] == "published"
        (doc,) = _assert_pairs_complete(mount)
        assert doc["duration"] >= 1.5 and doc["recovered"] is True
    finally:
        disk.cut()


def test_recover_on_a_full_disk_waits_then_publishes_with_audio_id(small_disk, speech_wav):
    disk = small_disk()
    data = disk / "data"
    cfg = _config(disk, data, audio={"preroll": 0.0})
    meta = _kill_mid_recording(cfg, data, speech_wav)
    staging = data / "staging"
    journal = staging / f"{meta['recording_id']}.pcm"
    journal_bytes = journal.read_bytes()
    filler = Filler(disk)
    filler.fill()
    out = run_cli("--config", cfg, "recover", timeout=60)
    _no_traceback(out.stderr)
    assert out.returncode == 4, (out.stdout, out.stderr)
    (line,) = out.stdout.splitlines()
    assert line.startswith(f"{meta['recording_id']}: waiting: disk full")
    assert journal.read_bytes() == journal_bytes, "the journal must stay exactly as it was"
    assert not (data / "lost+found").exists() and not _oggs(data)
    # The same on the next try while still full (it never gives up, never moves it aside).
    assert run_cli("--config", cfg, "recover", timeout=60).returncode == 4
    filler.free()
    out = run_cli("--config", cfg, "recover", "--json", timeout=60)
    assert out.returncode == 0, out.stderr
    (outcome,) = json.loads(out.stdout)
    assert outcome["action"] == "published" and "journal" in outcome["detail"]
    (doc,) = _assert_pairs_complete(data)
    assert doc["recovered"] is True and doc["recording_id"] == meta["recording_id"]
    assert doc["frames"] == len(journal_bytes) // 2
    assert doc["overflows"] == {"input": 0, "ring_frames": 0}
    assert doc["audio_id"]["algorithm"] == "chromaprint"
    assert doc["audio_id"]["sha256"] == doc["sha256"]  # through the publisher's enricher
    # The recovered recording is in the catalogue: identify finds it.
    clip = disk / "clip.wav"
    original, _ = sf.read(speech_wav, dtype="int16")
    write_wav(clip, original[: 3 * RATE])
    found = run_cli("--config", cfg, "identify", str(clip), "--json", timeout=60)
    assert found.returncode == 0, found.stderr
    assert [m["recording_id"] for m in json.loads(found.stdout)["matches"]] == [
        meta["recording_id"]]
    assert not any(staging.iterdir())


def test_nothing_goes_to_lost_found_without_its_reason(small_disk):
    disk = small_disk()
    data = disk / "data"
    cfg = _config(disk, data)
    assert run_cli("--config", cfg, "index", "rebuild", timeout=60).returncode == 0  # a device
    rid = sc.new_recording_id()                                                 # that ran once
    staging = data / "staging"
    staging.mkdir(parents=True)
    meta = {"schema": sc.SCHEMA, "recording_id": rid, "device_id": "testdev01",
            "path": f"recordings/2026/11/28/20261128T120000Z_testdev01_{rid[-8:]}.ogg",
            "media_type": "audio/ogg", "codec": "vorbis", "samplerate": RATE, "channels": 1,
            "started_at": "2026-11-28T12:00:00.000Z", "clock_synced": False, "boot_id": "b",
            "monotonic_start": 1.0, "trigger": "cli", "preroll": 0.0, "title": "",
            "tags": [], "bookmarks": []}
    (staging / f"{rid}.meta.json").write_text(json.dumps(meta))
    (staging / f"{rid}.pcm").write_bytes(b"")
    (staging / f"{rid}.ogg").write_bytes(b"OggS not really")
    filler = Filler(disk)
    filler.fill()
    run_cli("--config", cfg, "index", "rebuild", timeout=60)  # gives up the database's spare
    filler.fill()  # ... which the other writer takes too: not one byte left
    out = run_cli("--config", cfg, "recover", "--json", timeout=60)
    _no_traceback(out.stderr)
    (outcome,) = json.loads(out.stdout)
    assert outcome["action"] == "waiting" and "REASON.txt" in outcome["detail"]
    assert (staging / f"{rid}.ogg").exists()
    assert not list((data / "lost+found").rglob("*")) if (data / "lost+found").exists() else True
    filler.free()
    out = run_cli("--config", cfg, "recover", "--json", timeout=60)
    (outcome,) = json.loads(out.stdout)
    assert outcome["action"] == "moved_aside"
    reason = (data / "lost+found" / rid / "REASON.txt").read_text()
    assert "no audio" in reason
    assert (data / "lost+found" / rid / f"{rid}.ogg").read_bytes() == b"OggS not really"


# --- the service -----------------------------------------------------------------------------


class Service:
    """`recorder run` on a looping file source, mock GPIO, driven through `recorder ctl`."""

    def __init__(self, cfg: str, data: Path) -> None:
        self.cfg, self.data = cfg, data
        self.log = data.parent.parent / f"service-{time.monotonic_ns()}.log"  # off the disk
        self.log_fh = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "recorder", "--config", cfg, "run"],
                                     env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"},
                                     stdout=self.log_fh, stderr=subprocess.STDOUT)

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return run_cli("--config", self.cfg, "ctl", *args, timeout=60)

    def status(self) -> dict:
        """`recorder ctl status --json` (polling goes through the socket directly: faster)."""
        out = self.ctl("status", "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def poll(self) -> dict:
        from recorder.control import send_command
        from recorder.errors import ServiceError

        try:
            return send_command(self.data / "state" / "control.sock", "status", timeout=15)
        except ServiceError:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            return {}

    def wait_state(self, *states: str, timeout: float = 30) -> dict:
        wait_until(lambda: self.poll().get("state") in states, timeout,
                   what=f"service state {states}")
        return self.status()

    def stop(self) -> str:
        terminate(self.proc)
        self.log_fh.close()
        return self.log.read_text()


@pytest.fixture
def services():
    started: list[Service] = []

    def start(cfg: str, data: Path) -> Service:
        svc = Service(cfg, data)
        started.append(svc)
        return svc

    yield start
    for svc in started:
        svc.stop()


def test_service_started_on_a_full_disk(small_disk, speech_wav, services):
    disk = small_disk()
    data = disk / "data"
    cfg = _config(disk, data, audio={"preroll": 0.5, "source": f"file:{speech_wav}"})
    meta = _kill_mid_recording(cfg, data, speech_wav, 1.0)  # a recording waiting in staging
    filler = Filler(disk)
    filler.fill()
    svc = services(cfg, data)
    status = svc.wait_state("disk_full")
    assert status["led"] == "disk_low" and status["disk_full"] is True
    assert status["waiting_for_space"] is True
    assert any("disk full" in w for w in status["warnings"])
    refused = svc.ctl("start")
    assert refused.returncode != 0 and "disk full" in refused.stderr
    _no_traceback(refused.stderr)
    doctor = run_cli("--config", cfg, "doctor", "--json", timeout=60)
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert doctor.returncode == 1 and checks["free space"]["ok"] is False
    assert "disk full" in checks["free space"]["detail"]
    assert "free space" in checks["staging"]["detail"]
    assert not _oggs(data)
    filler.free()  # space returns: the service publishes the staged recording by itself
    wait_until(lambda: _sidecars(data), 30, what="the waiting recording published")
    (doc,) = _assert_pairs_complete(data)
    assert doc["recording_id"] == meta["recording_id"] and doc["recovered"] is True
    status = svc.wait_state("idle")
    assert status["led"] == "idle" and not status["waiting_for_space"]
    assert svc.ctl("start").returncode == 0
    svc.wait_state("recording")
    assert svc.ctl("stop").returncode == 0
    wait_until(lambda: len(_sidecars(data)) == 2, 30, what="a new recording published")
    _assert_pairs_complete(data)
    _no_traceback(svc.stop())


def test_service_disk_filled_mid_recording(small_disk, speech_wav, services):
    disk = small_disk()
    data = disk / "data"
    cfg = _config(disk, data, audio={"preroll": 0.5, "source": f"file:{speech_wav}"})
    svc = services(cfg, data)
    svc.wait_state("idle")
    assert svc.ctl("start").returncode == 0
    wait_until(lambda: ((svc.poll().get("audio") or {}).get("recording") or {}).get(
        "seconds", 0) >= 1.5, what="1.5 s recorded")
    filler = Filler(disk)
    filler.fill()
    wait_until(lambda: _sidecars(data), 30, what="the recording published")
    (doc,) = _assert_pairs_complete(data)
    assert doc["stop_reason"] == "disk_full" and doc["duration"] >= 1.5
    status = svc.wait_state("disk_full")
    assert status["led"] == "disk_low" and status["audio"]["failed"] is None
    assert not list((data / "staging").glob("*.meta.json"))
    filler.free()
    assert svc.wait_state("idle")["led"] == "idle"  # the disk trouble is over: no error light
    _no_traceback(svc.stop())


def test_enospc_in_the_pump_thread_while_a_bookmark_rewrites_metadata(
        small_disk, speech_wav, services):
    # Few inodes: once they are used up, rewriting the staged metadata (a new temporary
    # file) fails with ENOSPC on the pump thread, while the journal and the OGG still grow.
    disk = small_disk("size=20m,nr_inodes=64")
    data = disk / "data"
    cfg = _config(disk, data, audio={"preroll": 0.5, "source": f"file:{speech_wav}"})
    svc = services(cfg, data)
    svc.wait_state("idle")
    # A device that has recorded today: the day's folder exists (folders need inodes too).
    assert svc.ctl("start").returncode == 0
    svc.wait_state("recording")
    assert svc.ctl("stop").returncode == 0
    wait_until(lambda: _sidecars(data), 30, what="the first recording published")
    svc.wait_state("idle")
    assert svc.ctl("start").returncode == 0
    svc.wait_state("recording")
    filler = Filler(disk)
    filler.fill_inodes()
    with pytest.raises(OSError) as full:
        (data / "staging" / "probe").touch()
    assert full.value.errno == errno.ENOSPC
    assert svc.ctl("mark").returncode == 0
    wait_until(lambda: "bookmark kept" in svc.log.read_text(), what="the failed rewrite")
    before = svc.poll()["audio"]["recording"]["seconds"]
    wait_until(lambda: svc.poll()["audio"]["recording"]["seconds"] > before + 1.0,
               what="audio still advancing")
    status = svc.status()
    assert status["state"] == "recording" and status["audio"]["failed"] is None
    assert svc.ctl("stop").returncode == 0
    wait_until(lambda: len(_sidecars(data)) == 2, 30, what="the recording published")
    # The second recording: ids sort by time (two recordings in one second share the file
    # names' timestamp, so the names do not say which came last).
    doc = max(_assert_pairs_complete(data), key=lambda d: d["recording_id"])
    assert len(doc["bookmarks"]) == 1 and doc["stop_reason"] == "stopped"
    filler.free()
    _no_traceback(svc.stop())


def test_pump_failure_finishes_the_recording_and_the_pump_restarts(cfg_factory, speech_wav):
    """An unexpected exception on the pump thread (here a sink that breaks): the recording is
    published as ``internal_error``, the service shows ``failed``, then re-arms."""
    import threading

    from gpiozero.pins.mock import MockFactory

    from recorder.app import service_wiring
    from recorder.control import send_command
    from recorder.daemon import Service as InProcess

    class Breaks:
        def __init__(self) -> None:
            self.blocks = 0

        def write(self, block: np.ndarray) -> None:
            self.blocks += 1
            if self.blocks == 20:
                raise RuntimeError("simulated bug in a sink")

        def finish(self) -> dict:
            return {}

        def abort(self) -> None:
            pass

    cfg = cfg_factory(audio={"source": f"file:{speech_wav}", "preroll": 0.5})
    svc = InProcess(service_wiring(cfg), pin_factory=MockFactory())
    svc.parts.sink_factories.append(lambda ctx: Breaks())
    states: list[str] = []
    runner = threading.Thread(target=svc.run, daemon=True)
    runner.start()
    try:
        wait_until(lambda: svc.state == "idle", what="armed")
        send_command(cfg.service.control_socket, "start", timeout=15)
        wait_until(lambda: states.append(str(svc.state)) or "failed" in states, 20,
                   interval=0.01, what="failed state")
        docs = wait_until(lambda: _sidecars(cfg.storage.data_dir), 20, what="published")
        assert docs[0]["stop_reason"] == "internal_error"
        wait_until(lambda: svc.state == "idle", 20, what="re-armed")
    finally:
        svc.request_stop()
        runner.join(30)


# --- the database, the data directory --------------------------------------------------------


def test_corrupt_database_is_moved_aside_and_rebuilt(tmp_path, speech_wav):
    data = tmp_path / "data"
    token = tmp_path / "token"
    token.write_text("tok\n")
    token.chmod(0o600)
    cfg = _config(tmp_path, data, papad={"api": "papad", "url": f"http://127.0.0.1:{free_port()}",
                                         "token_file": str(token)})
    made = run_cli("--config", cfg, "record", "--source", f"file:{speech_wav}", "--fast",
                   "--json", timeout=60)
    assert made.returncode == 0, made.stderr
    rid = json.loads(made.stdout)["recording_id"]
    db = data / "state" / "recorder.db"
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    db.write_bytes(os.urandom(65536))
    out = run_cli("--config", cfg, "outbox", "list", "--json", timeout=60)
    _no_traceback(out.stderr)
    assert out.returncode == 0, out.stderr
    assert [e["recording_id"] for e in json.loads(out.stdout)["entries"]] == [rid]
    warning = [line for line in out.stderr.splitlines() if "corrupt" in line]
    assert len(warning) == 1 and "moved aside" in warning[0]
    assert len(list(db.parent.glob("recorder.db.corrupt-*"))) == 1
    found = run_cli("--config", cfg, "identify", str(speech_wav), "--json", timeout=60)
    assert [m["recording_id"] for m in json.loads(found.stdout)["matches"]] == [rid]
    # Every command meets it the same way: identify, index rebuild, record.
    for argv in (["identify", str(speech_wav)], ["index", "rebuild"],
                 ["record", "--source", f"file:{speech_wav}", "--fast"]):
        db.write_bytes(os.urandom(65536))
        out = run_cli("--config", cfg, *argv, timeout=60)
        _no_traceback(out.stderr)
        assert out.returncode == 0, (argv, out.stderr)
        assert "corrupt" in out.stderr
    assert len(_assert_pairs_complete(data)) == 2


@pytest.mark.parametrize("where", ["file", "proc"])
def test_data_dir_that_cannot_be_created_is_one_line(tmp_path, speech_wav, where):
    if where == "file":
        (tmp_path / "afile").write_text("x")
        data = tmp_path / "afile" / "data"
    else:
        data = Path("/proc/recorderpi-test/data")
    cfg = _config(tmp_path, data, service={"control_socket": str(tmp_path / "ctl.sock")})
    for argv in (["record", "--source", f"file:{speech_wav}", "--fast"], ["outbox", "list"],
                 ["recover"], ["index", "rebuild"], ["run"]):
        out = run_cli("--config", cfg, *argv, timeout=60,
                      env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"})
        _no_traceback(out.stderr)
        assert out.returncode == 2, (argv, out.stderr)
        errors = [line for line in out.stderr.splitlines() if line.startswith("recorder: error")]
        assert len(errors) == 1 and "storage." in errors[0] and "cannot create" in errors[0]


# --- odd input -------------------------------------------------------------------------------


def test_input_without_audio_is_never_published(tmp_path):
    data = tmp_path / "data"
    cfg = _config(tmp_path, data)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    header_only = write_wav(tmp_path / "header.wav", np.zeros(0, np.int16))
    one = write_wav(tmp_path / "one.wav", np.array([1000], np.int16))
    short = write_wav(tmp_path / "short.wav", np.full(int(0.09 * RATE), 500, np.int16))
    for path in (empty, header_only, one, short):
        out = run_cli("--config", cfg, "record", "--source", f"file:{path}", "--fast",
                      timeout=60)
        _no_traceback(out.stderr)
        assert out.returncode == 6, (path, out.stderr)
        assert out.stderr.strip().splitlines()[-1].startswith(f"recorder: error: {path}")
    assert not _oggs(data) and not _sidecars(data)
    assert not (data / "staging").exists() or not any((data / "staging").iterdir())


def test_six_channel_192k_file_is_resampled_and_mixed(tmp_path):
    data = tmp_path / "data"
    cfg = _config(tmp_path, data)
    rate, seconds = 192000, 2.0
    t = np.arange(int(rate * seconds)) / rate
    channels = [np.sin(2 * np.pi * f * t) for f in (300, 500, 700, 900, 1100, 1300)]
    wide = (np.stack(channels, axis=1) * 6000).astype(np.int16)
    path = tmp_path / "six.wav"
    sf.write(path, wide, rate, subtype="PCM_16")
    out = run_cli("--config", cfg, "record", "--source", f"file:{path}", "--fast", "--json",
                  timeout=60)
    assert out.returncode == 0, out.stderr
    (doc,) = _assert_pairs_complete(data)
    assert (doc["samplerate"], doc["channels"]) == (RATE, 1)
    assert abs(doc["frames"] - seconds * RATE) <= 48
    got, got_rate = sf.read(data / "sync" / "testdev01" / doc["path"], dtype="float64")
    assert got_rate == RATE
    # The mean of the six tones, at 48 kHz: every tone is there at 1/6 of its level.
    spectrum = np.abs(np.fft.rfft(got[RATE // 2: RATE // 2 + RATE]))
    for f in (300, 500, 700, 900, 1100, 1300):
        assert spectrum[f] > 0.5 * spectrum.max(), f


def test_opus_at_a_rate_opus_cannot_code_is_refused_by_config(tmp_path, speech_wav):
    cfg = _config(tmp_path, tmp_path / "data", encoder={"codec": "opus"},
                  audio={"samplerate": 44100})
    for argv in (["record", "--source", f"file:{speech_wav}", "--fast"], ["doctor"]):
        out = run_cli("--config", cfg, *argv, timeout=60)
        _no_traceback(out.stderr)
        assert out.returncode == 2 and "encoder.codec" in out.stderr and "44100" in out.stderr
    assert not (tmp_path / "data" / "staging").exists()


# --- kills at the worst moments ----------------------------------------------------------------

_KILL_BEFORE_SIDECAR = """
import os, signal, sys
import recorder.publish as publish
real = publish.atomic_write_text
def killed(target, *a, **k):
    if str(target).endswith(".json"):
        os.kill(os.getpid(), signal.SIGKILL)  # the OGG is in place, its sidecar not yet
    return real(target, *a, **k)
publish.atomic_write_text = killed
from recorder.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_between_the_ogg_and_the_sidecar_keeps_the_visible_ogg(tmp_path, speech_wav):
    data = tmp_path / "data"
    cfg = _config(tmp_path, data)
    killed = subprocess.run([sys.executable, "-c", _KILL_BEFORE_SIDECAR, "--config", cfg,
                             "record", "--source", f"file:{speech_wav}", "--fast"],
                            capture_output=True, text=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL
    (ogg,) = _oggs(data)
    before = ogg.read_bytes()
    assert not _sidecars(data)
    out = run_cli("--config", cfg, "recover", "--json", timeout=60)
    (outcome,) = json.loads(out.stdout)
    assert outcome["action"] == "published" and "already in place" in outcome["detail"]
    assert ogg.read_bytes() == before, "peers may already have this very file"
    (doc,) = _assert_pairs_complete(data)
    assert doc["sha256"] == hashlib.sha256(before).hexdigest()
    assert doc["audio_id"]["sha256"] == doc["sha256"]
    assert not any((data / "staging").iterdir())


def test_recover_removes_our_temporaries_only(tmp_path, speech_wav):
    data = tmp_path / "data"
    cfg = _config(tmp_path, data)
    meta = _kill_mid_recording(cfg, data, speech_wav, seconds=1.0)
    rid = meta["recording_id"]
    name = Path(meta["path"]).stem
    staging = data / "staging"
    day = data / "sync" / "testdev01" / Path(meta["path"]).parent
    day.mkdir(parents=True)
    ours = [staging / f".{rid}.meta.json.1a2b3c4d.partial",
            staging / f".{name}.json.0f0f0f0f.partial",
            day / f".{name}.json.deadbeef.partial"]
    old = staging / ".20260101T000000Z_testdev01_zzzzzzzz.json.12345678.partial"
    fresh = staging / ".20260101T000000Z_testdev01_yyyyyyyy.json.87654321.partial"
    foreign = [staging / "notes.partial", day / ".hidden.partial", day / "keep.txt"]
    for path in [*ours, old, fresh, *foreign]:
        path.write_bytes(b"half")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    out = run_cli("--config", cfg, "recover", "--json", timeout=60)
    assert out.returncode == 0, out.stderr
    assert [o["action"] for o in json.loads(out.stdout)] == ["published"]
    assert not any(p.exists() for p in [*ours, old])
    assert fresh.exists() and all(p.exists() for p in foreign)


# --- peers -----------------------------------------------------------------------------------


@pytest.fixture
def bridge_device(cfg_factory, tmp_path):
    """A device with a papad, an outbox and a bridge, assembled as the service does."""
    from recorder import app
    from tests.fake_papad import FakePapad
    from tests.papad_setup import current_config

    papad = FakePapad().start()
    papad.add_user("recorder", token="tok-3f9c2e81d04b4a7fa2f1secret", groups=(1,))
    cfg = current_config(cfg_factory, tmp_path, papad.url)
    parts = app.assemble(cfg, app.Role.BRIDGE)
    yield cfg, parts, papad
    assert parts.bridge is not None
    parts.bridge.stop()
    parts.close()
    papad.stop()


def _peer_speech(tmp_path: Path, seconds: float = 6.0, text: str = "") -> bytes:
    """A real Vorbis OGG of espeak speech at 16 kHz (the peers' test rate)."""
    wav = tmp_path / f"peer-{time.monotonic_ns()}.wav"
    audio = speech(wav, text or "Grind the coconut with green chillies and a little salt. "
                   "Temper with mustard seeds.")
    audio = np.resize(audio, int(seconds * RATE))[:: RATE // 16000]
    ogg = tmp_path / f"peer-{time.monotonic_ns()}.ogg"
    with sf.SoundFile(ogg, "w", samplerate=16000, channels=1, format="OGG",
                      subtype="VORBIS") as fh:
        for i in range(0, len(audio), 4096):
            fh.write(audio[i:i + 4096])
    return ogg.read_bytes()


def _fingerprint(data: bytes, tmp_path: Path) -> dict:
    from recorder.audioid.chroma import fingerprint_file

    path = tmp_path / f"fp-{time.monotonic_ns()}.ogg"
    path.write_bytes(data)
    return fingerprint_file(path).audio_id()


def test_garbage_peer_ogg_with_matching_sha256_is_quarantined(bridge_device, tmp_path):
    from tests.papad_recordings import make_recording

    cfg, parts, _ = bridge_device
    peer = cfg.storage.sync_root / "dev-p"
    good = _peer_speech(tmp_path)
    other = _peer_speech(tmp_path, text="The train to the coast leaves at nine from platform "
                         "two, and it is always late.")
    claim = _fingerprint(good, tmp_path)
    cases = {
        # bytes that are no audio at all, described with their own sha256
        "garbage": dict(data=os.urandom(20000), seconds=6.0),
        # real audio of another recording, claiming the good one's Audio ID
        "impostor": dict(data=other, seconds=6.0, audio_id=claim),
        # the good audio, but the sidecar says it lasts three times as long
        "duration": dict(data=good, seconds=18.0),
        # the good audio with its own Audio ID: imported
        "honest": dict(data=good, seconds=6.0, audio_id=claim),
        # the other audio claiming no Audio ID: imported, fingerprinted here
        "unclaimed": dict(data=other, seconds=6.0),
    }
    docs = {}
    for index, (label, kw) in enumerate(cases.items()):
        extra = {"audio_id": kw.pop("audio_id")} if "audio_id" in kw else {}
        doc, ogg = make_recording(peer, index=index, title=label, **kw)
        if extra:  # re-publish the sidecar with the claim
            doc = sc.validate({**doc, **extra})
            ogg.with_suffix(".json").write_text(sc.dumps(doc))
        docs[label] = doc
    assert parts.bridge is not None
    started = time.process_time()
    report = parts.bridge.run_once()
    print(f"bridge import of {len(cases)} peer recordings: "
          f"{(time.process_time() - started) * 1000:.0f} ms CPU")
    assert (report.imported, report.quarantined) == (2, 3)
    reasons = {q["path"]: q["reason"] for q in parts.bridge.status()["quarantined"]}
    by_label = {label: reasons.get(str(Path(d["path"]).with_suffix(".json")), "")
                for label, d in docs.items()}
    assert "does not decode" in by_label["garbage"]
    assert "does not match the Audio ID" in by_label["impostor"]
    assert "sidecar says 18.00 s" in by_label["duration"]
    assert by_label["honest"] == by_label["unclaimed"] == ""
    assert parts.catalogue is not None
    entry = parts.catalogue.get(docs["unclaimed"]["recording_id"])
    assert entry is not None
    # Its fingerprint was computed here: identify finds it, and never the impostor's claim.
    from recorder.audioid.chroma import decode

    items, _ = decode(_fingerprint(other, tmp_path)["fingerprint"])
    matches = parts.catalogue.identify(items)
    assert [m.recording_id for m in matches][:1] == [docs["unclaimed"]["recording_id"]]
    assert parts.catalogue.get(docs["impostor"]["recording_id"]) is None
    # `mesh status` with Syncthing down still shows the quarantine list (exit 0, a warning).
    key = tmp_path / "st.key"
    key.write_text("k\n")
    key.chmod(0o600)
    st_cfg = _config(tmp_path, cfg.storage.data_dir, syncthing={
        "url": f"http://127.0.0.1:{free_port()}", "api_key_file": str(key)})
    out = run_cli("--config", st_cfg, "mesh", "status", timeout=60)
    _no_traceback(out.stderr)
    assert out.returncode == 0, out.stderr
    assert "warning: Syncthing unavailable" in out.stderr
    assert out.stdout.count("quarantined dev-p/") == 3


def test_peer_text_is_cleaned_before_papad(bridge_device, tmp_path):
    from tests.papad_recordings import make_recording
    from tests.papad_setup import drain, fast_worker

    cfg, parts, papad = bridge_device
    peer = cfg.storage.sync_root / "dev-p"
    hostile = "Lemon\x00 rice\u202egpj.exe\x1b[31m \u2066x\u2069 " + "long " * 100
    make_recording(peer, title=hostile, tags=["ok\x00tag", "\u202eevil", "x" * 200],
                   bookmarks=[{"at": 0.1, "label": "mark\x07\u200f here"}])
    nan = make_recording(peer, index=1)[0]
    path = peer / Path(nan["path"]).with_suffix(".json")
    path.write_text(path.read_text().replace('"bookmarks": []',
                                             '"bookmarks": [{"at": NaN, "label": ""}]'))
    assert parts.bridge is not None and parts.registration is not None
    report = parts.bridge.run_once()
    assert (report.imported, report.quarantined) == (1, 1)
    (quarantined,) = parts.bridge.status()["quarantined"]
    assert "NaN" in quarantined["reason"]
    outbox = parts.registration.outbox
    drain(fast_worker(outbox, parts.papad), outbox, 1)
    (media,) = papad.media_in_group(1)
    shown = json.dumps(media, ensure_ascii=False)
    for bad in ("\x00", "\u202e", "\u2066", "\u2069", "\x1b", "\x07", "\u200f"):
        assert bad not in shown, repr(bad)
    assert media["name"].startswith("Lemon ricegpj.exe[31m x long") and len(media["name"]) <= 200
    (annotation,) = papad.annotations
    assert annotation["annotation_text"] == "mark here"


# --- secrets ---------------------------------------------------------------------------------


def test_secret_files_may_be_group_readable_by_the_service_group_only(tmp_path):
    from recorder.errors import ConfigError
    from recorder.secrets import read_secret

    path = tmp_path / "secret"
    path.write_text("value\n")
    for mode in (0o600, 0o400, 0o640, 0o440):
        path.chmod(mode)
        assert read_secret(path, "papad.token_file") == "value"
    for mode in (0o660, 0o644, 0o604, 0o650):
        path.chmod(mode)
        with pytest.raises(ConfigError, match=r"papad\.token_file"):
            read_secret(path, "papad.token_file")
    path.chmod(0o640)
    os.chown(path, -1, 65534)  # another group (nogroup) may read it: refused
    with pytest.raises(ConfigError, match="not the service's group"):
        read_secret(path, "papad.token_file")
