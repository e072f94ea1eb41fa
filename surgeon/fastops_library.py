"""Where surgeon's kernel library is and what it holds (see :mod:`surgeon.fastops`); a
leaf module, so the runner can register the library without importing the check that
runs it."""

from __future__ import annotations

import importlib.machinery
from pathlib import Path

DOMAIN = "ai.surgeon"
STATS = "TensorStats"
COMPARE = "ComparePair"
MEASURE = "MeasurePair"  # ComparePair's outputs, then TensorStats' numbers of the candidate
STORED = "Stored"  # a float16 tensor as stored (a copy onnxruntime cannot see through)

# Element types (onnx.TensorProto values) the kernels read.
STATS_TYPES = frozenset({1, 10, 11, 16})  # float32, float16, float64, bfloat16
COMPARE_TYPES = frozenset({1, 10})  # float32, float16


def library() -> str | None:
    """The path of the built library next to this module, or None."""
    here = Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"_fastops{suffix}"
        if path.is_file():
            return str(path)
    return None


__all__ = [
    "COMPARE",
    "COMPARE_TYPES",
    "DOMAIN",
    "MEASURE",
    "STATS",
    "STATS_TYPES",
    "STORED",
    "library",
]
