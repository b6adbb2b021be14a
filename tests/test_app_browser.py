"""The app in a real browser (headless Debian Chromium + Selenium): upload, make and paint the mask, try on,
click the result in the inspector and read what it shows; then what the page says after a run without
recording, and an error message as the user sees it.

Screenshots of each stage go to ``test-artifacts/`` (git-ignored) for a human to look at.
"""

from __future__ import annotations

import io
import re
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
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as ready  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    flags = (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-dev-shm-usage", "--window-size=1400,2400",
    )
    for flag in flags:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def served():
    with served_app() as served:
        yield served


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


def _shown_size(driver, selector: str) -> tuple[float, float]:
    """Width and height of the picture as drawn (``object-fit: contain`` inside the img element's box)."""
    image = driver.find_element(By.CSS_SELECTOR, selector)
    width, height = image.size["width"], image.size["height"]
    natural_width, natural_height = _natural_size(driver, selector)
    scale = min(width / natural_width, height / natural_height)
    return natural_width * scale, natural_height * scale


def _open_tab(driver, text: str) -> None:
    tabs = driver.find_elements(By.XPATH, f"//button[@role='tab' and contains(., '{text}')]")
    next(tab for tab in tabs if tab.is_displayed()).click()


def _text(driver, elem_id: str) -> str:
    return driver.find_element(By.ID, elem_id).text


def _toast(driver, starts_with: str) -> str:
    """The text of the shown message that starts with ``starts_with``.

    Messages fade out and re-render, so an element found a moment ago can be gone; read the texts afresh
    until the expected one is there."""
    def text(driver) -> str | bool:
        try:
            texts = [toast.text for toast in driver.find_elements(By.CSS_SELECTOR, "[data-testid='toast-text']")]
        except StaleElementReferenceException:
            return False
        return next((found for found in texts if found.startswith(starts_with)), False)

    return WebDriverWait(driver, TIMEOUT).until(text, message=f"no message starting {starts_with!r}")


def _red_pixels(driver, element) -> int:
    """Pixels of the element's screenshot tinted like the mask overlay (red well above green and blue)."""
    pixels = np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB")).astype(int)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return int(((red > green + 60) & (red > blue + 60)).sum())


