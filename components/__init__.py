"""The KARST Studio web UI: one module per panel, plus the shared pieces.

- ``runner``: the only module that calls the ``karst`` library (settings check, launch, reads).
- ``header``: run picker and Stop above the tabs; ``setup``, ``watch``, ``kernels``, ``alignment``,
  ``compare``, ``predict``: one panel each (``build`` lays out, ``bind`` wires events).
- ``plots`` (plotly figures), ``fmt`` (numbers, progress bar), ``texts`` (teaching Markdown),
  ``guard`` (errors → messages), ``wiring`` (views that follow the selected run).
"""
