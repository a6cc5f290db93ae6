"""Landmarks, the Audio ID for audio heard through the air (issue 26).

A recording made through the real pipeline (``recorder record``) is found by ``recorder
identify`` from excerpts degraded with sox the way the air degrades them (2 % speed change,
a phone call through Opus at 12 kbit/s, a hall's reverb), at the right offset, with the speed
factor reported; an unrelated clip is not matched; a peer's recording imported by the bridge gets
landmarks computed from its audio, whatever its sidecar carries.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from recorder import app
from recorder.audioid import landmarks as lm
from recorder.audioid.catalogue import Catalogue
from recorder.audioid.identify import identify_file
from recorder.config import load_config
from recorder.db import Database
from tests.conftest import need, run_cli
from tests.corpus import corpus  # noqa: F401 - a fixture
from tests.papad_recordings import make_recording
from tests.papad_setup import current_config
from tests.service_harness import file_service, loop_wav  # noqa: F401 - fixtures

START = 7.3  # where the excerpts start in the recording


def sox(*args: str | Path) -> None:
    subprocess.run(["sox", *map(str, args)], check=True, capture_output=True, timeout=120)


def excerpt(src: Path, out: Path, kind: str, start: float = START) -> Path:
    """A 10 s excerpt of `src` from `start`, degraded as `kind`."""
    cut = out.with_name(out.stem + ".cut.wav")
    sox(src, cut, "trim", start, 10)
    if kind == "speed":
        sox(cut, out, "speed", "1.02")
    elif kind == "reverb":
        sox(cut, out, "reverb", "90", "50", "100", "100", "20", "gain", "-n", "-3")
    elif kind == "phone":
        need("opusenc")
        narrow, opus = out.with_suffix(".8k.wav"), out.with_suffix(".opus")
        sox(cut, "-r", "8000", narrow, "sinc", "300-3400")
        subprocess.run(["opusenc", "--quiet", "--bitrate", "12", str(narrow), str(opus)],
                       check=True, timeout=120)
        subprocess.run(["opusdec", "--quiet", "--rate", "8000", str(opus), str(out)],
                       check=True, timeout=120)
    else:
        raise ValueError(kind)
    return out


def test_peaks_do_not_depend_on_how_the_stream_is_cut(corpus) -> None:  # noqa: F811
    audio, rate = sf.read(str(corpus.speech(3, "en-us", 4)), dtype="int16")
    import soxr

    x = np.clip(np.rint(soxr.resample(audio.astype(np.float32), rate, lm.RATE)), -32768,
                32767).astype(np.int16)
    results = []
    for size in (1000, 4096, x.size):
        finder = lm.PeakFinder()
        for i in range(0, x.size, size):
            finder.feed(x[i : i + size])
        results.append(lm.triplets(finder.finish()))
    for other in results[1:]:
        assert np.array_equal(other.keys, results[0].keys)
        assert np.array_equal(other.t, results[0].t)
    assert results[0].keys.size > 10 * (x.size / lm.RATE)  # about 30 a second
    back = lm.Landmarks.from_bytes(results[0].to_bytes())
    assert np.array_equal(back.keys, results[0].keys) and np.array_equal(back.t, results[0].t)


def test_identify_finds_a_recording_heard_through_the_air(config_file, corpus,  # noqa: F811
                                                          tmp_path) -> None:
    need("sox")
    cfg_path, _ = config_file()
    src = corpus.speech(4, "en-gb-x-rp", 10)
    other = corpus.speech(9, "en-us", 10)
    for source in (src, other):
        done = run_cli("--config", cfg_path, "record", "--source", f"file:{source}", "--fast",
                       "--json")
        assert done.returncode == 0, done.stderr
    done = run_cli("--config", cfg_path, "record", "--source", f"file:{src}", "--fast", "--json")
    own = json.loads(Path(json.loads(done.stdout)["sidecar"]).read_text())
    # The third recording is the same audio as the first: the catalogue marks it a duplicate.
    assert own["duplicate_of"]

    def identify(clip: Path) -> list[dict]:
        done = run_cli("--config", cfg_path, "identify", "--json", str(clip))
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)["matches"]

    for kind in ("speed", "phone", "reverb"):
        found = identify(excerpt(src, tmp_path / f"{kind}.wav", kind))
        assert found, kind
        best = found[0]
        assert best["recording_id"] in (own["recording_id"], own["duplicate_of"]), kind
        assert abs(best["offset_seconds"] - START) <= 0.5, (kind, best)
        assert best["score"] >= best["threshold"]
        if kind == "speed":  # Chromaprint cannot follow a speed change: the landmarks did
            assert best["method"] == "landmarks"
            assert best["speed"] == pytest.approx(1.02, abs=0.005)
    text = run_cli("--config", cfg_path, "identify", str(tmp_path / "speed.wav")).stdout
    assert re.search(r"  speed 1\.0[12]\d  ", text) and "(landmarks, threshold" in text
    # An unrelated voice and text, through the same phone line: no match.
    unrelated = corpus.speech(21, "en+f3", 10)
    assert identify(excerpt(unrelated, tmp_path / "unrelated.wav", "phone")) == []
    assert "no match" in run_cli("--config", cfg_path, "identify",
                                 str(tmp_path / "unrelated.wav")).stdout


@pytest.fixture
def local(cfg_factory, tmp_path):
    """The bridge as the service assembles it, on plain folders (no Syncthing)."""
    from tests.fake_papad import FakePapad

    papad = FakePapad().start()
    cfg = current_config(cfg_factory, tmp_path, papad.url)
    parts = app.assemble(cfg, app.Role.BRIDGE)
    assert parts.bridge is not None
    yield cfg, parts
    parts.bridge.stop()
    parts.close()
    papad.stop()


def test_bridge_recomputes_a_peer_recordings_landmarks(local, corpus, tmp_path) -> None:  # noqa: F811
    need("sox")
    cfg, parts = local
    src = corpus.speech(5, "en-gb-scotland", 10)
    ogg = tmp_path / "peer.ogg"
    audio, rate = sf.read(str(src), dtype="float32")
    import soxr

    sf.write(str(ogg), soxr.resample(audio, rate, 16000), 16000, format="OGG", subtype="VORBIS")
    seconds = sf.info(str(ogg)).frames / 16000
    # Landmarks are in no sidecar: the bridge computes them while checking the audio.
    doc, _ = make_recording(cfg.storage.sync_root / "dev-p", data=ogg.read_bytes(),
                            seconds=seconds)
    assert parts.bridge.run_once().imported == 1
    catalogue = Catalogue(Database(cfg.db_path))
    found = identify_file(catalogue, excerpt(src, tmp_path / "speed.wav", "speed"))
    assert [f.recording_id for f in found] == [doc["recording_id"]]
    assert found[0].method == "landmarks" and found[0].device_id == "dev-p"
    assert abs(found[0].offset_seconds - START) <= 0.5
    assert found[0].speed == pytest.approx(1.02, abs=0.005)
    # Forgetting the recording forgets its landmarks.
    assert catalogue.remove(doc["recording_id"])
    assert identify_file(catalogue, tmp_path / "speed.wav") == []
    assert catalogue.conn.execute(
        "SELECT COUNT(*) FROM landmark_postings WHERE n > 0").fetchone()[0] == 0


def test_index_rebuild_computes_landmarks_from_the_files(cfg_factory, corpus,  # noqa: F811
                                                         tmp_path) -> None:
    need("sox")
    cfg = cfg_factory()
    src = corpus.speech(6, "en-us", 10)
    ogg = tmp_path / "own.ogg"
    audio, rate = sf.read(str(src), dtype="float32")
    import soxr

    sf.write(str(ogg), soxr.resample(audio, rate, 16000), 16000, format="OGG", subtype="VORBIS")
    doc, _ = make_recording(cfg.storage.sync_root / cfg.device.id, data=ogg.read_bytes(),
                            seconds=sf.info(str(ogg)).frames / 16000,
                            device_id=cfg.device.id)
    if shutil.which("opusenc") is None:
        need("opusenc")
    from tests.test_audioid_cli import run

    assert run(["index", "rebuild", "--json"], cfg) == 0
    clip = excerpt(src, tmp_path / "phone.wav", "phone")
    catalogue = Catalogue(Database(cfg.db_path))
    found = identify_file(catalogue, clip)
    assert [f.recording_id for f in found] == [doc["recording_id"]]
    assert abs(found[0].offset_seconds - START) <= 0.5
    # A catalogue from before the key's present definition (no version recorded: the first
    # keys) migrates: opening it forgets the landmarks it cannot search, the next rebuild
    # computes them again from the file, and the clip is found by landmarks again.
    fast = excerpt(src, tmp_path / "fast.wav", "speed")
    catalogue.conn.execute("DROP TABLE landmark_meta")
    catalogue.db.close()
    catalogue = Catalogue(Database(cfg.db_path))
    assert catalogue.conn.execute("SELECT COUNT(*) FROM landmark_recordings").fetchone()[0] == 0
    assert catalogue.conn.execute("SELECT COUNT(*) FROM landmark_postings").fetchone()[0] == 0
    assert identify_file(catalogue, fast) == []
    catalogue.db.close()
    assert run(["index", "rebuild", "--json"], cfg) == 0
    catalogue = Catalogue(Database(cfg.db_path))
    found = identify_file(catalogue, fast)
    assert [(f.recording_id, f.method) for f in found] == [(doc["recording_id"], "landmarks")]
    assert abs(found[0].offset_seconds - START) <= 0.5
    catalogue.db.close()


def test_a_recording_heard_through_the_air_is_linked_to_its_original(config_file, corpus,  # noqa: F811
                                                                      tmp_path) -> None:
    """The catalogue's duplicate test (the sidecar's ``duplicate_of``: the web page's "Same
    audio as", and what the bridge records for a peer's recording) and imports (``contains``)
    use identify's answer: Chromaprint, else landmarks."""
    need("sox")
    need("opusenc")
    cfg_path, _ = config_file()
    src = corpus.speech(4, "en-gb-x-rp", 6)
    other = corpus.speech(9, "en-us", 6)

    def record(source: Path) -> dict:
        done = run_cli("--config", cfg_path, "record", "--source", f"file:{source}", "--fast",
                       "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(Path(json.loads(done.stdout)["sidecar"]).read_text())

    original, unrelated = record(src), record(other)
    assert "duplicate_of" not in unrelated or unrelated["duplicate_of"] is None
    # The whole recording again, played 2 % fast in a hall: Chromaprint sees no copy.
    air = tmp_path / "air.wav"
    sox(src, air, "speed", "1.02", "reverb", "70", "50", "80", "100", "10", "gain", "-n", "-3")
    assert record(air).get("duplicate_of") == original["recording_id"]
    # A phone call: someone (never recorded) speaks, then holds the phone to the radio
    # playing the recording.
    heard = excerpt(src, tmp_path / "heard.wav", "phone", start=2.0)
    call = tmp_path / "call.wav"
    sox(corpus.speech(21, "en+f3", 6), "-r", "8000", tmp_path / "talk.wav", "trim", "0", "6")
    sox(tmp_path / "talk.wav", heard, call)
    done = run_cli("--config", cfg_path, "import", "--json", str(call), timeout=300)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.splitlines()[0])
    assert answer["action"] == "imported", answer
    doc = json.loads(Path(answer["path"]).with_suffix(".json").read_text())
    assert doc.get("contains") == [original["recording_id"]], doc.get("contains")


