"""Node-level edits: set or remove attributes, replace initializers, bypass, delete or
insert nodes, change op types (``surgeon edit``; :func:`edit_nodes` in the API).

These edits change what the model computes on purpose, so "unchanged" cannot be their
check. What is checked instead, and fails the edit (exit 1, nothing written):

1. ``onnx.checker`` accepts the edited model;
2. strict ONNX shape inference (types checked) raises no error;
3. onnxruntime loads it and runs it on the feeds (an original that does not run there
   either is bad input, exit 2).

Then every output of the original is compared with the edited output of the same name,
as information: the report shows how far each moved. With ``expect_same`` (the CLI's
``--expect-same``) the comparison is a check too, with the shared tolerance: for edits
meant to keep values, such as removing a no-op attribute or bypassing an Identity.

A request that cannot be carried out is bad input (exit 2) before anything runs: an
unknown node, tensor, initializer or attribute (with close matches), an attribute the
op's schema does not know, a value that does not fit the attribute's type, a ``.npy``
that is not a plain numeric array. Operations apply in the order given, each checked
against the model as the ones before it left it; every problem is collected and
reported at once. The edited model's declared graph outputs follow what shape inference
says they now are (a Cast inserted before an output changes its declared type), and
value_info of every tensor an operation touched is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import onnx

from surgeon.compare import DiffReport, Tolerance
from surgeon.edits import Edited
from surgeon.edits.contract import Check, Correspondence, apply_edit
from surgeon.edits.node_edits_graph import (
    apply_remove_attribute,
    apply_replace_initializer,
    apply_set_attribute,
)
from surgeon.edits.node_edits_ops import (
    OPERATIONS,
    BypassNode,
    ChangeOpType,
    DeleteNode,
    InsertNode,
    Operation,
    RemoveAttribute,
    ReplaceInitializer,
    SetAttribute,
    describe_operation,
)
from surgeon.edits.node_edits_wiring import apply_bypass, apply_delete, apply_insert, apply_op_type
from surgeon.errors import NameNotFoundError, SurgeonError, UsageError
from surgeon.feeds import FeedOptions, make_feeds
from surgeon.model import Model
from surgeon.runner import RunOptions

_APPLY = {
    SetAttribute: apply_set_attribute,
    RemoveAttribute: apply_remove_attribute,
    ReplaceInitializer: apply_replace_initializer,
    BypassNode: apply_bypass,
    DeleteNode: apply_delete,
    InsertNode: apply_insert,
    ChangeOpType: apply_op_type,
}
CHECKS = ("onnx.checker", "shape inference", "onnxruntime")


@dataclass(frozen=True)
class CheckResult:
    """One check of the edited model: passed True/False, or None when it could not run."""

    name: str
    passed: bool | None
    message: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, "message": self.message}


@dataclass
class NodeEditReport(DiffReport):
    """The verification of a node edit: the checks decide, the output rows inform.

    Truthy when every check passed (and, with ``expect_same``, every output matched).
    The rows are the usual comparison of each output with the original's; without
    ``expect_same`` a row that differs is information, not a failure.
    """

    checks: list[CheckResult] = field(default_factory=list)
    expect_same: bool = False

    @property
    def outputs_same(self) -> bool:
        """Every output matched the original's within the tolerance."""
        return DiffReport.passed.fget(self)

    @property
    def passed(self) -> bool:
        checked = bool(self.checks) and all(c.passed is not False for c in self.checks)
        return checked and (self.outputs_same or not self.expect_same)

    def summary(self) -> str:
        failed = [c for c in self.checks if c.passed is False]
        if failed or not self.checks:
            return "FAIL: " + (
                "; ".join(f"{c.name}: {c.message}" for c in failed) or "the edit was not checked"
            )
        outputs = self.comparison().summary()
        if self.outputs_same:
            outputs = "outputs unchanged, " + outputs.removeprefix("PASS: ")
        elif self.expect_same:
            return "FAIL: outputs were expected to stay the same: " + outputs.removeprefix("FAIL: ")
        else:
            outputs = "outputs changed (information): " + outputs.removeprefix("FAIL: ")
        ran = ", ".join(c.name for c in self.checks if c.passed) or "no check"
        skipped = ", ".join(c.name for c in self.checks if c.passed is None)
        skipped = f" ({skipped} not judged: see the checks)" if skipped else ""
        return f"PASS: {ran} passed{skipped}; {outputs}"

    def comparison(self) -> DiffReport:
        """The output comparison alone, as a plain DiffReport (its own verdict)."""
        return DiffReport(**{f.name: getattr(self, f.name) for f in fields(DiffReport)})

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["checks"] = [c.to_dict() for c in self.checks]
        out["expect_same"] = self.expect_same
        out["outputs_same"] = self.outputs_same
        return out


