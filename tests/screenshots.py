"""Screenshots of every tab of the app on the built-in demo model, for the README and ``docs/figures/``.

``make screenshots`` (or ``python -m tests.screenshots --out docs/figures``) serves the app with the shipped
demo model, drives headless Chromium (Debian's ``chromium`` and ``chromium-driver``) through an example
try-on with attention recorded, the inspector with a clicked point, the previews and a pose transfer, and
writes one PNG per view. Retake them whenever the demo model or the page changes. Seeds are fixed, so a
rerun on the same model gives the same pictures.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WINDOW = (1280, 2600)
#: Screenshots wider than this are scaled down, and larger files reduced to a palette, to stay small.
MAX_WIDTH = 1000
MAX_BYTES = 280_000
TIMEOUT = 300
SEED = "3"


def _browser():
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-dev-shm-usage", f"--window-size={WINDOW[0]},{WINDOW[1]}", "--hide-scrollbars",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)


def _until(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.25)
    time.sleep(0.8)  # let images finish drawing


class _Page:
    """The app in the browser, with the few moves the screenshots need."""

    def __init__(self, driver) -> None:
        from selenium.webdriver.common.by import By

        self.driver, self.by = driver, By

    def element(self, selector: str):
        return self.driver.find_element(self.by.CSS_SELECTOR, selector)

    def has(self, selector: str) -> bool:
        return bool(self.driver.find_elements(self.by.CSS_SELECTOR, selector))

    def tab(self, text: str) -> None:
        tabs = self.driver.find_elements(self.by.XPATH, f"//button[@role='tab' and contains(., '{text}')]")
        next(tab for tab in tabs if tab.is_displayed()).click()
        time.sleep(1)

    def example(self, tab_id: str, row: int = 0) -> None:
        """Pick an example row of the tab whose result has ``tab_id``."""
        tables = [table for table in self.driver.find_elements(self.by.CSS_SELECTOR, "table") if table.is_displayed()]
        tables[0].find_elements(self.by.CSS_SELECTOR, "tbody tr")[row].click()
        _until(lambda: self.has(f"#{tab_id}-person img"), "the example to load")

    def set_seed(self) -> None:
        """Type :data:`SEED` into the visible tab's seed field (its last number field)."""
        from selenium.webdriver.common.keys import Keys

        seed = [field for field in self.driver.find_elements(self.by.CSS_SELECTOR, "input[type=number]")
                if field.is_displayed()][-1]
        seed.send_keys(Keys.CONTROL, "a")
        seed.send_keys(SEED, Keys.TAB)

    def run(self, button: str, result: str) -> None:
        self.element(f"#{button}").click()
        _until(lambda: self.has(f"#{result} img"), f"the result in #{result}")

    def shot(self, top_selector: str, bottom_selector: str, path: Path) -> None:
        """The page from the top of one element to the bottom of another, written small."""
        top = self.element(top_selector)
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", top)
        time.sleep(0.5)
        page = Image.open(io.BytesIO(self.driver.get_screenshot_as_png())).convert("RGB")
        rectangle = "return arguments[0].getBoundingClientRect();"
        upper = self.driver.execute_script(rectangle, top)["top"]
        lower = self.driver.execute_script(rectangle, self.element(bottom_selector))["bottom"]
        box = (0, max(0, int(upper) - 8), page.width, min(page.height, int(lower) + 8))
        _save_small(page.crop(box), path)


def _save_small(image: Image.Image, path: Path) -> None:
    if image.width > MAX_WIDTH:
        height = round(image.height * MAX_WIDTH / image.width)
        image = image.resize((MAX_WIDTH, height), Image.Resampling.LANCZOS)
    image.save(path, optimize=True)
    if path.stat().st_size > MAX_BYTES:  # a dithered palette keeps colour gradients (flow wheels) smooth
        palette = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        image.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).save(path, optimize=True)
    print(f"{path}  {image.width}x{image.height}  {path.stat().st_size / 1024:.0f} KB")


def take(out: Path) -> list[Path]:
    """Serve the app on the demo model and write the screenshots into ``out``; returns their paths."""
    sys.path.insert(0, str(REPO_ROOT))
    import torch
    from selenium.webdriver import ActionChains

    from app import serve
    from leffa.app.runtime import tiny_runtime
    from tests.app_server import free_port

    torch.set_num_threads(1)  # a tiny model: one thread is as fast and leaves the other cores free
    out.mkdir(parents=True, exist_ok=True)
    demo = serve(
        tiny_runtime(device="cpu"), server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
        quiet=True,
    )
    driver = _browser()
    paths = {name: out / f"app-{name}.png" for name in ("tryon", "inspector", "previews", "pose")}
    try:
        driver.get(demo.local_url)
        page = _Page(driver)
        _until(lambda: page.has("#tryon-person input[type=file]"), "the page")

        page.example("tryon")
        page.set_seed()
        page.element("#tryon-record input[type=checkbox]").click()
        page.run("tryon-run", "tryon-result")
        page.shot("#tryon-person", "#tryon-seed", paths["tryon"])

        page.driver.find_element(page.by.XPATH, "//button[contains(., 'Previews: parse map')]").click()
        _until(lambda: page.has("#tryon-previews img"), "the previews")
        page.shot("#tryon-previews", "#tryon-previews", paths["previews"])

        page.tab("inspector")
        _until(lambda: page.has("#inspect-result img"), "the inspector's result")
        result = page.element("#inspect-result img")
        height = result.size["height"]
        ActionChains(driver).move_to_element_with_offset(result, 0, -height // 8).click().perform()
        _until(lambda: page.has("#inspect-heatmap img"), "the heatmap")
        page.shot("#inspect-run", "#inspect-layers", paths["inspector"])

        page.tab("Pose transfer")
        page.example("pose")
        page.set_seed()
        page.run("pose-run", "pose-result")
        page.shot("#pose-untrained" if page.has("#pose-untrained") else "#pose-person", "#pose-seed", paths["pose"])
    finally:
        driver.quit()
        demo.close()
    return list(paths.values())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "figures", help="folder for the PNGs")
    take(parser.parse_args(argv).out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
