"""A real browser (Debian's chromium, driven by Playwright) clicking through the app.

launch → curves appear → kernels and distribution views render → download → upload an image and
get a prediction; then bad input (non-image, wrong settings, a malicious zip) shows a message and
the app keeps working. Screenshots go to ``$KARST_ARTIFACTS_DIR/browser`` (default
``artifacts/browser``).

Needs: ``apt-get install chromium`` and ``pip install playwright`` (Playwright's own browser
download is not used: it needs a network).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import AppHandle, make_evil_zip, make_png, start_app

playwright_sync = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
expect = playwright_sync.expect

ARTIFACTS = Path(os.environ.get("KARST_ARTIFACTS_DIR", "artifacts")) / "browser"
TRAIN_TIMEOUT_MS = 120_000
VIEW_TIMEOUT_MS = 60_000  # generous: CI shares two cores between the server, the worker and chromium


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppHandle]:
    handle = start_app(tmp_path_factory.mktemp("browser-runs"))
    yield handle
    handle.close()


@pytest.fixture(scope="module")
def page(server: AppHandle):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium (the browser tests must run)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium, headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        context = browser.new_context(viewport={"width": 1440, "height": 1100}, accept_downloads=True)
        pg = context.new_page()
        pg.set_default_timeout(VIEW_TIMEOUT_MS)
        expect.set_options(timeout=VIEW_TIMEOUT_MS)  # expect() has its own 5 s default
        pg.goto(server.url)
        expect(pg.get_by_text("KARST Studio").first).to_be_visible()
        yield pg
        pg.screenshot(path=str(ARTIFACTS / "99_final.png"), full_page=True)
        browser.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def open_tab(page, title: str) -> None:
    page.get_by_role("tab", name=title).click()


def set_number(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input")
    box.fill(value)
    box.press("Tab")  # gradio Number commits its value on blur


def expect_no_traceback(page) -> None:
    assert "Traceback (most recent call last)" not in page.content()


def test_launch_shows_live_curves(page) -> None:
    check = page.locator("#settings-check")
    expect(check).to_contain_text("trainable parameters")
    # The learning rate field shows the chosen method's default, as a number the browser sends back.
    lr = page.locator("#lr input")
    expect(lr).to_have_value("0.01")
    page.locator("#method").get_by_text("LoRA", exact=True).click()
    expect(lr).to_have_value("0.003")
    page.locator("#method").get_by_text("KARST (Kronecker + re-scaling)", exact=True).click()
    expect(lr).to_have_value("0.01")
    expect(check).to_contain_text("trainable parameters")
    set_number(page, "epochs", "2")
    page.get_by_text("More", exact=True).click()
    set_number(page, "max-train-samples", "64")
    set_number(page, "probe-size", "16")
    expect(check).to_contain_text("trainable parameters")
    shot(page, "01_setup")
    page.locator("#launch").click()
    # Launch switches to Watch; the curves get their first points while the run trains.
    expect(page.locator("#curves .js-plotly-plot .scatterlayer .trace").first).to_be_attached(
        timeout=TRAIN_TIMEOUT_MS)
    shot(page, "02_watch_training")
    # A refresh (or a dropped connection) loses nothing: the page re-attaches to the running job.
    page.reload()
    expect(page.locator("#run-picker input")).to_have_value(re.compile(r"karst .*(running|completed)"))
    expect(page.locator("#curves .js-plotly-plot .scatterlayer .trace").first).to_be_attached()
    expect(page.locator("#progress")).to_contain_text("completed", timeout=TRAIN_TIMEOUT_MS)
    shot(page, "03_watch_done")
    expect_no_traceback(page)


def test_kernel_views_render(page) -> None:
    open_tab(page, "3 · Kernels")
    for view in ("kernels-c", "kernels-ab", "kernels-kron", "kernels-delta", "kernels-spectrum"):
        expect(page.locator(f"#{view} .js-plotly-plot")).to_be_attached()
    expect(page.locator("#kernels-c .heatmaplayer")).to_be_attached()
    shot(page, "04_kernels")


def test_alignment_views_render(page) -> None:
    open_tab(page, "4 · Distribution alignment")
    expect(page.locator("#align-stats .js-plotly-plot .scatterlayer .trace").first).to_be_attached()
    expect(page.locator("#align-summary")).to_contain_text("gap")
    shot(page, "05_alignment")


def test_download_and_predict(page, tmp_path: Path) -> None:
    open_tab(page, "6 · Download & predict")
    button = page.locator("#dl-merged")
    expect(button).to_be_visible()
    with page.expect_download() as info:
        button.click()
    saved = tmp_path / "merged.safetensors"
    info.value.save_as(saved)
    assert saved.stat().st_size > 10_000
    page.locator("#predict-image input[type=file]").set_input_files(str(make_png(tmp_path / "probe.png")))
    page.locator("#predict-image-btn").click()
    expect(page.locator("#predict-results")).to_contain_text("probe.png")
    expect(page.locator("#predict-chart .js-plotly-plot .barlayer")).to_be_attached()
    shot(page, "06_predict")
    # An example image of the run's dataset is one click away, and predicts at once.
    page.locator("#predict-examples .thumbnail-item").first.click()
    expect(page.locator("#predict-results")).not_to_contain_text("probe.png")
    expect(page.locator("#predict-image img")).to_be_attached()


def test_bad_input_shows_messages_and_app_keeps_working(page, tmp_path: Path) -> None:
    # A text file where an image is expected.
    open_tab(page, "6 · Download & predict")
    page.get_by_role("tab", name="Several images").click()
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    page.locator("#predict-many input[type=file]").set_input_files(str(notes))
    page.locator("#predict-many-btn").click()
    expect(page.get_by_text("is not an image").first).to_be_visible()
    shot(page, "07_bad_image")

    # Settings that do not fit the backbone.
    open_tab(page, "1 · Setup & launch")
    check = page.locator("#settings-check")
    set_number(page, "stack-dim", "7")
    expect(check).to_contain_text("does not divide")
    shot(page, "08_bad_settings")
    page.locator("#launch").click()
    expect(page.get_by_text("does not divide").nth(1)).to_be_visible()  # the toast, next to the check
    set_number(page, "stack-dim", "8")
    expect(check).to_contain_text("trainable parameters")

    # A zip whose entry climbs out of its folder.
    page.locator("#dataset-source").get_by_text("Zip upload").click()
    page.locator("#dataset-zip input[type=file]").set_input_files(str(make_evil_zip(tmp_path / "evil.zip")))
    expect(check).to_contain_text("refused")
    assert not (tmp_path.parent / "evil.txt").exists()
    shot(page, "09_bad_zip")
    page.locator("#dataset-source").get_by_text("Embedded task").click()
    expect(check).to_contain_text("trainable parameters")

    # Still working: predicting again succeeds.
    open_tab(page, "6 · Download & predict")
    page.get_by_role("tab", name="Image (upload, paste, webcam)").click()
    page.locator("#predict-image input[type=file]").set_input_files(str(make_png(tmp_path / "again.png", "blue")))
    page.locator("#predict-image-btn").click()
    expect(page.locator("#predict-results")).to_contain_text("again.png")
    expect_no_traceback(page)
