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

The export value (the static size the dim had before ``reshape_io`` made it dynamic) comes
first when known; duplicates are dropped. It runs the first value of every dim once, then
varies one dim at a time, so a failure points at the dim that caused it. Outputs must have
their declared rank, their static dims, and, for a dim named like an input dim, that
dim's value. When something fails, the nodes onnxruntime names in its errors and the
Reshape/Expand/Tile/Resize/ConstantOfShape/Slice nodes whose shape-like input is a
constant holding an export value (or a product of them) are reported as suspects.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from surgeon.compare import EXACT, DiffReport, TensorDiff
from surgeon.edits import Edited
from surgeon.errors import NameNotFoundError, SurgeonError, UsageError, unknown_name
from surgeon.feeds import FeedOptions, make_feeds, resolve_shapes
from surgeon.model import Model, TensorInfo, dim_param_name, value_info_to_tensor_info
from surgeon.runner import RunOptions

DYNAMIC_SCHEMA = "surgeon.check-dynamic/1"
Dim = int | str | None

BATCH_NAMES = {"n", "b", "batch", "batch_size", "batchsize", "bs", "num_batches"}
SPATIAL_NAMES = {"h", "w", "height", "width", "d", "depth", "x", "y", "img_h", "img_w"}
DEFAULT_SIZES = {"batch": (1, 3), "spatial": (64, 96), "other": (16, 24)}

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
        UsageError: An empty spec, or a dim that is neither an integer >= 0 nor a name.
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


def _as_dims(spec: str | Sequence[Dim]) -> tuple[Dim, ...]:
    if isinstance(spec, str):
        return parse_dims(spec)
    dims = []
    for d in spec:
        if d is None or (isinstance(d, int) and d == -1):
            dims.append(None)
        elif isinstance(d, (int, np.integer)) and d >= 0:
            dims.append(int(d))
        elif isinstance(d, str) and d.strip():
            dims.append(dim_param_name(d))  # `?` and `-1` are unnamed, as in a spec
        else:
            raise UsageError(f"dim {d!r} is not an integer >= 0, a name, or None")
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

    @property
    def passed(self) -> bool:
        return bool(self.cases) and all(c.passed for c in self.cases)

    def __bool__(self) -> bool:
        return self.passed

    def summary(self) -> str:
        ok = sum(c.passed for c in self.cases)
        dims = ", ".join(f"{d.name} in {d.values}" for d in self.dims) or "no dynamic dims"
        if self.passed:
            return f"PASS: {ok} of {len(self.cases)} size(s) ran with the expected output shapes ({dims})"
        failed = [c for c in self.cases if not c.passed]
        what = "; ".join(
            f"{c.label}: {'did not run' if not c.ran else 'wrong output shapes'}"
            for c in failed[:3]
        )
        return f"FAIL: {len(failed)} of {len(self.cases)} size(s) failed ({what})"

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
        return rows


# ---------------------------------------------------------------------- check_dynamic
def _kind(name: str, axis: int, rank: int) -> str:
    low = name.lower()
    if low in BATCH_NAMES:
        return "batch"
    if low in SPATIAL_NAMES or "height" in low or "width" in low:
        return "spatial"
    if axis == 0:
        return "batch"
    if rank in (4, 5) and axis >= 2:
        return "spatial"
    return "other"


def dynamic_dims(
    model: Model,
    sizes: Mapping[str, Sequence[int]] | None = None,
    export: Mapping[str, int] | None = None,
) -> list[DimVariable]:
    """The dynamic dims of ``model``'s inputs with the sizes to try (module docstring).

    Raises:
        UsageError: ``sizes`` names a dim the inputs do not have, or gives a size < 1.
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
                found[name] = DimVariable(name, [], _kind(name, axis, len(info.shape)), [])
            found[name].axes.append((info.name, axis))
    problems = []
    for name, values in sizes.items():
        if name not in found:
            err = unknown_name("dynamic dim", name, list(found), model.name)
            problems.append(err.message + ("" if found else " (its inputs have no dynamic dims)"))
        elif not values or any(int(v) < 1 for v in values):
            problems.append(f"sizes for `{name}` must be integers >= 1, got {list(values)}")
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
    options: RunOptions | None = None,
) -> DynamicCheck:
    """Run ``model`` at several sizes of each dynamic input dim and check output shapes.

    Args:
        model: The model to check.
        sizes: Sizes to try per dim name (``{"H": [224, 320]}``); unnamed dims are named
            ``input[axis]``. Other dims follow the rule in the module docstring.
        export: The size each dim had at export, when known (tried first, and used to
            recognise baked constants).
        seed: Seed of the random inputs.
        options: onnxruntime settings.

    Returns:
        A DynamicCheck, truthy when every size ran with the expected output shapes; when
        not, ``suspects`` names the nodes that likely hold a baked size.

    Raises:
        UsageError: ``sizes`` names unknown dims or gives sizes < 1.
    """
    from surgeon.runner import Session

    unknown_rank = [i.name for i in model.inputs if i.shape is None]
    if unknown_rank:
        raise UsageError(
            f"cannot check {model.name}: input(s) {', '.join(f'`{n}`' for n in unknown_rank)} "
            "have unknown rank",
            hint="Declare their dims first: surgeon reshape-io model.onnx --input NAME:DIMS",
        )
    variables = dynamic_dims(model, sizes, export)
    cases = _cases(model, variables)
    notes = []
    if not variables:
        notes.append("the inputs have no dynamic dims: the model ran once, at its static shapes")
    declared = {o.name: o for o in model.outputs}
    # A model onnxruntime cannot load at all (an unknown op, a missing custom op library,
    # damaged weights) is not a size problem: the RuntimeFailure, with its hint, goes to
    # the caller (exit 2) instead of a table of sizes that "did not run".
    session = Session(model, options=options)
    for case in cases:
        feeds = make_feeds(
            model,
            FeedOptions(seed=seed, shapes={k: tuple(v) for k, v in case.input_shapes.items()}),
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
    check = DynamicCheck(model.name, variables, cases, notes=notes, seed=seed)
    if not check.passed:
        check.suspects = find_suspects(model, variables, cases)
        _add_origins(model, check.suspects)
        if not check.suspects:
            check.notes.append(
                "no baked constant was found in Reshape/Expand/Tile/Resize/ConstantOfShape/Slice "
                "inputs; see onnxruntime's message for the failing node"
            )
    return check


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
        feed_options: Inputs for the comparison with the original at its sizes.
        options: onnxruntime settings for both checks (default: the value comparison
            runs with optimisations off, the runtime check with onnxruntime's defaults).

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
            new_shapes = resolve_shapes(edited, FeedOptions(seed=feed_options.seed))
        except SurgeonError:
            new_shapes = None
        if new_shapes is not None and _fits(new_shapes, model):
            shapes = new_shapes
    if shapes is not None:
        feeds = make_feeds(
            model, FeedOptions(seed=feed_options.seed, shapes=shapes, npz=feed_options.npz)
        )
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
            edited, sizes=sizes, export=export, seed=feed_options.seed, options=options
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


def parse_sizes(items: Iterable[str]) -> dict[str, list[int]]:
    """Parse ``--sizes H=224,320`` arguments.

    Raises:
        UsageError: An item is not ``DIM=INT[,INT...]``.
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
        out[name.strip()] = parsed
    return out
