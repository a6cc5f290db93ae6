"""Recordings that do not come from the button (issue 25): `recorder import` and the service's
inbox, with phone calls in the Toxbot's exact format (48 kHz stereo Ogg Opus, its Vorbis
comments, ``<ULID>.opus``) and MP3/M4A/WAV/FLAC made with ffmpeg.

Everything goes through the real CLI and the real service process; results are read from the
published files, the inbox folders and ``recorder ctl status``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from recorder.recording import new_recording_id, parse_utc
from tests.chromium import WINDOW
from tests.clips import RATE, speech, tone, write_wav
from tests.conftest import free_port, need, one_line_error, run_cli, toml_config, wait_until
from tests.test_never_lose import Filler, small_disk  # noqa: F401 - a fixture
from tests.test_web_browser import browser, open_page, shot  # noqa: F401 - a fixture

CALLER_KEY = "76518406F6A9F2217E8DC487CC783C25CC16A15EB36FF32E335A235342C48A39" + "1F0E4A"
TEXTS = [
    "Namaskara. This is Lakshmi calling about the water tank in the third cross road.",
    "The market opens at six tomorrow; bring your own bags and come early for greens.",
    "Our song for the festival starts slowly, then everyone joins for the chorus.",
    "Please tell the nurse that the vaccination camp moved to the school on Friday.",
]


def _sidecars(data: Path) -> list[dict]:
    found = sorted((data / "sync").rglob("recordings/**/*.json"))
    return [json.loads(p.read_text()) for p in found]


def _config(tmp_path: Path, **sections) -> tuple[str, Path]:
    data = tmp_path / "data"
    base = {"device": {"id": "testdev01"}, "storage": {"data_dir": str(data), "reserve_mb": 0},
            "web": {"enabled": False}}
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return toml_config(tmp_path / "recorder.toml", base), data


def call_ulid(when: float) -> str:
    """A ULID like the bot's (uppercase Crockford base32, 48 bits of ms first)."""
    return new_recording_id(when).upper()


