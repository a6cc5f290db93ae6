"""Identification against the catalogue: re-encodes and excerpts find their source and position;
unrelated audio and the same text in another voice find nothing; duplicates; rebuild."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from recorder import sidecar as sidecar_mod
from recorder.audioid import chroma
from recorder.audioid.catalogue import Catalogue, index_keys
from recorder.audioid.compare import compare
from recorder.db import Database
from recorder.sidecar import SidecarError
from tests.corpus import Corpus, corpus, sidecar_for  # noqa: F401 - corpus is a fixture

SPEECH = [(0, "en-us"), (1, "en-gb-scotland"), (2, "en+f3"), (3, "en-gb-x-rp")]
SENTENCES = 8  # about 35 s each


def _sources(c: Corpus) -> dict[str, Path]:
    out = {f"speech{t}": c.speech(t, v, SENTENCES) for t, v in SPEECH}
    out["music1"] = c.music(1, 40.0)
    out["music2"] = c.music(2, 30.0)
    return out


def _reencodes(c: Corpus, src: dict[str, Path]) -> list[tuple[str, Path]]:
    out = []
    for name in ("speech0", "speech1", "speech2", "speech3"):
        out.append((name, c.variant(src[name], codec="vorbis", quality=1)))
        out.append((name, c.variant(src[name], codec="opus", quality=24)))
    out += [
        ("speech0", c.variant(src["speech0"], codec="vorbis", quality=6)),
        ("speech0", c.variant(src["speech0"], codec="opus", quality=64)),
        ("speech0", c.variant(src["speech0"], codec="opus", quality=32, gain_db=-12)),
        ("speech1", c.variant(src["speech1"], codec="vorbis", quality=2, snr_db=15)),
        ("music1", c.variant(src["music1"], codec="opus", quality=32)),
        ("music2", c.variant(src["music2"], codec="vorbis", quality=3, gain_db=6)),
    ]
    return out


def _excerpts(c: Corpus, src: dict[str, Path]) -> list[tuple[str, float, Path]]:
    out = []
    for name, path in src.items():
        for start, length, kw in (
            (4.37, 10.0, {"codec": "opus", "quality": 24, "snr_db": 20}),
            (15.9, 12.0, {"codec": "vorbis", "quality": 2, "gain_db": -6}),
        ):
            out.append((name, start, c.variant(path, start=start, length=length, **kw)))
    out.append(
        ("speech0", 21.21, c.variant(src["speech0"], start=21.21, length=10, codec="opus",
                                     quality=48, snr_db=10))
    )
    return out


def _unrelated(c: Corpus) -> list[Path]:
    return [
        c.speech(5, "en-us", SENTENCES),
        c.speech(6, "en+f3", SENTENCES),
        c.speech(7, "en-gb-scotland", 5),
        c.music(3, 30.0),
        c.noise(1, 20.0, "pink"),
        c.noise(2, 20.0, "white"),
        c.silence(8.0),
    ]


def _other_voices(c: Corpus) -> list[tuple[str, Path]]:
    return [
        ("speech0", c.speech(0, "en-gb-scotland", SENTENCES)),
        ("speech1", c.speech(1, "en-us", SENTENCES)),
        ("speech2", c.speech(2, "en-gb-x-rp", SENTENCES)),
        ("speech3", c.speech(3, "en+f3", SENTENCES)),
    ]


@pytest.fixture(scope="module")
def catalogued(corpus, tmp_path_factory):  # noqa: F811
    """A catalogue holding the six sources; returns (catalogue, {name: recording id}, sources)."""
    src = _sources(corpus)
    db = tmp_path_factory.mktemp("audioid-db") / "recorder.db"
    cat = Catalogue(Database(db))
    ids = {}
    for k, (name, path) in enumerate(sorted(src.items())):
        doc = sidecar_for(path, started=1_780_000_000.0 + k)
        assert cat.add(doc) is None
        ids[name] = doc["recording_id"]
    yield cat, ids, src
    cat.conn.close()


def _identify(cat: Catalogue, path: Path, limit: int = 5):
    return cat.identify(chroma.fingerprint_file(path).items, limit=limit)


def test_reencodes_are_identified_at_offset_zero(catalogued, corpus) -> None:  # noqa: F811
    cat, ids, src = catalogued
    for name, path in _reencodes(corpus, src):
        results = _identify(cat, path)
        assert results, f"{path.name} not identified"
        top = results[0]
        assert top.recording_id == ids[name], path.name
        assert abs(top.offset_seconds) <= 0.2, path.name
        assert top.similarity > 0.7
        assert [r.recording_id for r in results].count(ids[name]) == 1


def test_excerpts_are_identified_with_their_position(catalogued, corpus) -> None:  # noqa: F811
    cat, ids, src = catalogued
    for name, start, path in _excerpts(corpus, src):
        results = _identify(cat, path)
        assert results, f"{path.name} not identified"
        assert results[0].recording_id == ids[name], path.name
        assert abs(results[0].offset_seconds - start) <= 0.2, (path.name, results[0])
        assert results[0].device_id == "testdev01"
        assert results[0].path.startswith("recordings/")


def test_unrelated_audio_is_not_matched(catalogued, corpus) -> None:  # noqa: F811
    cat, _, src = catalogued
    for path in _unrelated(corpus):
        try:
            items = chroma.fingerprint_file(path).items
        except Exception as exc:  # pragma: no cover - a failure here is the test failing
            raise AssertionError(f"{path.name}: {exc}") from exc
        assert cat.identify(items) == [], path.name
        for ref in src.values():
            assert not compare(items, chroma.fingerprint_file(ref).items).is_match


def test_same_text_other_voice_is_not_matched(catalogued, corpus) -> None:  # noqa: F811
    cat, _, src = catalogued
    for name, path in _other_voices(corpus):
        items = chroma.fingerprint_file(path).items
        assert cat.identify(items) == [], path.name
        m = compare(items, chroma.fingerprint_file(src[name]).items)
        assert not m.is_match and m.ber > 0.2, (path.name, m)


def test_identify_limit_and_empty_query(catalogued) -> None:
    cat, _, src = catalogued
    items = chroma.fingerprint_file(src["speech0"]).items
    assert len(cat.identify(items, limit=1)) == 1
    assert cat.identify(items, limit=0) == []
    assert cat.identify([]) == []


# --- duplicates -----------------------------------------------------------------------------


def _fresh(tmp_path: Path) -> Catalogue:
    return Catalogue(Database(tmp_path / "recorder.db"), duplicate_coverage=0.8)


def test_a_reencode_is_a_duplicate_of_the_original(tmp_path, corpus) -> None:  # noqa: F811
    cat = _fresh(tmp_path)
    src = corpus.speech(0, "en-us", SENTENCES)
    original = sidecar_for(src, started=1_780_000_000.0)
    assert cat.add(original) is None
    copy = sidecar_for(corpus.variant(src, codec="opus", quality=24), device_id="peer02",
                       started=1_780_000_500.0)
    assert cat.add(copy, origin="peer") == original["recording_id"]
    assert cat.get(copy["recording_id"]).duplicate_of == original["recording_id"]
    assert cat.get(copy["recording_id"]).origin == "peer"
    # An excerpt covers all of its own length: a duplicate too, of the root original.
    part = sidecar_for(corpus.variant(src, codec="vorbis", quality=2, start=5, length=12),
                       started=1_780_001_000.0)
    assert cat.add(part) == original["recording_id"]
    # Something else is not.
    other = sidecar_for(corpus.speech(5, "en-us", SENTENCES), started=1_780_002_000.0)
    assert cat.add(other) is None
    # Nothing is deleted.
    assert cat.count() == 4


def test_duplicates_point_to_the_earliest_and_never_cycle(tmp_path, corpus) -> None:  # noqa: F811
    cat = _fresh(tmp_path)
    src = corpus.speech(1, "en-gb-scotland", SENTENCES)
    later = sidecar_for(src, started=1_780_000_900.0)
    earlier = sidecar_for(corpus.variant(src, codec="vorbis", quality=2), started=1_780_000_000.0)
    assert cat.add(later) is None
    # An older recording arriving late (a peer that was offline) is not a copy of a newer one.
    assert cat.add(earlier, origin="peer") is None
    # Re-adding the newer one (rebuild, update) now finds the older original.
    assert cat.add(later) == earlier["recording_id"]
    assert cat.get(earlier["recording_id"]).duplicate_of is None


def test_identical_bytes_are_duplicates_without_audio_id(tmp_path, corpus) -> None:  # noqa: F811
    cat = _fresh(tmp_path)
    src = corpus.speech(2, "en+f3", SENTENCES)
    a = sidecar_for(src, started=1_780_000_000.0)
    b = sidecar_for(src, started=1_780_000_100.0)
    del a["audio_id"], b["audio_id"]
    assert cat.add(a) is None
    assert cat.add(b) == a["recording_id"]


def test_update_reindexes_without_growing(tmp_path, corpus) -> None:  # noqa: F811
    cat = _fresh(tmp_path)
    src = corpus.speech(3, "en-gb-x-rp", SENTENCES)
    doc = sidecar_for(src)
    cat.add(doc)
    rows = cat.conn.execute("SELECT COUNT(*) FROM audioid_index").fetchone()[0]
    assert rows > 100
    doc["title"] = "renamed"
    assert cat.add(doc) is None
    assert cat.count() == 1
    assert cat.conn.execute("SELECT COUNT(*) FROM audioid_index").fetchone()[0] == rows
    assert cat.get(doc["recording_id"]).sidecar["title"] == "renamed"
    # A recording whose audio_id goes away leaves no index rows behind.
    del doc["audio_id"]
    cat.add(doc)
    assert cat.conn.execute("SELECT COUNT(*) FROM audioid_index").fetchone()[0] == 0
    assert cat.remove(doc["recording_id"]) and not cat.remove(doc["recording_id"])
    assert cat.get(doc["recording_id"]) is None


def test_deferred_postings_survive_a_crash_and_are_searched(tmp_path, corpus) -> None:  # noqa: F811
    """Publishing adds with `defer_index` and writes the postings after the files are
    visible; killed in between, the next catalogue writes them before it searches."""
    db = tmp_path / "recorder.db"
    cat = Catalogue(Database(db))
    src = corpus.speech(0, "en-us", SENTENCES)
    doc = sidecar_for(src)
    assert cat.add(doc, defer_index=True) is None
    assert cat.conn.execute("SELECT COUNT(*) FROM audioid_index").fetchone()[0] == 0
    cat.conn.close()  # the process dies before `index_pending`
    after = Catalogue(Database(db))
    found = after.identify(chroma.fingerprint_file(src).items)
    assert [r.recording_id for r in found] == [doc["recording_id"]]
    assert after.conn.execute("SELECT COUNT(*) FROM audioid_pending").fetchone()[0] == 0
    # A copy added later still finds its original (the duplicate search indexes first too).
    copy = sidecar_for(corpus.variant(src, codec="opus", quality=24), started=1_790_000_000.0)
    fresh = sidecar_for(corpus.speech(5, "en-us", SENTENCES), started=1_790_000_100.0)
    assert after.add(fresh, defer_index=True) is None
    assert after.add(copy, defer_index=True) == doc["recording_id"]
    assert after.index_pending() == 1  # `copy`: `fresh` was indexed by the add after it


def test_malformed_audio_id_is_refused(tmp_path, corpus) -> None:  # noqa: F811
    cat = _fresh(tmp_path)
    doc = sidecar_for(corpus.speech(0, "en-us", SENTENCES))
    for bad in ({"algorithm": "md5", "fingerprint": "x"}, {"algorithm": "chromaprint",
                "fingerprint": "!!!"}, "text"):
        doc["audio_id"] = bad
        with pytest.raises(SidecarError):
            cat.add(doc)
    assert cat.count() == 0


def test_index_keys_are_20_bits() -> None:
    items = np.random.default_rng(3).integers(0, 2**32, 1000, dtype=np.uint32)
    keys = index_keys(items)
    assert keys.min() >= 0 and keys.max() < 2**20
    assert np.unique(keys).size > 900


# --- rebuild --------------------------------------------------------------------------------


def _publish(sync_root: Path, doc: dict) -> Path:
    path = (sync_root / doc["device_id"] / doc["path"]).with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(sidecar_mod.dumps(doc))
    return path


def test_rebuild_from_sidecars(tmp_path, corpus) -> None:  # noqa: F811
    root = tmp_path / "sync"
    own = [
        sidecar_for(corpus.speech(t, v, SENTENCES), device_id="dev-a", started=1_780_000_000 + t)
        for t, v in SPEECH[:3]
    ]
    peer_copy = sidecar_for(corpus.variant(corpus.speech(0, "en-us", SENTENCES), codec="opus",
                                           quality=24), device_id="dev-b", started=1_780_009_000)
    good = [_publish(root, d) for d in [*own, peer_copy]]
    # What rebuild must skip or refuse:
    conflict = good[0].with_name(good[0].stem + ".sync-conflict-20260101-120000-ABCDEFG.json")
    shutil.copy(good[0], conflict)
    tmp_name = good[1].parent / ".syncthing.x.json.tmp"
    tmp_name.write_text("{")
    broken = good[1].with_name("20260101T000000Z_dev-a_aaaaaaaa.json")
    broken.write_text("{not json")
    liar = sidecar_for(corpus.speech(5, "en-us", SENTENCES), device_id="dev-c")
    liar_path = _publish(root, liar)
    moved = root / "dev-b" / liar_path.relative_to(root / "dev-c")
    moved.parent.mkdir(parents=True, exist_ok=True)
    liar_path.rename(moved)  # a sidecar naming dev-c in dev-b's folder
    link = good[2].with_name("20260101T000000Z_dev-a_bbbbbbbb.json")
    link.symlink_to(good[2])
    bad_fp = dict(own[0], recording_id=sidecar_mod.new_recording_id(1_780_000_050),
                  audio_id={"algorithm": "chromaprint", "fingerprint": "AQAA!!"})
    bad_fp["path"] = bad_fp["path"].replace(own[0]["recording_id"][-8:], "cccccccc")
    _publish(root, bad_fp)

    cat = _fresh(tmp_path)
    report = cat.rebuild(root, own_device="dev-a")
    assert report.added == 4
    assert report.duplicates == 1
    assert cat.count() == 4
    reasons = dict(report.invalid)
    assert len(report.invalid) == 4, report.invalid
    assert "not valid JSON" in reasons[str(broken)]
    assert "lies in 'dev-b'" in reasons[str(moved)]
    assert "symlink" in reasons[str(link)]
    assert "audio_id" in " ".join(reasons.values())
    assert report.skipped == [str(conflict)]
    assert str(tmp_name) not in reasons  # Syncthing's temporary names are not sidecars
    assert cat.get(peer_copy["recording_id"]).duplicate_of == own[0]["recording_id"]
    assert cat.get(peer_copy["recording_id"]).origin == "peer:dev-b"  # as the bridge names it
    assert cat.get(own[1]["recording_id"]).origin == "own"
    # The report as `recorder index rebuild --json` prints it: the same counts and reasons.
    doc = json.loads(json.dumps(report.as_dict()))
    assert (doc["added"], doc["duplicates"], doc["removed"]) == (4, 1, 0)
    assert {i["path"]: i["reason"] for i in doc["invalid"]} == reasons
    assert doc["skipped"] == [str(conflict)]

    # Identify works from the rebuilt index.
    excerpt = corpus.variant(corpus.speech(1, "en-gb-scotland", SENTENCES), start=6.5, length=10,
                             codec="opus", quality=32)
    top = _identify(cat, excerpt)[0]
    assert top.recording_id == own[1]["recording_id"] and abs(top.offset_seconds - 6.5) <= 0.2

    # Rebuilding again changes nothing; a sidecar that disappeared is forgotten.
    again = cat.rebuild(root, own_device="dev-a")
    assert (again.added, again.duplicates, again.removed) == (4, 1, 0)
    good[3].unlink()
    third = cat.rebuild(root, own_device="dev-a")
    assert third.removed == 1 and cat.count() == 3
    assert cat.get(peer_copy["recording_id"]) is None
