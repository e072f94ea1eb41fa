"""Tensor comparison and the DiffReport every verification returns.

:mod:`~surgeon.compare.results` holds what a comparison returns (Tolerance, TensorDiff,
DiffReport); :mod:`~surgeon.compare.arrays` the element-by-element comparison itself.
Numbers only, no rendering: ``surgeon.report`` draws these as rich tables and the CLI
writes ``to_dict()`` as JSON. A report is truthy when it passed.
"""

from surgeon.compare.arrays import as_reference_dtype, cast_note, compare_arrays, compare_named
from surgeon.compare.results import (
    DIFF_SCHEMA,
    EXACT,
    DiffReport,
    TensorDiff,
    Tolerance,
    extra,
    json_number,
    missing,
)

__all__ = [
    "DIFF_SCHEMA",
    "EXACT",
    "DiffReport",
    "TensorDiff",
    "Tolerance",
    "as_reference_dtype",
    "cast_note",
    "compare_arrays",
    "compare_named",
    "extra",
    "json_number",
    "missing",
]
