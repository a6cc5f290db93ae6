"""The Audio ID commands: output, and a distinct exit code for each kind of bad input.

The commands are driven through `register()` with a parser built like recorder.cli's (the lead
wires recorder.cli.audioid into COMMAND_MODULES; errors map to exit codes the same way).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import soundfile as sf

from recorder import sidecar as sidecar_mod
from recorder.cli import audioid as cli
from recorder.errors import InputFileError, RecorderError, TooShortError
from tests.corpus import RATE, corpus, sidecar_for  # noqa: F401 - corpus is a fixture


def run(argv: list[str], cfg) -> int:
    parser = argparse.ArgumentParser(prog="recorder")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args, cfg) or 0)
    except RecorderError as exc:
        return exc.exit_code


def test_fingerprint_json(corpus, cfg_factory, capsys) -> None:  # noqa: F811
    src = corpus.speech(0, "en-us", 8)
    assert run(["fingerprint", str(src), "--json"], cfg_factory()) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["audio_id"]["algorithm"] == "chromaprint"
    assert doc["audio_id"]["duration"] == pytest.approx(sf.info(str(src)).duration, abs=0.01)
    assert doc["items"] > 200
    assert run(["fingerprint", str(src)], cfg_factory()) == 0
    assert "FINGERPRINT=" + doc["audio_id"]["fingerprint"] in capsys.readouterr().out


def test_match(corpus, cfg_factory, capsys) -> None:  # noqa: F811
    src = corpus.speech(1, "en-gb-scotland", 8)
    excerpt = corpus.variant(src, start=9.1, length=12, codec="opus", quality=32)
    assert run(["match", str(excerpt), str(src), "--json"], cfg_factory()) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["match"] is True
    assert abs(doc["offset_seconds"] - 9.1) <= 0.2
    other = corpus.speech(5, "en-us", 8)
    assert run(["match", str(other), str(src), "--json"], cfg_factory()) == 0
    assert json.loads(capsys.readouterr().out)["match"] is False
    assert run(["match", str(excerpt), str(src)], cfg_factory()) == 0
    assert capsys.readouterr().out.startswith("match: similarity")


def test_index_rebuild_then_identify(corpus, cfg_factory, capsys) -> None:  # noqa: F811
    cfg = cfg_factory()
    root = cfg.storage.sync_root
    docs = [
        sidecar_for(corpus.speech(t, v, 8), device_id=cfg.device.id, started=1_780_000_000 + t)
        for t, v in ((0, "en-us"), (2, "en+f3"))
    ]
    for doc in docs:
        target = (root / doc["device_id"] / doc["path"]).with_suffix(".json")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(sidecar_mod.dumps(doc))
    (target.parent / "junk.json").write_text("[]")
    assert run(["index", "rebuild", "--json"], cfg) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["added"] == 2 and report["catalogued"] == 2
    assert len(report["invalid"]) == 1

    clip = corpus.variant(corpus.speech(2, "en+f3", 8), start=12.3, length=10, codec="vorbis",
                          quality=1, snr_db=20)
    assert run(["identify", str(clip), "--json"], cfg) == 0
    found = json.loads(capsys.readouterr().out)["matches"]
    assert found[0]["recording_id"] == docs[1]["recording_id"]
    assert abs(found[0]["offset_seconds"] - 12.3) <= 0.2
    assert found[0]["file"] == str(root / cfg.device.id / docs[1]["path"])
    assert run(["identify", str(clip)], cfg) == 0
    assert docs[1]["recording_id"] in capsys.readouterr().out
    unrelated = corpus.speech(6, "en+f3", 8)
    assert run(["identify", str(unrelated), "--json"], cfg) == 0
    assert json.loads(capsys.readouterr().out)["matches"] == []


def test_bad_inputs_have_distinct_exit_codes(tmp_path, corpus, cfg_factory) -> None:  # noqa: F811
    cfg = cfg_factory()
    assert InputFileError.exit_code != TooShortError.exit_code
    assert {InputFileError.exit_code, TooShortError.exit_code}.isdisjoint({0, 1, 2})
    garbage = tmp_path / "garbage.ogg"
    garbage.write_bytes(b"\x00not audio" * 100)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    no_frames = tmp_path / "noframes.wav"
    sf.write(str(no_frames), np.zeros((0, 1), dtype=np.int16), RATE)
    short = tmp_path / "short.wav"
    sf.write(str(short), np.zeros((2 * RATE, 1), dtype=np.int16), RATE)
    good = corpus.speech(0, "en-us", 8)
    for command in (["fingerprint"], ["identify"], ["match", str(good)]):
        assert run([*command, str(tmp_path / "missing.wav")], cfg) == InputFileError.exit_code
        assert run([*command, str(garbage)], cfg) == InputFileError.exit_code
        assert run([*command, str(empty)], cfg) == TooShortError.exit_code
        assert run([*command, str(no_frames)], cfg) == TooShortError.exit_code
        assert run([*command, str(short)], cfg) == TooShortError.exit_code


def test_real_command_line_exit_codes(tmp_path, corpus) -> None:  # noqa: F811
    """Through `python3 -m recorder`: the module is wired and errors become exit codes."""
    import subprocess
    import sys
    from pathlib import Path

    config = tmp_path / "recorder.toml"
    config.write_text(f'[device]\nid = "clitest"\n[storage]\ndata_dir = "{tmp_path / "data"}"\n')
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    repo = Path(__file__).resolve().parents[1]

    def recorder(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "recorder", "--config", str(config), *argv],
            cwd=repo, capture_output=True, text=True, timeout=120,
        )

    done = recorder("fingerprint", "--json", str(corpus.speech(0, "en-us", 8)))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["audio_id"]["algorithm"] == "chromaprint"
    missing = recorder("fingerprint", str(tmp_path / "missing.ogg"))
    assert missing.returncode == InputFileError.exit_code
    assert "no such file" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    assert recorder("identify", str(empty)).returncode == TooShortError.exit_code
