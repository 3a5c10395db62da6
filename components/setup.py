"""Setup & launch: pick backbone, data, method and settings; see whether they fit; queue a run."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import gradio as gr

from karst.config import DEFAULT_BACKBONE, DEFAULT_DATASET, DEFAULT_LR
from karst.preflight import form_spec

from . import texts
from .clients import as_client
from .guard import guarded
from .header import Header
from .runner import Runner, SetupForm

__all__ = ["SetupPanel", "build", "bind"]

_METHODS = [("KARST (Kronecker + re-scaling)", "karst"), ("LoRA", "lora"), ("LoKr", "lokr"),
            ("Full fine-tune", "full"), ("Linear probe", "probe")]
_DATASET_SOURCES = [("Embedded task", "embedded"), ("Folder on the server", "folder"),
                    ("VTAB-1K folder", "vtab"), ("Zip upload", "zip"), ("torchvision", "torchvision")]
_BACKBONE_SOURCES = [("Embedded / timm hub", "catalogue"), ("Local weights file", "file")]
# Methods whose update is scaled by method.lora_alpha / r (peft's LoRA and LoKr).
_SCALED = ("lora", "lokr")
# The form fields the formula panel shows, as texts.method_formula's keywords.
_FORMULA_KEYS = ("method", "n_kernels", "stack_dim", "rank", "rescale", "lora_alpha")


@dataclass
class SetupPanel:
    form: dict[str, gr.components.Component]  # keyed by SetupForm field name
    check: gr.Markdown
    method_note: gr.Markdown
    formula: gr.Markdown  # the chosen method's update and parameter count, with the form's numbers
    launch: gr.Button
    fault: gr.State  # (field, message) of the last check, to mark that field

    def marked(self) -> list[gr.components.Component]:
        """The fields that show their own error (those with a help line under them)."""
        return [self.form[k] for k in _FIELD_HELP if k in self.form]

    def inputs(self) -> list[gr.components.Component]:
        """Form components in SetupForm field order (Gradio passes values positionally)."""
        return [self.form[name] for name in SetupForm.field_names()]


# Each setting's help line, shown under its field and replaced by the field's error when it has one.
_FIELD_HELP: dict[str, str] = {}


def _widget(key: str, **extra: Any) -> gr.components.Component:
    """The form field of one setting, with its label, help and default from karst.config."""
    spec = form_spec(key)
    value = getattr(SetupForm(), key)
    _FIELD_HELP[key] = spec.help
    common = {"label": spec.label, "info": spec.help, "elem_id": key.replace("_", "-"), **extra}
    if spec.kind == "bool":
        return gr.Checkbox(value, **common)
    if spec.choices:
        choices = common.pop("choices", list(spec.choices))
        return gr.Radio(choices, value=value, **common) if len(spec.choices) <= 5 and key != "device" \
            else gr.Dropdown(choices, value=value, **common)
    if value is None:
        # A text box, not a Number: Gradio shows an empty Number as 0 and sends 0, which would mean
        # "no warm-up" or "0 images" instead of the default rule. Empty text is None; the placeholder
        # says what empty means (the help's "empty: ..." part).
        return gr.Textbox(None, placeholder=spec.help.partition("empty: ")[2] or None, max_lines=1, **common)
    # No minimum and no rounding here: Gradio would refuse 0 with a message naming no field, and round
    # 2.5 to another value silently; karst's own check names the field and says what to enter.
    return gr.Number(value, **common)


def build(runner: Runner) -> SetupPanel:
    """Lay out the Setup tab (no events)."""
    d = SetupForm()
    f: dict[str, Any] = {}
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Group():
                gr.Markdown("**Backbone**")
                f["backbone_source"] = gr.Radio(_BACKBONE_SOURCES, value=d.backbone_source, show_label=False,
                                                elem_id="backbone-source")
                f["backbone"] = gr.Dropdown(runner.backbone_choices(), value=DEFAULT_BACKBONE, label="Backbone",
                                            allow_custom_value=True, elem_id="backbone",
                                            info="Embedded model works offline; timm hub names need a network.")
                f["weights_path"] = gr.Textbox(label="Weights file on the server (.safetensors / .pth)",
                                               visible=False, elem_id="weights-path")
                f["weights_arch"] = gr.Textbox(label="timm architecture of that file", visible=False,
                                               placeholder="vit_base_patch16_224", elem_id="weights-arch")
                f["pretrained"] = _widget("pretrained")
            with gr.Group():
                gr.Markdown("**Data**")
                f["dataset_source"] = gr.Radio(_DATASET_SOURCES, value=d.dataset_source, show_label=False,
                                               elem_id="dataset-source")
                f["dataset"] = gr.Dropdown(runner.dataset_choices(), value=DEFAULT_DATASET, label="Embedded task",
                                           elem_id="dataset")
                f["dataset_path"] = gr.Textbox(label="Folder on the server", visible=False, elem_id="dataset-path",
                                               placeholder="/data/my_images (one sub-folder per class)")
                f["dataset_zip"] = gr.File(label="Zip with one sub-folder per class", file_types=[".zip"],
                                           type="filepath", visible=False, elem_id="dataset-zip")
                f["torchvision_name"] = gr.Dropdown(runner.torchvision_choices(), value=None, visible=False,
                                                    allow_custom_value=True, elem_id="torchvision-name",
                                                    label="torchvision dataset (downloaded on first use)")
            with gr.Group():
                f["method"] = _widget("method", choices=_METHODS)
                method_note = gr.Markdown(texts.METHOD_NOTES[d.method], latex_delimiters=texts.LATEX_DELIMITERS)
                with gr.Row():
                    for key in ("n_kernels", "stack_dim", "rank", "rescale"):
                        f[key] = _widget(key)
                    f["lora_alpha"] = _widget("lora_alpha", visible=d.method in _SCALED)
            with gr.Row():
                # The learning rate is shown as a number (a browser sends an empty Number as 0);
                # choosing a method puts that method's default here.
                for key in ("lr", "epochs", "warmup_epochs"):
                    f[key] = _widget(key)
            with gr.Row():
                for key in ("batch_size", "seed", "device"):
                    f[key] = _widget(key)
            with gr.Accordion("More", open=False):
                with gr.Row():
                    f["max_train_samples"] = _widget("max_train_samples")
                    f["probe_size"] = _widget("probe_size")
            check = gr.Markdown("Checking settings…", elem_id="settings-check")
            launch = gr.Button("▶ Launch", variant="primary", elem_id="launch")
        with gr.Column(scale=2):
            formula = gr.Markdown(show_formula(*(getattr(d, k) for k in _FORMULA_KEYS)),
                                  latex_delimiters=texts.LATEX_DELIMITERS, elem_id="method-formula")
    return SetupPanel(form=f, check=check, method_note=method_note, formula=formula, launch=launch,
                      fault=gr.State((None, "")))


# ---------------------------------------------------------------------------- handlers
def check_settings(runner: Runner, *values: Any) -> tuple[str, tuple[str | None, str]]:
    result = runner.check_markdown(SetupForm(*values))
    return result.markdown, (result.field, result.field_message)


def mark_fields(fault: tuple[str | None, str]) -> tuple:
    """The field at fault shows its error in red under it; every other field its help line."""
    key, message = fault
    return tuple(gr.update(info=f"✗ {message}", elem_classes=["karst-field-error"]) if k == key
                 else gr.update(info=help_text, elem_classes=[]) for k, help_text in _FIELD_HELP.items())


def show_backbone_fields(source: str) -> tuple:
    local = source == "file"
    return gr.update(visible=not local), gr.update(visible=local), gr.update(visible=local)


def show_dataset_fields(source: str) -> tuple:
    return (gr.update(visible=source == "embedded"), gr.update(visible=source in ("folder", "vtab")),
            gr.update(visible=source == "zip"), gr.update(visible=source == "torchvision"))


def show_method_fields(method: str) -> tuple:
    kron = method == "karst"
    ranked = method in ("karst", "lora", "lokr")
    return (texts.METHOD_NOTES[method], gr.update(visible=kron), gr.update(visible=kron),
            gr.update(visible=ranked), gr.update(visible=kron), gr.update(visible=method in _SCALED),
            gr.update(value=DEFAULT_LR[method]))


def show_formula(*values: Any) -> str:
    """The formula panel for the form's values of ``_FORMULA_KEYS``."""
    return texts.method_formula(**dict(zip(_FORMULA_KEYS, values, strict=True)))


