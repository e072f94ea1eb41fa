"""Input/output shapes: set dims static or symbolic after export, and check that a model
really runs at several sizes of its dynamic dims.

``reshape_io`` is the ``dynamic_axes`` of an export, applied afterwards: it rewrites the
declared dims of inputs and outputs, re-runs ONNX shape inference, drops stale
value_info, and then checks the result twice over: at the original's input sizes the
edited model must give the original's values bit for bit, and ``check_dynamic`` must run
it at two or more sizes of every dynamic dim with outputs of the expected shapes.

``check_dynamic`` picks the sizes by this rule (``sizes`` overrides it per dim):

- batch dims (axis 0, or named N/B/batch/batch_size/bs): the export value, 1 and 3;
- spatial dims (axes 2+ of a rank-4/5 input, or named H/W/height/width/...): the export
  value, 64 and 96 (multiples of 32, what strided backbones need);
- any other dim: the export value, 16 and 24.

A dim is a *batch* dim when it is named like one (N, B, batch, bs, anything containing
"batch"), or when it is axis 0 of an input of rank 2 or more and not named like a
sequence (seq_len, time, T, tokens, ...); ``batch`` overrides the rule. Unnamed dims
(``?``, ``-1``, blank, or no dim_param at all) are each their own dim, named
``input[axis]``.

The export value (the static size the dim had before ``reshape_io`` made it dynamic) comes
first when known; duplicates are dropped. It runs the first value of every dim once, then
varies one dim at a time, so a failure points at the dim that caused it. Outputs must have
their declared rank, their static dims, and, for a dim named like an input dim, that
dim's value. When something fails, the nodes onnxruntime names in its errors and the
Reshape/Expand/Tile/Resize/ConstantOfShape/Slice nodes whose shape-like input is a
constant holding an export value (or a product of them) are reported as suspects.

A batch means independent items. For each batch dim, its largest run (among the first
run and the runs that vary it) is split into its items, and each item runs alone (batch
1, the other dims unchanged): every output must stack the items' results on one axis
(the axis the output declares with the batch symbol, else the one that is 1 for an item
and B for the batch), or be the same for every item and the batch. Tolerance
``BATCH_TOLERANCE`` (atol=rtol=1e-5) unless given. When it fails, every main-graph
tensor is compared the same way, and the first node whose inputs follow the batch and
whose output does not is named: "baked constant in node `head/fold` (Reshape): shape
[1, -1, 6] folds the batch ..." or "node `bn` (ReduceMean) mixes the batch items ...".
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from surgeon.compare import EXACT, DiffReport, TensorDiff, Tolerance, compare_arrays, json_number
from surgeon.edits import Edited
from surgeon.errors import NameNotFoundError, SurgeonError, UsageError, unknown_name
from surgeon.feeds import (
    DEFAULT_MAX_FEED_BYTES,
    MAX_DIM,
    FeedOptions,
    check_feed_size,
    make_feeds,
    resolve_shapes,
    too_large_dim,
)
from surgeon.model import Model, TensorInfo, dim_param_name, value_info_to_tensor_info
from surgeon.runner import RunOptions

DYNAMIC_SCHEMA = "surgeon.check-dynamic/1"
Dim = int | str | None

BATCH_NAMES = {"n", "b", "batch", "batch_size", "batchsize", "bs", "num_batches"}
SPATIAL_NAMES = {"h", "w", "height", "width", "d", "depth", "x", "y", "img_h", "img_w"}
SEQUENCE_NAMES = {"t", "l", "s", "len", "seq", "time"}
SEQUENCE_WORDS = ("seq", "length", "time", "token", "frame", "step")
DEFAULT_SIZES = {"batch": (1, 3), "spatial": (64, 96), "other": (16, 24)}
# Item i of a batch-B run must equal the batch-1 run of item i. Measured with onnxruntime
# 1.32 on the CPU (Conv, MatMul, Gemm, attention, Resize, InstanceNormalization, the
# sample detector; optimisations off and on, 1 and 4 threads, B up to 16): bit-identical.
# Kernels elsewhere may block their loops by batch size and round differently, so the
# default allows what reassociating a float32 sum can cost; mixing items costs far more.
BATCH_TOLERANCE = Tolerance(atol=1e-5, rtol=1e-5)

# The input of each op whose values are a shape (or a slice range): a constant there is
# how an export bakes a size into the graph.
SHAPE_INPUTS = {
    "Reshape": {1: "shape"},
    "Expand": {1: "shape"},
    "Tile": {1: "repeats"},
    "ConstantOfShape": {0: "shape"},
    "Resize": {3: "sizes"},
    "Slice": {1: "starts", 2: "ends"},
}


# ---------------------------------------------------------------------- spec parsing
def parse_dims(text: str, *, what: str = "shape") -> tuple[Dim, ...]:
    """Parse ``Bx3xHxW`` (or ``B,3,H,W``, ``[B, 3, H, W]``) into dims.

    Each dim is an integer (static), a symbol (named dynamic), or ``?``/``-1`` (unnamed
    dynamic, returned as None). Use commas when a symbol contains an ``x``
    (``batch,max_len``).

    Raises:
        UsageError: An empty spec, or a dim that is neither an integer from 1 to 2^63-1
            nor a name.
    """
    spec = text.strip().strip("[]()").strip()
    if not spec:
        raise UsageError(f"cannot read the {what} `{text}`: it has no dims; expected e.g. Bx3xHxW")
    parts = [p.strip() for p in (spec.split(",") if "," in spec else spec.split("x"))]
    dims: list[Dim] = []
    for p in parts:
        if p in ("?", "-1"):
            dims.append(None)
        elif re.fullmatch(r"\d+", p):
            where = f"the {what}" + ("" if text in what else f" `{text}`")
            if error := _static_dim_error(int(p), where):
                raise error
            dims.append(int(p))
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", p):
            dims.append(p)
        else:
            raise UsageError(
                f"cannot read dim `{p}` in the {what} `{text}`: each dim is an integer, a name "
                "(symbolic) or ? for an unnamed dynamic dim, e.g. Bx3xHxW or 1x3x640x640"
            )
    return tuple(dims)


def parse_io_spec(arg: str, *, flag: str = "--input") -> tuple[str, tuple[Dim, ...]]:
    """Parse ``NAME:DIMS`` (split at the last ``:``, so names like ``input:0`` work).

    Raises:
        UsageError: No ``:`` or no name.
    """
    name, sep, dims = arg.rpartition(":")
    if not sep or not name.strip():
        raise UsageError(
            f"cannot read `{flag} {arg}`: expected NAME:DIMS, e.g. images:Bx3xHxW",
            hint="The output file is given with -o." if flag == "--output" else None,
        )
    return name.strip(), parse_dims(dims, what=f"dims of `{flag} {arg}`")


def _static_dim_error(value: int, where: str) -> UsageError | None:
    """Why ``value`` cannot be a static dim, or None. 0 is refused too: surgeon (like most
    tools) reads a dim_value of 0 as "not static", so it would silently mean dynamic."""
    if value < 1:
        return UsageError(
            f"dim {value} in {where} cannot be a static dim: use an integer >= 1, or a name "
            "or ? for a dynamic dim"
        )
    return too_large_dim(value, f"dim {value} in {where}")


def _as_dims(spec: str | Sequence[Dim]) -> tuple[Dim, ...]:
    if isinstance(spec, str):
        return parse_dims(spec)
    dims = []
    for d in spec:
        if d is None or (isinstance(d, int) and d == -1):
            dims.append(None)
        elif isinstance(d, (int, np.integer)) and not isinstance(d, bool):
            if error := _static_dim_error(int(d), f"{list(spec)}"):
                raise error
            dims.append(int(d))
        elif isinstance(d, str) and d.strip():
            dims.append(dim_param_name(d))  # `?` and `-1` are unnamed, as in a spec
        else:
            raise UsageError(f"dim {d!r} is not an integer >= 1, a name, or None")
    return tuple(dims)


def dims_text(dims: Sequence[Dim] | None) -> str:
    if dims is None:
        return "?"
    return "x".join("?" if d is None else str(d) for d in dims) if dims else "scalar"


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
        return rows


# ---------------------------------------------------------------------- check_dynamic
def _kind(name: str, axis: int, rank: int, named: bool) -> str:
    """batch, spatial or other (the module docstring's rule)."""
    low = name.lower()
    if low in BATCH_NAMES or "batch" in low:
        return "batch"
    if low in SPATIAL_NAMES or "height" in low or "width" in low:
        return "spatial"
    if named and (low in SEQUENCE_NAMES or any(w in low for w in SEQUENCE_WORDS)):
        # [seq, batch, C] layouts: axis 0 is time there, and time steps are not items.
        return "other"
    if axis == 0 and rank >= 2:
        # Rank 1 is excluded: a lone [N] axis is as often samples or tokens as items.
        return "batch"
    if rank in (4, 5) and axis >= 2:
        return "spatial"
    return "other"


def dynamic_dims(
    model: Model,
    sizes: Mapping[str, Sequence[int]] | None = None,
    export: Mapping[str, int] | None = None,
    batch: Sequence[str] | None = None,
) -> list[DimVariable]:
    """The dynamic dims of ``model``'s inputs with the sizes to try (module docstring).

    Args:
        batch: The dims that are batch dims, overriding the naming rule (an empty list:
            none is).

    Raises:
        UsageError: ``sizes`` or ``batch`` names a dim the inputs do not have, or
            ``sizes`` gives a size < 1.
    """
    sizes = dict(sizes or {})
    export = dict(export or {})
    found: dict[str, DimVariable] = {}
    for info in model.inputs:
        if info.shape is None:
            continue
        for axis, d in enumerate(info.shape):
            if isinstance(d, int) and d > 0:
                continue
            name = d if isinstance(d, str) else f"{info.name}[{axis}]"
            if name not in found:
                kind = _kind(name, axis, len(info.shape), isinstance(d, str))
                found[name] = DimVariable(name, [], kind, [])
            found[name].axes.append((info.name, axis))
    problems = []
    for name in batch or ():
        if name not in found:
            err = unknown_name("dynamic dim", name, list(found), model.name)
            problems.append(f"--batch: {err.message}")
    if batch is not None:
        for var in found.values():
            if var.name in batch:
                var.kind = "batch"
            elif var.kind == "batch":
                var.kind = "other"
    for name, values in sizes.items():
        if name not in found:
            err = unknown_name("dynamic dim", name, list(found), model.name)
            problems.append(err.message + ("" if found else " (its inputs have no dynamic dims)"))
        elif not values or any(not 1 <= int(v) <= MAX_DIM for v in values):
            problems.append(
                f"sizes for `{name}` must be integers >= 1 (and below 2^63), got {list(values)}"
            )
    if problems:
        raise UsageError(f"cannot check {model.name} at the given sizes", problems=problems)
    for var in found.values():
        var.export = export.get(var.name)
        if var.name in sizes:
            var.values = list(dict.fromkeys(int(v) for v in sizes[var.name]))
        else:
            first = [var.export] if var.export else []
            var.values = list(dict.fromkeys(first + list(DEFAULT_SIZES[var.kind])))
    return list(found.values())


def _cases(model: Model, variables: Sequence[DimVariable]) -> list[SizeCase]:
    base = {v.name: v.values[0] for v in variables}
    plans: list[tuple[dict[str, int], str | None]] = [(base, None)]
    for v in variables:
        for value in v.values[1:]:
            plans.append(({**base, v.name: value}, v.name))
    axis_var = {ax: v.name for v in variables for ax in v.axes}
    cases = []
    for dims, varied in plans:
        shapes = {}
        for info in model.inputs:
            shape = []
            for axis, d in enumerate(info.shape or ()):
                var = axis_var.get((info.name, axis))
                shape.append(dims[var] if var is not None else int(d))
            shapes[info.name] = shape
        cases.append(SizeCase(dict(dims), varied, shapes))
    return cases


def _refuse_large_cases(model: Model, cases: Sequence[SizeCase], limit: int | None) -> None:
    """Refuse, before anything runs, when the inputs of any case would pass ``limit``
    (rather than after the small sizes have run)."""
    for case in cases:
        shapes = {k: tuple(v) for k, v in case.input_shapes.items()}
        check_feed_size(model, shapes, {}, limit, flag="--sizes")


def _expected(info: TensorInfo, dims: Mapping[str, int]) -> list[int | None] | None:
    if info.shape is None:
        return None
    return [
        d if isinstance(d, int) and d > 0 else (dims.get(d) if isinstance(d, str) else None)
        for d in info.shape
    ]


def _check_output(
    name: str, value: np.ndarray, info: TensorInfo, dims: Mapping[str, int]
) -> OutputCheck:
    if value is None or isinstance(value, (list, tuple, dict)):
        return OutputCheck(name, None, None, True)  # a sequence or optional: no shape to check
    shape = [int(s) for s in np.shape(value)]
    expected = _expected(info, dims)
    if expected is None:
        return OutputCheck(name, shape, None, True)
    if len(shape) != len(expected):
        return OutputCheck(
            name,
            shape,
            expected,
            False,
            f"rank {len(shape)}, but the model declares {dims_text(info.shape)}",
        )
    wrong = []
    for axis, (got, want, declared) in enumerate(zip(shape, expected, info.shape, strict=True)):
        if want is not None and got != want:
            why = f"{declared}={want}" if isinstance(declared, str) else "static"
            wrong.append(f"dim {axis} is {got}, expected {want} ({why})")
    return OutputCheck(name, shape, expected, not wrong, "; ".join(wrong))


_ORT_NODE = re.compile(r"running (\w+) node\. Name:'([^']*)'")


def _short_error(message: str) -> str:
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


def check_dynamic(
    model: Model,
    *,
    sizes: Mapping[str, Sequence[int]] | None = None,
    export: Mapping[str, int] | None = None,
    seed: int = 0,
    max_feed_bytes: int | None = DEFAULT_MAX_FEED_BYTES,
    options: RunOptions | None = None,
    batch: Sequence[str] | None = None,
    batch_tolerance: Tolerance = BATCH_TOLERANCE,
) -> DynamicCheck:
    """Run ``model`` at several sizes of each dynamic input dim and check output shapes.

    Args:
        model: The model to check.
        sizes: Sizes to try per dim name (``{"H": [224, 320]}``); unnamed dims are named
            ``input[axis]``. Other dims follow the rule in the module docstring.
        export: The size each dim had at export, when known (tried first, and used to
            recognise baked constants).
        seed: Seed of the random inputs.
        max_feed_bytes: The most bytes the inputs of one run may take (see
            :class:`surgeon.feeds.FeedOptions`); None means no limit.
        options: onnxruntime settings.
        batch: The batch dims, overriding the rule of the module docstring (``[]``:
            none, which skips the item check).
        batch_tolerance: How close item i of a batch run must be to the batch-1 run of
            item i.

    Returns:
        A DynamicCheck, truthy when every size ran with the expected output shapes and
        the items of every batch dim are independent; when not, ``suspects`` names the
        nodes that likely hold a baked size or fold/mix the batch.

    Raises:
        UsageError: ``sizes`` or ``batch`` names unknown dims, ``sizes`` gives sizes < 1 or
            beyond int64, or the inputs of a run would take more than ``max_feed_bytes``.
    """
    from surgeon.runner import Session

    unknown_rank = [i.name for i in model.inputs if i.shape is None]
    if unknown_rank:
        raise UsageError(
            f"cannot check {model.name}: input(s) {', '.join(f'`{n}`' for n in unknown_rank)} "
            "have unknown rank",
            hint="Declare their dims first: surgeon reshape-io model.onnx --input NAME:DIMS",
        )
    variables = dynamic_dims(model, sizes, export, batch)
    cases = _cases(model, variables)
    _refuse_large_cases(model, cases, max_feed_bytes)
    notes = []
    if not variables:
        notes.append("the inputs have no dynamic dims: the model ran once, at its static shapes")
    declared = {o.name: o for o in model.outputs}
    # A model onnxruntime cannot load at all (an unknown op, a missing custom op library,
    # damaged weights) is not a size problem: the RuntimeFailure, with its hint, goes to
    # the caller (exit 2) instead of a table of sizes that "did not run".
    session = Session(model, options=options)
    batch_vars = [v for v in variables if v.kind == "batch"]
    runs: dict[int, tuple[dict, dict]] = {}  # id(case) -> (feeds, values), batch checks only
    for case in cases:
        feeds = make_feeds(
            model,
            FeedOptions(
                seed=seed,
                shapes={k: tuple(v) for k, v in case.input_shapes.items()},
                max_feed_bytes=max_feed_bytes,
            ),
        )
        try:
            values = session.run(feeds)
        except SurgeonError as e:
            match = _ORT_NODE.search(e.message)
            case.failed_node = match.group(2) if match else None
            case.error = _short_error(e.message)
            continue
        case.ran = True
        case.outputs = [
            _check_output(n, values[n], declared.get(n, TensorInfo(n, None, None)), case.dims)
            for n in model.output_names
        ]
        if any(case.dims[v.name] > 1 for v in batch_vars):
            runs[id(case)] = (feeds, values)
    check = DynamicCheck(model.name, variables, cases, notes=notes, seed=seed)
    # Batch means independent items: each batch dim's largest run, split into its items.
    mixers: list[Suspect] = []
    for var in batch_vars:
        case = _batch_case(var, cases)
        if case is None:
            if any(c.ran for c in cases):
                check.notes.append(
                    f"batch dim `{var.name}` ran at no size above 1 with the others at their "
                    "first sizes, so its items were not checked"
                )
            continue
        feeds, values = runs[id(case)]
        item = check_items(model, session, var, case, feeds, values, batch_tolerance)
        check.items.append(item)
        if not item.passed and item.error is None:
            mixer = find_batch_mixer(model, var, feeds, item.size, batch_tolerance, options)
            if mixer is not None:
                mixers.append(mixer)
            else:
                check.notes.append(
                    f"the node where the items of `{var.name}` stop being independent "
                    "could not be named"
                )
    runs.clear()
    if not check.passed:
        check.suspects = mixers + [
            s
            for s in find_suspects(model, variables, cases)
            if (s.node, s.constant) not in {(m.node, m.constant) for m in mixers}
        ]
        _add_origins(model, check.suspects)
        if not check.suspects:
            check.notes.append(
                "no baked constant was found in Reshape/Expand/Tile/Resize/ConstantOfShape/Slice "
                "inputs; see onnxruntime's message for the failing node"
            )
    return check


# ---------------------------------------------------------------------- batch items


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

    @property
    def passed(self) -> bool:
        return self.error is None and all(o.ok for o in self.outputs)

    def worst(self) -> float | None:
        diffs = [o.max_abs for o in self.outputs if o.max_abs is not None]
        return max(diffs) if diffs else None

    def summary(self) -> str:
        tol = f"atol={self.tolerance.atol:g}, rtol={self.tolerance.rtol:g}"
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
            "tolerance": self.tolerance.to_dict(),
            "error": self.error,
            "outputs": [o.to_dict() for o in self.outputs],
        }


