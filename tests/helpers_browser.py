"""Headless Debian Chromium for the report tests (skips when it is not installed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def start_chromium(profile: Path, window: str = "1280,900", browser_logs: bool = False):
    """A WebDriver for headless Chromium with a fresh profile; ``pytest.skip`` if missing."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()) or shutil.which(str(CHROMEDRIVER)) is None:
        pytest.skip(
            f"{CHROMIUM} or {CHROMEDRIVER} not installed (run scripts/ensure_chromium.sh as root)"
        )
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={window}"):
        options.add_argument(arg)
    if browser_logs:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    browser.set_page_load_timeout(30)
    browser.set_script_timeout(10)
    return browser
