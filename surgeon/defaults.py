"""The defaults every command and every API function share, in one place that imports
nothing (the CLI reads them while ``surgeon --help`` builds its parser).

- Tolerance: measured on six healthy real models (the README, "Why 1e-4", has the same
  figures): ``debug M --ref-optimization all`` (every tensor at ``disabled`` against
  ``all``) flagged, at 1e-5 / 1e-4, rapidocr det 53 / 10 of 672 tensors, rec 128 / 2 of
  860, cls 12 / 0 of 566, ddddocr ocr 6 / 0 of 104, ddddocr det and magika none. Fused
  kernels differ by up to 5e-3 on one det tensor, which no tolerance can tell from a bug:
  1e-4 is the default with the fewest false alarms of the two, not one without any. At
  one optimisation level on both sides (every edit, ``diff M M``) a healthy result is
  bit-identical and reports a maximum error of 0; ``exact=True`` (``--exact``) requires
  it.
- Optimisation level: ``disabled`` runs the same kernels on both sides of a comparison
  (no fusion, no pre-packing), what an edit's bit-identity and a tap's check need.
"""

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-4
DEFAULT_OPTIMIZATION = "disabled"