def test_the_service_computes_landmarks_an_upgrade_forgot(file_service, config_file, corpus,  # noqa: F811
                                                          tmp_path) -> None:
    """A device upgraded in the field (landmarks under an older key definition, forgotten when
    the catalogue is opened) is searchable by landmarks again once its service has run: the
    service computes what is missing from the audio by itself, nobody types `index rebuild`."""
    need("sox")
    cfg_path, _ = config_file()
    src = corpus.speech(6, "en-us", 10)
    done = run_cli("--config", cfg_path, "record", "--source", f"file:{src}", "--fast", "--json")
    assert done.returncode == 0, done.stderr
    rid = json.loads(Path(json.loads(done.stdout)["sidecar"]).read_text())["recording_id"]
    fast = excerpt(src, tmp_path / "fast.wav", "speed")

    def identify() -> list[dict]:
        res = run_cli("--config", cfg_path, "identify", "--json", str(fast))
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)["matches"]

    assert [m["method"] for m in identify()] == ["landmarks"]
    # The catalogue as the previous key definition left it: no version recorded.
    db = Database(load_config(cfg_path).db_path)
    db.conn.execute("DROP TABLE landmark_meta")
    db.close()
    assert identify() == []  # opened (by identify): the old landmarks are forgotten
    svc = file_service(ready=lambda s: s.get("state") == "hub", audio={"source": "none"},
                       web={"enabled": False})
    svc.wait(lambda: svc.status().get("workers", {}).get("landmarks", {}).get("finished"), 300,
             "the service's landmark backfill")
    assert svc.status()["workers"]["landmarks"]["computed"] == 1
    found = identify()
    assert [(m["recording_id"], m["method"]) for m in found] == [(rid, "landmarks")]
    assert abs(found[0]["offset_seconds"] - START) <= 0.5