def test_upload_edit_mask_try_on_and_inspect_a_point(browser, served, monkeypatch):
    edits = []
    try_on = AppCallbacks.try_on

    def recording_try_on(self, inputs, settings, **options):
        edits.append(options.get("edited_mask"))
        return try_on(self, inputs, settings, **options)

    monkeypatch.setattr(AppCallbacks, "try_on", recording_try_on)
    url, runtime = served
    example = runtime.tryon_examples[0]
    browser.get(url)
    wait = WebDriverWait(browser, TIMEOUT)
    wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#tryon-person input[type=file]")))
    assert browser.find_element(By.CSS_SELECTOR, "#tryon-seed textarea, #tryon-seed input").get_attribute("value") == ""
    for elem_id, path in (
        ("tryon-person", example.person), ("tryon-garment", example.garment),
        ("tryon-mask", example.mask), ("tryon-densepose", example.densepose),
    ):
        _upload(browser, elem_id, path)
    steps = browser.find_element(By.CSS_SELECTOR, "#tryon-steps input[type=number]")
    steps.send_keys(Keys.CONTROL, "a")
    steps.send_keys("20", Keys.TAB)
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

    # Progress shows on the result, never on the editor (it used to keep a stale "done" and a timer).
    browser.find_element(By.ID, "tryon-run").click()
    wait.until(lambda driver: "denoising step" in _text(driver, "tryon-result"))
    assert "denoising" not in _text(browser, "mask-editor") and "preprocessing" not in _text(browser, "mask-editor")
    wait.until(lambda driver: _image_source(driver, "#tryon-result img"))
    _shot(browser, "3-result")
    assert "done" not in _text(browser, "mask-editor") and "denoising" not in _text(browser, "mask-editor")
    assert _natural_size(browser, "#tryon-result img") == Image.open(example.person).size
    shown_width, shown_height = _shown_size(browser, "#tryon-result img")
    assert shown_height > 3 * Image.open(example.person).height  # enlarged to fill its 480-pixel box
    rendering = "return getComputedStyle(arguments[0]).imageRendering;"
    result_image = browser.find_element(By.CSS_SELECTOR, "#tryon-result img")
    assert browser.execute_script(rendering, result_image) == "pixelated"
    seed = browser.find_element(By.CSS_SELECTOR, "#tryon-seed textarea, #tryon-seed input").get_attribute("value")
    assert seed.isdigit()
    painted = edits[-1]
    original = np.asarray(Image.open(example.mask).convert("L").resize(SERVED_SIZE, Image.NEAREST))
    assert painted.shape == original.shape[:2]
    assert painted[original > 127].mean() > 0.95  # the automatic mask came back from the editor ...
    added_y, added_x = np.nonzero(painted & (original <= 127))
    assert len(added_y) > 0 and added_y.max() < 16 and added_x.max() < 20  # ... plus the stroke

    # Previews: each one whole and large enough to read, captioned.
    browser.find_element(By.XPATH, "//button[contains(., 'Previews: parse map')]").click()
    wait.until(lambda driver: len(driver.find_elements(By.CSS_SELECTOR, "#tryon-previews img")) == 2)
    previews = browser.find_elements(By.CSS_SELECTOR, "#tryon-previews img")
    assert [image.get_attribute("alt") for image in previews] == ["mask", "DensePose"]
    for index in (1, 2):
        selector = f"#tryon-previews .gallery-item:nth-child({index}) img"
        width, height = _shown_size(browser, selector)
        assert height > 300 and width / height == pytest.approx(SERVED_SIZE[0] / SERVED_SIZE[1], rel=0.05)
        frame = browser.find_element(By.CSS_SELECTOR, "#tryon-previews .grid-wrap").rect
        shown = browser.find_element(By.CSS_SELECTOR, selector).rect
        assert frame["y"] <= shown["y"] and shown["y"] + shown["height"] <= frame["y"] + frame["height"] + 1

    _open_tab(browser, "inspector")
    wait.until(lambda driver: _image_source(driver, "#inspect-result img"))
    assert f"(seed {seed})" in _text(browser, "inspect-run")
    before = _image_source(browser, "#inspect-result img")
    result = browser.find_element(By.CSS_SELECTOR, "#inspect-result img")
    width, height = _natural_size(browser, "#inspect-result img")  # enlarged 4x: 384x512
    drawn_width, drawn_height = _shown_size(browser, "#inspect-result img")
    assert drawn_height > 400 and width == 4 * Image.open(example.person).width
    offset = (-drawn_width / 4, drawn_height / 5)  # from the picture's centre, in page pixels
    webdriver.ActionChains(browser).move_to_element_with_offset(result, *offset).click().perform()
    wait.until(lambda driver: _image_source(driver, "#inspect-heatmap img"))
    wait.until(lambda driver: _image_source(driver, "#inspect-result img") != before)  # the crosshair
    _shot(browser, "4-heatmap")
    scale = drawn_width / width
    expected = [int((size / 2 + move / scale) // 4) for size, move in zip((width, height), offset)]
    caption = _text(browser, "inspect-caption")
    assert f"point ({expected[0]}, {expected[1]}) of the result" in caption or any(
        f"point ({expected[0] + dx}, {expected[1] + dy}) of the result" in caption for dx in (-1, 1) for dy in (-1, 1)
    )
    assert caption.startswith("layers the Leffa loss trains, t = ") and "of the reference (ring): " in caption
    margin = 2 * (min(SERVED_SIZE) // 12 + 2 * max(1, min(SERVED_SIZE) // 96) + 1)  # the frame keeping rings whole
    assert _natural_size(browser, "#inspect-heatmap img") == (SERVED_SIZE[0] + margin, SERVED_SIZE[1] + margin)
    assert _shown_size(browser, "#inspect-heatmap img")[1] > 300
    scale_text = _text(browser, "inspect-scale")
    assert "1× = uniform" in scale_text and "peak is" in scale_text and "left uncoloured" in scale_text
    assert "Near-uniform attention" in _text(browser, "flow-help")
    layer_captions = [item.text for item in browser.find_elements(By.CSS_SELECTOR, "#inspect-layers .caption-label")]
    assert layer_captions and all(re.match(r"(down \d+|mid|up \d+)(\.\d+)? · \d+×\d+: peak ", c) for c in layer_captions)
    assert all("entropy" in c and "…" not in c for c in layer_captions)

    # A run of three images without recording: a gallery shows them with their seeds; the inspector keeps
    # the recorded run and says the latest one is not it.
    _open_tab(browser, "Virtual try-on")
    assert not browser.find_elements(By.CSS_SELECTOR, "#tryon-images img")  # hidden for one image
    browser.find_element(By.CSS_SELECTOR, "#tryon-record input[type=checkbox]").click()
    count = browser.find_element(By.CSS_SELECTOR, "#tryon-num-images input[type=number]")
    count.send_keys(Keys.CONTROL, "a")
    count.send_keys("3", Keys.TAB)
    browser.find_element(By.ID, "tryon-run").click()
    wait.until(lambda driver: len(driver.find_elements(By.CSS_SELECTOR, "#tryon-images img")) == 3)
    seeds = browser.find_element(By.CSS_SELECTOR, "#tryon-seed textarea, #tryon-seed input").get_attribute("value")
    first = int(seeds.split(",")[0])
    assert seeds == f"{first}, {first + 1}, {first + 2}"
    captions = [item.text for item in browser.find_elements(By.CSS_SELECTOR, "#tryon-images .caption-label")]
    assert captions == [f"seed {first + index}" for index in range(3)]
    assert all(_shown_size(browser, f"#tryon-images .gallery-item:nth-child({k}) img")[1] > 150 for k in (1, 2, 3))
    assert "(memory: none)" in _text(browser, "model-status")  # what auto chose on the CPU
    browser.execute_script("arguments[0].scrollIntoView();", browser.find_element(By.ID, "tryon-images"))
    _shot(browser, "5a-three-images")
    _open_tab(browser, "inspector")
    wait.until(lambda driver: "without recording attention" in _text(driver, "inspect-run"))
    _shot(browser, "5-unrecorded")
    note = _text(browser, "inspect-run")
    assert note.startswith("Showing the try-on result of ") and f"(seed {seed})." in note

    # New photos: the result, its seed and the mask belonged to the old ones, so they go.
    _open_tab(browser, "Virtual try-on")
    assert _image_source(browser, "#tryon-result img")
    _upload(browser, "tryon-garment", runtime.tryon_examples[1].garment)
    wait.until(lambda driver: not driver.find_elements(By.CSS_SELECTOR, "#tryon-result img"))
    assert not browser.find_elements(By.CSS_SELECTOR, "#tryon-images img")
    seed_field = browser.find_element(By.CSS_SELECTOR, "#tryon-seed textarea, #tryon-seed input")
    assert seed_field.get_attribute("value") == ""
    _shot(browser, "5b-new-garment")


def test_error_messages_read_as_plain_text(browser, served, tmp_path):
    url, runtime = served
    not_an_image = tmp_path / "holiday.jpg"
    not_an_image.write_bytes(b"this is a text file, not a photo")
    browser.get(url)
    wait = WebDriverWait(browser, TIMEOUT)
    wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#tryon-person input[type=file]")))
    _upload(browser, "tryon-person", runtime.tryon_examples[0].person)
    browser.find_element(By.CSS_SELECTOR, "#tryon-garment input[type=file]").send_keys(str(not_an_image))
    browser.find_element(By.ID, "tryon-run").click()
    message = _toast(browser, "holiday.jpg")
    _shot(browser, "6-error")
    assert message == "holiday.jpg is not an image file PIL can read (PNG, JPEG, WebP, ...)"

    # A message of several lines (the tiny model cannot preprocess a photo) keeps its lines.
    browser.find_element(By.CSS_SELECTOR, "[data-testid='toast-close']").click()
    _upload(browser, "tryon-garment", runtime.tryon_examples[0].garment)
    browser.find_element(By.ID, "make-mask").click()
    message = _toast(browser, "the built-in demo model cannot preprocess photos")
    lines = message.splitlines()
    assert len(lines) == 5
    assert lines[3].strip().startswith("python -m leffa download virtual_tryon") and "<br>" not in message


def _small_person_scene(example, folder: Path) -> dict[str, Path]:
    """The example's person (with its mask and DensePose) small in a wide grey photo: auto-crop's case."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, source, background in (("person", example.person, (150, 150, 140)), ("mask", example.mask, 0),
                                     ("densepose", example.densepose, (0, 0, 0))):
        with Image.open(source) as image:
            mode = "L" if name == "mask" else "RGB"
            canvas = Image.new(mode, (400, 300), background)
            canvas.paste(image.convert(mode), (150, 120))
            paths[name] = folder / f"scene-{name}.png"
            canvas.save(paths[name])
    return paths


def test_mask_adjustments_show_live_and_the_crop_in_the_previews(browser, served, tmp_path):
    url, runtime = served
    example = runtime.tryon_examples[0]
    scene = _small_person_scene(example, tmp_path)
    browser.get(url)
    wait = WebDriverWait(browser, TIMEOUT)
    wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#tryon-person input[type=file]")))
    for elem_id, path in (("tryon-person", scene["person"]), ("tryon-garment", example.garment),
                          ("tryon-mask", scene["mask"]), ("tryon-densepose", scene["densepose"])):
        _upload(browser, elem_id, path)
    editor = browser.find_element(By.ID, "mask-editor")
    browser.find_element(By.ID, "make-mask").click()
    wait.until(lambda driver: _red_pixels(driver, editor) > 2000)
    assert "auto-crop: generated on the person" in _text(browser, "tryon-notes")
    browser.find_element(By.XPATH, "//button[contains(., 'Previews: parse map')]").click()
    wait.until(lambda driver: len(driver.find_elements(By.CSS_SELECTOR, "#tryon-previews img")) == 3)
    captions = [image.get_attribute("alt") for image in browser.find_elements(By.CSS_SELECTOR, "#tryon-previews img")]
    assert captions == ["auto-crop", "mask", "DensePose"]
    assert _natural_size(browser, "#tryon-previews .gallery-item:nth-child(1) img") == (400, 300)  # the whole photo
    browser.execute_script("arguments[0].scrollIntoView();", browser.find_element(By.ID, "tryon-previews"))
    _shot(browser, "7-crop-preview")

    # Extend the mask down: the editor shows it at once.
    browser.find_element(By.XPATH, "//button[contains(., 'Adjust the mask')]").click()
    before = _red_pixels(browser, editor)
    down = browser.find_element(By.CSS_SELECTOR, "#adjust-down input[type=number]")
    down.send_keys(Keys.CONTROL, "a")
    down.send_keys("12", Keys.TAB)
    wait.until(lambda driver: _red_pixels(driver, editor) > before * 1.1)
    browser.execute_script("arguments[0].scrollIntoView();", editor)
    _shot(browser, "8-extended")
    extended = _red_pixels(browser, editor)
    assert not browser.find_elements(By.CSS_SELECTOR, "[data-testid='toast-text']")  # no stroke was mistaken

    # Paint, then adjust again: the strokes are kept and the page says why the adjustment did not apply.
    browser.find_element(By.CSS_SELECTOR, "#mask-editor button[aria-label='Brush']").click()
    canvas = browser.find_element(By.CSS_SELECTOR, "#mask-editor canvas")
    stroke = webdriver.ActionChains(browser).move_to_element_with_offset(canvas, -110, -170)
    stroke.click_and_hold().move_by_offset(30, 0).release().perform()
    painted = _red_pixels(browser, editor)
    assert painted > extended
    grow = browser.find_element(By.CSS_SELECTOR, "#adjust-grow input[type=number]")
    grow.send_keys(Keys.CONTROL, "a")
    grow.send_keys("3", Keys.TAB)
    _toast(browser, "The mask has your brush strokes, so the adjustments did not replace it")
    assert abs(_red_pixels(browser, editor) - painted) < 0.02 * painted
    _shot(browser, "9-painted-kept")
