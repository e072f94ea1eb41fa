"""Comparing two tensors inside an onnxruntime graph: nodes that reduce a pair of float
tensors to a handful of numbers, and :func:`diff_from_outputs`, which turns those numbers
into the :class:`TensorDiff` that :func:`surgeon.compare.compare_arrays` gives on the
same two arrays.

Why in the graph: a layer-wise comparison fetched every activation of both models and
kept them alive at once; compared where they are made, onnxruntime frees each pair as a
plain run frees its tensors, and only three small outputs per pair leave it.

The nodes follow compare_arrays's general float path in float64 (every float16/float32
value, and the difference of two of them, is exact or correctly rounded there, as in
numpy): NaN/Inf counted per side; mismatches where the values differ, NaN matching NaN,
finite pairs within ``atol + rtol * |reference|``; max_abs, max_rel and the cosine's
sums over the pairs finite on both sides. Sums run in onnxruntime's order, not numpy's:
the cosine may differ from compare_arrays's in the last bits (the tests allow 1e-12);
every other number is identical.

Pairs the nodes cannot hold (other dtypes, ``exact`` bit-identity, containers) are
refused by :func:`in_graph_comparable`; the caller compares those values itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from surgeon.compare.results import TensorDiff, Tolerance
from surgeon.protos import fill_node

# float16/float32 only: their values and differences are exact in float64, so no
# difference overflows and no integer goes beyond 2**53 (compare_arrays's special cases).
_DTYPES = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16"}

# Positions in the packed float64 vector of numbers per pair.
_FIELDS = (
    "nan",
    "reference_nan",
    "inf",
    "reference_inf",
    "mismatches",
    "finite",
    "nonzero",
    "max_abs",
    "max_rel",
    "dot",
    "norm",
    "reference_norm",
)


def in_graph_comparable(elem_type: int, reference_elem_type: int, tolerance: Tolerance) -> bool:
    """True when a pair of these ONNX element types can be compared in the graph with
    the same numbers compare_arrays gives (``exact`` compares bits: refused)."""
    return not tolerance.exact and elem_type in _DTYPES and reference_elem_type in _DTYPES


@dataclass(frozen=True)
class ComparisonOutputs:
    """The graph outputs of one compared pair: each side's shape and the packed numbers."""

    shape: str
    reference_shape: str
    numbers: str
    dtype: str  # the dtype compared (the reference's; the candidate is cast to it)
    # [excess, born] of surgeon.precision.severity, when asked for ("" otherwise)
    severity: str = ""
    # The fast nodes' float32 mismatch count (see add_fast_comparison), when set: this
    # output rather than its slot in ``numbers``.
    mismatches: str = ""
    # surgeon.fastops' ComparePair: ``numbers`` holds the twelve numbers, then the
    # severity numbers [excess, born], for every pair (finite or not).
    fused: bool = False
    # MeasurePair (add_fused_comparison's ``stats``): the candidate's statistics, the
    # numbers of surgeon.statistics' COUNT_FIELDS ("" otherwise)
    stats: str = ""

    def names(self) -> list[str]:
        return (
            [self.shape, self.reference_shape, self.numbers]
            + ([self.severity] if self.severity else [])
            + ([self.mismatches] if self.mismatches else [])
            + ([self.stats] if self.stats else [])
        )


def severity_in_graph(tolerance: Tolerance) -> bool:
    """True when the severity numbers (:func:`surgeon.precision.severity`'s excess and
    born count) can be computed by the comparison nodes with the numbers numpy gives:
    every limit ``atol + rtol * |reference|`` is positive and finite for float16/float32
    references, so a ratio is never 0 / 0 nor inf / inf (never NaN)."""
    return (
        not tolerance.exact
        and tolerance.atol > 0
        and math.isfinite(tolerance.atol + tolerance.rtol * _FLOAT32_MAX_BOUND)
    )


# Above float32's largest finite value (3.4028235e38): bounds every |reference| here.
_FLOAT32_MAX_BOUND = 3.5e38


