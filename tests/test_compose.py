"""The compose stack on real containers: services/compose.yaml built from a debootstrap base
and brought up on a private Docker Engine (tests/compose_harness.py), used only as a Pi owner
would: `docker compose up`, `exec`, `down`, and HTTP on the published ports.

Needs root, docker.io and debootstrap (setup.sh installs them); the first run builds every
image (about 10 minutes on 2 cores), later runs reuse the cache under
~/.cache/recorderpi-test/docker. Outside CI the tests skip when something is missing, saying
what; with CI=true they fail.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request

import pytest

from tests import compose_harness as ch
from tests.chromium import open_browser
from tests.clips import speech, write_wav
from tests.conftest import wait_until


def http(url: str, token: str | None = None, timeout: float = 30) -> tuple[int, bytes]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Token {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def device_template(source: str) -> str:
    """The shipped template, with audio from a file (no sound card here)."""
    text = (ch.SERVICES / "recorder.compose.toml").read_text()
    text, n = re.subn(r'(?m)^source = "USB"$', f'source = "{source}"', text)
    assert n == 1
    # Annotations made in papad's pages are exported every 10 s, not every 5 minutes.
    return text + "\n[mesh]\nexport_interval = 10\n"


LAN = "recorderpi-test-lan"


@pytest.fixture(scope="module")
def engine():
    with ch.engine() as eng:
        ch.ensure_base(eng)
        ch.build(eng, {"PAPAD_SOURCE": str(ch.papad_source())})
        eng.run("network", "rm", LAN, check=False)
        eng.run("network", "create", "--internal", LAN)
        try:
            yield eng
        finally:
            eng.run("network", "rm", LAN, check=False)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    data = speech(root / "speech.wav", repeat=3)
    write_wav(root / "speech.wav", data)
    root.chmod(0o755)
    (root / "speech.wav").chmod(0o644)
    return root


@pytest.fixture(scope="module")
def device(engine, clips, tmp_path_factory):
    yield from _device(engine, clips, tmp_path_factory, "rpa", "compose-a", 1)


def _device(engine, clips, tmp_path_factory, project: str, device_id: str, index: int):
    stack = ch.Stack(engine, project, tmp_path_factory.mktemp(project), device_id, index, LAN)
    stack.write_config(device_template("file:/clips/speech.wav"), clips)
    try:
        stack.up()
        stack.wait_healthy(timeout=900)
        yield stack
    finally:
        stack.down(volumes=True)


@pytest.fixture(scope="module")
def second(engine, clips, tmp_path_factory):
    """A second device of the same mesh LAN, its own compose project."""
    yield from _device(engine, clips, tmp_path_factory, "rpb", "compose-b", 2)


@pytest.fixture(scope="module")
def paired(device, second):
    """The two devices paired with `mesh invite` / `mesh join`, through compose exec only."""
    out = device.exec("recorder", "recorder", "mesh", "invite", "--no-qr", "--json",
                      "--address", device.syncthing_address).stdout
    code = json.loads(out)["code"]
    res = second.exec("recorder", "recorder", "mesh", "join", code, "--timeout", "300",
                      "--json", check=False, timeout=600)
    assert res.returncode == 0, (res.stdout, res.stderr, device.logs("recorder", "syncthing"),
                                 second.logs("recorder", "syncthing"))
    return device, second


@pytest.fixture(autouse=True)
def _stacks_healthy(request):
    """Tests run in any order, and one that killed or restarted a container leaves it coming
    back: every test that uses a stack starts once that stack is healthy again."""
    for name in ("device", "second"):
        if name in request.fixturenames:
            request.getfixturevalue(name).wait_healthy(timeout=600)


def test_one_device_comes_up_healthy_with_every_secret_made(device):
    states = device.states()
    assert states["init"][0] == "exited"
    for name in ch.LONG_RUNNING:
        assert states[name] == ("running", "healthy"), states
    # init made each secret once, readable by the services' uid only, and the device id.
    listing = device.exec("recorder", "stat", "-c", "%n %a %u", *(
        f"/run/secrets/{n}" for n in ("syncthing-api-key", "icecast-source-password",
                                      "papad-token", "papad-django-secret",
                                      "papad-admin-password", "web-password"))).stdout
    for line in listing.splitlines():
        _, mode, uid = line.split()
        assert (mode, uid) == ("640", "10001"), line
    assert device.secret("device-id") == "compose-a"
    assert re.fullmatch(r"[0-9a-f]{40}", device.secret("papad-token"))
    config = device.exec("recorder", "cat", "/etc/recorder/recorder.toml").stdout
    assert 'id = "compose-a"' in config and "set-me" not in config


def test_papad_pages_static_files_and_player_come_from_the_pi(device):
    base = device.papad_url
    status, body = http(base + "/ui/")
    assert status == 200 and b"<html" in body.lower()
    # Every script and style the pages name is on this Pi: none from another host.
    for src in re.findall(rb'(?:src|href)="([^"]+\.(?:js|css))"', body):
        assert src.startswith(b"/static/"), src
        assert http(base + src.decode())[0] == 200, src
    status, js = http(base + "/static/vendor/video.js/8.3.0/video.min.js")
    assert status == 200 and b"videojs" in js
    assert http(base + "/static/vendor/video.js/8.3.0/video-js.min.css")[0] == 200
    # The media page's template now names the local copy (the CDN's address is gone).
    page = device.exec("papad", "grep", "-h", "video", "papadapi/pages/templates/"
                       "mediahome.html").stdout
    assert "/static/vendor/video.js/8.3.0/video.min.js" in page and "zencdn" not in page
    # papad's API answers through nginx with the recorder's token.
    status, media = http(base + "/api/v1/archive/?searchFrom=my_collections&group=1",
                         token=device.secret("papad-token"))
    assert status == 200 and "count" in json.loads(media), media[:300]


def test_the_device_web_page_and_the_station_answer(device):
    status, body = http(f"http://127.0.0.1:{device.ports['web']}/")
    assert status == 200 and b"<html" in body.lower()
    status, stats = http(f"http://127.0.0.1:{device.ports['icecast']}/status-json.xsl")
    assert status == 200
    sources = json.loads(stats)["icestats"].get("source", [])
    sources = sources if isinstance(sources, list) else [sources]
    assert any(s.get("listenurl", "").endswith("/cowradio.ogg") for s in sources), stats[:500]
    # A listener hears the station (nobody live: the playlist or its fallback).
    url = f"http://127.0.0.1:{device.ports['icecast']}/cowradio.ogg"
    with urllib.request.urlopen(url, timeout=30) as stream:
        head = stream.read(32768)
    assert head[:4] == b"OggS" and len(head) == 32768
    status, _ = http(f"http://127.0.0.1:{device.ports['http']}/_health")
    assert status == 200


def papad_media(stack: ch.Stack) -> list[dict]:
    """The media of the Community group in this stack's papad (empty while it answers not)."""
    status, body = http(f"{stack.papad_url}/api/v1/archive/?searchFrom=my_collections&group=1",
                        token=stack.secret("papad-token"))
    if status != 200:
        return []
    return json.loads(body)["results"]


