"""The app's handle on the library: a ``karst.workspace.Workspace`` plus its results as Gradio values.

Everything a user can see lives in the run folders and is read by ``karst``; this module only turns
library results into the strings and pairs the panels show.
"""

from __future__ import annotations

from dataclasses import dataclass

from karst.preflight import ASSUMED_CLASSES, SetupForm
from karst.workspace import Prediction, Workspace

from . import fmt

__all__ = ["Runner", "SetupForm", "CheckResult", "Prediction"]


@dataclass
class CheckResult:
    """The live settings check as the Setup panel shows it."""

    ok: bool
    markdown: str
    trainable: int | None = None


class Runner(Workspace):
    """A :class:`~karst.workspace.Workspace` whose results come out ready for the panels."""

    def check_markdown(self, form: SetupForm) -> CheckResult:
        report = self.check(form)
        if not report.ok:
            return CheckResult(False, f"❌ {report.message}")
        pc = report.counts
        share = pc.trainable / max(pc.total, 1)
        lines = [f"✅ **{pc.trainable:,}** trainable parameters ({fmt.count(pc.adapter)} adapter + "
                 f"{fmt.count(pc.head)} head) — {share:.2%} of {fmt.count(pc.total)}.", *report.notes]
        if report.assumed_classes:
            lines.append(f"Head counted for {ASSUMED_CLASSES} classes; the real number is read from the data.")
        return CheckResult(True, "  \n".join(lines), pc.trainable)

    def run_dropdown(self) -> list[tuple[str, str]]:
        """(label, run id) pairs for the run picker, with the run's accuracy when it has one."""
        return [(label + (f" · {fmt.percent(acc)}" if acc is not None else ""), run_id)
                for label, run_id, acc in self.run_choices()]