def _needs_raw(actual_type: int, expected_type: int) -> bool:
    """True when the candidate cast to the reference's dtype loses bits (float32 against
    a float16 reference): the severity reads the candidate's own values, not the cast."""
    return actual_type != expected_type and not (
        actual_type == TensorProto.FLOAT16 and expected_type == TensorProto.FLOAT
    )


class SharedNodes:
    """What the comparisons appended to one graph share: constants (one initializer per
    value, not one per comparison) and the reference side of the fast comparison (a
    reference tensor compared with several candidates, e.g. the candidate's own tensor
    and an isolated unit's output, is cast, measured and bounded once).

    Why: onnxruntime's session creation grows with every node and initializer (about
    0.1 ms each measured on a 14k-node merged model), and every float64 pass over an
    activation costs its run.
    """

    def __init__(self) -> None:
        self.constants: dict[tuple, str] = {}
        self.references: dict[tuple, dict[str, str]] = {}


class _Builder:
    """Appends nodes and constants with fresh names under one prefix."""

    def __init__(
        self, graph: onnx.GraphProto, prefix: str, shared: SharedNodes | None = None
    ) -> None:
        self.graph, self.prefix, self.count, self.shared = graph, prefix, 0, shared

    def name(self) -> str:
        self.count += 1
        return f"{self.prefix}{self.count}"

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.name()
        fill_node(self.graph.node.add(), op, inputs, out, **attrs)
        return out

    def const(self, value: np.ndarray) -> str:
        key = (value.dtype.str, value.shape, value.tobytes())
        if self.shared is not None and key in self.shared.constants:
            return self.shared.constants[key]
        out = self.name()
        self.graph.initializer.append(onnx.numpy_helper.from_array(value, out))
        if self.shared is not None:
            self.shared.constants[key] = out
        return out