def bot_call(folder: Path, wav: Path, *, when: float, friend: str = "Lakshmi",
             key: str = CALLER_KEY, ulid: str | None = None) -> Path:
    """A call as janastu/recorder_bot writes it: `<ULID>.opus`, 48 kHz stereo Ogg Opus,
    DATE in the bot's local time without a zone, ULID, TOX_FRIEND, TOX_PUBLIC_KEY, TOX_STATUS."""
    opusenc = need("opusenc", "opus-tools")
    ulid = ulid or call_ulid(when)
    stereo = folder / f"{ulid}.stereo.wav"
    data, rate = sf.read(wav, dtype="int16")
    sf.write(stereo, np.column_stack([data, data // 2]), rate, subtype="PCM_16")
    out = folder / f"{ulid}.opus"
    comments = {"DATE": datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M"), "ULID": ulid,
                "TOX_FRIEND": friend, "TOX_PUBLIC_KEY": key, "TOX_STATUS": "online"}
    args = [a for k, v in comments.items() for a in ("--comment", f"{k}={v}")]
    subprocess.run([opusenc, "--quiet", *args, str(stereo), str(out)], check=True, timeout=120)
    stereo.unlink()
    info = sf.info(out)
    assert (info.samplerate, info.channels) == (48000, 2)
    return out


def ffmpeg(src: Path, dst: Path, *args: str) -> Path:
    subprocess.run([need("ffmpeg"), "-nostdin", "-v", "error", "-y", "-i", str(src), *args,
                    str(dst)], check=True, timeout=120)
    return dst


@pytest.fixture(scope="module")
def voices(tmp_path_factory) -> list[Path]:
    """Four different spoken clips (about 5 s each), 48 kHz mono WAV."""
    folder = tmp_path_factory.mktemp("voices")
    return [(speech(folder / f"v{i}.wav", text), folder / f"v{i}.wav")[1]
            for i, text in enumerate(TEXTS)]


def _import(cfg: str, *files: Path | str, extra: tuple[str, ...] = ()) -> list[dict]:
    done = run_cli("--config", cfg, "import", "--json", *map(str, files), *extra, timeout=300)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


# --- the command ---------------------------------------------------------------------------


def test_phone_call_imported_once_with_caller_and_call_time(tmp_path, voices):
    cfg, data = _config(tmp_path, papad={"api": "papad-api"})
    when = time.time() - 86400 * 3 + 0.123
    call = bot_call(tmp_path, voices[0], when=when)
    (first,) = _import(cfg, call, extra=("--tag", "water"))
    assert first["action"] == "imported"
    (doc,) = _sidecars(data)
    assert doc["recording_id"] == first["recording_id"]
    assert doc["source"] == "phone" and doc["original_name"] == call.name
    assert doc["call_id"] == call.stem and doc["time_source"] == "ulid"
    assert abs(parse_utc(doc["started_at"]).timestamp() - when) < 0.002
    assert doc["caller"]["name"] == "Lakshmi" and "public_key" not in doc["caller"]
    assert CALLER_KEY not in json.dumps(doc)
    assert (doc["samplerate"], doc["channels"]) == (48000, 1)  # the configured format
    assert doc["tags"] == ["water"] and doc["audio_id"]["fingerprint"]
    assert abs(doc["duration"] - sf.info(voices[0]).duration) < 0.1
    ogg = Path(first["path"])
    assert ogg.is_file() and sf.info(ogg).channels == 1
    # papad gets it like a button recording
    queued = run_cli("--config", cfg, "outbox", "list", "--json")
    assert doc["recording_id"] in queued.stdout, queued.stdout + queued.stderr

    # The same file again, the same call under another name, the call re-encoded as MP3:
    # each named as the recording it already is.
    again = tmp_path / "copy.opus"
    again.write_bytes(call.read_bytes())
    mp3 = ffmpeg(call, tmp_path / "call.mp3", "-map_metadata", "-1")
    answers = _import(cfg, call, again, mp3)
    assert [a["action"] for a in answers] == ["duplicate"] * 3, answers
    assert {a["recording_id"] for a in answers} == {doc["recording_id"]}
    text = run_cli("--config", cfg, "import", str(call))
    assert text.returncode == 0 and doc["recording_id"] in text.stdout
    assert "already imported" in text.stdout
    assert len(_sidecars(data)) == 1


def test_caller_key_and_name_published_only_as_configured(tmp_path, voices):
    cfg, data = _config(tmp_path, **{"import": {"publish_caller_key": True,
                                                "publish_caller_name": False}})
    _import(cfg, bot_call(tmp_path, voices[1], when=time.time() - 60))
    (doc,) = _sidecars(data)
    assert doc["caller"] == {"public_key": CALLER_KEY, "status": "online"}


def test_formats_resampled_and_linked_by_audio_id(tmp_path, voices):
    """MP3, M4A (ffmpeg), WAV and FLAC at other rates and channel counts become recordings in
    the configured format; the same audio re-encoded is no second recording, and a file that
    holds a known recording and more is linked to it (``contains``)."""
    cfg, data = _config(tmp_path, audio={"channels": 2})
    wav44 = ffmpeg(voices[0], tmp_path / "a.wav", "-ar", "44100")
    flac = ffmpeg(voices[1], tmp_path / "b.flac", "-ar", "22050")
    mp3 = ffmpeg(voices[2], tmp_path / "c.mp3", "-ar", "44100", "-ac", "2",
                 "-metadata", "date=2025-03-04T05:06:07Z")
    m4a = ffmpeg(voices[3], tmp_path / "d.m4a", "-c:a", "aac", "-ar", "32000")
    answers = _import(cfg, wav44, flac, mp3, m4a)
    assert [a["action"] for a in answers] == ["imported"] * 4, answers
    docs = {d["original_name"]: d for d in _sidecars(data)}
    for name, voice in zip(("a.wav", "b.flac", "c.mp3", "d.m4a"), voices, strict=True):
        doc = docs[name]
        assert doc["source"] == "import" and (doc["samplerate"], doc["channels"]) == (48000, 2)
        assert abs(doc["duration"] - sf.info(voice).duration) < 0.15, (name, doc["duration"])
    assert docs["c.mp3"]["time_source"] == "tag"
    assert docs["c.mp3"]["started_at"] == "2025-03-04T05:06:07.000Z"
    assert docs["a.wav"]["time_source"] == "file_mtime"

    # The WAV as an Opus file: the same audio, no second recording.
    again = ffmpeg(voices[0], tmp_path / "a-again.ogg", "-c:a", "libopus")
    # Two clips in one file: holds b.flac and c.mp3, so it is linked to both.
    both = tmp_path / "both.wav"
    write_wav(both, np.concatenate([sf.read(voices[1], dtype="int16")[0],
                                    sf.read(voices[2], dtype="int16")[0]]))
    same, longer = _import(cfg, again, both)
    assert same["action"] == "duplicate" and same["recording_id"] == docs["a.wav"]["recording_id"]
    assert longer["action"] == "imported"
    doc = next(d for d in _sidecars(data) if d["original_name"] == "both.wav")
    assert set(doc["contains"]) == {docs["b.flac"]["recording_id"],
                                    docs["c.mp3"]["recording_id"]}
    assert len(_sidecars(data)) == 5


def test_bad_files_one_line_errors_and_the_rest_imported(tmp_path, voices):
    cfg, data = _config(tmp_path)
    corrupt = tmp_path / "corrupt.opus"
    corrupt.write_bytes(b"OggS" + os.urandom(5000))
    link = tmp_path / "link.wav"
    link.symlink_to(voices[0])
    empty = tmp_path / "empty.wav"
    empty.touch()
    short = write_wav(tmp_path / "short.wav", tone(0.05))
    for bad, code, words in ((corrupt, 5, "cannot decode"), (link, 5, "symbolic link"),
                             (empty, 5, "empty"), (short, 6, "under the 0.1 s"),
                             (tmp_path / "missing.wav", 5, "vanished")):
        err = one_line_error(run_cli("--config", cfg, "import", str(bad)), code)
        assert words in err and bad.name in err, err
    # One bad file does not stop the others; the exit code is the first failure's.
    done = run_cli("--config", cfg, "import", str(corrupt), str(voices[0]))
    assert done.returncode == 5 and len(_sidecars(data)) == 1
    assert not list((data / "staging" / "import").glob("*.ogg"))


def test_import_on_a_full_disk_leaves_nothing_and_works_once_there_is_room(small_disk,  # noqa: F811
                                                                          tmp_path, voices):
    disk = small_disk()
    cfg, _ = _config(tmp_path, storage={"data_dir": str(disk)})
    _import(cfg, voices[0])  # the device has its database and a recording
    call = bot_call(tmp_path, voices[2], when=time.time() - 100)
    filler = Filler(disk)
    filler.fill()
    refused = run_cli("--config", cfg, "import", str(call))
    assert refused.returncode == 4 and "Traceback" not in refused.stderr, refused.stderr
    # (the database may log that it used its spare room to open)
    assert refused.stderr.splitlines()[-1].startswith("recorder: error: disk full")
    assert len(_sidecars(disk)) == 1 and not list((disk / "staging" / "import").glob("*.ogg"))
    filler.free()
    (ok,) = _import(cfg, call)
    assert ok["action"] == "imported" and len(_sidecars(disk)) == 2


# --- the service's inbox -------------------------------------------------------------------


def _inbox_service(file_service, inbox: Path, **imports):
    return file_service(**{"import": {"inbox": str(inbox), "settle_seconds": 1.5,
                                      "poll_seconds": 0.2, **imports}},
                        web={"enabled": False})


def test_inbox_takes_a_call_only_once_it_stopped_growing(file_service, tmp_path, voices):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    svc = _inbox_service(file_service, inbox)
    call = bot_call(tmp_path, voices[0], when=time.time() - 30)
    data = call.read_bytes()
    growing = inbox / call.name
    with open(growing, "wb") as fh:  # the bot writes while the call lasts
        for i in range(0, len(data), len(data) // 8 + 1):
            fh.write(data[i:i + len(data) // 8 + 1])
            fh.flush()
            time.sleep(0.6)  # less than settle_seconds between writes
            assert growing.exists() and not svc.published(), "taken while still growing"
            if i == 0:  # a call on hold: nothing written for longer than settle_seconds,
                time.sleep(3)  # but its stream is not ended (no end-of-stream page yet)
                assert growing.exists() and not svc.published(), "taken while on hold"
    (doc,) = svc.wait_published(1, timeout=120)
    assert doc["source"] == "phone" and doc["call_id"] == call.stem
    assert abs(doc["duration"] - sf.info(call).duration) < 0.1  # the whole call
    svc.wait(lambda: (inbox / "done" / call.name).is_file() and not growing.exists(), 30,
             "the call moved to done/")
    assert svc.status()["workers"]["import"]["imported"] == 1
    # The same call dropped again: no second recording, moved to done/ as well.
    (inbox / "again.opus").write_bytes(data)
    svc.wait(lambda: (inbox / "done" / "again.opus").is_file(), 60, "duplicate moved to done/")
    assert len(svc.published()) == 1


def test_inbox_rejects_with_a_reason_and_never_deletes(file_service, tmp_path, voices):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    svc = _inbox_service(file_service, inbox, after="remove")
    (inbox / "corrupt.mp3").write_bytes(os.urandom(3000))
    (inbox / "link.wav").symlink_to(voices[1])
    (inbox / "short.wav").write_bytes(write_wav(tmp_path / "s.wav", tone(0.05)).read_bytes())
    vanishing = inbox / "vanishing.wav"
    vanishing.write_bytes(voices[2].read_bytes())
    time.sleep(0.5)
    vanishing.unlink()  # seen, then gone before it settled
    (inbox / "good.wav").write_bytes(voices[3].read_bytes())
    rejected = inbox / "rejected"
    svc.wait(lambda: len(list(rejected.glob("*.reason.txt"))) == 3, 120, "three rejects")
    reasons = {p.name.removesuffix(".reason.txt"): p.read_text() for p in
               rejected.glob("*.reason.txt")}
    assert "not a plain file" in reasons["link.wav"] and "cannot decode" in reasons["corrupt.mp3"]
    assert "under the 0.1 s" in reasons["short.wav"]
    assert all(text.count("\n") == 1 for text in reasons.values())
    assert (rejected / "link.wav").is_symlink() and (rejected / "corrupt.mp3").is_file()
    (doc,) = svc.wait_published(1, timeout=120)
    assert doc["original_name"] == "good.wav"
    svc.wait(lambda: not (inbox / "good.wav").exists(), 30, "good.wav removed (after=remove)")
    assert not list((inbox / "done").iterdir())
    assert svc.proc.poll() is None


def test_inbox_batch_killed_mid_way_each_file_imported_exactly_once(file_service, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    staging = tmp_path / "drop"
    staging.mkdir()
    rng = np.random.default_rng(25)
    for i in range(100):  # 100 small distinct files, dropped at once (renamed in)
        data = tone(0.6, 200 + 7 * i, 0.2) + rng.integers(-300, 300, int(0.6 * RATE)).astype(
            np.int16)
        write_wav(staging / f"note{i:03d}.wav", data)
    svc = _inbox_service(file_service, inbox, settle_seconds=0.5)
    for p in sorted(staging.iterdir()):
        os.rename(p, inbox / p.name)
    svc.wait(lambda: len(svc.published()) >= 10, 300, "ten imported")
    svc.proc.send_signal(signal.SIGKILL)  # a crash mid-batch
    svc.proc.wait(30)
    svc.log_fh.close()
    svc = _inbox_service(file_service, inbox, settle_seconds=0.5)
    svc.wait(lambda: len(list((inbox / "done").iterdir())) == 100, 600, "all 100 in done/")
    docs = svc.published()
    names = sorted(d["original_name"] for d in docs)
    assert names == [f"note{i:03d}.wav" for i in range(100)]  # each exactly once
    assert not [p for p in inbox.iterdir() if p.name not in ("done", "rejected")]
    oggs = list((svc.data / "sync").rglob("*.ogg"))
    assert len(oggs) == 100  # no OGG without its sidecar
    assert not list((svc.data / "staging" / "import").glob("*.ogg"))


def test_inbox_waits_for_space_and_loses_nothing(file_service, small_disk, tmp_path,  # noqa: F811
                                                 voices):
    disk = small_disk()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    svc = file_service(**{"import": {"inbox": str(inbox), "settle_seconds": 0.5,
                                     "poll_seconds": 0.2}},
                       storage={"data_dir": str(disk)}, web={"enabled": False},
                       # where the harness looks for it (its data dir is not the small disk)
                       service={"control_socket": str(tmp_path / "data" / "state" /
                                                      "control.sock")})
    filler = Filler(disk)
    filler.fill()
    call = bot_call(tmp_path, voices[1], when=time.time() - 5)
    os.rename(call, inbox / call.name)
    svc.wait(lambda: svc.status()["workers"]["import"]["waiting_for_space"], 60,
             "the inbox waiting for space")
    assert (inbox / call.name).is_file() and not _sidecars(disk)
    filler.free()
    (doc,) = wait_until(lambda: _sidecars(disk), 120, 0.2, "imported once there is room")
    assert doc["call_id"] == call.stem


# --- the web page --------------------------------------------------------------------------


def test_web_page_shows_the_source_and_long_values_fit_a_phone(file_service, browser,  # noqa: F811
                                                               tmp_path, voices):
    """At 412 px (a phone) the Now page's values wrap inside the card, and the recordings page
    says where each recording came from (a screenshot of each is kept in tmp_path)."""
    port = free_port()
    svc = file_service(web={"enabled": True, "port": port, "listen": "127.0.0.1"})
    title = "Vaccinationcampmovedtotheschoolonfridaymorningannouncement"  # no break in it
    _import(svc.cfg_path, bot_call(tmp_path, voices[3], when=time.time() - 10),
            extra=("--title", title))
    _import(svc.cfg_path, ffmpeg(voices[1], tmp_path / "market.mp3",  # older: the call is last
                                 "-metadata", "date=2020-01-02T03:04:05Z"))
    site = _Site(f"http://127.0.0.1:{port}")
    # Headless Chromium keeps windows at least 500 px wide: emulate the phone's viewport.
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": True})
    try:
        _check_pages(browser, site, title, tmp_path)
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def _check_pages(browser, site, title: str, tmp_path: Path) -> None:  # noqa: F811
    open_page(browser, site, "/")
    wait_until(lambda: title in browser.execute_script(
        "return document.getElementById('last').textContent"), 60, 0.2, "last recording")
    overflow = browser.execute_script("""
        return ['clock', 'last'].map((id) => {
          const e = document.getElementById(id), card = e.closest('.card');
          return [id, e.getBoundingClientRect().right, card.getBoundingClientRect().right,
                  e.scrollWidth, e.clientWidth];
        });""")
    for _name, right, card_right, scroll, client in overflow:
        assert right <= card_right + 0.5 and scroll <= client + 1, overflow
    assert _too_wide(browser) == [WINDOW[0]]
    shot(browser, tmp_path, "now")
    open_page(browser, site, "/recordings")
    wait_until(lambda: len(browser.find_elements("css selector", "article.recording")) == 2,
               60, 0.2, "two recordings listed")
    lines = [e.text for e in browser.find_elements("css selector", "p.source")]
    assert any("phone call from Lakshmi" in line for line in lines), lines
    assert any("imported from market.mp3" in line for line in lines), lines
    assert _too_wide(browser) == [WINDOW[0]]
    shot(browser, tmp_path, "recordings")


def _too_wide(driver) -> list:
    """The viewport's width, then every element reaching past it."""
    return driver.execute_script("""
        return [window.innerWidth, ...[...document.querySelectorAll('body *')]
          .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 0.5)
          .map((e) => `${e.tagName}#${e.id} ${e.getBoundingClientRect().right}`)];""")


@dataclass
class _Site:
    url: str


def test_import_config_keys_checked_one_line_each(cfg_factory, tmp_path):
    from recorder.errors import ConfigError

    cfg = cfg_factory()
    assert cfg.imports.inbox is None and cfg.imports.publish_caller_key is False
    assert cfg.imports.publish_caller_name is True and cfg.imports.after == "move"
    for bad, words in (({"after": "keep"}, "import.after: must be one of move, remove"),
                       ({"settle_seconds": -1}, "import.settle_seconds: must be between"),
                       ({"publish_caller_key": "yes"}, "import.publish_caller_key: must be"),
                       ({"inbox": str(tmp_path / "data" / "sync" / "in")},
                        "import.inbox: must be outside"),
                       ({"colour": 1}, "import.colour: unknown key")):
        with pytest.raises(ConfigError) as err:
            cfg_factory(**{"import": bad})
        assert str(err.value).startswith(words) and "\n" not in str(err.value), err.value


def test_papad_description_says_where_it_came_from_and_keeps_the_key_private(tmp_path, voices):
    from recorder.papad.mapping import media_description
    from recorder.recording import Recording

    cfg, data = _config(tmp_path)
    _import(cfg, bot_call(tmp_path, voices[0], when=time.time() - 40))
    (doc,) = _sidecars(data)
    text = media_description(Recording.from_doc(doc))
    assert "Phone call from Lakshmi." in text and "Time from the call's id." in text
    assert CALLER_KEY not in text and "Caller key" not in text
    button = {k: v for k, v in doc.items()
              if k not in ("source", "caller", "call_id", "time_source", "original_name")}
    assert "Phone call" not in media_description(Recording.from_doc(button))