class _BatchRelation:
    """How one tensor of a batch-B run relates to the same tensor of B batch-1 runs, fed
    item by item (so that only one batch-1 run is held at a time).

    The tensor *follows the batch* when it stacks the items' values on one axis (size 1
    for an item, B for the batch), or when every item gives the same value (constants,
    and shapes: ``Shape`` of a batch differs from an item's but depends on no item).
    """

    def __init__(self, whole, size: int, tolerance: Tolerance, axis: int | None = None):
        self.whole = whole
        self.size = size
        self.tolerance = tolerance
        self.tensor = isinstance(whole, np.ndarray)
        self.first = None
        self.item_shape: list[int] | None = None
        self.same_shapes = True
        self.invariant = True
        self.axes: dict[int, float] = {}  # stacking axis -> worst max abs so far
        self.failure: tuple[int, int, TensorDiff] | None = None  # (axis, item, diff)
        self.declared_axis = axis

    def add(self, index: int, value) -> None:
        if not self.tensor or not isinstance(value, np.ndarray) or not self.same_shapes:
            return
        if self.first is None:
            self.first = value
            self.item_shape = list(value.shape)
            shape, item = list(self.whole.shape), self.item_shape
            if len(shape) == len(item):
                for k in range(len(shape)):
                    others = all(shape[j] == item[j] for j in range(len(shape)) if j != k)
                    if item[k] == 1 and shape[k] == self.size and others:
                        self.axes[k] = 0.0
            if self.declared_axis is not None:
                self.axes = {k: v for k, v in self.axes.items() if k == self.declared_axis}
        elif list(value.shape) != self.item_shape:
            self.same_shapes = False
            self.invariant = False
            self.axes = {}
            return
        elif self.invariant:
            self.invariant = bool(compare_arrays(value, self.first, self.tolerance))
        for k in list(self.axes):
            d = compare_arrays(np.take(self.whole, [index], axis=k), value, self.tolerance)
            if d.passed:
                self.axes[k] = max(self.axes[k], d.max_abs or 0.0)
            else:
                del self.axes[k]
                if self.failure is None:
                    self.failure = (k, index, d)

    @property
    def stacked_axis(self) -> int | None:
        return min(self.axes) if self.axes else None

    @property
    def follows(self) -> bool:
        return not self.tensor or self.stacked_axis is not None or self.invariant

    def problem(self, dim: str) -> str:
        """Why the tensor does not follow the batch, in words ('' when it does)."""
        shape, item = list(self.whole.shape), self.item_shape
        at = f"{dim}={self.size}"
        if not self.same_shapes:
            return f"the items' {dim}=1 runs give different shapes, which no batch of {self.size} can stack"
        if self.failure is not None:
            k, i, d = self.failure
            worst = f", max abs diff {d.max_abs:.3g}" if d.max_abs is not None else ""
            return f"item {i} (axis {k}) differs from its {dim}=1 run: {d.message}{worst}"
        if shape == item:
            return (
                f"has no batch axis: it is {shape} at {at} as for one item, and not the same "
                "for every item and the batch, so the items are mixed"
            )
        folded = [
            k
            for k in range(len(shape))
            if len(shape) == len(item)
            and shape[k] == self.size * item[k]
            and all(shape[j] == item[j] for j in range(len(shape)) if j != k)
        ]
        text = f"does not carry the batch: it is {shape} at {at}, where one item gives {item}"
        if self.declared_axis is not None:
            text += f" (declared with {dim} on axis {self.declared_axis})"
        if folded:
            text += f"; the {self.size} items are folded into axis {folded[0]}"
        return text


