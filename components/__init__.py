"""The KARST Studio web UI: one module per panel, plus the shared pieces.

- ``runner``: the app's handle on the library (a ``karst.workspace.Workspace``); other modules take
  from ``karst`` only the names listed in docs/ARCHITECTURE.md ("Names the UI may use").
- ``header``: run picker and Stop above the tabs; ``setup``, ``watch``, ``kernels``, ``alignment``,
  ``compare``, ``predict``: one panel each (``build`` lays out, ``bind`` wires events).
- ``plots`` (plotly figures), ``fmt`` (numbers, progress bar), ``texts`` (teaching Markdown),
  ``guard`` (errors → messages), ``wiring`` (views that follow the selected run).
"""
