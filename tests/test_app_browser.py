"""A real browser (Debian's chromium, driven by Playwright) clicking through the app.

launch → curves appear → kernels and distribution views render → download → upload an image and
get a prediction; then bad input (non-image, wrong settings, a malicious zip) shows a message and
the app keeps working. Two more runs of the same task (KARST without re-scaling, LoRA) are trained
before the page opens, so the views that compare runs have something to compare. Screenshots at
1440, 1024 and 390 px wide go to ``$KARST_ARTIFACTS_DIR/browser``, or a pytest temporary folder
(its path is printed).

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
import torch
from helpers import AppHandle, make_evil_zip, make_png, start_app

from karst.config import TrainConfig
from karst.jobs import run_foreground

playwright_sync = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
expect = playwright_sync.expect

TRAIN_TIMEOUT_MS = 120_000
VIEW_TIMEOUT_MS = 60_000  # generous: CI shares two cores between the server, the worker and chromium
WIDTHS = (1440, 1024, 390)  # a desktop, a 1024×768 projector, a phone
ARTIFACTS: Path | None = None  # set by the page fixture


def _extra_runs(runs_dir: Path) -> dict[str, str]:
    """Runs of the app's task trained before the page opens: KARST without re-scaling and LoRA
    (one short epoch each, on the embedded backbone like the run launched through the page)."""
    settings = {"epochs": 1, "warmup_epochs": 0, "max_train_samples": 32, "probe_size": 16, "device": "cpu"}
    out = {}
    for key, method in (("none", {"name": "karst", "adapter": {"rescale": "none"}}), ("lora", {"name": "lora"})):
        summary = run_foreground(TrainConfig.from_dict({**settings, "method": method}), runs_dir)
        assert summary["status"] == "completed", summary
        out[key] = summary["run_id"]
    return out


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("browser-runs")


@pytest.fixture(scope="module")
def extra_runs(runs_dir: Path) -> dict[str, str]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _extra_runs(runs_dir)
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def server(runs_dir: Path, extra_runs: dict[str, str]) -> Iterator[AppHandle]:
    handle = start_app(runs_dir)
    yield handle
    handle.close()


@pytest.fixture(scope="module")
def page(server: AppHandle, tmp_path_factory: pytest.TempPathFactory):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium (the browser tests must run)")
    global ARTIFACTS
    chosen = os.environ.get("KARST_ARTIFACTS_DIR")
    ARTIFACTS = Path(chosen) / "browser" if chosen else tmp_path_factory.mktemp("screenshots")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {ARTIFACTS}")
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


def shots(page, name: str, ready: str | None = None) -> None:
    """Full-page screenshots at every width of WIDTHS (``<name>_<width>.png``), back to 1440 after."""
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900 if width > 500 else 844})
        if ready:
            expect(page.locator(ready).first).to_be_visible()
        expect(page.get_by_text(re.compile(r"^processing"))).to_have_count(0)  # no view half-drawn
        page.wait_for_timeout(600)  # plotly re-lays out on resize
        page.screenshot(path=str(ARTIFACTS / f"{name}_{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1440, "height": 1100})


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


def pick_run(page, run_id: str) -> None:
    """Select a run in the header's picker by typing part of its id."""
    box = page.locator("#run-picker input")
    box.click()
    box.fill(run_id[-4:])
    page.get_by_role("option", name=re.compile(run_id)).first.click()
    expect(box).to_have_value(re.compile(run_id))