def annotations(stack: ch.Stack, uuid: str) -> list[dict]:
    status, body = http(f"{stack.papad_url}/api/v1/annotate/search/{uuid}/",
                        token=stack.secret("papad-token"))
    assert status == 200, body[:300]
    return json.loads(body)


def recording_id(item: dict) -> str:
    """The recorder's id of a papad media item (its description names it): names are per
    minute, so two recordings of one minute share a name, never an id."""
    match = re.search(r"Recording id: (\S+)", item.get("description") or "")
    return match.group(1) if match else ""


def same_recording(stack, rid: str) -> list[dict]:
    """The media items of `stack`'s papad that are recording `rid`."""
    return [i for i in papad_media(stack) if recording_id(i) == rid]


@pytest.fixture(scope="module")
def recorded(device) -> dict:
    """One recording with a bookmark, made on the device; papad's media object (tests run in
    any order: other tests' recordings may be in papad already)."""
    before = {i["uuid"] for i in papad_media(device)}
    device.exec("recorder", "recorder", "ctl", "start")
    wait_until(lambda: "recording" in device.exec(
        "recorder", "recorder", "ctl", "status").stdout.lower(), 60, 1, "recording")
    time.sleep(3)
    device.exec("recorder", "recorder", "ctl", "mark")
    time.sleep(2)
    device.exec("recorder", "recorder", "ctl", "stop")
    items = wait_until(lambda: [i for i in papad_media(device) if i["uuid"] not in before],
                       300, 3, "the recording in papad",
                       detail=lambda: device.logs("recorder", "papad"))
    return items[0]