def add_comparison(
    graph: onnx.GraphProto,
    actual: str,
    actual_type: int,
    expected: str,
    expected_type: int,
    tolerance: Tolerance,
    prefix: str,
    *,
    severity: bool = False,
    shared: SharedNodes | None = None,
) -> ComparisonOutputs:
    """Append to ``graph`` the nodes comparing tensor ``actual`` with ``expected``
    (element types as ONNX enums, both accepted by :func:`in_graph_comparable`) and
    return the names of their outputs (not yet graph outputs). Needs opset >= 11.

    The candidate is first cast to the reference's dtype, as the layer comparison casts
    it; a shape mismatch does not fail the run (the flattened sides are cut to the
    shorter one) and :func:`diff_from_outputs` reports it from the shapes.

    With ``severity`` (only when :func:`severity_in_graph`), the nodes also give the
    excess (largest ``|a - b| / (atol + rtol * |b|)`` over the pairs finite on both
    sides, ``a`` the candidate in its own dtype) and the count of elements born
    non-finite (``a`` not finite where ``b`` is), see :func:`severity_from_outputs`.
    With ``shared``, constants are one initializer per value in the graph.
    """
    b = _Builder(graph, prefix, shared)
    # Reshape before any Cast: onnxruntime's CPU runs float16 chains in float32 and
    # drops a Cast pair float32 -> float16 -> wider, so a Cast reading the tensor would
    # see it unrounded; a Reshape reads the float16 tensor itself, as a fetch does.
    flat = b.const(np.array([-1], np.int64))
    a = b.node("Reshape", [actual, flat])
    if actual_type != expected_type:
        a = b.node("Cast", [a], to=expected_type)
    a = b.node("Cast", [a], to=TensorProto.DOUBLE)
    e = b.node("Cast", [b.node("Reshape", [expected, flat])], to=TensorProto.DOUBLE)
    one = b.const(np.array([1], np.int64))
    zero_i = b.const(np.array([0], np.int64))
    # Each side cut to the other's length (Slice clamps), so Sub never fails on shapes.
    a_cut = b.node("Slice", [a, zero_i, b.node("Reshape", [b.node("Size", [e]), one])])
    e_cut = b.node("Slice", [e, zero_i, b.node("Reshape", [b.node("Size", [a]), one])])
    zero = b.const(np.array([0.0]))

    def count(mask: str) -> str:
        return b.node("ReduceSum", [b.node("Cast", [mask], to=TensorProto.DOUBLE)], keepdims=1)

    def total(x: str) -> str:
        # The 0 appended makes the sum of nothing 0 and keeps the shape [1].
        return b.node("ReduceSum", [b.node("Concat", [x, zero], axis=0)], keepdims=1)

    def largest(x: str) -> str:
        # Values >= 0; the 0 appended keeps ReduceMax off an empty tensor.
        return b.node("ReduceMax", [b.node("Concat", [x, zero], axis=0)], keepdims=1)

    nan_a, nan_e = b.node("IsNaN", [a_cut]), b.node("IsNaN", [e_cut])
    bad_a = b.node("Or", [nan_a, b.node("IsInf", [a_cut])])
    bad_e = b.node("Or", [nan_e, b.node("IsInf", [e_cut])])
    finite = b.node("Not", [b.node("Or", [bad_a, bad_e])])
    diff = b.node("Abs", [b.node("Sub", [a_cut, e_cut])])
    magnitude = b.node("Abs", [e_cut])
    same = b.node("Or", [b.node("Equal", [a_cut, e_cut]), b.node("And", [nan_a, nan_e])])
    # atol + rtol * |reference|, in compare_arrays's order of operations; not Greater
    # rather than LessOrEqual (opset 12) so opset 11 models take it.
    limit = b.node(
        "Add",
        [
            b.node("Mul", [magnitude, b.const(np.array(tolerance.rtol, np.float64))]),
            b.const(np.array(tolerance.atol, np.float64)),
        ],
    )
    within = b.node("And", [finite, b.node("Not", [b.node("Greater", [diff, limit])])])
    same = b.node("Or", [same, within])
    nonzero = b.node("And", [finite, b.node("Not", [b.node("Equal", [e_cut, zero])])])
    scalar_zero = b.const(np.array(0.0))
    rel = b.node("Div", [diff, b.node("Where", [nonzero, magnitude, b.const(np.array(1.0))])])

    def on_finite(x: str, mask: str = finite) -> str:
        return b.node("Where", [mask, x, scalar_zero])

    numbers = {
        "nan": count(b.node("IsNaN", [a])),
        "reference_nan": count(b.node("IsNaN", [e])),
        "inf": count(b.node("IsInf", [a])),
        "reference_inf": count(b.node("IsInf", [e])),
        "mismatches": count(b.node("Not", [same])),
        "finite": count(finite),
        "nonzero": count(nonzero),
        "max_abs": largest(on_finite(diff)),
        "max_rel": largest(on_finite(rel, nonzero)),
        "dot": total(on_finite(b.node("Mul", [a_cut, e_cut]))),
        "norm": total(on_finite(b.node("Mul", [a_cut, a_cut]))),
        "reference_norm": total(on_finite(b.node("Mul", [e_cut, e_cut]))),
    }
    packed = b.node("Concat", [numbers[f] for f in _FIELDS], axis=0)
    severity_numbers = ""
    if severity:
        raw_diff, raw_finite, raw_bad = diff, finite, bad_a
        if _needs_raw(actual_type, expected_type):
            raw = b.node("Cast", [b.node("Reshape", [actual, flat])], to=TensorProto.DOUBLE)
            raw = b.node("Slice", [raw, zero_i, b.node("Reshape", [b.node("Size", [e]), one])])
            raw_bad = b.node("Or", [b.node("IsNaN", [raw]), b.node("IsInf", [raw])])
            raw_finite = b.node("Not", [b.node("Or", [raw_bad, bad_e])])
            raw_diff = b.node("Abs", [b.node("Sub", [raw, e_cut])])
        # limit > 0 (severity_in_graph): a difference of 0 has the ratio 0 already
        excess = largest(on_finite(b.node("Div", [raw_diff, limit]), raw_finite))
        born = count(b.node("And", [raw_bad, b.node("Not", [bad_e])]))
        severity_numbers = b.node("Concat", [excess, born], axis=0)
    return ComparisonOutputs(
        shape=b.node("Shape", [actual]),
        reference_shape=b.node("Shape", [expected]),
        numbers=packed,
        dtype=_DTYPES[expected_type],
        severity=severity_numbers,
    )