def _item_feeds(feeds: Mapping[str, np.ndarray], var: DimVariable, index: int) -> dict:
    """The feeds of item ``index`` alone: each input cut to size 1 on the batch axes."""
    out = dict(feeds)
    for name, axis in var.axes:
        out[name] = np.take(out[name], [index], axis=axis)
    return out


def _batch_case(var: DimVariable, cases: Sequence[SizeCase]) -> SizeCase | None:
    """The run whose items are checked: the largest size of ``var`` (above 1) among the
    first run and the runs that vary ``var``."""
    eligible = [
        c
        for c in cases
        if c.ran and c.dims[var.name] > 1 and (c.varied is None or c.varied == var.name)
    ]
    return max(eligible, key=lambda c: c.dims[var.name], default=None)


def _declared_batch_axis(info: TensorInfo | None, var: DimVariable) -> int | None:
    if info is None or info.shape is None:
        return None
    return next((k for k, d in enumerate(info.shape) if d == var.name), None)


def check_items(
    model: Model,
    session,
    var: DimVariable,
    case: SizeCase,
    feeds: Mapping[str, np.ndarray],
    values: Mapping[str, np.ndarray],
    tolerance: Tolerance = BATCH_TOLERANCE,
) -> ItemCheck:
    """Split the run ``case`` (``feeds`` gave ``values``) into its items along ``var``
    and check each output against the run of each item alone."""
    size = case.dims[var.name]
    check = ItemCheck(var.name, size, case.label, tolerance)
    declared = {o.name: o for o in model.outputs}
    relations = {
        n: _BatchRelation(values[n], size, tolerance, _declared_batch_axis(declared.get(n), var))
        for n in model.output_names
    }
    for i in range(size):
        try:
            item = session.run(_item_feeds(feeds, var, i))
        except SurgeonError as e:
            check.error = f"item {i} alone ({var.name}=1) did not run: {_short_error(e.message)}"
            return check
        for n, rel in relations.items():
            rel.add(i, item[n])
    for n, rel in relations.items():
        if not rel.tensor:
            check.outputs.append(ItemOutput(n, True, problem="not a tensor: not compared"))
            continue
        axis = rel.stacked_axis
        # An output without a batch axis passes only when it is the same for every item
        # and for the batch (a constant); invariance alone is enough only inside the
        # graph, where a Shape of the batch differs from an item's and is still right.
        shared = (
            axis is None
            and rel.declared_axis is None
            and rel.invariant
            and bool(compare_arrays(rel.whole, rel.first, tolerance))
        )
        ok = axis is not None or shared
        worst = rel.axes.get(axis, 0.0) if axis is not None else None
        if axis is None and rel.failure is not None:  # the axis the items were compared on
            axis, worst = rel.failure[0], rel.failure[2].max_abs
        check.outputs.append(
            ItemOutput(
                n,
                ok,
                axis,
                list(rel.whole.shape),
                rel.item_shape,
                worst,
                "" if ok else rel.problem(var.name),
            )
        )
    return check


