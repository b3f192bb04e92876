"""The web page in a real headless browser (Debian's Chromium): upload a large photo, see the
top-5 bars, check the page shrank the photo before sending it, and that on a phone's screen the
answer shows without scrolling."""

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
    assert browser.find_element("id", "run-name").text == "run"  # the run's folder
    assert browser.find_element("id", "model-origin").text == "lenet trained from scratch"
    assert browser.title == "run · lenet trained from scratch · workbench"
    details = browser.find_element("id", "model-details").text
    assert "recipe scratch" in details and "16 × 16 px" in details and "10 classes" in details
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


def test_a_photo_cut_short_is_sent_as_it_is_and_could_not_be_read(
        served_run, browser, page, tmp_path):  # noqa: F811
    whole = photo(digit(served_run, 2), size=(1600, 1200))
    path = tmp_path / "cut.jpg"
    path.write_bytes(whole[:len(whole) // 2])  # the browser still draws it, its lower half grey
    _choose(browser, "file", path)
    assert _wait_for_state(browser, {"done", "error"}) == "error"
    assert "could not be read" in browser.find_element("id", "status").text
    alert = browser.find_element("id", "error")
    assert alert.is_displayed() and "truncated" in alert.text
    assert not browser.find_elements("css selector", "#predictions li")
    sizes = browser.find_element("id", "sizes")
    assert int(sizes.get_attribute("data-sent-bytes")) == len(whole) // 2  # the file itself
    assert "cut short" in sizes.text


# The answer must show on a phone's first screen: (CSS pixels) a small and a tall Android phone.
PHONES = [(360, 640), (412, 915)]
INSIDE = """
const rect = arguments[0].getBoundingClientRect();
return [rect.left, rect.top, rect.right, rect.bottom, rect.width, rect.height];
"""


@pytest.fixture
def phone(browser, request):
    """The browser as a phone of ``request.param`` CSS pixels (touch, the page's viewport meta
    applied), back to the plain window afterwards."""
    width, height = request.param
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 2, "mobile": True})
    try:
        yield width, height
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


@pytest.mark.parametrize("orientation", ["portrait", "landscape"])
@pytest.mark.parametrize("phone", PHONES, indirect=True, ids=lambda size: "%dx%d" % size)
def test_on_a_phone_the_answer_shows_without_scrolling(
        served_run, browser, page, phone, orientation, tmp_path):  # noqa: F811
    width, height = phone
    browser.get(page)  # a fresh page at this size, as a phone opens it
    _wait_for_state(browser, {"ready"})
    assert browser.execute_script("return [innerWidth, innerHeight]") == [width, height]
    size = (1200, 1600) if orientation == "portrait" else (1600, 1200)
    path = tmp_path / "photo.jpg"
    path.write_bytes(photo(digit(served_run, 3), size=size))
    _choose(browser, "file", path)
    assert _wait_for_state(browser, {"done", "error"}) == "done", \
        browser.find_element("id", "error").text
    browser.save_screenshot(f"/tmp/workbench_phone_{width}x{height}_{orientation}.png")

    assert browser.execute_script("return scrollY") == 0
    # nothing wider than the screen (no sideways scrolling)
    assert browser.execute_script("return document.documentElement.scrollWidth") <= width
    top = browser.find_element("css selector", "#predictions li.prediction .label")
    assert top.text == browser.find_element(
        "css selector", "#predictions li.prediction").get_attribute("data-label")
    shown = [("top-1 label", top)]
    for item in browser.find_elements("css selector", "#predictions li.prediction"):
        label = item.get_attribute("data-label")
        shown += [(f"{label} track", item.find_element("class name", "track")),
                  (f"{label} bar", item.find_element("class name", "bar")),
                  (f"{label} percent", item.find_element("class name", "percent"))]
    assert len(shown) == 1 + 5 * 3
    for name, element in shown:
        left, top_, right, bottom, box_width, box_height = browser.execute_script(
            INSIDE, element)
        assert 0 <= left and 0 <= top_ and right <= width and bottom <= height, \
            f"{name} at {left:.0f},{top_:.0f}-{right:.0f},{bottom:.0f} is off a {width}x{height} " \
            f"screen (see /tmp/workbench_phone_{width}x{height}_{orientation}.png)"
        assert box_height > 0 and (box_width > 0 or name.endswith(" bar"))  # a 0% bar is empty
    photo_box = browser.execute_script(INSIDE, browser.find_element("id", "photo"))
    assert photo_box[4] > 50 and photo_box[5] > 50  # the photo is shown too, if smaller

    # the model's name: the run's folder and what it was fine-tuned from, not a model file
    name = browser.find_element("id", "model-name").text
    assert served_run.run.name in name and "lenet" in name and ".keras" not in name
    assert browser.execute_script(INSIDE, browser.find_element("id", "model-name"))[3] <= height


def test_where_the_model_looked_shows_under_the_bars(
        served_run, browser, page, tmp_path):  # noqa: F811
    from selenium.webdriver.support.ui import WebDriverWait

    path = tmp_path / "four.png"
    path.write_bytes(digit(served_run, 4))
    box = browser.find_element("id", "explain")
    box.click()
    try:
        _choose(browser, "file", path)
        # the first explanation loads the run's Keras model: seconds
        assert _wait_for_state(browser, {"done", "error"}, timeout=120) == "done", \
            browser.find_element("id", "error").text
        assert browser.find_element("id", "explanation").is_displayed()
        heatmap = browser.find_element("id", "heatmap")
        WebDriverWait(browser, 10).until(lambda driver: driver.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth", heatmap))
        assert browser.execute_script("return arguments[0].naturalWidth", heatmap) == 16
        top = browser.find_elements("css selector", "#predictions li.prediction")[0]
        assert top.get_attribute("data-label") in \
            browser.find_element("id", "explanation-caption").text
    finally:
        box.click()  # off again: the other tests ask for the bars alone