def add_fast_comparison(
    graph: onnx.GraphProto,
    actual: str,
    actual_type: int,
    expected: str,
    expected_type: int,
    tolerance: Tolerance,
    prefix: str,
    *,
    severity: bool = False,
    shared: SharedNodes | None = None,
    rank: int | None = None,
    size: int | None = None,
) -> ComparisonOutputs:
    """:func:`add_comparison` for pairs whose shapes are known equal and whose values are
    all finite: a third of the nodes and no masks (onnxruntime's Where, Slice and Concat
    copies cost more than the arithmetic). Whether the values were finite shows in the
    numbers (:func:`needs_general`); such pairs are compared again with
    :func:`add_comparison`.

    Finite float16/float32 values make every step exact or correctly rounded in float64:
    a squared value never overflows nor vanishes, so the sum of squares is finite exactly
    when every value is, and zero exactly when every value is 0.

    With ``shared``, constants and the reference side (``expected`` in float64, its
    magnitude, limit and sum of squares) are made once per graph. The nodes come in the
    order that lets each float64 temporary die soonest (onnxruntime's priority order
    follows the node order among ready nodes): the candidate's float64 copy is read by
    its sums and the difference, then only the difference lives on.

    ``rank`` (the two tensors' rank, when known) lets float32 pairs be compared in
    their own shape: no flattening Reshape, which copies a tensor still read later.
    Float16 tensors are always read through a Reshape (see add_comparison).

    ``size`` (the element count, when known) below 2**24 lets the mismatches be
    counted in float32, exact there (measured on a 1.6M-element pair: 2.8 against 3.7
    ms). (The dot product stays a Mul and ReduceSum: taken from sums of squares,
    ``(|a|^2 + |b|^2 - |a - b|^2) / 2``, it saved a pass but lost the cosine for tensors
    of norms far apart, 0 for a copy scaled by 2**-70: review.)
    """
    b = _Builder(graph, prefix, shared)
    half = TensorProto.FLOAT16 in (actual_type, expected_type)
    # the rank the nodes work in: 1 (flattened) or the tensors' own
    rank = 1 if half or not rank else rank
    ref = _fast_reference_side(b, expected, tolerance, rank)
    flat = b.const(np.array([-1], np.int64))
    a = b.node("Reshape", [actual, flat]) if rank == 1 else actual
    if actual_type != expected_type:
        a = b.node("Cast", [a], to=expected_type)
    a = b.node("Cast", [a], to=TensorProto.DOUBLE)
    e = ref["e"]
    norm = b.node("ReduceSumSquare", [a], keepdims=1)
    dot = b.node("ReduceSum", [b.node("Mul", [a, e])], keepdims=1)
    diff = b.node("Abs", [b.node("Sub", [a, e])])
    raw_diff = diff
    if severity and _needs_raw(actual_type, expected_type):
        raw = b.node("Cast", [b.node("Reshape", [actual, flat])], to=TensorProto.DOUBLE)  # rank 1
        raw_diff = b.node("Abs", [b.node("Sub", [raw, e])])
    max_abs = b.node("ReduceMax", [diff], keepdims=1)
    # a sum of ones and zeros below 2**24 is exact in float32 whatever the order
    count_type = TensorProto.FLOAT if size is not None and size < 2**24 else TensorProto.DOUBLE
    mismatches = b.node(
        "ReduceSum",
        [b.node("Cast", [b.node("Greater", [diff, ref["limit"]])], to=count_type)],
        keepdims=1,
    )
    excess = ""
    if severity:
        # Finite values (else the pair is compared again by add_comparison): no element
        # is born non-finite, and limit > 0 (severity_in_graph) makes every ratio a number.
        excess = b.node("ReduceMax", [b.node("Div", [raw_diff, ref["limit"]])], keepdims=1)
    # |d| / |b| where b != 0, |d| / inf = 0 where b == 0 (|d| is finite here)
    rel = b.node("Div", [diff, ref["denominator"]])
    max_rel = b.node("ReduceMax", [rel], keepdims=1)
    # numbers of shape [1] * rank, as the reductions give them (keepdims)
    zero = b.const(np.zeros([1] * rank))
    # (finite and nonzero stand in for the counts: see diff_from_outputs)
    numbers = {
        "nan": zero,
        "reference_nan": zero,
        "inf": zero,
        "reference_inf": zero,
        # (a float32 count is its own output: the packed numbers are float64)
        "mismatches": zero if count_type == TensorProto.FLOAT else mismatches,
        "finite": b.const(np.ones([1] * rank)),
        "nonzero": ref["reference_norm"],
        "max_abs": max_abs,
        "max_rel": max_rel,
        "dot": dot,
        "norm": norm,
        "reference_norm": ref["reference_norm"],
    }
    packed = b.node("Concat", [numbers[f] for f in _FIELDS], axis=0)
    severity_numbers = b.node("Concat", [excess, zero], axis=0) if severity else ""
    return ComparisonOutputs(
        shape=b.node("Shape", [actual]),
        reference_shape=ref["shape"],
        numbers=packed,
        dtype=_DTYPES[expected_type],
        severity=severity_numbers,
        mismatches=mismatches if count_type == TensorProto.FLOAT else "",
    )