def find_batch_mixer(
    model: Model,
    var: DimVariable,
    feeds: Mapping[str, np.ndarray],
    size: int,
    tolerance: Tolerance = BATCH_TOLERANCE,
    options: RunOptions | None = None,
) -> Suspect | None:
    """The node where the items of a batch first stop being independent: the first node
    whose inputs all follow the batch (see ``_BatchRelation``) and whose output does not.
    None when no main-graph node can be named (or the tapped model does not run)."""
    from surgeon.edits.extract import subgraph_reads
    from surgeon.runner import Session

    g = model.proto.graph
    names = [o for n in g.node for o in n.output if o]
    try:
        session = Session(model, extra_outputs=names, options=options)
        whole = session.run(feeds, names)
        relations = {n: _BatchRelation(whole[n], size, tolerance) for n in names}
        del whole
        for i in range(size):
            item = session.run(_item_feeds(feeds, var, i), names)
            for n, rel in relations.items():
                rel.add(i, item[n])
    except SurgeonError:
        return None
    constants = _constants(model)
    broken: set[str] = set()
    for node in g.node:
        bad = [o for o in node.output if o in relations and not relations[o].follows]
        if not bad:
            continue
        if any(x in broken for x in list(node.input) + subgraph_reads(node)):
            broken.update(bad)
            continue
        rel = relations[bad[0]]
        label = node.name or bad[0]
        at = f"{var.name}={size}"
        shape, item = list(rel.whole.shape), rel.item_shape
        for index, role in SHAPE_INPUTS.get(node.op_type, {}).items():
            if index < len(node.input) and node.input[index] in constants:
                values = [int(v) for v in np.ravel(constants[node.input[index]])]
                reason = (
                    f"folds the batch: at {at} its output is {shape}, where one item gives {item}"
                )
                return Suspect(
                    label, node.op_type, reason, node.input[index], role, values, source="batch"
                )
        return Suspect(
            label,
            node.op_type,
            f"mixes the batch items: its output `{bad[0]}` {rel.problem(var.name)}",
            source="batch",
        )
    return None


