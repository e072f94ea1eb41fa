"""What :func:`surgeon.dynamic.check_dynamic` returns: the dims tried, one
:class:`SizeCase` per run, the batch-item checks, and the :class:`Suspect` nodes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from surgeon.compare import TensorDiff, Tolerance, json_number

DYNAMIC_SCHEMA = "surgeon.check-dynamic/1"


# ---------------------------------------------------------------------- results
@dataclass
class DimVariable:
    """One dynamic dim of the model's inputs (a symbol shared by several axes counts once).

    ``name`` is the symbol, or ``input[axis]`` for an unnamed dim.
    """

    name: str
    axes: list[tuple[str, int]]
    kind: str
    values: list[int]
    export: int | None = None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "axes": [f"{i}[{a}]" for i, a in self.axes],
            "kind": self.kind,
            "values": list(self.values),
            "export": self.export,
        }


@dataclass
class OutputCheck:
    """An output of one run: its shape against what the declaration expects."""

    name: str
    shape: list[int] | None
    expected: list[int | None] | None
    ok: bool
    problem: str = ""

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "shape": self.shape,
            "expected": self.expected,
            "ok": self.ok,
            "problem": self.problem,
        }


@dataclass
class SizeCase:
    """One run of the model at concrete sizes."""

    dims: dict[str, int]
    varied: str | None
    input_shapes: dict[str, list[int]]
    ran: bool = False
    error: str | None = None
    failed_node: str | None = None
    outputs: list[OutputCheck] = field(default_factory=list)

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.dims.items()) or "static shapes"

    @property
    def passed(self) -> bool:
        return self.ran and all(o.ok for o in self.outputs)

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "dims": dict(self.dims),
            "varied": self.varied,
            "input_shapes": self.input_shapes,
            "ran": self.ran,
            "passed": self.passed,
            "error": self.error,
            "failed_node": self.failed_node,
            "outputs": [o.to_dict() for o in self.outputs],
        }


@dataclass
class Suspect:
    """A node that likely holds a size baked in at export."""

    node: str
    op_type: str
    reason: str
    constant: str | None = None
    role: str | None = None
    values: list | None = None
    source: str = "scan"  # "scan" (constant inspection) or "onnxruntime" (named in an error)
    origin: str | None = None  # the PyTorch module and line, from exporter metadata
    # For a node judged alone by the batch-item check: "shape" (it folds the batch) or
    # "mismatch" (it mixes the items' values); not part of the JSON (the reason says it).
    batch_status: str | None = None

    def message(self) -> str:
        where = f" = {self.origin}" if self.origin else ""
        if self.constant is not None and self.role is not None:
            return (
                f"baked constant in node `{self.node}` ({self.op_type}){where}: {self.role} "
                f"{_values_text(self.values)} {self.reason}"
            )
        return f"node `{self.node}` ({self.op_type}){where} {self.reason}"

    def to_dict(self) -> dict:
        return {
            "node": self.node,
            "op_type": self.op_type,
            "constant": self.constant,
            "role": self.role,
            "values": self.values,
            "reason": self.reason,
            "source": self.source,
            "origin": self.origin,
            "message": self.message(),
        }


def _values_text(values) -> str:
    if values is None:
        return "?"
    text = "[" + ", ".join(str(v) for v in values[:12]) + (", ...]" if len(values) > 12 else "]")
    return text


@dataclass
class DynamicCheck:
    """The result of :func:`check_dynamic`; truthy when every size ran with the expected
    output shapes."""

    model: str
    dims: list[DimVariable]
    cases: list[SizeCase]
    suspects: list[Suspect] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seed: int = 0
    items: list[ItemCheck] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (
            bool(self.cases)
            and all(c.passed for c in self.cases)
            and all(i.passed for i in self.items)
        )

    def __bool__(self) -> bool:
        return self.passed

    def summary(self) -> str:
        ok = sum(c.passed for c in self.cases)
        dims = ", ".join(f"{d.name} in {d.values}" for d in self.dims) or "no dynamic dims"
        items = "".join(f"; {i.summary()}" for i in self.items)
        if self.passed:
            return (
                f"PASS: {ok} of {len(self.cases)} size(s) ran with the expected output shapes "
                f"({dims}){items}"
            )
        failed = [c for c in self.cases if not c.passed]
        if not failed:
            bad = "; ".join(i.summary() for i in self.items if not i.passed)
            return f"FAIL: {len(self.cases)} size(s) ran with the expected output shapes, but {bad}"
        what = "; ".join(
            f"{c.label}: {'did not run' if not c.ran else 'wrong output shapes'}"
            for c in failed[:3]
        )
        bad = "".join(f"; {i.summary()}" for i in self.items if not i.passed)
        return f"FAIL: {len(failed)} of {len(self.cases)} size(s) failed ({what}){bad}"

    def to_dict(self) -> dict:
        return {
            "schema": DYNAMIC_SCHEMA,
            "model": self.model,
            "passed": self.passed,
            "summary": self.summary(),
            "seed": self.seed,
            "dims": [d.to_dict() for d in self.dims],
            "cases": [c.to_dict() for c in self.cases],
            "suspects": [s.to_dict() for s in self.suspects],
            "notes": list(self.notes),
            "items": [i.to_dict() for i in self.items],
        }

    def tensor_diffs(self) -> list[TensorDiff]:
        """The output checks as report rows, ``output @ H=96, W=64``, for a DiffReport."""
        rows = []
        for case in self.cases:
            for out in case.outputs if case.ran else []:
                ref_shape = (
                    [int(d) for d in out.expected]
                    if out.expected is not None and all(d is not None for d in out.expected)
                    else None
                )
                rows.append(
                    TensorDiff(
                        name=f"{out.name} @ {case.label}",
                        reference=out.name,
                        status="ok" if out.ok else "shape",
                        shape=out.shape,
                        reference_shape=ref_shape,
                        message=out.problem,
                    )
                )
            if not case.ran:
                rows.append(
                    TensorDiff(
                        name=f"run @ {case.label}",
                        reference="",
                        status="missing",
                        message=f"did not run: {case.error}",
                    )
                )
        for item in self.items:
            where = f"{item.dim}={item.size} items"
            if item.error is not None:
                rows.append(
                    TensorDiff(
                        name=f"run @ {where}", reference="", status="missing", message=item.error
                    )
                )
            for out in item.outputs:
                shape_problem = out.problem and out.batch_axis is None
                rows.append(
                    TensorDiff(
                        name=f"{out.name} @ {where}",
                        reference=f"{out.name} @ {item.dim}=1 per item",
                        status="ok" if out.ok else ("shape" if shape_problem else "mismatch"),
                        shape=out.shape,
                        max_abs=out.max_abs,
                        message=out.problem,
                    )
                )
            if item.mixer is not None:
                # The node's own isolated check is a compared tensor too, and so a run's
                # one-line verdict (`surgeon run make_dynamic`) names the node to fix.
                m = item.mixer
                rows.append(
                    TensorDiff(
                        name=f"node {m.node} alone @ {where}",
                        reference=f"its output @ {item.dim}=1 per item",
                        status=m.batch_status or "mismatch",
                        message=m.message(),
                    )
                )
        return rows


@dataclass
class ItemOutput:
    """One output of a batch run against the batch-1 runs of its items."""

    name: str
    ok: bool
    batch_axis: int | None = None
    shape: list[int] | None = None
    item_shape: list[int] | None = None
    max_abs: float | None = None
    problem: str = ""

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "ok": self.ok,
            "batch_axis": self.batch_axis,
            "shape": self.shape,
            "item_shape": self.item_shape,
            "max_abs": json_number(self.max_abs),
            "problem": self.problem,
        }


@dataclass
class ItemCheck:
    """Batch independence of one batch dim: the run at ``dim=size`` split into its items,
    each against the run of that item alone (the other dims at the same sizes)."""

    dim: str
    size: int
    label: str
    tolerance: Tolerance
    outputs: list[ItemOutput] = field(default_factory=list)
    error: str | None = None
    mixer: Suspect | None = None  # the node that mixes or folds the items, judged alone

    @property
    def passed(self) -> bool:
        return self.error is None and all(o.ok for o in self.outputs)

    def worst(self) -> float | None:
        diffs = [o.max_abs for o in self.outputs if o.max_abs is not None]
        return max(diffs) if diffs else None

    def summary(self) -> str:
        tol = tolerance_text(self.tolerance)
        if self.passed:
            worst = self.worst()
            how = "bit-identical" if worst == 0 else f"max abs diff {worst:.3g}"
            return f"at {self.dim}={self.size} each item equals its {self.dim}=1 run ({how}; {tol})"
        if self.error is not None:
            return f"at {self.dim}={self.size} the items were not checked: {self.error}"
        bad = ", ".join(f"`{o.name}`" for o in self.outputs if not o.ok)
        return f"at {self.dim}={self.size} the items are not independent: {bad} ({tol})"

    def to_dict(self) -> dict:
        return {
            "dim": self.dim,
            "size": self.size,
            "label": self.label,
            "passed": self.passed,
            "summary": self.summary(),
            # atol_scale: atol is multiplied by the tensor's max(1, max |item value|)
            "tolerance": {**self.tolerance.to_dict(), "atol_scale": "max(1, max|item|)"},
            "error": self.error,
            "outputs": [o.to_dict() for o in self.outputs],
        }


def tolerance_text(tolerance: Tolerance) -> str:
    """How the item tolerance reads in reports: its atol scales with the tensor's
    magnitude (see :data:`surgeon.dynamic.batch.BATCH_TOLERANCE`)."""
    return f"atol={tolerance.atol:g} x max(1, max|item|), rtol={tolerance.rtol:g}"


ORT_NODE = re.compile(r"running (\w+) node\. Name:'([^']*)'")


def short_error(message: str) -> str:
    """onnxruntime's message without the source location and the node preamble."""
    text = re.sub(r"^onnxruntime could not (run|load) [^:]*: ", "", message)
    text = re.sub(
        r"Non-zero status code returned while running \w+ node\. Name:'[^']*' Status Message: ",
        "",
        text,
    )
    text = re.sub(r"\S*onnxruntime_src\S*:\d+ .*? was false\. ", "", text)
    text = re.sub(r"\S*onnxruntime_src\S*:\d+ \S+\([^)]*\)\s*", "", text)
    return text.strip()