def add_fused_comparison(
    graph: onnx.GraphProto,
    actual: str,
    actual_type: int,
    expected: str,
    expected_type: int,
    tolerance: Tolerance,
    prefix: str,
    *,
    severity: bool = False,
    shared: SharedNodes | None = None,
    stats: bool = False,
    **_plan,
) -> ComparisonOutputs:
    """:func:`add_comparison` as one node of surgeon's kernel library (see
    :mod:`surgeon.fastops`; only when ``fastops.available()``, and the graph's model must
    import its domain): the same numbers from one pass over the pair, NaN, Inf and
    shape mismatches included, so no pair is compared twice. The shape plan
    add_fast_comparison takes (``rank``, ``size``) is not needed.

    ``stats``: the node (MeasurePair) also gives the candidate's statistics, as
    TensorStats would, from the same read of the tensor (``ComparisonOutputs.stats``)."""
    from surgeon import fastops

    del _plan
    b = _Builder(graph, prefix, shared)
    bounds = b.const(np.array([tolerance.atol, tolerance.rtol], np.float64))
    # A float16 tensor is read as it is stored without the Reshape add_comparison puts
    # before its Cast: the kernel takes float16 itself, so onnxruntime hands it the
    # stored tensor (no Cast pair to drop on the way).
    inputs = [actual, expected]
    numbers, shape, reference_shape = b.name(), b.name(), b.name()
    measured = b.name() if stats else ""
    op = fastops.MEASURE if stats else fastops.COMPARE
    # (without severity the kernel skips its division per element)
    node = fill_node(graph.node.add(), op, [*inputs, bounds], numbers, severity=int(severity))
    node.domain = fastops.DOMAIN
    node.output.extend([shape, reference_shape] + ([measured] if stats else []))
    return ComparisonOutputs(
        shape=shape,
        reference_shape=reference_shape,
        numbers=numbers,
        dtype=_DTYPES[expected_type],
        fused=True,
        stats=measured,
    )