# ---------------------------------------------------------------------- baked constants
def _constants(model: Model) -> dict[str, np.ndarray]:
    """Small integer constants of the main graph: initializers and Constant outputs."""
    out: dict[str, np.ndarray] = {}
    g = model.proto.graph
    for t in g.initializer:
        if len(t.dims) <= 1 and (not t.dims or t.dims[0] <= 64):
            arr = onnx.numpy_helper.to_array(t)
            if arr.dtype.kind in "iu":
                out[t.name] = arr
    for n in g.node:
        if n.op_type != "Constant" or not n.output:
            continue
        for a in n.attribute:
            arr = None
            if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                arr = onnx.numpy_helper.to_array(a.t)
            elif a.name == "value_ints":
                arr = np.array(list(a.ints), dtype=np.int64)
            elif a.name == "value_int":
                arr = np.array(a.i, dtype=np.int64)
            if arr is not None and arr.dtype.kind in "iu" and arr.size <= 64:
                out[n.output[0]] = arr
    return out


def _export_products(model: Model, variables: Sequence[DimVariable]) -> dict[int, str]:
    """Sizes at export that a baked constant may hold: each dynamic dim's export value
    and products of an input's export dims that involve one (``3072 = 3*H*W``)."""
    names = {ax: v for v in variables for ax in v.axes}
    products: dict[int, str] = {}
    for info in model.inputs:
        if info.shape is None:
            continue
        axes = []
        for axis, d in enumerate(info.shape):
            var = names.get((info.name, axis))
            if var is None:
                axes.append((int(d), str(d), False))
            elif var.export:
                axes.append((var.export, var.name, True))
            else:
                axes.append(None)
        usable = [a for a in axes if a is not None]
        for size in range(1, min(4, len(usable)) + 1):
            for combo in itertools.combinations(usable, size):
                if not any(dyn for _, _, dyn in combo):
                    continue
                value = int(np.prod([v for v, _, _ in combo]))
                if value > 1 and value not in products:
                    products[value] = "*".join(label for _, label, _ in combo)
    return products