def plan_node_edits(
    model: Model, operations: Sequence[Operation]
) -> tuple[onnx.ModelProto, list[dict]]:
    """Apply ``operations`` in order to a copy of ``model``'s proto.

    Returns:
        (the edited proto, one record per operation: what it did).

    Raises:
        UsageError: Not a list of operations, nothing to do, or problems with them (all
            collected: a failed operation is skipped and the next ones still checked).
        NameNotFoundError: The only problem is one unknown name (with close matches).
    """
    if isinstance(operations, OPERATIONS):
        operations = [operations]
    if not isinstance(operations, Sequence) or isinstance(operations, str | bytes):
        raise UsageError(
            f"operations must be a list of node operations, not {type(operations).__name__}",
            hint="e.g. [surgeon.SetAttribute('conv1', 'group', 2)]",
        )
    if not operations:
        raise UsageError(f"no operation to apply to {model.name}")
    bad = [
        f"operation {i + 1} is a {type(op).__name__}, not one of "
        + ", ".join(c.__name__ for c in OPERATIONS)
        for i, op in enumerate(operations)
        if not isinstance(op, OPERATIONS)
    ]
    if bad:
        raise UsageError("not node operations", problems=bad)
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    records: list[dict] = []
    errors: list[SurgeonError] = []
    for i, op in enumerate(operations):
        try:
            record = _APPLY[type(op)](proto, op, model.name)
        except SurgeonError as e:
            errors.append(e)
            continue
        records.append({"index": i + 1, "op": op.kind, **record})
    if len(errors) == 1 and len(operations) == 1:
        raise errors[0]
    if errors:
        problems = []
        for e in errors:
            problems.append(e.message + (f" ({'; '.join(e.problems)})" if e.problems else ""))
        first = next((e for e in errors if isinstance(e, NameNotFoundError)), None)
        raise (
            NameNotFoundError(
                f"{len(errors)} of {len(operations)} operations cannot be applied to {model.name}",
                name=first.name,
                suggestions=first.suggestions,
                problems=problems,
            )
            if first is not None
            else UsageError(
                f"{len(errors)} of {len(operations)} operations cannot be applied to {model.name}",
                problems=problems,
            )
        )
    records.extend(_redeclare_outputs(proto))
    return proto, records


def _redeclare_outputs(proto: onnx.ModelProto) -> list[dict]:
    """Declared graph outputs made to say what shape inference now infers for them, where
    the two disagree (the declaration is what the target reads)."""
    skeleton = _skeleton(proto)
    declared = {o.name: o for o in proto.graph.output}
    for o in skeleton.graph.output:  # infer from the inputs, not from the old declaration
        if o.type.HasField("tensor_type"):
            o.type.tensor_type.ClearField("shape")
            o.type.tensor_type.elem_type = 0
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, ValueError):
        return []  # the checks report it
    records = []
    from surgeon.protos import value_info_to_tensor_info

    for o in inferred.graph.output:
        old = declared.get(o.name)
        if old is None or not o.type.tensor_type.elem_type:
            continue
        if not old.type.tensor_type.elem_type:  # undeclared stays undeclared
            continue
        new_info, old_info = value_info_to_tensor_info(o), value_info_to_tensor_info(old)
        if new_info.dtype == old_info.dtype and (
            new_info.shape is None or len(new_info.shape) == len(old_info.shape or ())
        ):
            continue
        if new_info.shape is None:  # a new dtype, shape unknown: keep the declared dims
            o.type.tensor_type.shape.CopyFrom(old.type.tensor_type.shape)
        old.type.CopyFrom(o.type)
        records.append(
            {
                "index": None,
                "op": "redeclare-output",
                "output": o.name,
                "before": old_info.shape_text() if old_info.dtype else "?",
                "after": value_info_to_tensor_info(old).shape_text(),
                "text": f"graph output `{o.name}` declared {old_info.dtype}{_dims(old_info)} -> "
                f"{new_info.dtype}{_dims(value_info_to_tensor_info(old))} (what the edit now computes)",
            }
        )
    return records


def _dims(info) -> str:
    return (
        "[?]"
        if info.shape is None
        else "[" + ", ".join(str(d) if d is not None else "?" for d in info.shape) + "]"
    )


def _skeleton(proto: onnx.ModelProto) -> onnx.ModelProto:
    from surgeon.graph_facts import inference_skeleton

    return inference_skeleton(Model(proto))


