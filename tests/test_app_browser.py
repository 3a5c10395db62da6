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
from io import BytesIO
from pathlib import Path

import pytest
import torch
from helpers import AppHandle, make_evil_zip, make_png, start_app
from PIL import Image

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
        page.wait_for_timeout(600)  # plotly re-lays out on resize...
        try:  # ...later on a loaded machine: give it until nothing is wider than the window
            page.wait_for_function("() => document.documentElement.scrollWidth <= window.innerWidth + 1",
                                   timeout=5000)
        except playwright_sync.TimeoutError:
            pass  # the screenshot then shows the overflow, for whoever looks at it
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
    page.get_by_role("option", name=re.compile(r"karst N2 m8 r8 · .*rescale channel.* · completed")).first.click()
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


def predict_a_text_file(page, tmp_path: Path) -> None:
    """On Predict: send a text file as an image, and see the one-line refusal."""
    page.get_by_role("tab", name="Several images").click()
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    page.locator("#predict-many input[type=file]").set_input_files(str(notes))
    page.locator("#predict-many-btn").click()
    expect(page.get_by_text("is not an image").first).to_be_visible()


def test_bad_input_shows_messages_and_app_keeps_working(page, tmp_path: Path) -> None:
    # A text file where an image is expected.
    open_tab(page, "6 · Download & predict")
    predict_a_text_file(page, tmp_path)
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


def _browser(page, server: AppHandle):
    """Another browser (its own local storage, so its own client token) on the app, at 1440 px."""
    context = page.context.browser.new_context(viewport={"width": 1440, "height": 1100})
    other = context.new_page()
    other.set_default_timeout(VIEW_TIMEOUT_MS)
    other.goto(server.url)
    expect(other.get_by_text("KARST Studio").first).to_be_visible()
    return other


def test_only_the_launching_browser_stops_its_run(page, server: AppHandle, extra_runs) -> None:
    ada, ben = _browser(page, server), _browser(page, server)
    try:
        set_number(ada, "epochs", "40")
        expect(ada.locator("#settings-check")).to_contain_text("trainable parameters")
        ada.locator("#launch").click()
        expect(ada.locator("#progress")).to_contain_text(re.compile("running|step"), timeout=TRAIN_TIMEOUT_MS)
        expect(ada.locator("#run-picker input")).to_have_value(re.compile("karst"))
        # Ben's page attaches to the run in progress, but his Stop is refused: it is Ada's run.
        ben.reload()
        expect(ben.locator("#progress")).to_contain_text(re.compile("running|step"))
        ben.locator("#stop-run").click()
        expect(ben.get_by_text(re.compile("launched from another browser")).first).to_be_visible()
        shots(ben, "30_stop_refused_other_browser")
        # Ada's token lives in her browser's storage: after a refresh her Stop still works.
        ada.reload()
        expect(ada.locator("#progress")).to_contain_text(re.compile("running|step"))
        ada.locator("#stop-run").click()
        expect(ada.get_by_text(re.compile("Stop requested")).first).to_be_visible()
        expect(ada.locator("#progress")).to_contain_text("cancelled", timeout=TRAIN_TIMEOUT_MS)
        # A "Cancel" in the delete dialog keeps the run (the answer reaches the server).
        pick_run(ben, extra_runs["lora"])
        ben.get_by_role("tab", name="2 · Watch").click()
        ben.locator("#run-details-box").get_by_text("Run details").click()
        ben.once("dialog", lambda dialog: dialog.dismiss())
        ben.locator("#run-delete").click()
        ben.wait_for_timeout(1500)
        assert (server.runner.runs_dir / extra_runs["lora"]).is_dir()
        expect_no_traceback(ben)
    finally:
        ada.context.close()
        ben.context.close()


