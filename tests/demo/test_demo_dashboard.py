"""The dashboard of `make demo`'s cluster in a real browser (`make demo-check`, after `make
demo`): headless Chromium logs in with alice's API key at the demo's gateway and reads what the
demo made for real: the Reference Deployment whose replica serves the base model and the trained
addon, the Dataset with its signature, the FineTuningJob at 12/12 with its plotted loss curve.
Screenshots go to <cache>/demo/screenshots/ (their paths are printed). Fails, not skips, when
the demo is not running: it checks the demo, not a stand-in."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from harness.browser import chromium, click_and_load, screenshot

pytestmark = pytest.mark.demo

ROOT = Path(__file__).resolve().parents[2]


def load_demo() -> ModuleType:
    """hack/demo.py, for its names, ports, state directory and alice's key."""
    spec = importlib.util.spec_from_file_location("graft_demo", ROOT / "hack" / "demo.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo() -> ModuleType:
    module = load_demo()
    try:
        with urllib.request.urlopen(f"{module.GATEWAY_URL}/ready", timeout=5) as r:
            assert r.status == 200
    except OSError as exc:
        pytest.fail(
            f"the demo's gateway at {module.GATEWAY_URL} does not answer ({exc}): `make demo` first"
        )
    return module


def demo_kubeconfig() -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "localcluster"), "kubeconfig"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        pytest.fail(f"no local control plane ({out.stderr.strip()}): `make demo` first")
    return out.stdout.strip().splitlines()[-1]


def get(demo: ModuleType, config: str, kind: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(
        demo.kubectl(config, "get", kind, name, "-n", demo.NAMESPACE, "-o", "json").stdout
    )
    return found


def test_the_demos_dashboard_shows_what_it_trained_and_serves(demo: ModuleType) -> None:
    from selenium.webdriver.common.by import By

    config = demo_kubeconfig()
    key = demo.api_key(config)
    dataset = get(demo, config, "datasets.graft.dev", demo.DATASET)
    job = get(demo, config, "finetuningjobs.graft.dev", demo.JOB)
    steps = job["status"]["progress"]["totalSteps"]
    shots = demo.STATE / "screenshots"
    account = f"{demo.GATEWAY_URL}/dashboard/accounts/{demo.NAMESPACE}"

    with chromium(demo.STATE / "chromium-profile") as driver:
        driver.get(account)
        driver.find_element(By.ID, "key").send_keys(key)
        click_and_load(driver, driver.find_element(By.ID, "login"))
        assert driver.current_url == account
        screenshot(driver, shots / "account.png")

        deployments = driver.find_element(
            By.XPATH, "//h2[@id='deployments']/following-sibling::table"
        )
        row = deployments.find_element(By.XPATH, f".//tr[td/a[text()='{demo.DEPLOYMENT}']]").text
        # Its one replica is ready and serves the base model and the addon (its /v1/models).
        for shown in ("Ready", "1/1", f"accounts/{demo.NAMESPACE}/models/{demo.ADDON}"):
            assert shown in row, row
        datasets = driver.find_element(By.XPATH, "//h2[@id='datasets']/following-sibling::table")
        ds_row = datasets.find_element(By.XPATH, f".//tr[td/a[text()='{demo.DATASET}']]").text
        assert dataset["status"]["sha256"] in ds_row, ds_row
        jobs = driver.find_element(By.XPATH, "//h2[@id='finetuningjobs']/following-sibling::table")
        job_row = jobs.find_element(By.XPATH, f".//tr[td/a[text()='{demo.JOB}']]").text
        for shown in ("Succeeded", f"{steps}/{steps}"):
            assert shown in job_row, job_row

        # The job's link in its row (the addon Model has the job's name, and its own link).
        click_and_load(driver, jobs.find_element(By.XPATH, f".//tr/td/a[text()='{demo.JOB}']"))
        assert driver.current_url == f"{account}/fine-tuning-jobs/{demo.JOB}"
        screenshot(driver, shots / "job.png")
        line = driver.find_element(By.CSS_SELECTOR, "svg#loss-curve polyline")
        points = (line.get_attribute("points") or "").split()
        curve = job["status"]["progress"]["lossCurve"]
        assert len(points) == len(curve) >= 2, (points, curve)
        assert line.size["width"] > 100
        assert driver.find_element(By.TAG_NAME, "progress").get_attribute("value") == str(steps)

        click_and_load(driver, driver.find_element(By.LINK_TEXT, demo.DATASET))
        assert driver.current_url == f"{account}/datasets/{demo.DATASET}"
        assert dataset["status"]["sha256"] in driver.find_element(By.TAG_NAME, "main").text
        screenshot(driver, shots / "dataset.png")
