"""The app in a real browser (headless Debian Chromium + Selenium): upload, make and paint the mask, try on,
click the result in the inspector and see a heatmap.

Screenshots of each stage go to ``test-artifacts/`` (git-ignored) for a human to look at.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leffa.app.callbacks import AppCallbacks
from tests.app_server import SERVED_SIZE, served_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
TIMEOUT = 120

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning:gradio.queueing"),
    pytest.mark.skipif(
        not CHROMIUM.exists() or not Path(CHROMEDRIVER).exists(),
        reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
    ),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (requirements-dev.txt)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as ready  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,2400"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _shot(driver, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"browser-{name}.png"))


def _upload(driver, elem_id: str, path: Path) -> None:
    driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=file]").send_keys(str(path))
    shown = ready.presence_of_element_located((By.CSS_SELECTOR, f"#{elem_id} img"))
    WebDriverWait(driver, TIMEOUT).until(shown)


def _natural_size(driver, selector: str) -> tuple[int, int]:
    image = driver.find_element(By.CSS_SELECTOR, selector)
    script = "return [arguments[0].naturalWidth, arguments[0].naturalHeight];"
    return tuple(driver.execute_script(script, image))


def _image_source(driver, selector: str) -> str | None:
    found = driver.find_elements(By.CSS_SELECTOR, selector)
    return found[0].get_attribute("src") if found else None


def _red_pixels(driver, element) -> int:
    """Pixels of the element's screenshot tinted like the mask overlay (red well above green and blue)."""
    pixels = np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB")).astype(int)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return int(((red > green + 60) & (red > blue + 60)).sum())


def test_upload_edit_mask_try_on_and_inspect_a_point(browser, monkeypatch):
    edits = []
    try_on = AppCallbacks.try_on

    def recording_try_on(self, inputs, settings, **options):
        edits.append(options.get("edited_mask"))
        return try_on(self, inputs, settings, **options)

    monkeypatch.setattr(AppCallbacks, "try_on", recording_try_on)
    with served_app() as (url, runtime):
        example = runtime.tryon_examples[0]
        browser.get(url)
        wait = WebDriverWait(browser, TIMEOUT)
        wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#tryon-person input[type=file]")))
        for elem_id, path in (
            ("tryon-person", example.person), ("tryon-garment", example.garment),
            ("tryon-mask", example.mask), ("tryon-densepose", example.densepose),
        ):
            _upload(browser, elem_id, path)
        steps = browser.find_element(By.CSS_SELECTOR, "#tryon-steps input[type=number]")
        steps.send_keys(Keys.CONTROL, "a")
        steps.send_keys("3", Keys.TAB)
        browser.find_element(By.CSS_SELECTOR, "#tryon-record input[type=checkbox]").click()
        _shot(browser, "1-uploaded")

        # Make the mask: it appears as a red layer over the person; paint a stroke on the background.
        editor = browser.find_element(By.ID, "mask-editor")
        browser.find_element(By.ID, "make-mask").click()
        wait.until(lambda driver: _red_pixels(driver, editor) > 2000)
        browser.find_element(By.CSS_SELECTOR, "#mask-editor button[aria-label='Brush']").click()
        canvas = browser.find_element(By.CSS_SELECTOR, "#mask-editor canvas")
        stroke = webdriver.ActionChains(browser).move_to_element_with_offset(canvas, -110, -170)
        stroke.click_and_hold().move_by_offset(30, 0).move_by_offset(0, 20).release().perform()
        _shot(browser, "2-mask")

        browser.find_element(By.ID, "tryon-run").click()
        wait.until(lambda driver: _image_source(driver, "#tryon-result img"))
        _shot(browser, "3-result")
        assert _natural_size(browser, "#tryon-result img") == Image.open(example.person).size
        painted = edits[-1]
        original = np.asarray(Image.open(example.mask).convert("L").resize(SERVED_SIZE, Image.NEAREST))
        assert painted.shape == original.shape[:2]
        assert painted[original > 127].mean() > 0.95  # the automatic mask came back from the editor ...
        added_y, added_x = np.nonzero(painted & (original <= 127))
        assert len(added_y) > 0 and added_y.max() < 16 and added_x.max() < 20  # ... plus the stroke

        tabs = browser.find_elements(By.XPATH, "//button[@role='tab' and contains(., 'inspector')]")
        next(tab for tab in tabs if tab.is_displayed()).click()
        wait.until(lambda driver: _image_source(driver, "#inspect-result img"))
        before = _image_source(browser, "#inspect-result img")
        result = browser.find_element(By.CSS_SELECTOR, "#inspect-result img")
        webdriver.ActionChains(browser).move_to_element(result).click().perform()
        wait.until(lambda driver: _image_source(driver, "#inspect-heatmap img"))
        wait.until(lambda driver: _image_source(driver, "#inspect-result img") != before)  # the crosshair
        _shot(browser, "4-heatmap")
        assert _natural_size(browser, "#inspect-heatmap img") == SERVED_SIZE
        caption = browser.find_element(By.ID, "inspect-caption").text
        assert "point (" in caption and "layer all" in caption
