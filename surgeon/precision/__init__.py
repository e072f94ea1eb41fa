"""Precision debugging: which node of a float16 or int8 model loses the accuracy.

* :func:`pair_tensors` pairs a converted model's tensors with its reference's, by name and
  through the Casts and QuantizeLinear -> DequantizeLinear chains converters insert;
* :func:`isolated_errors` runs every node whose inputs are paired on the reference's
  values there (all of them in one batched onnxruntime run): its own error, apart from
  what it inherits;
* :func:`pick_root_cause` names the node whose own error is worst beyond tolerance,
  whatever the node order; :func:`analyse_precision` does all three.
"""

from surgeon.precision.analysis import PrecisionReport, analyse_precision
from surgeon.precision.isolated import IsolatedError, IsolatedRun, isolated_errors
from surgeon.precision.pairing import Pair, Pairing, pair_tensors
from surgeon.precision.severity import RootCause, Severity, pick_root_cause, rank_units

__all__ = [
    "IsolatedError",
    "IsolatedRun",
    "Pair",
    "Pairing",
    "PrecisionReport",
    "RootCause",
    "Severity",
    "analyse_precision",
    "isolated_errors",
    "pair_tensors",
    "pick_root_cause",
    "rank_units",
]
