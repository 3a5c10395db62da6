"""Lecture mode: a compact layout in larger print, for a projector, kept in the browser.

The mode is a class on the page's ``<body>`` (:data:`CLASS`; app.py's CSS says what it changes) and a
flag in the browser's local storage, so a refresh keeps it. Nothing reaches the server: it is a way
of showing the page, not a setting of the app.
"""

from __future__ import annotations

import gradio as gr

__all__ = ["CLASS", "STORAGE_KEY", "build", "bind"]

CLASS = "karst-lecture"
STORAGE_KEY = "karst-studio-lecture"

# Plot text grows through each figure's layout, not CSS: plotly then measures the larger text and
# makes room for it (margins, legend entries). Gradio draws every figure with ``Plotly.react``, so
# that call is wrapped once: it keeps the figure's own layout on the element (``_karstLayout``) and
# draws an enlarged copy while the mode is on. Flipping the mode redraws each figure from its own.
_PLOTS = """
const SCALE = 1.25, BASE = 12;  // plotly's default text size is 12 px
const bigger = (font, size) => ({...(font || {}), size: Math.round(((font && font.size) || size) * SCALE)});
const enlarged = (layout) => {
  const out = {...layout, font: bigger(layout.font, BASE)};
  if (layout.annotations) out.annotations = layout.annotations.map(
    (a) => (a.font && a.font.size ? {...a, font: bigger(a.font, BASE)} : a));
  if (layout.title && layout.title.font && layout.title.font.size)
    out.title = {...layout.title, font: bigger(layout.title.font, BASE)};
  return out;
};
const lecture = () => document.body.classList.contains('__CLASS__');
const wrap = (plotly) => {
  if (!plotly || plotly.react.karstLecture) return;
  const react = plotly.react;
  plotly.react = function (gd, data, layout, config) {
    if (gd && layout) gd._karstLayout = layout;
    return react.call(this, gd, data, layout && lecture() ? enlarged(layout) : layout, config);
  };
  plotly.react.karstLecture = true;
};
window.karstRedrawPlots = () => {
  if (!window.Plotly) return;
  // A figure drawn before the wrapping has only its own layout, still unenlarged.
  document.querySelectorAll('.js-plotly-plot').forEach(
    (gd) => gd.layout && window.Plotly.react(gd, gd.data, gd._karstLayout || gd.layout));
};
if (window.Plotly) wrap(window.Plotly);
else {  // plotly loads with the first figure: wrap it as it arrives
  let plotly;
  Object.defineProperty(window, 'Plotly', {configurable: true, get: () => plotly,
                                           set: (value) => { plotly = value; wrap(value); }});
}
""".replace("__CLASS__", CLASS)

# localStorage throws where storage is blocked (some private windows): the mode then lasts the visit.
_SET = """(on) => {
  document.body.classList.toggle('__CLASS__', on);
  try { localStorage.setItem('__KEY__', on ? '1' : '0'); } catch (e) {}
  if (window.karstRedrawPlots) window.karstRedrawPlots();
  return on;
}""".replace("__CLASS__", CLASS).replace("__KEY__", STORAGE_KEY)
_RESTORE = """() => {
  __PLOTS__
  let on = false;
  try { on = localStorage.getItem('__KEY__') === '1'; } catch (e) {}
  document.body.classList.toggle('__CLASS__', on);
  window.karstRedrawPlots();
  return on;
}""".replace("__PLOTS__", _PLOTS).replace("__CLASS__", CLASS).replace("__KEY__", STORAGE_KEY)


def build() -> gr.Checkbox:
    """The toggle (place it where it should show; no events)."""
    return gr.Checkbox(False, label="Lecture mode", container=False, elem_id="lecture-mode")


def bind(toggle: gr.Checkbox, demo: gr.Blocks) -> None:
    """Restore the stored mode on page load; apply and store it when the user flips the toggle.

    Both run in the browser only (``fn=None``): no round trip, nothing in the API.
    """
    demo.load(None, None, toggle, js=_RESTORE, queue=False, api_visibility="private")
    toggle.input(None, toggle, None, js=_SET, queue=False, api_visibility="private")
