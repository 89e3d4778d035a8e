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

from streamer.serve.runner import BackgroundServer
from streamer.serve.service import Service
from streamer.serve.settings import load_settings

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
def clips(tmp_path_factory) -> Path:
    """The server's serve.media_root: the clips the page may start streams from."""
    root = tmp_path_factory.mktemp("webui-media")
    make_clip(root / "live.mp4", frames=250, size=(320, 240), fps=25)
    make_clip(root / "short.mp4", frames=60, size=(320, 240), fps=25)
    return root


@pytest.fixture(scope="module")
def server(tiny_single_model, clips) -> Iterator[BackgroundServer]:
    config, settings = load_settings(None, [f"parser.model='{tiny_single_model}'",
                                            "parser.engine=torch", "serve.workers=1",
                                            f"serve.media_root='{clips}'"])
    with BackgroundServer(Service(config, settings)) as srv:
        yield srv


def start_stream(server: BackgroundServer, source: str, name: str) -> None:
    request = urllib.request.Request(
        server.url + "/api/streams", method="POST",
        data=json.dumps({"source": source, "name": name,
                         "config": {"source.realtime": True, "detector.type": "full"}}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        assert reply.status == 201


def stop_stream(server: BackgroundServer, name: str) -> None:
    delete = urllib.request.Request(server.url + f"/api/streams/{name}", method="DELETE")
    with urllib.request.urlopen(delete, timeout=60) as reply:
        assert reply.status == 200


def upload(driver: object, path: Path) -> object:
    """Chooses ``path`` in the page's file input; returns the status line once it is done."""
    from selenium.webdriver.common.by import By

    driver.execute_script("document.getElementById('status').dataset.state = 'idle'")
    driver.find_element(By.ID, "file").send_keys(str(path))
    return wait_for(driver, lambda d: (d.find_element(By.ID, "status")
                                       if d.find_element(By.ID, "status")
                                       .get_attribute("data-state") in ("done", "error")
                                       else False))


# Images shown with nothing to show: what Chromium draws as a broken-image icon.
BROKEN_IMAGES_JS = """
return [...document.images].filter((img) => {
  const box = img.getBoundingClientRect();
  const shown = getComputedStyle(img).display !== 'none' && box.width > 0 && box.height > 0;
  return shown && img.naturalWidth === 0;
}).map((img) => img.id);
"""

# Every pair of legend entries whose drawn content (swatch, name, count) overlaps.
LEGEND_OVERLAPS_JS = """
const boxes = [...document.querySelectorAll('#legend li')].map((li) => {
  const rects = [...li.children].map((c) => c.getBoundingClientRect()).filter((r) => r.width);
  const edge = (f, key) => f(...rects.map((r) => r[key]));
  return {name: li.textContent,
          left: edge(Math.min, 'left'), right: edge(Math.max, 'right'),
          top: edge(Math.min, 'top'), bottom: edge(Math.max, 'bottom'),
          clipped: [...li.children].some((c) => c.scrollWidth > c.clientWidth + 1)};
});
const overlaps = [];
for (let i = 0; i < boxes.length; i++) {
  if (boxes[i].clipped) overlaps.push([boxes[i].name, 'its own box']);
  for (let j = i + 1; j < boxes.length; j++) {
    const a = boxes[i], b = boxes[j];
    if (a.left < b.right - 0.5 && b.left < a.right - 0.5 && a.top < b.bottom - 0.5
        && b.top < a.bottom - 0.5) overlaps.push([a.name, b.name]);
  }
}
return overlaps;
"""


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
    status = upload(driver, media / "images" / PHOTO)
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
    assert driver.execute_script(LEGEND_OVERLAPS_JS) == []
    rows = driver.find_elements(By.CSS_SELECTOR, "#persons tbody tr")
    assert rows and rows[0].find_elements(By.TAG_NAME, "td")[0].text == "1"
    shot = artifacts() / "parse.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 0


def choose_stream(driver: object, server: BackgroundServer, name: str) -> None:
    """Opens the page and picks stream ``name`` in the menu once it is listed."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.get(server.url + "/")
    wait_for(driver, lambda d: name in [o.get_attribute("value") for o in
                                        d.find_elements(By.CSS_SELECTOR, "#streams option")])
    Select(driver.find_element(By.ID, "streams")).select_by_value(name)


def stream_row(driver: object, name: str) -> dict[str, str]:
    """The cells of stream ``name``'s row in the page's table of every stream."""
    return driver.execute_script(
        "const row = document.querySelector(`#stream-table tr[data-stream='${arguments[0]}']`);"
        "return row ? Object.fromEntries([...row.cells].map((c) => [c.className.slice(2), "
        "c.textContent])) : null;", name) or {}


def test_live_view_shows_the_stream_with_fps_and_latency(browser, server):
    from selenium.webdriver.common.by import By

    start_stream(server, "live.mp4", "webui")
    start_stream(server, "live.mp4", "webui2")  # a second one, on the same shared model
    driver = browser
    try:
        choose_stream(driver, server, "webui")
        wait_for(driver, lambda d: d.execute_script(
            "return document.getElementById('live-view').naturalWidth") == 320)
        wait_for(driver, lambda d: d.find_element(By.ID, "s-parsed").text not in ("", "-")
                 and int(d.find_element(By.ID, "s-parsed").text) > 0)
        assert float(driver.find_element(By.ID, "s-fps").text) > 0
        assert driver.find_element(By.ID, "s-p50").text.endswith(" ms")
        assert driver.find_element(By.ID, "s-state").text == "running"
        wait_for(driver, lambda d: float(d.find_element(By.ID, "s-parse-fps").text) > 0)
        age = driver.find_element(By.ID, "s-age50").text
        assert age.endswith(" ms") and float(age[:-3]) > 0, age
        # The panel's table: every stream's honest overlay age and parse rate.
        for name in ("webui", "webui2"):
            wait_for(driver, lambda d, name=name: stream_row(d, name).get("age50", " ms")
                     != "0 ms" and float(stream_row(d, name).get("parse-fps", "0")) > 0)
            row = stream_row(driver, name)
            assert row["state"] == "running" and row["age95"].endswith(" ms"), row
            assert float(row["age95"][:-3]) >= float(row["age50"][:-3]) > 0, row
        shot = artifacts() / "live.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 0
        driver.execute_script("document.getElementById('stream-table').scrollIntoView()")
        assert driver.save_screenshot(str(artifacts() / "live-streams.png"))
    finally:
        driver.get("about:blank")  # closes the MJPEG connection
        stop_stream(server, "webui")
        stop_stream(server, "webui2")


def test_no_broken_image_before_anything_is_shown(browser, server):
    """Issue 14 item 15: the live area (and the photo pair) drew broken-image icons."""
    from selenium.webdriver.common.by import By

    driver = browser
    driver.get(server.url + "/")
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#legend li")) >= 20)
    assert driver.execute_script(BROKEN_IMAGES_JS) == []
    assert not driver.find_element(By.ID, "live-view").is_displayed()
    assert driver.find_element(By.ID, "live-empty").is_displayed()
    shot = artifacts() / "empty.png"
    assert driver.save_screenshot(str(shot))


def test_the_menu_follows_a_stream_that_ends(browser, server):
    from selenium.webdriver.common.by import By

    start_stream(server, "short.mp4", "short")  # 2.4 s, paced in real time
    driver = browser
    try:
        choose_stream(driver, server, "short")
        option = "#streams option[value='short']"
        wait_for(driver, lambda d: d.find_element(By.ID, "s-state").text == "finished")
        wait_for(driver, lambda d: "(finished)" in d.find_element(By.CSS_SELECTOR,
                                                                  option).text, timeout=5)
        assert "running" not in driver.find_element(By.CSS_SELECTOR, option).text
    finally:
        driver.get("about:blank")
        stop_stream(server, "short")


def test_a_cache_hit_says_so_without_an_old_parse_time(browser, server, media):
    from selenium.webdriver.common.by import By

    driver = browser
    driver.get(server.url + "/")
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#legend li")) >= 20)
    photo = media / "images" / PHOTO
    upload(driver, photo)
    status = upload(driver, photo)  # the same bytes again: answered from the cache
    assert status.get_attribute("data-state") == "done", status.text
    text = status.text
    assert "cache hit" in text and "parsed in" not in text, text
    assert driver.find_element(By.ID, "overlay").is_displayed()


def test_narrow_window_has_no_sideways_scroll_and_a_readable_legend(browser, server, media):
    from selenium.webdriver.common.by import By

    driver = browser
    size = driver.get_window_size()
    try:
        driver.set_window_size(420, 1400)
        driver.get(server.url + "/")
        assert driver.execute_script("return window.innerWidth") <= 420
        wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#legend li")) >= 20)
        status = upload(driver, media / "images" / PHOTO)
        assert status.get_attribute("data-state") == "done", status.text
        width, inner = driver.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth]")
        assert width <= inner, (width, inner)
        assert driver.execute_script(LEGEND_OVERLAPS_JS) == []
        shot = artifacts() / "narrow.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 0
        driver.execute_script("document.getElementById('live').scrollIntoView()")
        assert driver.save_screenshot(str(artifacts() / "narrow-live.png"))
    finally:
        driver.set_window_size(size["width"], size["height"])