def _fast_reference_side(
    b: _Builder, expected: str, tolerance: Tolerance, rank: int
) -> dict[str, str]:
    """The nodes of the fast comparison that read only the reference tensor (made once
    per graph and rank when ``b`` shares)."""
    key = (expected, tolerance.atol, tolerance.rtol, rank)
    if b.shared is not None and key in b.shared.references:
        return b.shared.references[key]
    flat = b.const(np.array([-1], np.int64))
    e = b.node("Reshape", [expected, flat]) if rank == 1 else expected
    e = b.node("Cast", [e], to=TensorProto.DOUBLE)
    magnitude = b.node("Abs", [e])
    # atol + rtol * |reference|, in compare_arrays's order of operations
    limit = b.node(
        "Add",
        [
            b.node("Mul", [magnitude, b.const(np.array(tolerance.rtol, np.float64))]),
            b.const(np.array(tolerance.atol, np.float64)),
        ],
    )
    # |b|, or inf where b == 0: a ratio there is 0, as compare_arrays leaves zero
    # references out of max_rel (made here, once, instead of a mask per comparison).
    # max(|b|, 2**-1000 / |b|) is exactly that: 2**-1000 / 0 = inf, and for b != 0 (at
    # least float32's smallest subnormal, 2**-149) the quotient is at most 2**-851, below
    # |b|. Two arithmetic passes, measured at half the time of onnxruntime's Where
    # (Equal + Where: 8.5 ms against 4 ms on a 1.6M-element float64 tensor).
    tiny_over = b.node("Div", [b.const(np.array(2.0**-1000)), magnitude])
    side = {
        "e": e,
        "limit": limit,
        "denominator": b.node("Max", [magnitude, tiny_over]),
        "reference_norm": b.node("ReduceSumSquare", [e], keepdims=1),
        "shape": b.node("Shape", [expected]),
    }
    if b.shared is not None:
        b.shared.references[key] = side
    return side


def add_overflow_count(graph: onnx.GraphProto, source: str, narrowed: str, prefix: str) -> str:
    """Append the nodes counting the elements of float tensor ``source`` that are finite
    but not once cast (``narrowed``, e.g. float32 1e5 in float16); returns the name of
    the count, a float64 vector of one element. A cast keeps NaN a NaN and Inf an Inf,
    so those are the elements infinite in ``narrowed`` and not in ``source``."""
    b = _Builder(graph, prefix)
    flat = b.const(np.array([-1], np.int64))
    wide = b.node("Cast", [b.node("Reshape", [source, flat])], to=TensorProto.DOUBLE)
    # (a Reshape reads the narrowed tensor as it is stored: see add_comparison)
    back = b.node("Cast", [b.node("Reshape", [narrowed, flat])], to=TensorProto.DOUBLE)
    mask = b.node("And", [b.node("IsInf", [back]), b.node("Not", [b.node("IsInf", [wide])])])
    counted = b.node(
        "Concat", [b.node("Cast", [mask], to=TensorProto.DOUBLE), b.const(np.array([0.0]))], axis=0
    )
    return b.node("ReduceSum", [counted], keepdims=1)


def add_fused_overflow_count(
    graph: onnx.GraphProto, source: str, narrowed: str, prefix: str
) -> str:
    """:func:`add_overflow_count` as one ComparePair node of surgeon's kernel library
    (only when ``fastops.available()``, for a float32 ``source`` narrowed to float16,
    and the graph's model must import its domain): the pair's NaN and Inf counts alone
    (``counts``, from the bits of each side), read by :func:`overflow_from_outputs`,
    where the ONNX nodes make two float64 copies of the tensor. Returns the name of the
    node's numbers."""
    from surgeon import fastops

    b = _Builder(graph, prefix)
    bounds = b.const(np.array([0.0, 0.0], np.float64))
    numbers = b.name()
    inputs = [narrowed, source, bounds]
    node = fill_node(graph.node.add(), fastops.COMPARE, inputs, numbers, severity=0, counts=1)
    node.domain = fastops.DOMAIN
    node.output.extend([b.name(), b.name()])  # (the shapes, unread)
    return numbers


def overflow_from_outputs(count: str, fused: bool, values: Mapping[str, np.ndarray]) -> int:
    """The count made by :func:`add_overflow_count` (``fused`` False) or
    :func:`add_fused_overflow_count`: for the kernel, the narrowed tensor's Infs less
    the source's (a cast keeps an Inf an Inf and a NaN a NaN, so the difference is the
    finite values that overflowed)."""
    numbers = values[count].ravel()
    return int(numbers[2] - numbers[3]) if fused else int(numbers[0])


def severity_from_outputs(
    outputs: ComparisonOutputs, values: Mapping[str, np.ndarray]
) -> tuple[float, int]:
    """(excess, born count) of a pair compared with ``severity``; meaningful only when
    the two shapes are equal (as surgeon.precision.severity measures them)."""
    if outputs.fused:
        excess, born = values[outputs.numbers].ravel().tolist()[len(_FIELDS) :]
    else:
        excess, born = values[outputs.severity].ravel().tolist()
    return float(excess), int(born)


