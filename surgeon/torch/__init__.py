"""The PyTorch bridge: export with dynamic axes and check the result, capture activations.

* :func:`export` wraps ``torch.onnx.export`` and immediately checks the file it wrote:
  onnxruntime runs it at the export shape and at other sizes of every dynamic axis, each
  run is compared with the PyTorch module on the same inputs, and the classic tracing
  pitfalls it can detect are reported (outputs that vanish, dict keys that are lost, a
  dynamic axis that breaks or gives wrong shapes, values that differ).
* :func:`capture` records every submodule's output with forward hooks and, given the
  exported model, keys them by the ONNX tensor holding the same value
  (:func:`surgeon.origin.match_activations`), ready for
  ``surgeon debug model.onnx --ref acts.npz``.

torch is imported inside the functions: ``import surgeon.torch`` works without it, and
every function raises a SurgeonError with the install command when it is missing.

Modules: :mod:`~surgeon.torch.export` (the export), :mod:`~surgeon.torch.check` (the
check of the exported file), :mod:`~surgeon.torch.capture` (activation capture),
:mod:`~surgeon.torch.results` (the result types).
"""

from surgeon.torch._support import EXPORTERS, INSTALL_HINT
from surgeon.torch.capture import Capture, capture
from surgeon.torch.export import export
from surgeon.torch.results import ExportCheck, Pitfall, ShapeRun

__all__ = [
    "EXPORTERS",
    "INSTALL_HINT",
    "Capture",
    "ExportCheck",
    "Pitfall",
    "ShapeRun",
    "capture",
    "export",
]
