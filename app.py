"""KARST Studio web app: ``python app.py [--host H] [--port P] [--runs-dir D] [--data-root DIR] [--auth user:pw]``.

A thin Gradio client of the ``karst`` engine. Training happens in the engine's worker process, never
inside a UI event; the page polls the run folders, so refreshing, opening a second tab or losing the
connection loses nothing.

Safe defaults: binds 127.0.0.1, no share link, an upload size limit, uploads kept in a private
temporary folder (removed at exit, SIGTERM included), only that folder served (downloads are copied
into it), no server path accepted outside the ``--data-root`` folders (none by default), wrong
passwords answered slowly, Gradio's run history off.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["AppOptions", "parse_args", "parse_auth", "build_demo", "launch", "main"]

CSS = """
/* Progress is read from the back of a room too: body size and contrast, in every mode. */
.karst-progress-text { font-size: var(--text-md); color: var(--body-text-color); }
#settings-check { min-height: 2.5em; }
#run-details-table td:first-child { min-width: 7.5em; word-break: normal; overflow-wrap: normal; }
@media (min-width: 640px) { #run-details-table td:first-child { white-space: nowrap; } }
.karst-error { color: #b31b1b; }
.karst-warn { color: #8a5300; }
.karst-field-error input, .karst-field-error textarea { border-color: #d62728 !important;
  box-shadow: 0 0 0 1px #d62728 !important; }
.karst-field-error [data-testid="block-info"], .karst-field-error .info { color: #b31b1b !important; }
/* The title line: the heading, and the lecture-mode toggle at its right end, on one line at any width. */
#title-row { flex-wrap: nowrap; align-items: center; }
#title-row > #title { flex: 1 1 auto; }
#title-row > #lecture-mode { flex: 0 0 auto; width: auto; background: none; border-width: 0; box-shadow: none; }
@media (max-width: 480px) { #title h1 { font-size: 1.6em; } }

/* Plots follow the theme: figures are see-through (components/plots.py), and in the dark theme
   their text and grid lines take the page's colours. Hover labels keep plotly's own contrast. */
.dark .js-plotly-plot .main-svg text:not(.hoverlayer text) { fill: var(--body-text-color) !important; }
.dark .js-plotly-plot .gridlayer path, .dark .js-plotly-plot .zerolinelayer path {
  stroke: rgba(255, 255, 255, 0.16) !important; }

/* Lecture mode (components/lecture.py puts the class on <body>): larger print, compact header.
   The theme's derived sizes are restated: they were computed from the old sizes at :root. */
:root body.karst-lecture {
  --text-xxs: 12px; --text-xs: 13px; --text-sm: 15px; --text-md: 18px; --text-lg: 20px; --text-xl: 26px;
  --text-xxl: 30px;
  --body-text-size: var(--text-md); --prose-text-size: var(--text-md); --input-text-size: var(--text-md);
  --block-info-text-size: var(--text-sm); --block-label-text-size: var(--text-md);
  --block-title-text-size: var(--text-md); --section-header-text-size: var(--text-md);
  --checkbox-label-text-size: var(--text-md);
  --button-medium-text-size: var(--text-md); --button-large-text-size: var(--text-lg);
}
.karst-lecture #intro { display: none; }
.karst-lecture #title h1 { font-size: var(--text-xxl); margin: 0; }
.karst-lecture #header-row [data-testid="block-info"] { display: none; }
.karst-lecture #tabs [role="tab"] { font-size: 16px; padding-left: 10px; padding-right: 10px; }
.karst-lecture :is(#curves, #curves-other) [data-testid="block-label"] { display: none; }
/* The teaching column goes below the curves, which get the full width. */
.karst-lecture #watch-row { flex-direction: column; align-items: stretch; }
/* ...and never wider than the page: a figure still at its old width must not widen the column. */
.karst-lecture #watch-row > * { min-width: 0; max-width: 100%; }
/* Plot text grows in the figures' layouts (components/lecture.py), where plotly makes room for it. */
"""


@dataclass
class AppOptions:
    host: str = "127.0.0.1"
    port: int | None = None
    runs_dir: Path = Path("runs")
    auth: tuple[str, str] | None = None
    share: bool = False
    max_file_size: str = "500mb"
    start_worker: bool = True
    check: bool = False
    data_roots: tuple[Path, ...] = ()  # folders server paths may be under; none by default
    ray: str | None = None  # --ray: send launches to a Ray cluster ("" = $RAY_ADDRESS or auto)
    max_runs_per_browser: int = 3  # runs one browser may have queued or running at once; 0: no limit


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """``user:password`` → ``("user", "password")``; the password may itself contain ':'."""
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise argparse.ArgumentTypeError("--auth expects user:password with both parts non-empty")
    return user, password


def parse_args(argv: list[str] | None = None) -> AppOptions:
    p = argparse.ArgumentParser(description="KARST Studio: fine-tune ViTs with Kronecker adapters in the browser.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=None, help="port (default: first free from 7860)")
    p.add_argument("--runs-dir", type=Path, default=Path(os.environ.get("KARST_RUNS_DIR", "runs")),
                   help="runs directory shared with the `karst` CLI (default ./runs or $KARST_RUNS_DIR)")
    p.add_argument("--auth", type=parse_auth, default=None, metavar="USER:PASSWORD",
                   help="require this login")
    p.add_argument("--share", action="store_true", help="create a public gradio.live link (off by default)")
    p.add_argument("--max-file-size", default="500mb", help="largest upload accepted (default 500mb)")
    p.add_argument("--data-root", type=Path, action="append", default=[], metavar="DIR",
                   help="a folder whose dataset folders and weight files users may train on (repeatable); "
                   "without one, no server path is accepted")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="send launches to a Ray cluster: HOST:PORT, ray://HOST:PORT, 'local' (127.0.0.1 only) or "
                   "nothing ($RAY_ADDRESS); the run folders stay here (pip install -r requirements-ray.txt)")
    p.add_argument("--max-runs-per-browser", type=_count, default=3, metavar="N",
                   help="runs one browser (or API client) may have queued or running at once, so a lab shares the "
                   "queue fairly; browsers also take turns in it (default 3; 0: no limit)")
    p.add_argument("--check", action="store_true",
                   help="build the whole app (catalogues, panels, events) and exit without serving")
    a = p.parse_args(argv)
    return AppOptions(host=a.host, port=a.port, runs_dir=a.runs_dir, auth=a.auth, share=a.share,
                      max_file_size=a.max_file_size, start_worker=not a.check, check=a.check,
                      data_roots=tuple(a.data_root), ray=a.ray, max_runs_per_browser=a.max_runs_per_browser)


def _count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of 0 or more")
    return number


def private_upload_dir() -> Path:
    """A fresh 0700 folder for this process's uploads, removed at exit.

    Gradio stores uploads under ``GRADIO_TEMP_DIR``; pointing it here keeps them away from the
    shared /tmp/gradio and from other users of the machine.
    """
    folder = Path(tempfile.mkdtemp(prefix="karst-uploads-")).resolve()
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # runs on SIGTERM/SIGHUP too: see main()
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    return folder


def build_demo(runner):
    """Build the Blocks: header (run picker) above six tabs, each from its panel module."""
    import gradio as gr

    from components import alignment, compare, header, kernels, lecture, predict, setup, sweeps, texts, watch

    with gr.Blocks(title="KARST Studio") as demo:
        title, _, intro = texts.TITLE.partition("\n")  # the heading line, then the introduction
        with gr.Row(equal_height=True, elem_id="title-row"):
            gr.Markdown(title, elem_id="title")
            lecture_mode = lecture.build()
        gr.Markdown(intro, elem_id="intro")
        head = header.build(runner)
        # "wrap": on a phone every tab stays on the bar (in rows) instead of hiding behind a "⋯" menu.
        with gr.Tabs(selected="setup", elem_id="tabs", overflow_behavior="wrap") as tabs:
            with gr.Tab("1 · Setup & launch", id="setup", elem_id="tab-setup") as t_setup:
                setup_panel = setup.build(runner)
            with gr.Tab("2 · Watch", id="watch", elem_id="tab-watch") as t_watch:
                watch_panel = watch.build()
            with gr.Tab("3 · Kernels", id=kernels.TAB_ID, elem_id="tab-kernels") as t_kernels:
                kernels_panel = kernels.build()
            with gr.Tab("4 · Distribution alignment", id=alignment.TAB_ID, elem_id="tab-alignment") as t_align:
                alignment_panel = alignment.build()
            with gr.Tab("5 · Compare", id="compare", elem_id="tab-compare") as t_compare:
                compare_panel = compare.build()
                sweeps_panel = sweeps.build()
            with gr.Tab("6 · Download & predict", id=predict.TAB_ID, elem_id="tab-predict") as t_predict:
                predict_panel = predict.build()

        # Remember the visible tab so hidden views skip their work on run changes.
        for tab, tab_id in ((t_setup, "setup"), (t_watch, "watch"), (t_kernels, kernels.TAB_ID),
                            (t_align, alignment.TAB_ID), (t_compare, "compare"), (t_predict, predict.TAB_ID)):
            tab.select(lambda tid=tab_id: tid, None, head.tab, api_visibility="private", queue=False)

        header.bind(head, runner, demo, tabs)
        lecture.bind(lecture_mode, demo)
        setup.bind(setup_panel, runner, head, tabs, demo)
        watch.bind(watch_panel, runner, head)
        kernels.bind(kernels_panel, runner, head.run, t_kernels, head.tab)
        alignment.bind(alignment_panel, runner, head.run, t_align, head.tab)
        compare.bind(compare_panel, runner, t_compare)
        sweeps.bind(sweeps_panel, runner, t_compare)
        predict.bind(predict_panel, runner, head.run, t_predict, head.tab)
    return demo


def launch(options: AppOptions, *, prevent_thread_lock: bool = False):
    """Create the runner and the Blocks, and launch with the safe defaults.

    Returns:
        (demo, runner, local_url).
    """
    upload_dir = private_upload_dir()  # before gradio builds anything: it reads GRADIO_TEMP_DIR
    import gradio as gr

    from components.login import LoginThrottle
    from components.runner import Runner

    runs_dir = options.runs_dir.resolve()
    runner = Runner(runs_dir, upload_dir, start_worker=options.start_worker,
                    data_roots=[root.resolve() for root in options.data_roots], ray=options.ray,
                    max_active_per_owner=options.max_runs_per_browser or None)
    atexit.register(runner.close)  # detach: the worker may then idle-exit once nothing is queued
    demo = build_demo(runner)
    demo.queue(default_concurrency_limit=2)
    _, local_url, _ = demo.launch(
        server_name=options.host,
        server_port=options.port,
        auth=LoginThrottle(*options.auth).check if options.auth else None,
        share=options.share,
        max_file_size=options.max_file_size,
        # Only the upload folder, where downloads are copied too: never the runs directory (its
        # logs and configs name server paths) nor the data roots.
        allowed_paths=[str(upload_dir)],
        run_history=False,
        show_error=False,
        footer_links=["api", "settings"],
        prevent_thread_lock=prevent_thread_lock,
        quiet=prevent_thread_lock,
        theme=gr.themes.Soft(),
        css=CSS,
    )
    return demo, runner, local_url


def check(options: AppOptions) -> int:
    """Build the app as ``launch`` would, without a server or a worker; 0 if it builds."""
    from components.runner import Runner

    upload_dir = private_upload_dir()
    demo = build_demo(Runner(options.runs_dir.resolve(), upload_dir, start_worker=False))
    names = sorted(d.api_name for d in demo.fns.values() if d.api_name and d.api_visibility == "public")
    print(f"KARST Studio builds: {len(demo.blocks)} components, public endpoints: {', '.join(names)}")
    return 0


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    options = parse_args(argv)
    if options.check:
        raise SystemExit(check(options))
    _stop_on_signals()
    from karst.errors import KarstError  # local: karst imports torch; `app.py --help` needs none of it

    try:
        launch(options)
    except KarstError as e:  # e.g. an unreachable --ray cluster: one line, before anything is served
        print(f"app.py: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _stop_on_signals() -> None:
    """SIGTERM and SIGHUP stop the app as Ctrl-C does, so exit handlers run (the private upload
    folder is removed); by default they would end the process on the spot."""
    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)


if __name__ == "__main__":
    main()
