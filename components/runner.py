"""The app's handle on the library: a ``karst.workspace.Workspace`` plus its results as Gradio values.

Everything a user can see lives in the run folders and is read by ``karst``; this module only turns
library results into the strings and pairs the panels show.
"""

from __future__ import annotations

from dataclasses import dataclass

from karst.estimate import RunEstimate
from karst.preflight import ASSUMED_CLASSES, SetupForm, form_key
from karst.workspace import Prediction, Workspace

from . import fmt

__all__ = ["Runner", "SetupForm", "CheckResult", "Prediction"]


@dataclass
class CheckResult:
    """The live settings check as the Setup panel shows it."""

    ok: bool
    markdown: str
    trainable: int | None = None
    field: str | None = None  # the form field at fault (its SetupForm name), when one is
    field_message: str = ""


class Runner(Workspace):
    """A :class:`~karst.workspace.Workspace` whose results come out ready for the panels."""

    def check_markdown(self, form: SetupForm) -> CheckResult:
        report = self.check(form)
        if not report.ok:
            key = form_key(report.field) if report.field else None
            return CheckResult(False, f"{fmt.ICON_ERROR} <span class='karst-error'>{report.message}</span>",
                               field=key, field_message=report.message)
        pc = report.counts
        share = pc.trainable / max(pc.total, 1)
        lines = [f"{fmt.ICON_OK} **{pc.trainable:,}** trainable parameters ({fmt.count(pc.adapter)} adapter + "
                 f"{fmt.count(pc.head)} head) — {share:.2%} of {fmt.count(pc.total)}.", *report.notes]
        if report.assumed_classes:
            lines.append(f"Head counted for {ASSUMED_CLASSES} classes; the real number is read from the data.")
        est = self.estimate(form)
        if est is not None:
            lines.append(self._estimate_line(est))
            lines += [f"{fmt.ICON_WARN} <span class='karst-warn'>{w}</span>" for w in est.warnings]
        return CheckResult(True, "  \n".join(lines), pc.trainable)

    @staticmethod
    def _estimate_line(est: RunEstimate) -> str:
        if est.total_steps is None:
            return f"{fmt.ICON_INFO} Steps: known once the data is read (the image count is not known yet)."
        steps = (f"**{est.total_steps:,} steps** ({est.steps_per_epoch:,} per epoch of {est.train_images:,} "
                 "training images)")
        when = (f"about **{fmt.rough_duration(est.seconds)}** {est.basis}" if est.seconds is not None
                else f"time: {est.basis}")
        return f"{fmt.ICON_INFO} {steps}; {when}."

    def run_dropdown(self) -> list[tuple[str, str]]:
        """(label, run id) pairs for the run picker, with the run's accuracy when it has one."""
        return [(label + (f" · {fmt.percent(acc)}" if acc is not None else ""), run_id)
                for label, run_id, acc in self.run_choices()]
