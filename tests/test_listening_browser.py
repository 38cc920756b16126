"""listening/server.py's study page: the whole participant flow in a real headless Chromium (Debian's package, driven by
Selenium): open the page, consent, play every clip to its end, rate it, finish; then the database holds exactly those
answers."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from listen_helpers import short_study
from listening.server import DATABASE, StudyServer

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = "chromium and chromedriver not found: run `make browser` (apt-get install -y chromium chromium-driver)"


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or CHROMEDRIVER is None:
        if os.environ.get("LISTEN_REQUIRE_BROWSER"):  # `make test` sets it: there the browser test must run
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--mute-audio",
                 "--window-size=900,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_participant_flow_in_chromium(browser, tmp_path: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    study = short_study(tmp_path)
    wait = WebDriverWait(browser, 60)
    given = {}
    with StudyServer(study, repeats=1) as server:
        browser.get(server.url + "/")
        browser.find_element(By.ID, "consent").click()
        browser.find_element(By.ID, "start").click()
        while not browser.find_elements(By.ID, "thanks"):
            wait.until(ec.presence_of_element_located((By.ID, "play")))
            position = int(browser.find_element(By.NAME, "position").get_attribute("value"))
            progress = browser.find_element(By.ID, "progress")
            assert int(progress.get_attribute("value")) == position
            radios = browser.find_elements(By.NAME, "rating")
            assert len(radios) == 10
            assert not any(r.is_enabled() for r in radios)  # locked until the clip has played to its end
            assert not browser.find_element(By.ID, "next").is_enabled()
            browser.find_element(By.ID, "play").click()
            wait.until(lambda d: all(r.is_enabled() for r in d.find_elements(By.NAME, "rating")))
            assert browser.execute_script("return document.getElementById('clip').ended") is True
            rating = 1 + (3 * position + 2) % 10
            browser.find_element(By.CSS_SELECTOR, f"input[name=rating][value='{rating}']").click()
            browser.find_element(By.ID, "next").click()
            given[position] = rating
            wait.until(ec.staleness_of(progress))
        # reopening the study page in the same browser resumes at the thank-you page, not at a new participant
        browser.get(server.url + "/")
        assert browser.find_elements(By.ID, "thanks")

    with sqlite3.connect(study / DATABASE) as db:
        answers = dict(db.execute("SELECT position, rating FROM answers").fetchall())
        participants = db.execute("SELECT COUNT(*), COUNT(finished_at) FROM participants").fetchone()
        trials = db.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
    assert trials == 4 + 1  # 2 systems x 2 clips, and one repeat
    assert answers == given and len(given) == trials
    assert participants == (1, 1)
