"""The web view in a real headless Chromium (Debian's chromium + chromedriver, driven by Selenium) against a
running line (real mosquitto, a 30 fps video): the live frame shows and the counters move, a reject appears
with its image, "false reject" stores the label and copies the frame, a wrong password is refused, /metrics
parses. Screenshots of every page go to the test's tmp folder, and to $EDGED_SCREENSHOTS when set
(`EDGED_SCREENSHOTS=docs/screenshots pytest tests/test_web_browser.py` refreshes the README's)."""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devkit.support import wait_until
from devkit.webline import PASSWORD, Client, WebLine, basic, start_line

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebLine]:
    running = start_line(tmp_path_factory.mktemp("browserline"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("chromium and chromedriver are not installed (scripts/setup.sh dev installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=DriverService(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def _shot(driver: Any, folder: Path, name: str) -> None:
    path = folder / f"{name}.png"
    assert driver.save_screenshot(str(path)), name
    wanted = os.environ.get("EDGED_SCREENSHOTS")
    if wanted:
        Path(wanted).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(wanted) / path.name)


def _wait(driver: Any, condition: Any, what: str, timeout: float = 20.0) -> None:
    """Wait until the page shows what `condition` looks for. While a click's POST, redirect and new page are on
    their way, the element may be missing or belong to the page being replaced: that is "not yet", not a
    failure (it failed a CI run once, `find_element` raising mid-navigation; and once as Chrome's own form of a
    stale element, an "unknown error" that the node "does not belong to the document", when `.text` was read of
    an element found on the page just replaced); a page that never shows it still fails here, after `timeout`."""
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        WebDriverException,
    )

    def shown() -> object:
        try:
            return condition(driver)
        except (NoSuchElementException, StaleElementReferenceException):
            return False
        except WebDriverException as exc:
            if "does not belong to the document" in str(exc.msg):
                return False  # the element was on the page being replaced: not yet
            raise

    wait_until(shown, timeout, what, poll=0.1)


def _js(driver: Any, script: str) -> Any:
    return driver.execute_script(script)


def test_a_wrong_password_is_refused(line: WebLine, browser: Any, shots: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(line.base + "/")
    assert "/login" in browser.current_url
    browser.find_element(By.ID, "user").send_keys("anna")
    browser.find_element(By.ID, "password").send_keys("wrong password")
    browser.find_element(By.ID, "login").click()
    _wait(browser, lambda d: d.find_elements(By.ID, "login-error"), "the login's error")
    assert "Wrong password" in browser.find_element(By.ID, "login-error").text
    assert not browser.get_cookies()
    _shot(browser, shots, "login")


def test_overview_shows_the_live_frame_and_counters_that_change(line: WebLine, browser: Any, shots: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(line.base + "/login")
    browser.find_element(By.ID, "user").send_keys("anna")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "login").click()
    _wait(browser, lambda d: d.find_elements(By.ID, "live-cam1"), "the overview")
    cookie = browser.get_cookie("edged_session")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    live = "document.getElementById('live-cam1')"
    _wait(browser, lambda d: _js(d, f"return {live}.naturalWidth") == 160, "the live frame")
    loaded = int(_js(browser, f"return {live}.dataset.loaded"))
    _wait(browser, lambda d: int(_js(d, f"return {live}.dataset.loaded")) >= loaded + 3, "live frames refreshing")
    frames = browser.find_element(By.CSS_SELECTOR, "[data-cam='cam1'][data-key='frames']")
    first = frames.text
    _wait(browser, lambda d: frames.text not in (first, "-"), "the frame counter moving")
    _wait(browser, lambda d: _js(d, "return document.getElementById('reject-cam1').naturalWidth") == 160,
          "the latest reject's overlay")
    assert "streaming" in browser.find_element(By.CSS_SELECTOR, "[data-cam='cam1'][data-key='state']").text
    _shot(browser, shots, "overview")


def test_a_reject_appears_with_its_image_and_false_reject_is_stored(line: WebLine, browser: Any,
                                                                    shots: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(line.base + "/rejects")
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "tr.reject"), "a reject in the list")
    row = browser.find_elements(By.CSS_SELECTOR, "tr.reject")[0]
    reject_id = int(row.get_attribute("data-id"))
    _wait(browser, lambda d: _js(d, "return document.querySelector('tr.reject img').naturalWidth") > 0,
          "the reject's thumbnail")
    assert "/" in row.text and "cam1" in row.text
    _shot(browser, shots, "rejects")
    row.find_element(By.CSS_SELECTOR, "a").click()
    _wait(browser, lambda d: d.current_url.endswith(f"/part/{reject_id}"), "the part page")
    _wait(browser, lambda d: _js(d, "return document.getElementById('overlay').naturalWidth") == 160,
          "the part's overlay")
    assert browser.find_elements(By.ID, "neighbours")
    browser.find_element(By.ID, f"label-false_reject-{reject_id}").click()
    _wait(browser, lambda d: "false_reject by anna" in d.find_element(By.ID, "labels").text, "the stored label")
    _shot(browser, shots, "part")
    db = sqlite3.connect(line.state / "edged.db")
    label, by, copy = db.execute("SELECT label, created_by, image_copy FROM labels WHERE inspection_id = ?",
                                 (reject_id,)).fetchone()
    assert (label, by) == ("false_reject", "anna")
    assert Path(copy).is_file() and Path(copy).parent == line.state / "feedback" / "good"
    browser.get(line.base + "/feedback")
    assert int(browser.find_element(By.ID, "count-false_reject").text) >= 1
    assert "edged-train calibrate" in browser.find_element(By.ID, "recalibrate").text
    _shot(browser, shots, "feedback")


def test_health_page_masks_secrets_and_metrics_parse(line: WebLine, browser: Any, shots: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(line.base + "/health")
    _wait(browser, lambda d: d.find_elements(By.ID, "versions"), "the health page")
    assert PASSWORD not in browser.page_source
    assert "edged" in browser.find_element(By.ID, "versions").text
    _shot(browser, shots, "health")
    text = Client(line).get("/metrics", headers=basic(PASSWORD)).text
    names = {fam.name for fam in text_string_to_metric_families(text)}
    assert {"edged_frames", "edged_drops", "edged_rejects", "edged_latency_seconds", "edged_reconnects",
            "edged_outbox_backlog", "edged_rejects_expired", "edged_db_errors", "edged_model_info"} <= names
