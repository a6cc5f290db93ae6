"""The web page in a real headless Chromium (Debian's chromium and chromium-driver, through
Selenium), against the real `recorder run` of tests/web_site.py, on a phone-sized window.

Each test writes a screenshot of its page under its own tmp dir.
"""

from __future__ import annotations

import time

import pytest

from tests.chromium import open_browser
from tests.conftest import wait_until


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with open_browser(tmp_path_factory.mktemp("chromium-profile")) as driver:
        yield driver


def text(driver, element_id: str) -> str:
    return driver.execute_script(
        "const e = document.getElementById(arguments[0]); return e ? e.textContent : null;",
        element_id) or ""


def shot(driver, tmp_path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 1000


def open_page(driver, site, path: str) -> None:
    driver.delete_all_cookies()
    driver.get(site.url + path)
    wait_until(lambda: driver.execute_script("return document.readyState") == "complete",
               30, 0.1, f"{path} loaded")


def test_now_page_follows_ctl_start_and_the_meter_moves(web_site, browser, tmp_path):
    open_page(browser, web_site, "/")
    wait_until(lambda: text(browser, "state").startswith("Armed"), 30, 0.1, "armed shown")
    assert "synchronised" in text(browser, "clock") and "hours" in text(browser, "hours")
    assert browser.execute_script("return document.getElementById('led').dataset.led") == "idle"
    before = len(web_site.published())
    web_site.ctl("start")
    try:
        wait_until(lambda: text(browser, "state") == "Recording", 30, 0.1, "recording shown")
        levels: set[str] = set()
        widths: set[float] = set()

        def meter_moved() -> bool:
            levels.add(browser.execute_script(
                "return document.getElementById('meter').dataset.level"))
            widths.add(browser.execute_script(
                "return parseFloat(document.getElementById('meter-fill').style.width) || 0"))
            return len(levels - {""}) >= 5 and max(widths) > 0  # speech has pauses too

        wait_until(meter_moved, 30, 0.05, "the level meter moving")
        assert all(0 <= w <= 100 for w in widths)
        wait_until(lambda: text(browser, "elapsed") not in ("", "0:00"), 30, 0.1,
                   "elapsed time counting")
        assert browser.execute_script(
            "return document.getElementById('led').dataset.led") == "recording"
        assert text(browser, "toggle") == "Stop"
        shot(browser, tmp_path, "now-recording")
    finally:
        web_site.ctl("stop")
    wait_until(lambda: text(browser, "state").startswith("Armed"), 30, 0.1, "armed again")
    web_site.wait_idle_and_published(before + 1)


WAVEFORM_PIXELS = """
const canvas = document.querySelector(`article[data-id="${arguments[0]}"] canvas`);
if (!canvas || canvas.dataset.drawn !== "1") return null;
const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
let ink = 0, mark = 0;
for (let i = 0; i < data.length; i += 4) {
  if (data[i + 3] === 0) continue;
  ink++;
  if (data[i] > 200 && data[i + 1] > 100 && data[i + 1] < 150 && data[i + 2] < 60) mark++;
}
return {ink, mark, width: canvas.width, height: canvas.height};
"""

PLAY = """
const done = arguments[arguments.length - 1];
const audio = document.querySelector(`article[data-id="${arguments[0]}"] audio`);
audio.play().then(() => done("playing")).catch((e) => done(String(e)));
"""


def test_a_recording_plays_and_its_waveform_is_drawn(web_site, browser, tmp_path):
    open_page(browser, web_site, "/recordings")
    marked = web_site.recordings["marked"]["recording_id"]
    peer = web_site.recordings["chutney"]["recording_id"]
    wait_until(lambda: browser.execute_script(
        "return document.querySelectorAll('article.recording').length") >= 4, 30, 0.1,
        "the recordings listed")
    assert "Chutney from the hills" in text(browser, "list")
    assert "papad: parked" in text(browser, "list") or "papad: registered" in text(browser, "list")
    pixels = {}
    for rid in (marked, peer):  # own (peaks from the recording) and a peer's (decoded once)
        browser.execute_script(
            "document.querySelector(`article[data-id=\"${arguments[0]}\"]`).scrollIntoView()",
            rid)
        pixels[rid] = wait_until(lambda rid=rid: browser.execute_script(WAVEFORM_PIXELS, rid),
                                 60, 0.1, f"waveform of {rid} drawn")
        assert pixels[rid]["ink"] > 0.1 * pixels[rid]["width"] * pixels[rid]["height"] / 2
    assert pixels[marked]["mark"] > 0  # the bookmark is drawn on it
    assert pixels[peer]["mark"] == 0  # no bookmarks there
    browser.execute_script(
        "document.querySelector(`article[data-id=\"${arguments[0]}\"]`).scrollIntoView()", marked)
    assert browser.execute_async_script(PLAY, marked) == "playing"
    wait_until(lambda: browser.execute_script(
        "return document.querySelector(`article[data-id=\"${arguments[0]}\"] audio`)"
        ".currentTime", marked) > 0.5, 30, 0.1, "playback advancing")
    shot(browser, tmp_path, "recordings")
    browser.execute_script(
        "document.querySelector(`article[data-id=\"${arguments[0]}\"] audio`).pause()", marked)
    # Search narrows the list (server-side) and keeps the query in the address.
    browser.execute_script("document.getElementById('q').value = 'harvest';"
                           "document.getElementById('search').requestSubmit();")
    wait_until(lambda: browser.execute_script(
        "return document.querySelectorAll('article.recording').length") == 1, 30, 0.1,
        "search results")
    assert "Harvest song" in text(browser, "list") and "q=harvest" in browser.current_url


def test_controls_need_the_password_and_refuse_a_wrong_one(web_site, browser, tmp_path):
    open_page(browser, web_site, "/")
    wait_until(lambda: text(browser, "state").startswith("Armed"), 30, 0.1, "armed shown")
    before = len(web_site.published())
    browser.find_element("id", "toggle").click()
    wait_until(lambda: browser.execute_script("return document.getElementById('login').open"),
               30, 0.1, "the password dialog")
    browser.find_element("id", "password").send_keys("not-the-password")
    browser.find_element("id", "login-submit").click()
    wait_until(lambda: text(browser, "login-error") == "Wrong password.", 30, 0.1,
               "the wrong password refused")
    shot(browser, tmp_path, "login-refused")
    time.sleep(0.5)  # a refused password must not have started anything; the page says so
    assert web_site.status()["state"] == "idle" and text(browser, "state").startswith("Armed")
    field = browser.find_element("id", "password")
    field.clear()
    field.send_keys(web_site.password)
    browser.find_element("id", "login-submit").click()
    # The control that asked for the password goes through once logged in.
    wait_until(lambda: text(browser, "state") == "Recording", 30, 0.1, "recording started")
    assert text(browser, "who") == "Log out"
    browser.find_element("id", "mark").click()
    wait_until(lambda: web_site.status()["recording"] and
               web_site.status()["recording"]["bookmarks"] == 1, 30, 0.1, "bookmark dropped")
    browser.find_element("id", "toggle").click()  # Stop: logged in, no dialog
    wait_until(lambda: text(browser, "state").startswith("Armed"), 30, 0.1, "stopped")
    web_site.wait_idle_and_published(before + 1)
    newest = web_site.published()[-1]
    assert newest["trigger"] == "socket" and len(newest["bookmarks"]) == 1


def test_mesh_page_shows_peers_yggdrasil_and_quarantine(web_site, browser, tmp_path):
    def shown() -> str | None:
        # Reloaded until the peer has caught up with a recording another test just made.
        open_page(browser, web_site, "/mesh")
        wait_until(lambda: web_site.ygg_address in text(browser, "ygg"), 30, 0.1,
                   "yggdrasil shown")
        peers = text(browser, "peers")
        return peers if "has 100% of our recordings" in peers else None

    peers = wait_until(shown, 60, 0.5, "the peer with all of our recordings")
    assert "connected" in peers
    assert "1 imported" in peers and "2 quarantined" in peers
    quarantine = text(browser, "quarantine")
    assert "badbadba.json" in quarantine and "missing" in quarantine
    shot(browser, tmp_path, "mesh")
