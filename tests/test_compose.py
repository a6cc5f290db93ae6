"""The compose stack on real containers: services/compose.yaml built from a debootstrap base
and brought up on a private Docker Engine (tests/compose_harness.py), used only as a Pi owner
would: `docker compose up`, `exec`, `down`, and HTTP on the published ports. The first stack
is a device (audio from a file); the second is the community hub (services/hub.yaml: no audio,
no Cow Radio), paired with it, hosting the papad pages the browser test uses. yggdrasil runs
in each stack's own network (its tun inside its container's namespace, never the host's).

Needs root, docker.io and debootstrap (setup.sh installs them); the first run builds every
image (about 10 minutes on 2 cores), later runs reuse the cache under
~/.cache/recorderpi-test/docker. Outside CI the tests skip when something is missing, saying
what; with CI=true they fail.
"""

from __future__ import annotations

import json
import re
import subprocess
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


# yggdrasil in the test: no LAN multicast (deterministic), the device listens on the test LAN
# and the second stack dials it there (a static peer, as between two sites).
YGG_LISTEN = f'peers = []\nlisten = ["tcp://0.0.0.0:{ch.YGGDRASIL_PORT}"]\nmulticast = ""'
YGG_PEER = f'peers = ["tcp://rpa-yggdrasil-1:{ch.YGGDRASIL_PORT}"]\nmulticast = ""'


def device_template(source: str | None, yggdrasil: str) -> str:
    """The shipped template, with audio from a file (no sound card here; None: the template's
    own source, which a hub's init replaces) and the test's yggdrasil peering."""
    text = (ch.SERVICES / "recorder.compose.toml").read_text()
    if source is not None:
        text, n = re.subn(r'(?m)^source = "USB"$', f'source = "{source}"', text)
        assert n == 1
    text, n = re.subn(r"(?m)^peers = \[\]$", yggdrasil, text)
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
    yield from _device(engine, clips, tmp_path_factory, "rpa", "compose-a", 1,
                       device_template("file:/clips/speech.wav", YGG_LISTEN))


def _device(engine, clips, tmp_path_factory, project: str, device_id: str, index: int,
            template: str, hub: bool = False):
    stack = ch.Stack(engine, project, tmp_path_factory.mktemp(project), device_id, index, LAN,
                     hub=hub)
    stack.write_config(template, clips)
    try:
        stack.up()
        stack.wait_healthy(timeout=900)
        yield stack
    finally:
        stack.down(volumes=True)


@pytest.fixture(scope="module")
def second(engine, clips, tmp_path_factory):
    """The second member of the same mesh LAN, its own compose project: the community hub
    (compose.yaml + hub.yaml: no audio, no Cow Radio, papad for the community)."""
    yield from _device(engine, clips, tmp_path_factory, "rpb", "compose-hub", 2,
                       device_template(None, YGG_PEER), hub=True)


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
    for name in device.long_running:
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
    """In the second stack's papad pages (the hub's: the community's papad), the device's
    recording with its bookmark plays, and a tag added there reaches the device's papad."""
    device, other = paired
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    copy = wait_until(lambda: same_recording(other, recording_id(recorded)), 600, 3,
                      "the recording in the other stack's papad",
                      detail=lambda: other.logs("recorder", "syncthing"))[0]
    base = other.papad_url
    browser.get(base + "/ui/login/")
    browser.find_element(By.ID, "username").send_keys("admin")
    browser.find_element(By.ID, "password").send_keys(other.secret("papad-admin-password"))
    browser.find_element(By.XPATH, "//button[normalize-space()='Login']").click()
    wait_until(lambda: browser.execute_script("return localStorage.getItem('authToken')"),
               60, 0.5, "logged in to papad")
    browser.get(f"{base}/ui/collection/1/media/{copy['uuid']}/")
    body = lambda: browser.find_element(By.TAG_NAME, "body").text  # noqa: E731
    wait_until(lambda: "bookmark" in body() and copy["name"] in body(), 120, 0.5,
               "the recording and its bookmark shown", detail=body)
    assert re.search(r"t=[0-9.]+,[0-9.]+", body())
    # Press play: video.js (served by this stack) plays the upload (served by this stack).
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
        other, copy["uuid"]) for t in n["tags"]), 60, 1, "the tag in papad")
    # ... and it reaches the device's papad, on the recording it made.
    wait_until(lambda: any(t["name"] == "from-browser" for n in annotations(
        device, recorded["uuid"]) for t in n["tags"]), 600, 3, "the tag in the device's papad",
        detail=lambda: device.logs("recorder") + other.logs("recorder"))
    # Nothing the pages loaded came from anywhere but this stack.
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


def yggctl(stack: ch.Stack, *request: str) -> dict:
    out = stack.exec("yggdrasil", "yggdrasilctl", "-json", "-endpoint",
                     "unix:///run/yggdrasil/yggdrasil.sock", *request).stdout
    return json.loads(out)


