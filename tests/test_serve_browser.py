"""The web page in a real headless browser (Debian's Chromium): upload a large photo, see the
top-5 bars, and check the page shrank the photo before sending it."""

import shutil
import tempfile
from pathlib import Path

import httpx
import pytest

from serving import digit, photo, running_server
from workbench.deploy.serve import create_app

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=412,915")  # a phone-sized window

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
    reason="needs Debian's chromium and chromedriver in /usr/bin ('make test' installs them)")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def page(served_run, browser):  # noqa: F811
    with running_server(create_app(served_run.classifier)) as url:
        browser.get(url)
        _wait_for_state(browser, {"ready"})
        yield url


def _wait_for_state(browser, states, timeout=30):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, timeout).until(
        lambda driver: driver.find_element("tag name", "body").get_attribute("data-state")
        in states)
    return browser.find_element("tag name", "body").get_attribute("data-state")


def _choose(browser, input_id, path):
    """Picks a file in one of the page's file inputs, as a user choosing a photo."""
    browser.execute_script("document.body.dataset.state = 'ready'")  # forget the last answer
    browser.find_element("id", input_id).send_keys(str(path))


def test_page_shows_the_model(browser, page):
    assert browser.find_element("id", "model-name").text == "run"
    details = browser.find_element("id", "model-details").text
    assert "lenet" in details and "16 × 16 px" in details and "10 classes" in details
    assert browser.find_element("id", "class-count").get_attribute("textContent") == "10"


def test_a_large_photo_is_shrunk_in_the_browser_and_gets_the_same_top_5(
        served_run, browser, page, tmp_path):  # noqa: F811
    original = photo(digit(served_run, 0), size=(1600, 1200))
    path = tmp_path / "photo.jpg"
    path.write_bytes(original)
    full = httpx.post(f"{page}api/predict?top_k=10", content=original).json()["predictions"]
    full_probability = {entry["label"]: entry["probability"] for entry in full}

    _choose(browser, "file", path)
    assert _wait_for_state(browser, {"done", "error"}) == "done", \
        browser.find_element("id", "error").text
    items = browser.find_elements("css selector", "#predictions li.prediction")
    assert len(items) == 5
    shown = [(item.get_attribute("data-label"), float(item.get_attribute("data-probability")))
             for item in items]
    for item, (label, probability) in zip(items, shown):
        assert item.find_element("class name", "label").text == label
        assert item.find_element("class name", "percent").text == f"{100 * probability:.1f}%"
        width = item.find_element("class name", "bar").value_of_css_property("width")
        track = item.find_element("class name", "track").value_of_css_property("width")
        assert float(width[:-2]) == pytest.approx(probability * float(track[:-2]), abs=1.5)
    # the server's answer for the shrunk photo is the one for the full photo, within the
    # tolerance of a different resize path (canvas halving + JPEG vs Pillow's box filter)
    assert shown[0][0] == full[0]["label"]
    for label, probability in shown:
        assert probability == pytest.approx(full_probability[label], abs=0.03)

    sizes = browser.find_element("id", "sizes")
    sent, before = int(sizes.get_attribute("data-sent-bytes")), int(
        sizes.get_attribute("data-original-bytes"))
    assert before == len(original) > 300_000
    assert sent < before / 20  # tens of kB instead of hundreds
    assert sizes.get_attribute("data-sent-size") == "256x192"  # long side 256 px, aspect kept
    assert sizes.text.startswith("Sent ") and "instead of" in sizes.text


def test_a_file_that_is_not_an_image_shows_the_reason(browser, page, tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("these are notes, not a photo")
    _choose(browser, "camera", path)
    assert _wait_for_state(browser, {"done", "error"}) == "error"
    alert = browser.find_element("id", "error")
    assert alert.is_displayed() and alert.text.startswith("not an image")
    assert alert.get_attribute("role") == "alert"
    assert not browser.find_elements("css selector", "#predictions li")