def test_formula_follows_the_method_and_warmup_is_a_setting(page) -> None:
    open_tab(page, "1 · Setup & launch")
    method, formula, check = page.locator("#method"), page.locator("#method-formula"), page.locator("#settings-check")
    # KaTeX keeps each formula's LaTeX source in the page (its MathML annotation), numbers put in.
    expect(formula).to_contain_text("What gets trained: KARST")
    expect(formula).to_contain_text(r"\sum_{i=1}^{2} C_i \otimes (A_i B_i)")
    expect(formula.locator(".katex-display").first).to_be_visible()
    set_number(page, "n-kernels", "4")
    expect(formula).to_contain_text(r"\sum_{i=1}^{4} C_i")
    page.locator("#rescale").get_by_text("none", exact=True).click()
    expect(formula).to_contain_text(r"y = W_0 x + b_0 + \Delta W x")
    page.locator("#rescale").get_by_text("channel", exact=True).click()
    set_number(page, "n-kernels", "2")
    expect(formula).to_contain_text(r"(1 + s_1) \odot")
    # LoRA: its own update with the α the run will use, and the α field to change it.
    alpha = page.locator("#lora-alpha")
    expect(alpha).to_be_hidden()
    method.get_by_text("LoRA", exact=True).click()
    expect(formula).to_contain_text("What gets trained: LoRA")
    expect(formula).to_contain_text(r"\frac{16}{8}\,B A = 2\,B A")
    expect(alpha).to_be_visible()
    set_number(page, "lora-alpha", "32")
    expect(formula).to_contain_text(r"\frac{32}{8}\,B A = 4\,B A")
    expect(check).to_contain_text("trainable parameters")
    shots(page, "40_setup_formula_lora", "#method-formula .katex-display")
    set_number(page, "lora-alpha", "16")
    # Linear probe: no ΔW at all, said in words.
    method.get_by_text("Linear probe", exact=True).click()
    expect(formula).to_contain_text("Only the classification head trains")
    expect(formula).not_to_contain_text(r"\Delta W =")
    expect(alpha).to_be_hidden()
    shots(page, "41_setup_formula_probe", "#method-formula")
    method.get_by_text("KARST (Kronecker + re-scaling)", exact=True).click()
    expect(formula).to_contain_text(r"\sum_{i=1}^{2} C_i")
    expect(page.locator("#lr input")).to_have_value("0.01")
    # Warm-up: empty means the default rule (said in the box), and its error shows under it.
    warmup = page.locator("#warmup-epochs")
    expect(warmup.locator("input")).to_have_value("")
    expect(warmup.locator("input")).to_have_attribute("placeholder", "1 (0 for a one-epoch run)")
    set_number(page, "epochs", "2")
    set_number(page, "warmup-epochs", "2")
    expect(warmup).to_have_class(re.compile("karst-field-error"))
    expect(warmup).to_contain_text("must be smaller than epochs=2")
    expect(check).not_to_contain_text("trainable parameters")
    shots(page, "42_setup_warmup_error", "#warmup-epochs")
    set_number(page, "warmup-epochs", "1")
    expect(warmup).not_to_have_class(re.compile("karst-field-error"))
    expect(check).to_contain_text("trainable parameters")
    set_number(page, "warmup-epochs", "")
    expect(check).to_contain_text("trainable parameters")
    # On a phone every formula fits the column (KaTeX would cut a wider one off).
    page.set_viewport_size({"width": 390, "height": 844})
    expect(formula.locator(".katex-display").first).to_be_visible()
    cut = formula.locator(".katex-display").evaluate_all("els => els.filter(e => e.scrollWidth > e.clientWidth + 1)"
                                                         ".map(e => e.textContent)")
    page.set_viewport_size({"width": 1440, "height": 1100})
    assert not cut, cut
    expect_no_traceback(page)