def test_yggdrasil_nodes_peer_and_carry_tcp_over_the_overlay(device, second):
    """The two stacks' yggdrasil nodes (each in its own container's network namespace, never
    the host's) peer over the test LAN, and a TCP connection between their 200::/7 addresses
    crosses the overlay. (Syncthing itself still dials over the LAN here: its container is
    not in yggdrasil's namespace, as it is on a Pi where yggdrasil runs on the host network.)"""
    a, b = yggctl(device, "getSelf"), yggctl(second, "getSelf")
    assert a["address"].startswith("2") and b["address"].startswith("2"), (a, b)

    def peered() -> bool:
        return (any(p["key"] == b["key"] for p in yggctl(device, "getPeers")["peers"])
                and any(p["key"] == a["key"] for p in yggctl(second, "getPeers")["peers"]))

    wait_until(peered, 120, 1, "the two yggdrasil nodes peered",
               detail=lambda: device.logs("yggdrasil") + second.logs("yggdrasil"))
    # Each tun interface with its 200::/7 address is in its container, not on the host.
    for stack, node in ((device, a), (second, b)):
        addrs = stack.exec("yggdrasil", "ip", "-6", "-o", "addr", "show", "dev", "ygg0").stdout
        assert node["address"] in addrs, addrs
    host = subprocess.run(["ip", "-6", "-o", "addr"], capture_output=True, text=True).stdout
    assert a["address"] not in host and b["address"] not in host
    # TCP from the device to the hub's overlay address: an echo, reversed.
    port = 7777
    second.compose("exec", "-d", "-T", "yggdrasil", "python3", "-c", (
        "import socket\n"
        "s = socket.socket(socket.AF_INET6)\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('{b['address']}', {port})); s.listen(); s.settimeout(300)\n"
        "c, _ = s.accept(); c.sendall(c.recv(100)[::-1]); c.close()\n"))
    res = device.exec("yggdrasil", "python3", "-c", (
        "import socket, time\n"
        "for _ in range(60):\n"
        "    try:\n"
        f"        c = socket.create_connection(('{b['address']}', {port}), timeout=10)\n"
        "        break\n"
        "    except OSError:\n"
        "        time.sleep(1)\n"
        "c.sendall(b'over yggdrasil'); print(c.recv(100).decode(), c.getsockname()[0])\n"),
        timeout=180)
    reply, source = res.stdout.strip().rsplit(" ", 1)
    assert reply == "lisardggy revo", res.stdout
    assert source == a["address"], res.stdout  # from the device's own overlay address


def carry(engine: ch.Engine, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ch.SERVICES / "docker/carry.sh"), *args], env=engine.env,
                          capture_output=True, text=True, timeout=600)


def test_carry_saves_images_with_a_sha256_loads_them_back_and_refuses_a_corrupt_copy(
        engine, tmp_path):
    # The base image (the smallest) under a name of its own: the stacks keep theirs.
    engine.run("tag", ch.BASE_IMAGE, "carry-test:1")
    image_id = engine.run("image", "inspect", "-f", "{{.Id}}", "carry-test:1").stdout.strip()
    archive = tmp_path / "images.tar"
    res = carry(engine, "save", str(archive), "carry-test:1")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.tar", "images.tar.sha256"]
    check = subprocess.run(["sha256sum", "-c", "images.tar.sha256"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # A copy with one byte changed (and the true sha256 beside it) is refused, nothing loaded.
    engine.run("rmi", "carry-test:1")
    bad = tmp_path / "bad" / "images.tar"
    bad.parent.mkdir()
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    bad.write_bytes(bytes(data))
    (bad.parent / "images.tar.sha256").write_text((tmp_path / "images.tar.sha256").read_text())
    res = carry(engine, "load", str(bad))
    assert res.returncode == 1 and res.stdout == "", res.stdout
    assert res.stderr.count("\n") == 1 and "sha256 differs" in res.stderr, res.stderr
    assert engine.run("image", "inspect", "carry-test:1", check=False).returncode != 0
    # No sha256 beside it: refused too.
    (bad.parent / "images.tar.sha256").unlink()
    res = carry(engine, "load", str(bad))
    assert res.returncode == 1 and "images.tar.sha256 missing" in res.stderr, res.stderr
    # The whole copy loads: the same image under the same name.
    res = carry(engine, "load", str(archive))
    assert res.returncode == 0 and "carry-test:1" in res.stdout, res.stderr
    assert engine.run("image", "inspect", "-f", "{{.Id}}",
                      "carry-test:1").stdout.strip() == image_id
    engine.run("rmi", "carry-test:1")


def test_the_hub_records_nothing_runs_no_radio_and_opens_no_device(second):
    """The second stack is the community hub (compose.yaml + hub.yaml on a machine with no
    sound card or GPIO): healthy, in the recorder's no-audio mode, without Cow Radio."""
    hub = second
    states = hub.states()
    assert "icecast" not in states and "station" not in states, states
    assert states["recorder"] == ("running", "healthy"), states
    # init wrote the no-audio mode into the hub's config, the station off.
    config = hub.exec("recorder", "cat", "/etc/recorder/recorder.toml").stdout
    assert re.search(r'(?m)^source = "none"$', config), config
    assert re.search(r"(?m)^station = false$", config), config
    status = json.loads(hub.exec("recorder", "recorder", "ctl", "status", "--json").stdout)
    assert status["state"] == "hub" and status["audio"] is None, status
    assert "hub: records nothing" in hub.exec("recorder", "recorder", "ctl", "status").stdout
    # Asked to record, it refuses (exit 3), and no recording appears.
    res = hub.exec("recorder", "recorder", "ctl", "start", check=False)
    assert res.returncode == 3, (res.stdout, res.stderr)
    # No sound card, no GPIO chip in its container.
    res = hub.exec("recorder", "sh", "-c", "ls /dev/snd /dev/gpiochip0", check=False)
    assert res.returncode != 0, res.stdout
    # Nothing of its own in its published folder (the device's recordings arrive in the
    # device's folder beside it).
    assert not list((hub.data / "sync" / hub.device_id).rglob("*.ogg"))