def _dynamic_reach(model: Model) -> set[str]:
    """Tensors whose shape may follow a dynamic input dim (downstream of one)."""
    from surgeon.edits.extract import subgraph_reads

    reach = {i.name for i in model.inputs if i.is_dynamic}
    for n in model.proto.graph.node:
        if n.op_type == "Shape":  # its output's shape is the rank: static
            continue
        if any(x in reach for x in list(n.input) + subgraph_reads(n)):
            reach.update(o for o in n.output if o)
    return reach


def _add_origins(model: Model, suspects: list[Suspect]) -> None:
    """Name the PyTorch module and line of each suspect, when the file says."""
    from surgeon.origin import node_origin

    for suspect in suspects:
        try:
            origin = node_origin(model, suspect.node)
        except Exception:  # exporter metadata is best-effort
            origin = None
        suspect.origin = origin.describe() if origin is not None else None


def find_suspects(
    model: Model, variables: Sequence[DimVariable], cases: Sequence[SizeCase] = ()
) -> list[Suspect]:
    """Nodes that likely hold a size baked in at export, most certain first.

    Named by onnxruntime in a failed run; or a shape-like constant input (see
    ``SHAPE_INPUTS``) holding an export size; or a Reshape on a dynamic path whose
    constant shape has no 0 or -1 (so it fixes the element count).
    """
    g = model.proto.graph
    nodes = {n.name: n for n in g.node if n.name}
    constants = _constants(model)
    products = _export_products(model, variables)
    reach = _dynamic_reach(model)
    found: list[Suspect] = []
    seen: set[tuple[str, str | None]] = set()

    def add(s: Suspect) -> None:
        if (s.node, s.constant) not in seen:
            seen.add((s.node, s.constant))
            found.append(s)

    def baked(node: onnx.NodeProto) -> list[Suspect]:
        out = []
        for index, role in SHAPE_INPUTS.get(node.op_type, {}).items():
            if index >= len(node.input) or node.input[index] not in constants:
                continue
            if node.op_type == "Slice" and model.opset < 10:
                continue
            name = node.input[index]
            values = [int(v) for v in np.ravel(constants[name])]
            label = node.name or name
            hits = [v for v in values if v in products]
            if hits:
                v = hits[0]
                where = f"{v} = {products[v]} at export"
                factors = products[v].split("*")
                known = ", ".join(
                    f"{x.name}={x.export}" for x in variables if x.export and x.name in factors
                )
                if "*" in products[v] and known:
                    where += f" ({known})"
                out.append(Suspect(label, node.op_type, "contains " + where, name, role, values))
            elif (
                node.op_type == "Reshape"
                and node.input[0] in reach
                and values
                and all(v > 0 for v in values)
            ):
                total = int(np.prod(values))
                out.append(
                    Suspect(
                        label,
                        node.op_type,
                        f"has no 0 or -1, so it fixes the element count at {total} although "
                        "its input follows a dynamic dim",
                        name,
                        role,
                        values,
                    )
                )
        return out

    for case in cases:
        if case.failed_node and case.failed_node in nodes:
            node = nodes[case.failed_node]
            hits = baked(node)
            for s in hits:
                s.source = "onnxruntime"
                add(s)
            if not hits:
                consts = [
                    f"`{x}` of shape {list(model.value_infos()[x].shape or ())}"
                    for x in node.input
                    if x in {t.name for t in g.initializer}
                ]
                reason = f"failed at {case.label}: {case.error}"
                if consts:
                    reason += "; it reads constant " + ", ".join(consts)
                add(Suspect(node.name, node.op_type, reason, source="onnxruntime"))
    for node in g.node:
        for s in baked(node):
            add(s)
    return found


# ---------------------------------------------------------------------- reshape_io
def _set_dims(vi: onnx.ValueInfoProto, dims: Sequence[Dim]) -> None:
    tt = vi.type.tensor_type
    tt.ClearField("shape")
    shape = tt.shape
    shape.SetInParent()  # a rank-0 spec must still say "scalar", not "unknown rank"
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        elif isinstance(d, str):
            dim.dim_param = d


def _clean_unknown(vi: onnx.ValueInfoProto) -> None:
    """Inference names unknown dims ``unk__3``; they name nothing, so leave them unnamed."""
    if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param.startswith("unk__"):
                d.ClearField("dim_param")


def _infer(proto: onnx.ModelProto) -> onnx.GraphProto | None:
    from surgeon.edits.extract import inference_skeleton

    try:
        return onnx.shape_inference.infer_shapes(
            inference_skeleton(Model(proto)), check_type=False, strict_mode=False, data_prop=True
        ).graph
    except Exception:  # inference gives up on some models; the runtime check still runs
        return None


def _collect_specs(
    model: Model, specs: Mapping[str, str | Sequence[Dim]] | None, role: str
) -> dict[str, tuple[Dim, ...]]:
    specs = dict(specs or {})
    infos = {i.name: i for i in (model.inputs if role == "input" else model.outputs)}
    parsed = {}
    errors: list[NameNotFoundError] = []
    problems: list[str] = []
    for name, spec in specs.items():
        if name not in infos:
            errors.append(unknown_name(role, name, list(infos), model.name))
            continue
        try:
            dims = _as_dims(spec)
        except UsageError as e:
            problems.append(f"{role} `{name}`: {e.message}")
            continue
        old = infos[name].shape
        if old is not None and len(old) != len(dims):
            problems.append(
                f"{role} `{name}` has rank {len(old)} ({dims_text(old)}); "
                f"the new dims {dims_text(dims)} have rank {len(dims)}"
            )
        parsed[name] = dims
    if errors or problems:
        all_problems = [e.message for e in errors] + problems
        if len(all_problems) == 1 and errors:
            raise errors[0]
        raise UsageError(f"cannot set the {role} dims of {model.name}", problems=all_problems)
    return parsed


