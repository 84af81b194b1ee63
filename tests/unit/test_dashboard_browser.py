"""The dashboard in a real browser: Debian's headless Chromium, driven through chromedriver by
selenium (tests/harness/browser.py), logs in through the form and reads the account and job
pages of a real Gateway on loopback (tests/harness/dashboard.py). Screenshots go to pytest's
tmp_path (their paths are printed: `pytest -s` shows them). tests/demo/ does the same against
`make demo`'s cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.browser import chromium, click_and_load, screenshot
from harness.dashboard import ACCOUNT, DashboardWorld, running_world

pytestmark = pytest.mark.browser


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    with chromium(tmp_path / "profile") as driver:
        yield driver


@pytest.fixture
def world() -> Iterator[DashboardWorld]:
    with running_world() as w:
        yield w


def test_a_person_logs_in_and_sees_the_account_and_the_loss_curve(
    world: DashboardWorld, browser: object, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver

    assert isinstance(browser, WebDriver)
    driver = browser

    def shot(name: str) -> None:
        screenshot(driver, tmp_path / f"{name}.png")

    driver.get(f"{world.url}/dashboard/accounts/{ACCOUNT}")
    assert driver.current_url == f"{world.url}/dashboard/"  # no key yet: the login form
    driver.find_element(By.ID, "key").send_keys("graft_not-a-key")
    click_and_load(driver, driver.find_element(By.ID, "login"))
    assert "Malformed API key" in driver.find_element(By.ID, "problem").text
    shot("login-refused")

    driver.find_element(By.ID, "key").send_keys(world.key.key)
    click_and_load(driver, driver.find_element(By.ID, "login"))
    assert driver.current_url == f"{world.url}/dashboard/accounts/{ACCOUNT}"
    shot("account")
    deployments = driver.find_element(By.XPATH, "//h2[@id='deployments']/following-sibling::table")
    row = deployments.find_element(By.XPATH, ".//tr[td/a[text()='chat']]").text
    for shown in ("Ready", "1/2", "acme-tuned"):
        assert shown in row, row
    jobs = driver.find_element(By.XPATH, "//h2[@id='finetuningjobs']/following-sibling::table")
    job_row = jobs.find_element(By.XPATH, ".//tr[td/a[text()='tune-support']]").text
    for shown in ("Training", "6/20"):
        assert shown in job_row, job_row
    assert "support-chats" in driver.page_source
    # What an escaped name looks like to a person: the text, not a script that ran.
    assert '<script>alert("x")</script>' in driver.find_element(By.TAG_NAME, "main").text

    click_and_load(driver, driver.find_element(By.LINK_TEXT, "tune-support"))
    assert driver.current_url.endswith(
        f"/dashboard/accounts/{ACCOUNT}/fine-tuning-jobs/tune-support"
    )
    shot("job")
    line = driver.find_element(By.CSS_SELECTOR, "svg#loss-curve polyline")
    points = (line.get_attribute("points") or "").split()
    assert len(points) >= 2, points
    assert line.size["width"] > 100
    assert line.size["height"] > 50
    chart = driver.find_element(By.ID, "loss-curve").text
    for shown in ("step 1", "step 6", "3.2", "1.5"):
        assert shown in chart, chart
    assert driver.find_element(By.TAG_NAME, "progress").get_attribute("value") == "6"

    click_and_load(driver, driver.find_element(By.LINK_TEXT, "support-chats"))
    assert "support.jsonl" in driver.find_element(By.TAG_NAME, "main").text
    shot("dataset")

    click_and_load(driver, driver.find_element(By.XPATH, "//button[text()='Log out']"))
    driver.get(f"{world.url}/dashboard/accounts/{ACCOUNT}")
    assert driver.current_url == f"{world.url}/dashboard/"