def needs_general(outputs: ComparisonOutputs, values: Mapping[str, np.ndarray]) -> bool:
    """True when a pair compared by :func:`add_fast_comparison` held a NaN or Inf, or
    was counted in float32 at a run size where that count may be inexact (a planned
    size below 2**24 that did not hold): its numbers do not hold, compare it with
    :func:`add_comparison`.

    A pair whose run shapes differ (a planned shape that did not hold) needs nothing
    more: finite sums of squares say neither side holds a NaN or Inf (the counts the
    fast nodes give, zero, are right), and :func:`diff_from_outputs` reports the shapes
    without reading the other numbers."""
    if outputs.fused:
        return False
    n = dict(zip(_FIELDS, values[outputs.numbers].ravel().tolist(), strict=True))
    if outputs.mismatches and math.prod(int(d) for d in values[outputs.shape]) >= 2**24:
        return True
    return not (math.isfinite(n["norm"]) and math.isfinite(n["reference_norm"]))


def diff_from_outputs(
    outputs: ComparisonOutputs,
    values: Mapping[str, np.ndarray],
    tolerance: Tolerance,
    *,
    name: str,
    reference: str,
) -> TensorDiff:
    """The :class:`TensorDiff` of a pair compared in the graph, from the run's values of
    ``outputs``: the numbers compare_arrays gives on the two arrays (the candidate cast
    to the reference's dtype)."""
    del tolerance  # applied in the graph; kept for symmetry with compare_arrays
    shape = [int(d) for d in values[outputs.shape]]
    reference_shape = [int(d) for d in values[outputs.reference_shape]]
    numbers = values[outputs.numbers].ravel().tolist()
    n = dict(zip(_FIELDS, numbers[: len(_FIELDS)] if outputs.fused else numbers, strict=True))
    size = math.prod(reference_shape)
    d = TensorDiff(
        name=name,
        reference=reference,
        status="ok",
        shape=shape,
        reference_shape=reference_shape,
        dtype=outputs.dtype,
        reference_dtype=outputs.dtype,
        size=size,
    )
    d.nan, d.reference_nan = int(n["nan"]), int(n["reference_nan"])
    d.inf, d.reference_inf = int(n["inf"]), int(n["reference_inf"])
    if shape != reference_shape:
        d.status = "shape"
        d.message = f"shape {shape} != reference {reference_shape}"
        d.mismatches = size
        return d
    if size == 0:
        d.max_abs, d.max_rel, d.cosine = 0.0, 0.0, 1.0
        return d
    d.mismatches = int(
        values[outputs.mismatches].ravel()[0] if outputs.mismatches else n["mismatches"]
    )
    if n["finite"]:
        d.max_abs = n["max_abs"]
        if n["nonzero"]:
            d.max_rel = n["max_rel"]
        else:
            d.max_rel = 0.0 if d.max_abs == 0 else math.inf
        d.cosine = _cosine(n["dot"], n["norm"], n["reference_norm"])
    if d.mismatches:
        d.status = "mismatch"
        d.message = f"{d.mismatches} of {d.size} elements differ"
    return d


def _cosine(dot: float, norm: float, reference_norm: float) -> float:
    """compare_arrays's cosine from the sums: a float16/float32 value squared never
    vanishes in float64, so a zero sum means an all-zero side."""
    if norm == 0 or reference_norm == 0:
        return 1.0 if norm == reference_norm else 0.0
    return float(np.clip(dot / (math.sqrt(norm) * math.sqrt(reference_norm)), -1.0, 1.0))


__all__ = [
    "ComparisonOutputs",
    "SharedNodes",
    "add_comparison",
    "add_fast_comparison",
    "add_fused_comparison",
    "add_fused_overflow_count",
    "add_overflow_count",
    "diff_from_outputs",
    "in_graph_comparable",
    "needs_general",
    "overflow_from_outputs",
    "severity_from_outputs",
    "severity_in_graph",
]