def _fits(shapes: Mapping[str, Sequence[int]], model: Model) -> bool:
    for info in model.inputs:
        shape = shapes.get(info.name)
        if shape is None or info.shape is None:
            continue
        if len(shape) != len(info.shape):
            return False
        if any(
            isinstance(d, int) and d > 0 and d != s for d, s in zip(info.shape, shape, strict=True)
        ):
            return False
    return True


def reshape_io(
    model: Model,
    inputs: Mapping[str, str | Sequence[Dim]] | None = None,
    outputs: Mapping[str, str | Sequence[Dim]] | None = None,
    *,
    check: bool = True,
    sizes: Mapping[str, Sequence[int]] | None = None,
    feed_options: FeedOptions = FeedOptions(),
    options: RunOptions | None = None,
    batch: Sequence[str] | None = None,
    batch_tolerance: Tolerance = BATCH_TOLERANCE,
) -> Edited:
    """Set the dims of inputs and outputs static or symbolic, then prove the model runs.

    Args:
        model: The model (not modified).
        inputs: Input name -> dims, as ``"Bx3xHxW"`` or a sequence of ints, names and
            None (unnamed dynamic).
        outputs: Output name -> dims, likewise. Outputs not given get their dims from
            shape inference, or keep theirs with input symbols renamed along.
        check: Run :func:`check_dynamic` on the result (its rows join the report).
        sizes: Sizes to try per dim name (see :func:`check_dynamic`).
        feed_options: Inputs for the comparison with the original at its sizes; its
            seed and ``max_feed_bytes`` apply to the runtime check too.
        options: onnxruntime settings for both checks (default: the value comparison
            runs with optimisations off, the runtime check with onnxruntime's defaults).
        batch, batch_tolerance: The batch dims and the tolerance of their item check
            (see :func:`check_dynamic`).

    Returns:
        Edited whose report holds the value comparison with the original at the
        original's sizes and one row per output per size tried; ``details`` has the old
        and new dims, ``export`` sizes, the value_info counts and ``dynamic`` (the
        check's dict).

    Raises:
        NameNotFoundError: An input or output that does not exist.
        UsageError: A dims spec that does not parse or changes the rank.
    """
    from surgeon.verification import verify as run_verify

    in_specs = _collect_specs(model, inputs, "input")
    out_specs = _collect_specs(model, outputs, "output")
    if not in_specs and not out_specs:
        raise UsageError(
            f"nothing to change in {model.name}: give --input NAME:DIMS or --output NAME:DIMS"
        )
    old_inputs = {i.name: i for i in model.inputs}
    old_outputs = {o.name: o for o in model.outputs}

    # Export sizes (a static dim made dynamic) and renamed symbols (batch -> B).
    export: dict[str, int] = {}
    renames: dict[str, set] = {}
    for name, dims in in_specs.items():
        old = old_inputs[name].shape or (None,) * len(dims)
        for axis, (o, n) in enumerate(zip(old, dims, strict=True)):
            var = n if isinstance(n, str) else f"{name}[{axis}]"
            if isinstance(o, int) and o > 0 and not isinstance(n, int):
                export.setdefault(var, o)
            if isinstance(o, str) and isinstance(n, str) and o != n:
                renames.setdefault(o, set()).add(n)
    symbol_map = {o: next(iter(n)) for o, n in renames.items() if len(n) == 1}

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    g = proto.graph
    for vi in g.input:
        if vi.name in in_specs:
            _set_dims(vi, in_specs[vi.name])
    for vi in g.output:
        if vi.name in out_specs:
            _set_dims(vi, out_specs[vi.name])
        elif vi.type.tensor_type.HasField("shape"):
            # Let inference decide afresh; the old dims are the fallback below.
            vi.type.tensor_type.ClearField("shape")
    old_value_info = list(g.value_info)
    del g.value_info[:]
    inferred = _infer(proto)
    inferred_vi = {}
    inferred_out = {}
    if inferred is not None:
        inferred_vi = {v.name: v for v in inferred.value_info}
        inferred_out = {v.name: v for v in inferred.output}
    for vi in g.output:
        if vi.name in out_specs:
            continue
        old = old_outputs[vi.name].shape
        new = inferred_out.get(vi.name)
        new_info = value_info_to_tensor_info(new) if new is not None else None
        if new_info is not None and new_info.shape is not None:
            dims = []
            for axis, d in enumerate(new_info.shape):
                if isinstance(d, str) and d.startswith("unk__"):
                    d = None
                before = old[axis] if old is not None and len(old) == len(new_info.shape) else None
                if d is None and isinstance(before, str):
                    d = symbol_map.get(before, before)  # the export named it: keep the name
                dims.append(d)
            _set_dims(vi, dims)
        elif old is not None:
            _set_dims(vi, [symbol_map.get(d, d) if isinstance(d, str) else d for d in old])
    for vi in g.output:
        new = inferred_out.get(vi.name)
        tt = vi.type.tensor_type
        if not tt.elem_type and new is not None and new.type.tensor_type.elem_type:
            tt.elem_type = new.type.tensor_type.elem_type
        if not tt.elem_type:
            vi.ClearField("type")  # dims without an element type do not load; untyped does
    refreshed = cleared = 0
    for vi in old_value_info:
        new = inferred_vi.get(vi.name)
        if new is not None:
            g.value_info.append(new)
            _clean_unknown(g.value_info[-1])
            refreshed += 1
        else:
            # Stale: keep the element type, drop the shape inference could not confirm.
            kept = g.value_info.add()
            kept.CopyFrom(vi)
            if kept.type.tensor_type.HasField("shape"):
                kept.type.tensor_type.ClearField("shape")
                cleared += 1
    # Tensors inference typed that the model did not declare: declare them too.
    known = (
        {x.name for x in old_value_info} | {x.name for x in g.input} | {x.name for x in g.output}
    )
    added = [v for name, v in inferred_vi.items() if name not in known]
    for v in added:
        g.value_info.append(v)
        _clean_unknown(g.value_info[-1])
    edited = model.with_proto(proto)
    params = {
        "inputs": {k: dims_text(v) for k, v in in_specs.items()},
        "outputs": {k: dims_text(v) for k, v in out_specs.items()},
    }
    edited.with_provenance("reshape_io", params)

    # Values at the original's sizes must not change. Optimisations off by default: with
    # static dims onnxruntime may pick other kernels than with symbolic ones (see
    # surgeon.edits.extract.VERIFY_OPTIONS), and bit-identity is the promise here.
    verify_options = options or RunOptions(optimization="disabled")
    if check:
        # The sizes the runtime check will try are refused (too large, unknown dims) now,
        # before the value comparison runs.
        variables = dynamic_dims(edited, sizes, export, batch)
        _refuse_large_cases(edited, _cases(edited, variables), feed_options.max_feed_bytes)
    notes = []
    report = None
    try:
        ref_shapes = resolve_shapes(model, feed_options)
    except SurgeonError:
        ref_shapes = None
    shapes = None
    if ref_shapes is not None and _fits(ref_shapes, edited):
        shapes = ref_shapes
    else:
        try:
            # The caller's shapes, dims and values were for the original, which these
            # dims do not fit: the edited model's own defaults decide.
            new_shapes = resolve_shapes(edited, replace(feed_options, shapes={}, dims={}, npz=None))
        except SurgeonError:
            new_shapes = None
        if new_shapes is not None and _fits(new_shapes, model):
            shapes = new_shapes
    if shapes is not None:
        # replace, not a fresh FeedOptions: the seed, values and size limit the caller
        # set all hold. dims={}: ``shapes`` already resolves every dim of every input.
        feeds = make_feeds(model, replace(feed_options, shapes=shapes, dims={}))
        report = run_verify(
            edited,
            model,
            feeds=feeds,
            feed_options=feed_options,
            tolerance=EXACT,
            options=verify_options,
            title="reshape-io: same values at the original's sizes, and runs at other sizes",
        )
        report.candidate = f"{model.name} (reshaped)"
    else:
        notes.append(
            "the new static dims do not fit the original's inputs, so values could not be "
            "compared with it; only the runtime check below applies"
        )
        report = DiffReport(
            title="reshape-io: runs at other sizes",
            candidate=f"{model.name} (reshaped)",
            reference=model.name,
            tensors=[],
            tolerance=EXACT,
            seed=feed_options.seed,
        )
    value_rows = len(report.tensors)
    dynamic = None
    if check:
        dynamic = check_dynamic(
            edited,
            sizes=sizes,
            export=export,
            seed=feed_options.seed,
            max_feed_bytes=feed_options.max_feed_bytes,
            options=options,
            batch=batch,
            batch_tolerance=batch_tolerance,
        )
        report.tensors += dynamic.tensor_diffs()
        report.notes += [s.message() for s in dynamic.suspects] + dynamic.notes
    report.notes += notes
    details = {
        "inputs": [
            {"name": n, "old": _dims_list(old_inputs[n].shape), "new": _dims_list(d)}
            for n, d in in_specs.items()
        ],
        "outputs": [
            {
                "name": o.name,
                "old": _dims_list(old_outputs[o.name].shape),
                "new": _dims_list(o.shape),
                "given": o.name in out_specs,
            }
            for o in edited.outputs
        ],
        "export": export,
        "value_info": {"refreshed": refreshed, "cleared": cleared, "added": len(added)},
        "dynamic": dynamic.to_dict() if dynamic is not None else None,
        # The report's first rows compare values with the original; the rest are the
        # runtime check's, one per output per size.
        "value_rows": value_rows,
        "notes": notes,
    }
    return Edited(edited, report, "reshape_io", params, details)


