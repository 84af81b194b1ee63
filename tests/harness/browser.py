"""Debian's headless Chromium through chromedriver and selenium, for the dashboard's browser
tests (tests/unit/test_dashboard_browser.py against a Gateway on loopback, tests/demo/ against
`make demo`'s). It fails, not skips, without /usr/bin/chromium: install it with
`apt-get install -y chromium chromium-driver` (the CI's .ci/run does)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@contextmanager
def chromium(profile: Path) -> Iterator[Any]:
    """A headless Chromium (a selenium WebDriver) with its profile in `profile`, removed after."""
    for program in (CHROMIUM, CHROMEDRIVER):
        if not os.access(program, os.X_OK):
            pytest.fail(
                f"{program} is missing: install Debian's Chromium with "
                "'apt-get install -y chromium chromium-driver' (the CI's .ci/run does)."
            )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace for the sandbox
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(driver: Any, path: Path) -> None:
    """Save what the page shows now to `path` (a PNG of some size, not an empty file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(path)), f"no screenshot {path}"
    assert path.stat().st_size > 1000
    print(f"screenshot: {path}")


def click_and_load(driver: Any, element: Any, timeout: float = 15) -> None:
    """Click a link or a form's button, then wait until the next page has replaced this one and
    finished loading: a click returns before the browser navigates, so reading the URL or the
    page right after it can still see the old one."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    old = driver.find_element(By.TAG_NAME, "html")
    element.click()
    wait = WebDriverWait(driver, timeout)
    wait.until(expected_conditions.staleness_of(old))
    wait.until(lambda d: d.execute_script("return document.readyState") == "complete")
