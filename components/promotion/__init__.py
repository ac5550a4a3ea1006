"""The promotion gate: is the challenger good enough to replace the champion (``docs/gate.md``).

- :mod:`components.promotion.config`: the gate file's format, checks and relative bounds.
- :mod:`components.promotion.gate`: the verdict (floors, champion, baselines, checks, slices) and the
  blessing artifact.
- :mod:`components.promotion.slices`: per-slice challenger vs champion regressions.
- :mod:`components.promotion.bootstrap`: the paired bootstrap behind every comparison.
- :mod:`components.promotion.report`: the HTML report; :mod:`components.promotion.init_config`:
  ``item gate init``, a gate file for a new catalog.
"""