def _dims_list(dims: Sequence[Dim] | None) -> list | None:
    return list(dims) if dims is not None else None


def parse_batch(items: Iterable[str]) -> list[str] | None:
    """Parse ``--batch B`` arguments (repeatable, or comma-separated): None when none is
    given (the naming rule decides), ``[]`` for ``--batch none``.

    Raises:
        UsageError: ``none`` together with dim names, or an empty name.
    """
    names = [n.strip() for item in items for n in item.split(",")]
    if not names:
        return None
    if "none" in names:
        if names != ["none"]:
            raise UsageError("`--batch none` cannot be combined with batch dim names")
        return []
    if not all(names):
        raise UsageError("cannot read `--batch`: expected DIM[,DIM...] or none, e.g. --batch B")
    return list(dict.fromkeys(names))


def parse_sizes(items: Iterable[str]) -> dict[str, list[int]]:
    """Parse ``--sizes H=224,320`` arguments.

    Raises:
        UsageError: An item is not ``DIM=INT[,INT...]``, or a size does not fit an int64.
    """
    out: dict[str, list[int]] = {}
    for item in items:
        name, sep, values = item.rpartition("=")
        try:
            parsed = [int(v) for v in values.split(",") if v.strip()]
        except ValueError:
            parsed = []
        if not sep or not name.strip() or not parsed:
            raise UsageError(
                f"cannot read `--sizes {item}`: expected DIM=SIZE[,SIZE...], e.g. H=224,320"
            )
        for value in parsed:
            if error := too_large_dim(value, f"`--sizes {item}`"):
                raise error
        out[name.strip()] = parsed
    return out