def launch_run(runner: Runner, *values: Any, owner: str | None = None) -> tuple:
    """Queue a run as this browser's (it may stop it; the queue takes turns between browsers)."""
    run_id = runner.launch(SetupForm(*values), owner=owner)
    gr.Info(f"Queued {run_id}.")
    return (gr.Dropdown(choices=runner.run_dropdown(), value=run_id), runner.runs_signature(),
            gr.Tabs(selected="watch"), "watch")


def bind(p: SetupPanel, runner: Runner, header: Header, tabs: gr.Tabs, demo: gr.Blocks) -> None:
    """Wire the Setup tab's events."""
    f = p.form
    f["backbone_source"].change(show_backbone_fields, f["backbone_source"],
                                [f["backbone"], f["weights_path"], f["weights_arch"]], api_visibility="private")
    f["dataset_source"].change(show_dataset_fields, f["dataset_source"],
                               [f["dataset"], f["dataset_path"], f["dataset_zip"], f["torchvision_name"]],
                               api_visibility="private")
    f["method"].change(show_method_fields, f["method"],
                       [p.method_note, f["n_kernels"], f["stack_dim"], f["rank"], f["rescale"], f["lora_alpha"],
                        f["lr"]], api_visibility="private")
    # The formula follows every edit at once (a pure text, unlike the check, which builds the model).
    formula_inputs = [f[k] for k in _FORMULA_KEYS]
    gr.on([c.change for c in formula_inputs], show_formula, formula_inputs, p.formula, show_progress="hidden",
          api_visibility="private")
    # Live validation: any edit re-checks; "always_last" drops stale checks while the user types.
    gr.on([c.change for c in p.inputs()] + [demo.load], guarded(partial(check_settings, runner)),
          inputs=p.inputs(), outputs=[p.check, p.fault], trigger_mode="always_last", show_progress="hidden",
          api_name="check_settings").then(mark_fields, p.fault, p.marked(), show_progress="hidden",
                                          api_visibility="private")
    p.launch.click(guarded(as_client(partial(launch_run, runner))), inputs=[header.clients.token, *p.inputs()],
                   outputs=[header.run, header.runs_sig, tabs, header.tab], api_name="launch")
