"""The web page in real headless Chromium (Debian's chromium + chromium-driver, via Selenium):
upload a real photo, wait for the overlay, check that it rendered, watch a live stream.

Screenshots go to ``artifacts/webui/`` at the repository root (git-ignored), or to
``$STREAMER_ARTIFACTS`` when set. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from media_helpers import make_clip

from streamer.serve.service import BackgroundServer, Service, load_settings

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
PHOTO = "ultralytics_zidane.jpg"
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-dev-shm-usage", "--window-size=1300,1400")


def artifacts() -> Path:
    path = Path(os.environ.get("STREAMER_ARTIFACTS") or ROOT / "artifacts") / "webui"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[object]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    driver_path = shutil.which("chromedriver")
    if not os.path.exists(CHROMIUM) or driver_path is None:
        pytest.skip("headless Chromium is not installed (Debian packages chromium and "
                    "chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    service = webdriver.ChromeService(executable_path=driver_path)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def server(tiny_single_model) -> Iterator[BackgroundServer]:
    config, settings = load_settings(None, [f"parser.model='{tiny_single_model}'",
                                            "parser.engine=torch", "serve.workers=1"])
    with BackgroundServer(Service(config, settings)) as srv:
        yield srv


def wait_for(driver: object, condition, timeout: float = 90):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


# Draws both pictures at their natural size and counts the pixels that differ.
COMPARE_JS = """
const a = document.getElementById('original'), b = document.getElementById('overlay');
const size = [a.naturalWidth, a.naturalHeight, b.naturalWidth, b.naturalHeight];
if (!size[0] || !size[2]) return {size, differing: 0, total: 0};
const pixels = (img) => {
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext('2d');
  ctx.drawImage(img, 0, 0);
  return ctx.getImageData(0, 0, c.width, c.height).data;
};
const pa = pixels(a), pb = pixels(b);
let differing = 0;
for (let i = 0; i < pa.length; i += 4) {
  if (Math.abs(pa[i] - pb[i]) + Math.abs(pa[i + 1] - pb[i + 1])
      + Math.abs(pa[i + 2] - pb[i + 2]) > 12) differing++;
}
return {size, differing, total: pa.length / 4};
"""


def test_upload_a_photo_and_see_the_overlay(browser, server, media):
    from selenium.webdriver.common.by import By

    driver = browser
    driver.get(server.url + "/")
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#legend li")) >= 20)
    driver.find_element(By.ID, "file").send_keys(str(media / "images" / PHOTO))
    status = wait_for(driver, lambda d: (d.find_element(By.ID, "status")
                                         if d.find_element(By.ID, "status")
                                         .get_attribute("data-state") in ("done", "error")
                                         else False))
    assert status.get_attribute("data-state") == "done", status.text

    seen = driver.execute_script(COMPARE_JS)
    width, height, overlay_w, overlay_h = seen["size"]
    assert (width, height) == (1280, 720) and (overlay_w, overlay_h) == (width, height)
    assert seen["differing"] > 0.01 * seen["total"], seen
    shown = driver.find_element(By.ID, "overlay")
    assert shown.size["width"] > 0 and shown.size["height"] > 0

    present = driver.find_elements(By.CSS_SELECTOR, "#legend li.present")
    assert present, "the legend marks the classes found"
    swatch = present[0].find_element(By.CSS_SELECTOR, ".swatch")
    assert swatch.value_of_css_property("background-color") not in ("", "rgba(0, 0, 0, 0)")
    rows = driver.find_elements(By.CSS_SELECTOR, "#persons tbody tr")
    assert rows and rows[0].find_elements(By.TAG_NAME, "td")[0].text == "1"
    shot = artifacts() / "parse.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 0


def test_live_view_shows_the_stream_with_fps_and_latency(browser, server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    clip = make_clip(tmp_path / "live.mp4", frames=250, size=(320, 240), fps=25)
    request = urllib.request.Request(
        server.url + "/api/streams", method="POST",
        data=json.dumps({"source": str(clip), "name": "webui",
                         "config": {"source.realtime": True, "detector.type": "full"}}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        assert reply.status == 201
    driver = browser
    try:
        driver.get(server.url + "/")
        wait_for(driver, lambda d: "webui" in [o.get_attribute("value") for o in
                                               d.find_elements(By.CSS_SELECTOR,
                                                               "#streams option")])
        Select(driver.find_element(By.ID, "streams")).select_by_value("webui")
        wait_for(driver, lambda d: d.execute_script(
            "return document.getElementById('live-view').naturalWidth") == 320)
        wait_for(driver, lambda d: d.find_element(By.ID, "s-parsed").text not in ("", "-")
                 and int(d.find_element(By.ID, "s-parsed").text) > 0)
        assert float(driver.find_element(By.ID, "s-fps").text) > 0
        assert driver.find_element(By.ID, "s-p50").text.endswith(" ms")
        assert driver.find_element(By.ID, "s-state").text == "running"
        shot = artifacts() / "live.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 0
    finally:
        driver.get("about:blank")  # closes the MJPEG connection
        delete = urllib.request.Request(server.url + "/api/streams/webui", method="DELETE")
        with urllib.request.urlopen(delete, timeout=60) as reply:
            assert reply.status == 200