def check_structure(proto: onnx.ModelProto) -> list[CheckResult]:
    """onnx.checker and strict shape inference on the edited model (on a skeleton
    without the large weights, so a model above 2 GB can be checked too)."""
    skeleton = _skeleton(proto)
    results = []
    try:
        onnx.checker.check_model(skeleton)
        results.append(CheckResult("onnx.checker", True))
    except onnx.checker.ValidationError as e:
        results.append(CheckResult("onnx.checker", False, _first_lines(e)))
    except ValueError as e:  # protobuf refuses to serialise it
        results.append(CheckResult("onnx.checker", None, f"could not run: {_first_lines(e)}"))
    try:
        onnx.shape_inference.infer_shapes(
            skeleton, check_type=True, strict_mode=True, data_prop=True
        )
        results.append(CheckResult("shape inference", True))
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as e:
        results.append(CheckResult("shape inference", False, _first_lines(e)))
    except ValueError as e:
        results.append(CheckResult("shape inference", None, f"could not run: {_first_lines(e)}"))
    return results


def _first_lines(error: Exception, limit: int = 300) -> str:
    text = " ".join(line.strip() for line in str(error).strip().splitlines()[:3] if line.strip())
    return (text[:limit] + "...") if len(text) > limit else text or type(error).__name__


def edit_nodes(
    model: Model,
    operations: Operation | Sequence[Operation],
    *,
    expect_same: bool = False,
    verify: bool = True,
    feeds: Mapping[str, np.ndarray] | None = None,
    feed_options: FeedOptions = FeedOptions(),
    options: RunOptions | None = None,
    tolerance: Tolerance = Tolerance(),
) -> Edited:
    """Apply node-level ``operations`` to ``model`` in order, then check the result.

    Args:
        model: The model (not modified).
        operations: :class:`SetAttribute`, :class:`RemoveAttribute`,
            :class:`ReplaceInitializer`, :class:`BypassNode`, :class:`DeleteNode`,
            :class:`InsertNode` or :class:`ChangeOpType` objects (one alone is taken too).
        expect_same: Also require every output to equal the original's within
            ``tolerance`` (otherwise the comparison is information).
        verify: Run the checks and the comparison (False: the report is None).
        feeds, feed_options, options: Inputs and onnxruntime settings of the run.
        tolerance: When an output counts as unchanged.

    Returns:
        Edited whose ``report`` is a :class:`NodeEditReport` (the checks, and a row per
        output) and whose ``details["operations"]`` lists what each operation did.

    Raises:
        NameNotFoundError: An unknown node, tensor or initializer (with close matches).
        UsageError: An operation that cannot be applied (every problem listed).
        RuntimeFailure: The original model does not run on the feeds either.
    """
    if not isinstance(expect_same, bool):
        raise UsageError(f"expect_same must be True or False, not {type(expect_same).__name__}")
    proto, records = plan_node_edits(model, operations)
    if isinstance(operations, OPERATIONS):
        operations = [operations]
    checks: list[CheckResult] = []

    def correspondence(edited: Model) -> Correspondence:
        from surgeon.edits.sizes import runtime_problem

        before = {c.name: c for c in check_structure(model.proto)}
        for check in check_structure(edited.proto):
            # A check the original fails too is not the edit's doing: noted, not failed
            # (real models often fail strict shape inference and run all the same).
            if check.passed is False and before[check.name].passed is False:
                check = CheckResult(check.name, None, "fails on the original too: " + check.message)
            checks.append(check)
        title = "edit: " + (
            "outputs unchanged" if expect_same else "outputs compared (information)"
        )
        run_feeds = dict(feeds) if feeds is not None else make_feeds(model, feed_options)
        problem = runtime_problem(edited, model, run_feeds, options)
        checks.append(CheckResult("onnxruntime", problem is None, problem or ""))
        if problem is not None:
            return Correspondence(title, unavailable=problem)
        return Correspondence(title, feeds=run_feeds, tolerance=tolerance)

    def finish(edited: Model, report: DiffReport, values) -> NodeEditReport:
        # This edit's verdict is its checks' (the rows inform): the comparison's report
        # becomes a NodeEditReport, which every reader of the result (the recipe recorder
        # included) then judges right.
        known = {f.name: getattr(report, f.name) for f in fields(report) if f.init}
        return NodeEditReport(**known, checks=list(checks), expect_same=expect_same)

    return apply_edit(
        model,
        "edit",
        {"operations": [describe_operation(op) for op in operations], "expect_same": expect_same},
        lambda source: proto,
        correspondence,
        check=Check(verify, feeds, feed_options, options or RunOptions(), tolerance),
        label="edited",
        copy=False,
        details=lambda edited, report: {
            "operations": records,
            "notes": [r["text"] for r in records if r["op"] == "redeclare-output"],
        },
        finish=finish,
    )
