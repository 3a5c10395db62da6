"""Start the real app (server + engine worker) for the e2e and browser tests, and stop it after.

Not a conftest: only the two app test modules import it, so the rest of the suite never pays for
a server.
"""

from __future__ import annotations

import dataclasses
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from app import AppOptions, launch
from components.runner import Runner, SetupForm

__all__ = ["AppHandle", "start_app", "fast_form", "form_values", "make_png", "make_evil_zip"]

# Small enough that a run takes seconds on two CPU cores, big enough that curves have points
# (2 steps per epoch). Validation and test sets keep their full size: the engine has no knob.
FAST = {"epochs": 2, "batch_size": 32, "max_train_samples": 64, "probe_size": 16}


@dataclass
class AppHandle:
    demo: Any
    runner: Runner
    url: str

    def close(self) -> None:
        self.demo.close()
        self.runner.jobs.stop_worker()


def start_app(runs_dir: Path) -> AppHandle:
    """Launch on 127.0.0.1, a free port, a fresh runs directory, without blocking."""
    demo, runner, url = launch(AppOptions(runs_dir=runs_dir), prevent_thread_lock=True)
    return AppHandle(demo, runner, url)


def fast_form(**changes: Any) -> SetupForm:
    return SetupForm(**{**FAST, **changes})


def form_values(form: SetupForm) -> list[Any]:
    """The positional values of the Setup form, as the /launch and /check_settings endpoints take them."""
    return [getattr(form, f.name) for f in dataclasses.fields(form)]


def make_png(path: Path, color: str = "orange", size: int = 48) -> Path:
    img = Image.new("RGB", (size, size), "white")
    img.paste(Image.new("RGB", (size // 2, size // 2), color), (size // 4, size // 4))
    img.save(path)
    return path


def make_evil_zip(path: Path) -> Path:
    """A zip with a path-traversal entry next to an innocent-looking class folder."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="PNG")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("cats/a.png", buf.getvalue())
        z.writestr("../evil.txt", "escaped the upload folder")
    return path