def test_kernel_views_render(page, extra_runs) -> None:
    open_tab(page, "3 · Kernels")
    for view in ("kernels-c", "kernels-ab", "kernels-kron", "kernels-delta", "kernels-spectrum"):
        expect(page.locator(f"#{view} .js-plotly-plot")).to_be_attached()
    expect(page.locator("#kernels-c .heatmaplayer")).to_be_attached()
    # m-block grid lines on C⊗AB and ΔW; the true size in the title; the equal-budget line explained.
    expect(page.locator("#kernels-delta .layer-above path").first).to_be_attached()
    expect(page.locator("#kernels-delta")).to_contain_text("384×128")
    expect(page.locator("#kernels-note")).to_contain_text("truncated SVD")
    expect(page.locator("#kernels-spectrum")).to_contain_text("cumulative energy")
    # The trained LoRA run of the same task is drawn next to KARST's spectrum.
    expect(page.locator("#kernels-spectrum")).to_contain_text("trained LoRA")
    page.locator("#kernels-fixed input").check()
    page.locator("#kernels-since input").check()
    expect(page.locator("#kernels-c")).to_contain_text("change since epoch 0")
    expect(page.locator("#kernels-note")).to_contain_text("change since epoch 0")
    # Keyboard stepping redraws: one step left on the epoch slider shows epoch 1.
    page.locator("#kernels-epoch input[type=range]").focus()
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#kernels-epoch input[type=number]")).to_have_value("1")
    shots(page, "10_kernels", "#kernels-delta .heatmaplayer")
    page.locator("#kernels-play").click()  # steps on to the last epoch by itself
    expect(page.locator("#kernels-epoch input[type=number]")).to_have_value("2")
    page.locator("#kernels-since input").uncheck()
    # A LoRA run shows its own update: A, B, ΔW = (α/r)·B A and its spectrum, nothing empty.
    pick_run(page, extra_runs["lora"])
    expect(page.locator("#kernels-delta")).to_contain_text("(α/r)·B A")
    expect(page.locator("#kernels-c")).to_contain_text("A (r×d_in)")
    expect(page.locator("#kernels-note")).to_contain_text("LoRA: ΔW = (α/r)·B A")
    expect(page.locator("#kernels-kron")).to_be_hidden()
    shots(page, "11_kernels_lora", "#kernels-delta .heatmaplayer")


def test_alignment_views_render(page, extra_runs) -> None:
    open_tab(page, "4 · Distribution alignment")
    # The LoRA run (still selected) shows its output statistics, not an empty tab.
    summary = page.locator("#align-summary")
    expect(summary).to_contain_text("pre-training corpus")
    expect(summary).to_contain_text("has no re-scaling step")
    expect(page.locator("#align-shifts .js-plotly-plot .barlayer")).to_be_attached()
    # The run launched through the page: the sentence is computed from the numbers.
    page.locator("#run-picker input").click()
    page.get_by_role("option", name=re.compile(r"karst N2 m8 r8 · completed")).first.click()
    expect(summary).to_contain_text(re.compile(r"re-scaling moved \*?\*?\d+%\*?\*? of the 384 channels"))
    assert "bars" not in summary.inner_text()
    expect(page.locator("#align-shifts")).to_contain_text("re-scaling: after − before")
    # One gap chart with every run of this backbone and dataset, each in its own colour.
    gap = page.locator("#align-gap")
    for text in ("rescale channel", "rescale none", "lora"):
        expect(gap).to_contain_text(text)
    colours = page.locator("#align-gap .scatterlayer .trace path.js-line").evaluate_all(
        "els => els.map(e => e.style.stroke)")
    assert len(set(colours)) >= 3, colours
    shots(page, "12_alignment", "#align-gap .scatterlayer .trace")
    _legend_clear_of_axis_title(page, "#align-gap")


def _legend_clear_of_axis_title(page, plot: str) -> None:
    legend, title = page.locator(f"{plot} g.legend").first, page.locator(f"{plot} .xtitle").first
    expect(legend).to_be_visible()  # plotly redraws after a resize
    legend, title = legend.bounding_box(), title.bounding_box()
    assert legend["y"] >= title["y"] + title["height"] - 1, (legend, title)