def test_a_recording_reaches_papad_once_with_its_bookmark(device, recorded):
    time.sleep(5)  # a second registration, if one were made, would show by now
    items = same_recording(device, recording_id(recorded))
    assert recording_id(recorded) and [i["uuid"] for i in items] == [recorded["uuid"]], items
    assert recorded["group"]["name"] == "Community"
    # The upload is served by nginx from the data partition, at the address the browser used.
    assert recorded["upload"].startswith(device.papad_url + "/media/")
    status, audio = http(recorded["upload"])
    assert status == 200 and audio[:4] == b"OggS"
    # The bookmark became an annotation on the recording.
    notes = annotations(device, recorded["uuid"])
    assert any(t["name"] == "bookmark" for n in notes for t in n["tags"]), notes
    assert all(re.fullmatch(r"t=[0-9.]+,[0-9.]+", n["media_target"]) for n in notes)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium that can resolve no name but loopback: no internet at all."""
    with open_browser(tmp_path_factory.mktemp("chromium-profile"), offline=True) as driver:
        yield driver


def test_papad_pages_in_chromium_play_the_recording_and_take_a_tag(paired, recorded, browser,
                                                                    tmp_path):
    device, other = paired
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    base = device.papad_url
    browser.get(base + "/ui/login/")
    browser.find_element(By.ID, "username").send_keys("admin")
    browser.find_element(By.ID, "password").send_keys(device.secret("papad-admin-password"))
    browser.find_element(By.XPATH, "//button[normalize-space()='Login']").click()
    wait_until(lambda: browser.execute_script("return localStorage.getItem('authToken')"),
               60, 0.5, "logged in to papad")
    browser.get(f"{base}/ui/collection/1/media/{recorded['uuid']}/")
    body = lambda: browser.find_element(By.TAG_NAME, "body").text  # noqa: E731
    wait_until(lambda: "bookmark" in body() and recorded["name"] in body(), 60, 0.5,
               "the recording and its bookmark shown", detail=body)
    assert re.search(r"t=[0-9.]+,[0-9.]+", body())
    # Press play: video.js (served by the Pi) plays the upload (served by the Pi).
    wait_until(lambda: browser.execute_script(
        "return !!(window.videojs && videojs.getPlayer('my-video') && "
        "videojs.getPlayer('my-video').currentSrc())"), 60, 0.5, "player ready")
    browser.find_element(By.CSS_SELECTOR, ".vjs-big-play-button").click()
    wait_until(lambda: browser.execute_script(
        "const p = videojs.getPlayer('my-video'); return !p.paused() && p.currentTime() > 0.5"),
        60, 0.2, "the recording playing",
        detail=lambda: str(browser.execute_script(
            "const p = videojs.getPlayer('my-video'); return [p.error(), p.currentSrc()]")))
    # An annotation with a tag, made in the page.
    browser.find_element(By.CSS_SELECTOR, "textarea[x-model='annotationText']").send_keys(
        "the lemon goes in last")
    browser.find_element(By.CSS_SELECTOR, "input[x-model='newTag']").send_keys(
        "from-browser", Keys.ENTER)
    browser.find_element(By.XPATH, "//button[normalize-space()='Annotate']").click()
    wait_until(lambda: any(t["name"] == "from-browser" for n in annotations(
        device, recorded["uuid"]) for t in n["tags"]), 60, 1, "the tag in papad")
    # ... and it reaches the other device's papad, on its copy of the recording.
    def tag_on_other() -> bool:
        copies = same_recording(other, recording_id(recorded))
        return bool(copies) and any(t["name"] == "from-browser" for n in annotations(
            other, copies[0]["uuid"]) for t in n["tags"])

    wait_until(tag_on_other, 600, 3, "the tag in the other device's papad",
               detail=lambda: other.logs("recorder"))
    # Nothing the pages loaded came from anywhere but this Pi.
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(u.startswith(base + "/") for u in loaded), loaded
    assert browser.save_screenshot(str(tmp_path / "papad-media.png"))


def test_the_recording_reaches_the_other_devices_papad_exactly_once(paired, recorded):
    device, other = paired

    def copies() -> list[dict]:
        return same_recording(other, recording_id(recorded))

    found = wait_until(copies, 600, 3, "the recording in the other device's papad",
                       detail=lambda: other.logs("recorder", "syncthing"))
    time.sleep(10)  # a second import, if one were made, would show by now
    assert len(copies()) == 1 and len(found) == 1
    assert [i["uuid"] for i in papad_media(device)].count(recorded["uuid"]) == 1
    # The copy plays from the other device and carries the bookmark.
    status, audio = http(found[0]["upload"])
    assert status == 200 and audio[:4] == b"OggS"
    notes = annotations(other, found[0]["uuid"])
    assert any(t["name"] == "bookmark" for n in notes for t in n["tags"]), notes


def test_a_killed_recorder_loses_at_most_two_seconds(device):
    before = {i["uuid"] for i in papad_media(device)}
    device.exec("recorder", "recorder", "ctl", "start")
    started = time.monotonic()  # after the start took effect: the recording is at least this old
    time.sleep(8)
    killed = time.monotonic()
    device.compose("kill", "recorder")
    recorded_at_least = killed - started
    device.up("recorder")
    new = wait_until(lambda: [i for i in papad_media(device) if i["uuid"] not in before],
                     300, 3, "the recovered recording in papad",
                     detail=lambda: device.logs("recorder"))
    assert len(new) == 1, new
    match = re.search(r"Duration: [0-9:.]+ \(([0-9.]+) s\)", new[0]["description"])
    assert match, new[0]["description"]
    # The recording holds the 3 s pre-roll ([audio] preroll) and what was recorded until the kill.
    assert float(match.group(1)) >= 3.0 + recorded_at_least - 2.0, (match.group(1),
                                                                  recorded_at_least)


def test_down_then_up_keeps_secrets_and_recordings(device):
    before = {n: device.secret(n) for n in ("papad-token", "syncthing-api-key", "device-id")}
    recordings = sorted(p.name for p in device.data.rglob("*.ogg"))
    device.down()
    device.up()
    device.wait_healthy(timeout=900)
    assert {n: device.secret(n) for n in before} == before
    assert sorted(p.name for p in device.data.rglob("*.ogg")) == recordings


def test_init_refuses_without_a_device_id(engine, tmp_path):
    # No MAC visible (no network) and no RECORDER_DEVICE_ID: one line saying how to set it.
    res = engine.run("run", "--rm", "--network", "none", "--user", "0:0", "--entrypoint",
                     "/bin/bash", "recorderpi:0.1.0", "/usr/local/lib/recorderpi/init.sh",
                     check=False, timeout=120)
    assert res.returncode == 2, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("init: no device id") and "RECORDER_DEVICE_ID" in last
