"""The defaults every command and every API function share, in one place that imports
nothing (the CLI reads them while ``surgeon --help`` builds its parser).

- Tolerance: measured on healthy real models (rapidocr det/rec/cls, ddddocr det/ocr,
  magika; the README has the figures): onnxruntime's optimised kernels differ from the
  unoptimised ones by up to ~2e-5 relative on some tensors, so 1e-5 raised false alarms
  in ``debug --ref-optimization`` while 1e-4 did not. An edit that keeps values
  bit-identical still reports a maximum error of 0; ``exact=True`` (``--exact``)
  requires it.
- Optimisation level: ``disabled`` runs the same kernels on both sides of a comparison
  (no fusion, no pre-packing), what an edit's bit-identity and a tap's check need.
"""

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-4
DEFAULT_OPTIMIZATION = "disabled"