def test_predict_shows_what_the_model_sees_knows_and_leaves_no_error_mark(page, extra_runs, tmp_path: Path) -> None:
    """The model's own 32 px input, the classes it knows, a dataset example's true class, the unsure
    note on noise; and a bad input followed by a good one leaves no red "Error" mark on a view."""
    # Gradio's red "Error" pill on a view of the prediction (the download row has its own events).
    stale_marks = page.locator(", ".join(f"#predict-{view} [data-testid=status-tracker] .error"
                                         for view in ("chart", "results", "seen", "verdict")))
    open_tab(page, "6 · Download & predict")
    pick_run(page, extra_runs["none"])
    expect(page.locator("#predict-classes")).to_contain_text("This model knows 10 classes: apple, strawberry")
    page.get_by_role("tab", name="Image (upload, paste, webcam)").click()
    expect(page.locator("#predict-examples .caption-label").first).to_have_text("apple")
    # A dataset example: its true class with a right/wrong icon, and the 32×32 picture the model got.
    page.locator("#predict-examples .thumbnail-item").first.click()
    verdict, seen = page.locator("#predict-verdict"), page.locator("#predict-seen")
    expect(verdict).to_contain_text(re.compile(r"example 1: \w+ \(\d+%\) · true: apple\s+(right|wrong)"))
    expect(verdict.locator("svg.karst-icon-ok, svg.karst-icon-error")).to_have_count(1)
    expect(page.locator("#predict-results")).to_contain_text("apple (")
    expect(seen).to_contain_text("What the model sees")
    expect(seen.locator(".caption-label")).to_have_text("32×32 px")
    # Sent enlarged 7× with whole pixels (PNG, no smoothing), so each model pixel is a visible square.
    assert seen.locator("img").evaluate("img => [img.naturalWidth, img.naturalHeight]") == [224, 224]
    assert seen.locator(".caption-label").evaluate("e => e.scrollWidth <= e.clientWidth")  # not cut short
    shots(page, "20_predict_example_seen", "#predict-seen img")
    # Uniform noise: the answer is close to a blind guess among the 10 classes, and a note says so.
    noise = tmp_path / "noise.png"
    pixels = torch.randint(0, 256, (64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    Image.fromarray(pixels.numpy()).save(noise)
    page.locator("#predict-image input[type=file]").set_input_files(str(noise))
    page.locator("#predict-image-btn").click()
    expect(verdict).to_contain_text("noise.png")
    expect(verdict).to_contain_text(re.compile(r"The model is unsure \(top class \d+%\): this picture may be "
                                               r"unlike its training images; it can only answer with one of its "
                                               r"10 classes"))
    expect(verdict).not_to_contain_text("true:")
    expect(seen.locator(".caption-label")).to_have_text("32×32 px")
    shots(page, "21_predict_unsure_noise", "#predict-verdict svg.karst-icon-warn")
    # A bad input marks the views "Error"; the next good prediction clears every mark.
    predict_a_text_file(page, tmp_path)
    expect(stale_marks.first).to_be_visible()  # the selector finds the marks while they are due
    shot(page, "22_predict_error_marks")
    page.get_by_role("tab", name="Image (upload, paste, webcam)").click()
    page.locator("#predict-image input[type=file]").set_input_files(str(make_png(tmp_path / "good.png", "blue")))
    page.locator("#predict-image-btn").click()
    expect(verdict).to_contain_text("good.png")
    expect(stale_marks).to_have_count(0)
    # Another kind of next action (a different run) clears them too, and the other model's answer.
    page.get_by_role("tab", name="Several images").click()
    page.locator("#predict-many-btn").click()
    expect(stale_marks.first).to_be_visible()
    pick_run(page, extra_runs["lora"])
    expect(stale_marks).to_have_count(0)
    expect(page.locator("#predict-classes")).to_contain_text("This model knows 10 classes")
    expect(page.locator("#predict-results")).not_to_contain_text("good.png")
    expect(verdict).not_to_contain_text("good.png")
    page.get_by_role("tab", name="Image (upload, paste, webcam)").click()
    page.locator("#predict-image-btn").click()
    expect(verdict).to_contain_text("good.png")
    shots(page, "23_predict_recovered", "#predict-seen img")
    expect_no_traceback(page)


def _luminance(rgb: tuple[int, ...] | list[int]) -> float:
    r, g, b = rgb[:3]
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _css_rgb(value: str) -> list[int]:
    """'rgb(243, 244, 246)' → [243, 244, 246]."""
    return [int(float(x)) for x in re.findall(r"[\d.]+", value)[:3]]


def test_lecture_mode_fits_a_projector_and_is_remembered(page, extra_runs) -> None:
    page.set_viewport_size({"width": 1024, "height": 768})
    pick_run(page, extra_runs["lora"])
    open_tab(page, "2 · Watch")
    expect(page.locator("#curves .js-plotly-plot .scatterlayer .trace").first).to_be_attached()
    progress = page.locator(".karst-progress-text").first
    # Readable in every mode: body size (not 0.9em) and the body's colour (not the light grey).
    assert float(progress.evaluate("e => parseFloat(getComputedStyle(e).fontSize)")) >= 14
    assert _luminance(_css_rgb(progress.evaluate("e => getComputedStyle(e).color"))) < 100
    tabs_before = page.locator("#tabs").bounding_box()["y"]
    page.locator("#lecture-mode input").check()
    expect(page.locator("body")).to_have_class(re.compile("karst-lecture"))
    expect(page.locator("#intro")).to_be_hidden()
    page.wait_for_timeout(600)  # plotly re-lays out for the new print size
    curves = page.locator("#curves").bounding_box()
    tabs_after = page.locator("#tabs").bounding_box()["y"]
    print(f"\nat 1024×768: tab bar at y={tabs_before:.0f} → {tabs_after:.0f} px in lecture mode; "
          f"curves start at y={curves['y']:.0f} px")
    assert curves["y"] < 768 - 150, curves  # the curves start on screen, not below the fold
    assert float(progress.evaluate("e => parseFloat(getComputedStyle(e).fontSize)")) >= 16
    assert float(page.locator("#watch-status p").first.evaluate(
        "e => parseFloat(getComputedStyle(e).fontSize)")) >= 17
    shots(page, "50_lecture_watch", "#curves .js-plotly-plot")
    # A refresh keeps the mode (the browser's local storage).
    page.reload()
    expect(page.locator("#lecture-mode input")).to_be_checked()
    expect(page.locator("body")).to_have_class(re.compile("karst-lecture"))
    page.locator("#lecture-mode input").uncheck()
    expect(page.locator("body")).not_to_have_class(re.compile("karst-lecture"))
    expect(page.locator("#intro")).to_be_visible()
    page.set_viewport_size({"width": 1440, "height": 1100})


def test_phone_shows_all_six_tabs_without_an_overflow_menu(page) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(600)
    titles = ("1 · Setup & launch", "2 · Watch", "3 · Kernels", "4 · Distribution alignment", "5 · Compare",
              "6 · Download & predict")
    for title in titles:
        tab = page.get_by_role("tab", name=title)
        expect(tab).to_be_visible()
        box = tab.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, (title, box)  # on screen, not scrolled away
    expect(page.locator("#tabs > .tab-wrapper .overflow-menu")).to_have_count(0)
    # The run picker's label starts with what tells runs apart, not with a timestamp.
    expect(page.locator("#run-picker input")).to_have_value(re.compile(r"^(?!\d{8}-)\S"))
    shots(page, "51_phone_tabs", "#tabs")
    page.set_viewport_size({"width": 1440, "height": 1100})


def _other_completed_run(server: AppHandle, run_id: str) -> str:
    return next(r["run_id"] for r in server.runner.list_runs()
                if r["run_id"] != run_id and (r.get("status") or {}).get("status") == "completed")


def test_two_runs_side_by_side_share_their_axes(page, server: AppHandle, extra_runs) -> None:
    other = _other_completed_run(server, extra_runs["lora"])
    pick_run(page, extra_runs["lora"])
    open_tab(page, "2 · Watch")
    box = page.locator("#watch-other input")
    box.click()
    box.fill(other[-4:])
    page.get_by_role("option", name=re.compile(other)).first.click()
    expect(page.locator("#curves-other .js-plotly-plot .scatterlayer .trace").first).to_be_attached()
    page.wait_for_function("() => document.querySelector('#curves .js-plotly-plot')?.layout?.yaxis2?.title")
    ranges = "e => ['xaxis', 'yaxis', 'xaxis2', 'yaxis2'].map(a => e.layout[a].range)"
    left = page.locator("#curves .js-plotly-plot").evaluate(ranges)
    right = page.locator("#curves-other .js-plotly-plot").evaluate(ranges)
    assert left == right and all(r is not None for r in left), (left, right)
    # Each run in its own colour, named by what sets it apart.
    strokes = [page.locator(f"{plot} .scatterlayer .trace path.js-line").first.evaluate("e => e.style.stroke")
               for plot in ("#curves", "#curves-other")]
    assert strokes[0] != strokes[1], strokes
    expect(page.locator("#curves")).to_contain_text("lora r8")
    expect(page.locator("#curves-other")).not_to_contain_text("lora r8")
    shots(page, "52_side_by_side", "#curves-other .js-plotly-plot")
    page.set_viewport_size({"width": 1024, "height": 768})
    page.locator("#lecture-mode input").check()
    shots(page, "53_side_by_side_lecture", "#curves-other .js-plotly-plot")
    page.locator("#lecture-mode input").uncheck()
    box.click()
    page.get_by_role("option", name=re.compile("None")).first.click()
    expect(page.locator("#curves-other")).to_be_hidden()


def test_plots_follow_the_dark_theme(page, server: AppHandle, extra_runs) -> None:
    context = page.context.browser.new_context(viewport={"width": 1440, "height": 1100})
    dark = context.new_page()
    dark.set_default_timeout(VIEW_TIMEOUT_MS)
    try:
        dark.goto(server.url + "?__theme=dark")
        expect(dark.locator("body")).to_have_class(re.compile("dark"))
        pick_run(dark, extra_runs["lora"])
        open_tab(dark, "2 · Watch")
        plot = dark.locator("#curves .js-plotly-plot")
        expect(plot.locator(".scatterlayer .trace").first).to_be_attached()
        dark.wait_for_timeout(600)
        pixels = Image.open(BytesIO(plot.screenshot())).convert("RGB")
        background = max(pixels.getcolors(1 << 20))[1]  # the most common colour: what is behind the curves
        assert _luminance(background) < 80, background
        tick = plot.locator(".xtick text").first.evaluate("e => getComputedStyle(e).fill")
        assert _luminance(_css_rgb(tick)) > 170, tick
        shots(dark, "54_dark_watch", "#curves .js-plotly-plot")
        for tab, name, ready in (("3 · Kernels", "55_dark_kernels", "#kernels-delta .heatmaplayer"),
                                 ("4 · Distribution alignment", "56_dark_alignment", "#align-gap .scatterlayer"),
                                 ("5 · Compare", "57_dark_compare", "#compare-scatter .scatterlayer")):
            open_tab(dark, tab)
            expect(dark.locator(ready).first).to_be_attached()
            shots(dark, name, ready)
        expect_no_traceback(dark)
    finally:
        context.close()


# Last: it deletes one of the extra runs that earlier tests use.
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