def test_compare_shows_settings_and_tells_runs_apart(page) -> None:
    open_tab(page, "5 · Compare")
    table = page.locator("#compare-table")
    for header in ("val acc", "test acc", "lr", "epochs", "batch", "train images", "re-scaling"):
        expect(table.get_by_role("columnheader", name=header, exact=True).first).to_be_attached()
    expect(table).to_contain_text("rescale none")
    expect(page.locator("#compare-scatter .js-plotly-plot .scatterlayer .trace").first).to_be_attached()
    shots(page, "13_compare", "#compare-scatter .scatterlayer .trace")
    # On a 1024 px projector the accuracy columns are in view without scrolling the table.
    page.set_viewport_size({"width": 1024, "height": 768})
    header = table.get_by_role("columnheader", name="test acc", exact=True).first
    box = header.bounding_box()
    assert box is not None and box["x"] + box["width"] <= 1024, box
    # ... and not merely laid out there but shown: the header is what sits at its own centre.
    shown = page.evaluate("([x, y]) => document.elementFromPoint(x, y)?.closest('th')?.innerText ?? ''",
                          [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2])
    assert "test acc" in shown, shown
    page.set_viewport_size({"width": 1440, "height": 1100})


def test_runs_are_named_annotated_and_deleted(page, extra_runs) -> None:
    pick_run(page, extra_runs["none"])
    open_tab(page, "2 · Watch")
    page.locator("#run-details-box").get_by_text("Run details").click()
    details = page.locator("#run-details-table")
    expect(details).to_contain_text("Started")
    expect(details).to_contain_text(re.compile(r"20\d\d-\d\d-\d\d \d\d:\d\d:\d\d"))  # a date, not a Unix time
    page.locator("#run-name input, #run-name textarea").first.fill("no re-scaling")
    page.locator("#run-note textarea").fill("ablation for the lecture")
    page.locator("#run-meta-save").click()
    expect(details).to_contain_text("ablation for the lecture")
    expect(page.locator("#run-picker input")).to_have_value(re.compile("no re-scaling"))
    shots(page, "14_run_details", "#run-details-table")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#run-delete").click()
    expect(page.locator("#run-picker input")).not_to_have_value(re.compile(extra_runs["none"]))
    page.locator("#run-picker input").click()
    expect(page.get_by_role("option", name=re.compile(extra_runs["none"]))).to_have_count(0)
    page.keyboard.press("Escape")


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


def test_form_fields_show_their_own_errors_and_an_estimate(page) -> None:
    open_tab(page, "1 · Setup & launch")
    check = page.locator("#settings-check")
    expect(check).to_contain_text("steps (")  # steps and a time before Launch
    expect(check).to_contain_text("images/s")  # paced by the runs already finished
    for elem_id, value, says in (("stack-dim", "0", "must be an integer >= 1"),
                                 ("stack-dim", "2.5", "whole number"), ("epochs", "0", "epochs=0")):
        set_number(page, elem_id, value)
        field = page.locator(f"#{elem_id}")
        expect(field).to_have_class(re.compile("karst-field-error"))
        expect(field).to_contain_text(says)
        expect(check).not_to_contain_text("trainable parameters")  # no stale count
        assert "less than minimum" not in page.content()
        if elem_id == "stack-dim" and value == "2.5":
            shots(page, "15_field_error", "#stack-dim")
        set_number(page, elem_id, "8" if elem_id == "stack-dim" else "2")
        expect(field).not_to_have_class(re.compile("karst-field-error"))
    expect(check.locator("svg.karst-icon-ok")).to_be_attached()  # an icon, not an emoji
    for elem_id, value, warning in (("lr", "5", "likely to diverge"), ("batch-size", "4096", "larger than the"),
                                    ("epochs", "100000", "epoch count")):
        set_number(page, elem_id, value)
        expect(check).to_contain_text(warning)
        expect(check.locator("svg.karst-icon-warn").first).to_be_attached()
        if elem_id == "epochs":
            shots(page, "16_setup_warnings", "#settings-check")
        set_number(page, elem_id, {"lr": "0.01", "batch-size": "32", "epochs": "2"}[elem_id])
    expect(check).not_to_contain_text("likely to diverge")


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
