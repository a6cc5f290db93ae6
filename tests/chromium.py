"""Real headless Chromium for the browser tests (Debian's chromium and chromium-driver, through
Selenium): one set of flags, one phone-sized window, a new and empty profile each time.

    with open_browser(profile_dir, offline=True) as driver: ...

offline=True: the browser resolves no name but loopback (no internet at all, the normal state
of a village mesh), so any page that needs a CDN shows it.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.conftest import need

WINDOW = (412, 915)  # a common phone, CSS pixels
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--autoplay-policy=no-user-gesture-required", "--mute-audio",
                  f"--window-size={WINDOW[0]},{WINDOW[1]}")
OFFLINE_FLAG = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"


@contextlib.contextmanager
def open_browser(profile: Path, offline: bool = False) -> Iterator[Any]:
    """A Chromium WebDriver with its profile in `profile` (removed afterwards); fails in CI,
    skips elsewhere, when chromium or chromium-driver is missing."""
    chromium = need("chromium")
    driver_path = need("chromedriver", "chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS + ((OFFLINE_FLAG,) if offline else ()):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=DriverService(executable_path=driver_path),
                              options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
