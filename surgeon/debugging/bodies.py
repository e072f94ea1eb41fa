"""``debug`` inside If/Loop/Scan bodies: what a body tap's values mean, and the root cause
inside a body.

How body tensors are exposed is :mod:`surgeon.edits.tap_bodies`; this module reads the
run that exposed them:

* **Executed or not.** A tap inside an If branch that did not run is *not executed*: it
  gets no statistics (no zero-size activation with fake numbers), no comparison, and no
  saved value; the report lists it. The branch markers say which branch ran.
* **Iterations.** A tap inside a Loop/Scan holds every iteration stacked along leading
  axes (one per enclosing Loop/Scan). Its statistics cover all iterations; the *worst
  iteration* is the first one holding a NaN/Inf, else the one holding the largest
  absolute value. A Loop that ran zero times leaves its taps not executed.
* **NaN/Inf blame.** The generic blame reads main-graph producers only; for a body tap
  it is redone here from the body node's own inputs (qualified names), tapped body
  tensors and main-graph tensors alike.
* **Root cause.** Nodes inside bodies are not run in isolation (the isolated run takes
  main-graph nodes): when the root cause found by the main-graph rules is a node holding
  bodies, or those rules name none, and tensors inside bodies diverge, the root cause is
  named inside by the positional rule: the first diverged body tensor none of whose
  compared inputs diverged (a holder found there is entered in turn; a differing
  Constant, where a weight enters, ranks first). Inside a Loop/Scan, the first iteration
  that diverges is named. The report says, as a note, that the body node was judged by
  position.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from surgeon.compare import compare_arrays
from surgeon.debugging._graph import DebugFacts
from surgeon.debugging.reference import _run_reference
from surgeon.debugging.results import names_text, number_text
from surgeon.edits.tap_bodies import (
    BodyPlan,
    BodyTensor,
    body_tensors,
    plan_body_taps,
)
from surgeon.errors import SurgeonError
from surgeon.model import Model


@dataclass
class BodyTap:
    """What one body tap gave.

    Attributes:
        name: The qualified name (``If_0/then_branch/x``).
        where: The body it lives in (``If_0/then_branch``).
        node, op: Its producing node (qualified label) and op type.
        executed: False when its branch did not run (or its Loop ran zero times).
        not_executed: Why not: ``branch not taken``, ``no iteration``, or ``branch taken
            in some iterations only`` (a scalar in an If inside a Loop: not measured,
            since the other iterations hold a placeholder).
        iterations: The iteration axes' sizes (empty outside Loop/Scan).
        worst_iteration: The first iteration holding a NaN/Inf, else the one holding the
            largest absolute value (None outside Loop/Scan or when not executed).
        worst_reason: ``non-finite`` or ``max abs``.
    """

    name: str
    where: str
    node: str
    op: str
    executed: bool = True
    not_executed: str | None = None
    iterations: list[int] = field(default_factory=list)
    worst_iteration: list[int] | None = None
    worst_reason: str | None = None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "where": self.where,
            "node": self.node,
            "op": self.op,
            "executed": self.executed,
            "not_executed": self.not_executed,
            "iterations": self.iterations,
            "worst_iteration": self.worst_iteration,
            "worst_reason": self.worst_reason,
        }


def plan_debug_bodies(model: Model, taps: list[str]) -> BodyPlan | None:
    """The exposure plan for the body taps among ``taps``; None when there are none."""
    table = body_tensors(model)
    if not any(t in table for t in taps):
        return None
    return plan_body_taps(model, taps)


def narrow_after(plan: BodyPlan | None, failure: Exception) -> tuple[BodyPlan, list[str]]:
    """After a failed tapped run: the next narrower plan and the taps it drops (see
    :meth:`~surgeon.edits.tap_bodies.BodyPlan.narrower`).

    Raises:
        failure: No Loop/Scan tap left to drop (the failure is not the taps').
    """
    narrower = plan.narrower() if plan is not None else None
    if narrower is None:
        raise failure
    return narrower


def dropped_note(dropped: list[str]) -> str:
    """The report's note about Loop/Scan taps dropped after onnxruntime refused them."""
    return (
        f"{len(dropped)} tap(s) inside Loop/Scan bodies were dropped: onnxruntime could not "
        "stack their values over the iterations (a shape that changes between iterations, "
        f"e.g. a slice growing with the iteration, or another If branch taken): "
        f"{names_text(dropped)}"
    )


def add_body_facts(facts: DebugFacts, plan: BodyPlan) -> None:
    """Teach ``facts.node_info`` the body taps (qualified node label, op, qualified
    inputs), so comparison rows and root causes name the node inside the body."""
    facts.node_info.update({n: (t.node, t.op, list(t.inputs)) for n, t in plan.taps.items()})


def iteration_text(index) -> str:
    """``iteration 3`` / ``iteration (1, 4)`` for an iteration index."""
    index = list(index)
    return (
        f"iteration {index[0]}" if len(index) == 1 else f"iteration ({', '.join(map(str, index))})"
    )


def _not_run(t: BodyTensor, values: Mapping[str, object]) -> str | None:
    """Why tap ``t`` has no value of its own (None: it ran), from the branch markers."""
    for marker, branch in t.branches:
        flags = values.get(marker)
        if not isinstance(flags, np.ndarray) or flags.size == 0:
            return "branch not taken"  # an enclosing If's other branch ran
        ran = flags == (branch == "then_branch")
        if not ran.any():
            return "branch not taken"
        if not ran.all():
            return "branch taken in some iterations only"
    return None


def _worst(value: np.ndarray, axes: int) -> tuple[list[int] | None, str | None]:
    if axes == 0 or value.size == 0:
        return None, None
    if value.dtype.kind not in "fiub" and "float" not in value.dtype.name:
        return None, None
    v = value.astype(np.float64) if value.dtype.kind != "f" else value
    per = v.reshape(*value.shape[:axes], -1)
    bad = ~np.isfinite(per).all(axis=-1)
    if bad.any():
        return [int(i) for i in np.argwhere(bad)[0]], "non-finite"
    peak = np.abs(per).max(axis=-1)
    return [int(i) for i in np.unravel_index(int(np.argmax(peak)), peak.shape)], "max abs"


def finish_body_taps(stats: list, values: dict, plan: BodyPlan) -> list[BodyTap]:
    """Per body tap: executed or not (the not executed leave ``stats`` and ``values``),
    the iterations and the worst one. ``stats`` and ``values`` are edited in place; the
    branch markers leave ``values``."""
    out = []
    gone = set()
    for name, t in plan.taps.items():
        result = BodyTap(name, t.where, t.node, t.op)
        value = values.get(name)
        axes = t.iteration_axes
        why = _not_run(t, values)
        if why is None and axes and isinstance(value, np.ndarray) and 0 in value.shape[:axes]:
            why = "no iteration"
        if why is not None:
            result.executed, result.not_executed = False, why
            gone.add(name)
        elif isinstance(value, np.ndarray) and axes:
            result.iterations = [int(d) for d in value.shape[:axes]]
            result.worst_iteration, result.worst_reason = _worst(value, axes)
        out.append(result)
    stats[:] = [s for s in stats if s.name not in gone]
    for name in [*gone, *plan.markers]:
        values.pop(name, None)
    return out


def reblame_body_nonfinite(found: list, stats: list, plan: BodyPlan, facts: DebugFacts) -> None:
    """Redo the NaN/Inf blame of body taps from their body node's inputs (see the module
    docstring); ``found`` (the generic blame's NonFinite list) is edited in place."""
    # graph inputs: finite unless the generic blame found NaN/Inf in the feeds
    counts = {name: (0, 0) for name in facts.model.input_names}
    counts.update({x.tensor: (x.nan, x.inf) for x in found if x.kind == "input"})
    counts.update({s.name: (s.nan, s.inf) for s in stats})
    constants = facts.constants
    # main-graph holders of bodies where NaN/Inf shows: their outputs inherit it
    sick = {
        plan.taps[s.name].levels[0].node for s in stats if s.name in plan.taps and (s.nan or s.inf)
    }
    for x in found:
        t = plan.taps.get(x.tensor)
        if t is None:
            if x.node in sick and x.kind in ("born", "unknown"):
                x.kind, x.untapped_inputs = "inherited", []
            continue
        x.node, x.op = t.node, t.op
        if t.op in ("Constant", "ConstantOfShape"):
            x.kind, x.untapped_inputs = "constant", []
            continue
        reads = {i: counts.get(i, (0, 0) if i in constants else None) for i in t.inputs}
        untapped = [i for i, c in reads.items() if c is None]
        nan_in = any(c and c[0] for c in reads.values())
        any_in = any(c and (c[0] or c[1]) for c in reads.values())
        if (x.nan and nan_in) or (not x.nan and any_in):
            x.kind, x.untapped_inputs = "inherited", []
        elif x.nan and any_in:  # a NaN from Inf inputs: born here
            x.kind, x.untapped_inputs, x.from_inf = "born", [], True
        else:
            x.kind, x.untapped_inputs = ("unknown" if untapped else "born"), untapped


def expose_reference(ref, plan: BodyPlan | None):
    """The reference with the same body tensors exposed (a model, or this model at
    another optimisation level); saved activations pair by the qualified names as they
    are."""
    if plan is None or ref is None or ref.kind == "arrays":
        return ref
    wanted = [n for n in plan.taps if n in body_tensors(ref.source)]
    if not wanted:
        return ref
    return ref._replace(source=plan_body_taps(ref.source, wanted).exposed(ref.source))


# ---------------------------------------------------------------------- root cause
def _holder_label(t: BodyTensor, depth: int) -> str:
    """The label a report gives the node holding level ``depth`` of ``t``."""
    levels = t.levels
    if depth == 0:
        return levels[0].node
    return "/".join(level.prefix for level in levels[:depth]) + "/" + levels[depth].node


_CONSTANT_OPS = ("Constant", "ConstantOfShape")


def refine_body_root(report, plan: BodyPlan | None, values, reference_value) -> None:
    """Move the root cause into the bodies of its node when tensors there diverge (see
    the module docstring), naming the iteration inside a Loop/Scan. Without a root cause
    from the main-graph rules (which do not judge body nodes), the diverged body
    tensors are searched all the same.

    Args:
        reference_value: name -> the reference's value of that tensor (or None).
    """
    root = report.root_cause
    if plan is None:
        return
    report.bodies["isolated"] = (
        "nodes inside If/Loop/Scan bodies are not run in isolation (the isolated run takes "
        "main-graph nodes); a root cause inside a body is named by position"
    )
    layers = {layer.diff.name: layer for layer in report.layers}
    diverged = {name for name, layer in layers.items() if layer.diverged}
    if root is not None:
        inside = _diverged_inside(root.node, plan, layers, diverged)
    else:
        inside = sorted(
            (layers[n] for n in diverged if n in plan.taps), key=lambda layer: layer.index
        )
    moved = False
    while inside:
        candidates = [layer for layer in inside if not any(x in diverged for x in layer.inputs)]
        if not candidates:
            break
        for layer in candidates:
            layer.matched_inputs = [x for x in dict.fromkeys(layer.inputs) if x in layers]
            layer.uncompared_inputs = [x for x in dict.fromkeys(layer.inputs) if x not in layers]
        # A constant that differs is where the difference enters (nothing feeds it);
        # then as the main-graph rule ranks: by what the check shows, in graph order.
        candidates.sort(
            key=lambda layer: (
                0 if layer.op in _CONSTANT_OPS else 1 + layer.evidence_rank,
                layer.index,
            )
        )
        root, moved = candidates[0], True
        inside = _diverged_inside(root.node, plan, layers, diverged)  # a holder: go in
    if not moved:
        return
    t = plan.taps[root.diff.name]
    holder = t.levels[0].node
    previous = [report.root_cause] if report.root_cause is not None else []
    report.other_roots = [r for r in [*previous, *report.other_roots] if r is not root]
    report.root_cause = root
    report.uncompared_inputs = list(root.uncompared_inputs)
    iteration = None
    if t.iteration_axes:
        iteration = _first_diverged_iteration(
            values.get(root.diff.name), reference_value(root.diff.name), t, report.tolerance
        )
    report.bodies["root_cause"] = {
        "name": root.diff.name,
        "node": root.node,
        "op": root.op,
        "where": t.where,
        "iteration": iteration,
        "judged": "by position inside the body",
    }
    d = root.diff
    what = (
        f"differs from the reference's (max abs {number_text(d.max_abs)}): a constant "
        f"inside `{t.where}`, so the weight itself differs"
        if t.op in ("Constant", "ConstantOfShape")
        else f"diverges from the reference (max abs {number_text(d.max_abs)}){root.inputs_text()}"
    )
    outputs = report.diverged_outputs
    where = (
        f"`{root.node}` ({root.op}) inside `{holder}`"
        + (f", {iteration_text(iteration)}" if iteration is not None else "")
        + f": its output `{d.name}` {what}"
    )
    if report.passed:
        # the verdict by isolated error holds (the compared outputs are within
        # tolerance): a difference that does not reach them is shown, not blamed
        report.body_root = (
            f"outputs within tolerance ({names_text(report.compared_outputs)} compared); no "
            f"failure to explain, but the first difference inside a body is at {where}"
        )
    else:
        report.body_root = f"root cause: {where}" + (
            f"; output(s) {names_text(outputs)} are beyond tolerance" if outputs else ""
        )
    report.notes.append(
        "nodes inside If/Loop/Scan bodies are not run in isolation: the root cause inside "
        f"`{holder}` is named by position (the first diverged body tensor whose compared "
        "inputs match)"
    )


def _diverged_inside(node_label: str, plan: BodyPlan, layers, diverged) -> list:
    """Diverged layers of body taps held (at any depth) by node ``node_label``."""
    out = []
    for name in diverged:
        t = plan.taps.get(name)
        if t is None:
            continue
        if any(_holder_label(t, d) == node_label for d in range(len(t.levels))):
            out.append(layers[name])
    return sorted(out, key=lambda layer: layer.index)


def _first_diverged_iteration(actual, expected, t: BodyTensor, tolerance):
    if not isinstance(actual, np.ndarray) or not isinstance(expected, np.ndarray):
        return None
    axes = t.iteration_axes
    if actual.shape[:axes] != expected.shape[:axes]:
        return None
    for index in np.ndindex(*actual.shape[:axes]):
        if not compare_arrays(actual[index], expected[index], tolerance).passed:
            return [int(i) for i in index]
    return None


def reference_lookup(report, model, feeds, ref, options, run_options):
    """name -> the reference's value of a tensor (one more reference run for a model)."""

    def lookup(name: str):
        if ref.kind == "arrays":
            return ref.source.get(name)
        # the reference as the comparison ran it (its feeds, its own inputs), once more for
        # one tensor; the report it writes into is a scratch one (it was filled already)
        scratch = types.SimpleNamespace(reference_feeds={}, notes=[])
        try:
            got = _run_reference(scratch, model, [name], feeds, ref, options, run_options)
        except SurgeonError:  # the iteration is a detail: a failed rerun leaves it unnamed
            return None
        return got.get(name)

    return lookup
