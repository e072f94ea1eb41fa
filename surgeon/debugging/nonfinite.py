"""Where a NaN/Inf comes from: blamed where it is born, the first node whose inputs are
finite and whose output is not (see :func:`blame_nonfinite`), and the first anomaly a
user should look at (:func:`rank_anomaly`)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from surgeon.debugging._graph import DebugFacts
from surgeon.debugging.results import NonFinite
from surgeon.model import Model
from surgeon.statistics import NEEDS_COUNTS, SEVERE, TensorStats

# What reading a constant's value can raise (a missing or misplaced weights file, a
# data type numpy lacks, a raw buffer of the wrong size): its finiteness is then unknown.
_UNREADABLE = (OSError, ValueError, TypeError, KeyError, onnx.checker.ValidationError)


def constant_tensors(model: Model) -> set[str]:
    """Main-graph tensors computed from constants only: initializers, Constant and
    ConstantOfShape outputs (whose fill value does not depend on the data, even when
    the shape does), and outputs of nodes whose inputs (and outer-scope reads of their
    bodies) are all such tensors. A NaN/Inf in one is put there on purpose (the
    ``-inf`` of an attention mask), not produced by the data."""
    return set(DebugFacts(model).constants)


def _count_nonfinite(value) -> tuple[int, int] | None:
    """(NaN count, Inf count) of a value; None when it cannot be told."""
    if value is None:
        return (0, 0)
    if isinstance(value, (list, tuple)):
        counts = [_count_nonfinite(v) for v in value]
        if any(c is None for c in counts):
            return None
        return (sum(c[0] for c in counts), sum(c[1] for c in counts))
    if isinstance(value, dict):
        return _count_nonfinite(list(value.values()))
    if not isinstance(value, np.ndarray):
        return None
    if value.dtype.kind in "biuOUSb":
        return (0, 0)
    if value.dtype in _NUMPY_FLOATS:
        x = value  # numpy's own floats: counted in place, no float64 copy of the tensor
    else:
        try:
            # float64 holds every narrower float exactly (bfloat16 and float8 included).
            x = value.astype(np.float64)
        except (TypeError, ValueError):
            return None
    if np.isfinite(x).all():  # the usual case: one pass instead of two
        return (0, 0)
    return (int(np.count_nonzero(np.isnan(x))), int(np.count_nonzero(np.isinf(x))))


# Float types whose NaN/Inf numpy counts in place, exactly as after a cast to float64
# (not longdouble: values beyond float64's range would become Inf in the cast; not
# complex: the cast keeps the real part only).
_NUMPY_FLOATS = frozenset(np.dtype(t) for t in ("float16", "float32", "float64"))


def blame_nonfinite(
    model: Model,
    stats: list[TensorStats],
    feeds: Mapping[str, object],
    *,
    facts: DebugFacts | None = None,
) -> list[NonFinite]:
    """Say where the NaN/Inf of each tapped tensor (and each graph input) comes from.

    A tensor's NaN/Inf are *born* at its producer only when every input of that node
    (and every outer-scope tensor its If/Loop/Scan bodies read) is finite: graph inputs
    are judged from the feeds, initializers and Constant values from their values, the
    rest from the statistics of tapped tensors. Values computed from constants only are
    deliberate (see :func:`constant_tensors`), not born. A node with an input that was
    not tapped and is not known otherwise is ``unknown``: it may be where the NaN/Inf is
    born, and the run fails, with a hint to tap its inputs. ``facts``: the model's graph
    facts when the caller has them already.
    """

    facts = facts or DebugFacts(model)
    found: list[NonFinite] = []
    known: dict[str, tuple[int, int] | None] = {}
    for name in model.input_names:
        if name in feeds:
            known[name] = counts = _count_nonfinite(feeds[name])
            if counts and (counts[0] or counts[1]):
                found.append(NonFinite(name, "input", counts[0], counts[1]))
    for s in stats:
        known[s.name] = None if s.flags == [NEEDS_COUNTS] else (s.nan, s.inf)
    initializers = {t.name: t for t in model.proto.graph.initializer}
    constant_nodes = facts.constant_nodes

    def lookup(name: str) -> tuple[int, int] | None:
        if name in known:
            return known[name]
        counts = None
        try:
            if name in initializers:
                # From the model's own folder, checked (onnx would read the current one).
                counts = _count_nonfinite(model.tensor_array(initializers[name]))
            elif name in constant_nodes:
                for a in constant_nodes[name].attribute:
                    if a.name == "value":
                        counts = _count_nonfinite(model.tensor_array(a.t))
                    elif a.name in ("value_float", "value_floats"):
                        counts = _count_nonfinite(
                            np.asarray(a.f if a.name == "value_float" else list(a.floats))
                        )
                    elif a.name.startswith("value_"):
                        counts = (0, 0)  # integers and strings are always finite
        except _UNREADABLE:
            counts = None
        known[name] = counts
        return counts

    constant = facts.constants
    for s in stats:
        if not (s.nan or s.inf) or s.flags == [NEEDS_COUNTS]:
            continue
        node = facts.producers.get(s.name)
        label = facts.labels[id(node)] if node is not None else s.node
        op = node.op_type if node is not None else s.op
        if s.name in constant:
            found.append(NonFinite(s.name, "constant", s.nan, s.inf, label, op))
            continue
        reads = [] if node is None else facts.reads(node)
        counts = {x: lookup(x) for x in dict.fromkeys(reads)}
        nan_in = any(c is not None and c[0] for c in counts.values())
        any_in = any(c is not None and (c[0] or c[1]) for c in counts.values())
        untapped = [x for x, c in counts.items() if c is None]
        from_inf = False
        if s.inf and not any_in:
            kind = "unknown" if untapped else "born"
        elif s.nan and not nan_in and any_in:
            # A NaN from Inf inputs (0 * -inf, Softmax of a fully masked row): born here,
            # but an anomaly only if it reaches an output (see _blame_nan_sources).
            kind, from_inf, untapped = "born", True, []
        elif s.nan and not nan_in:
            kind = "unknown" if untapped else "born"
        else:
            kind, untapped = "inherited", []
        found.append(NonFinite(s.name, kind, s.nan, s.inf, label, op, untapped))
        found[-1].from_inf = from_inf
    _blame_nan_sources(facts, found, known, lookup)
    return found


def _blame_nan_sources(facts: DebugFacts, found: list[NonFinite], known, lookup) -> None:
    """Judge the NaN that deliberate non-finite values give rise to by whether they
    reach a graph output.

    A deliberate ``-inf`` mask is absorbed before the outputs (Softmax turns it into 0;
    the NaN of a fully masked row is replaced by a Where), while a NaN weight in a Conv
    or a ``0 * -inf`` spoils everything after it. So two NaN sources fail the run only
    when some graph output holds NaN that a chain of NaN-holding tensors carries from
    them (a tapped tensor without NaN ends the chain: ``Where(IsNaN(t), 0, t)``):

    * a constant holding NaN: blamed (kind ``weights``) at the first tapped computed
      tensor that reads it directly;
    * a NaN born from inputs that hold Inf but no NaN (``from_inf``): kept ``born``;
      otherwise it is ``inherited`` from the deliberate Inf.
    """
    constant = facts.constants
    from_inf = {x.tensor for x in found if x.from_inf}
    if not any((c := known.get(o)) is not None and c[0] for o in facts.model.output_names):
        # No graph output holds NaN, so no source reaches one: skip the walk, which
        # reads every constant the graph uses (all the weights) to look for NaN.
        for x in found:
            if x.from_inf:
                x.kind, x.from_inf = "inherited", False
        return
    carries: dict[str, list[str]] = {}  # tensor -> NaN sources it may carry
    for node in facts.nodes:
        outs = [o for o in node.output if o]
        if not outs or all(o in constant for o in outs):
            continue
        sources: list[str] = []
        for x in facts.reads(node):
            if x in carries:
                sources += carries[x]
            elif x in constant:
                c = lookup(x)
                if c is not None and c[0]:
                    sources.append(x)
        for o in outs:
            mine = [o] if o in from_inf else []
            c = known.get(o)
            if not (sources or mine) or (c is not None and not c[0]):
                continue  # tapped and free of NaN: the chain ends here
            carries[o] = list(dict.fromkeys([*sources, *mine]))
    reached: dict[str, list[str]] = {}  # source -> outputs its NaN reaches
    for o in facts.model.output_names:
        c = known.get(o)
        if o in carries and c is not None and c[0]:
            for k in carries[o]:
                reached.setdefault(k, []).append(o)
    for x in found:
        if x.from_inf and x.tensor not in reached:
            x.kind, x.from_inf = "inherited", False
        elif x.from_inf:
            x.outputs = reached.pop(x.tensor)
    reached = {k: v for k, v in reached.items() if k not in from_inf}
    if not reached:
        return
    for x in found:
        node = facts.producers.get(x.tensor)
        if x.kind != "inherited" or not x.nan or node is None:
            continue
        direct = [k for k in dict.fromkeys(facts.reads(node)) if k in reached]
        if direct:
            x.kind, x.constants = "weights", direct
            x.outputs = list(dict.fromkeys(o for k in direct for o in reached[k]))
            for k in direct:
                reached.pop(k)
    # An entry point that was not tapped: blame the output the NaN reaches.
    for k, outs in reached.items():
        for x in found:
            if x.tensor == outs[0] and not x.fails:
                x.kind, x.constants, x.outputs = "weights", [k], outs
                break


def rank_anomaly(stats: list[TensorStats], nonfinite: list[NonFinite], constant: set[str]):
    """The first anomaly worth a user's attention: the first NaN/Inf born in the model;
    else the first flag (all-zero, constant, beyond-float16) on a computed float tensor.
    Flags on values computed from constants only (a Constant of zeros) or on integer
    tensors (an index accumulator beyond float16's range) are kept in the table but
    ranked below, and never lead the verdict."""
    by_name = {s.name: s for s in stats}
    for x in nonfinite:
        if x.fails and x.tensor in by_name:
            return by_name[x.tensor]
    for s in stats:
        if not s.flags or s.name in constant:
            continue
        if any(f in SEVERE for f in s.flags):
            continue  # inherited or deliberate NaN/Inf: explained, not the first anomaly
        is_float = s.dtype is not None and ("float" in s.dtype)
        if is_float:
            return s
    return None
