"""Taps inside If, Loop and Scan bodies: naming body tensors, and exposing them as outputs
of the main graph without changing what the graph computes.

Design (the choices and why):

* **Names.** Tensors in different bodies may share a name, and a body tensor may share a
  name with a main-graph tensor, so a body tensor is named by where it lives:
  ``<holder>/<attribute>/<tensor>``, e.g. ``If_0/then_branch/conv_out``, nested bodies
  chaining (``If_0/else_branch/Loop_3/body/h``). The holder is the node's name, or
  ``#<index>`` for an unnamed node (its place in its graph). The plain body name is
  accepted where it is unique (see :func:`surgeon.names.resolve_tensors`). A qualified
  name that happens to be a main-graph tensor name gets ``#2``, ``#3``... so that it
  can be the graph output's own name: values, ``--save`` keys and reports all use it.
* **If.** A tapped tensor goes out of its branch through an Identity into a new branch
  output, and out of the If through a new If output. The branch not taken must yield
  something of the same dtype: an empty tensor (a Constant with zero elements) of the
  tapped tensor's rank when inference knows it (rank 1 when it does not), and for a
  scalar, which cannot be empty, a zero scalar whose value nothing reads. Outputs are
  declared with the dtype and, where known, the rank (dims unknown), so the tapped
  model passes the ONNX checker wherever the ranks are known.
  Which branch ran is not guessed from the value's size (a real tensor may be empty):
  every If on a tap's way out also gets a *marker* output, ``true`` from its
  then_branch and ``false`` from its else_branch, exposed like a tap; a tap whose
  markers say its branch did not run is "not executed", never a zero-size activation.
* **Loop / Scan.** The tensor becomes an extra scan output of the body, after the
  existing ones (Loop body outputs are the condition, N carried values, then K scan
  outputs; Scan's are N states then K scan outputs), and an extra output of the node,
  after its existing outputs: onnxruntime stacks the value of every iteration along a
  new first axis. Scan's ``scan_output_axes`` / ``scan_output_directions``, when
  given, get a 0 for it (stacked along axis 0, in iteration order). Only tensors a body
  node produces are tapped: a body input (iteration number, carried value, scan slice)
  and an outer-scope read are not produced there (the read is a main-graph or
  enclosing-body tensor, tapped there).
* **Nested bodies.** The same steps repeat outwards through every enclosing node, so a
  tap in a Loop body inside an If branch is stacked by the Loop, then passed through
  the If. Each enclosing Loop/Scan adds one leading iteration axis.
* **Limits.** A scan output must keep one shape over the iterations. A body tensor
  whose shape changes between iterations (a slice growing with the iteration number, an
  If inside a Loop taking another branch, an inner Loop running another number of
  times) makes onnxruntime refuse the tapped run; the callers then retry with a
  narrower plan (:meth:`BodyPlan.narrower`) and list the dropped taps as not tappable,
  so the untapped model is never blamed. Bodies of other ops (custom ops, SequenceMap)
  and tensors whose dtype inference cannot tell stay "not tappable".
* **Tap check.** Nothing the original graph computes changes: new outputs only read
  existing tensors, through new nodes with fresh names, so every original output stays
  bit-identical (the tap edit and ``debug`` verify it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import onnx
from onnx import helper

from surgeon.graph_facts import subgraph_reads
from surgeon.model import Model

# The ops whose bodies can be tapped, and the graph attributes that hold them.
BODY_ATTRIBUTES = {"If": ("then_branch", "else_branch"), "Loop": ("body",), "Scan": ("body",)}
# What not_tappable says of a Loop/Scan tap dropped because it could not be stacked.
UNSTACKABLE = "(its shape may change between iterations: not stackable)"
# Prefix of the names of the nodes and tensors the exposure adds (made unique).
FRESH_PREFIX = "surgeon_tap"


@dataclass(frozen=True)
class BodyLevel:
    """One step into a body: the holding node (its label and index in its graph), its op
    type and the graph attribute entered."""

    node: str
    index: int
    op: str
    attribute: str

    @property
    def prefix(self) -> str:
        return f"{self.node}/{self.attribute}"


@dataclass(frozen=True)
class BodyTensor:
    """A tensor produced by a node inside an If/Loop/Scan body.

    Attributes:
        name: The qualified name (``If_0/then_branch/conv_out``): also the name of the
            main-graph output that exposes it.
        tensor: Its name inside the body.
        levels: The way in, outermost first.
        node: The producing node's qualified label (``If_0/then_branch/Conv_3``).
        op: The producing node's op type.
        inputs: The producing node's inputs, qualified where they are body tensors.
        holder: The main-graph node that holds the outermost body (its index).
        markers: The branch marker's output name for each If on the way in, in order
            (see :func:`marker_name`).
    """

    name: str
    tensor: str
    levels: tuple[BodyLevel, ...]
    node: str
    op: str
    inputs: tuple[str, ...]
    holder: int
    markers: tuple[str, ...] = ()

    @property
    def where(self) -> str:
        """``If_0/then_branch`` (nested levels joined): where the tensor lives."""
        return "/".join(level.prefix for level in self.levels)

    @property
    def iteration_axes(self) -> int:
        """How many leading axes of the exposed value are iterations (one per Loop/Scan)."""
        return sum(1 for level in self.levels if level.op in ("Loop", "Scan"))

    @property
    def branches(self) -> tuple[tuple[str, str], ...]:
        """``(marker name, branch)`` for every If on the way in."""
        ifs = [level.attribute for level in self.levels if level.op == "If"]
        return tuple(zip(self.markers, ifs, strict=True))

    def if_depths(self) -> list[int]:
        """The indices in ``levels`` of the Ifs on the way in."""
        return [i for i, level in enumerate(self.levels) if level.op == "If"]


def marker_name(levels: Sequence[BodyLevel]) -> str:
    """The main-graph output saying which branch of the If at the end of ``levels`` ran
    (``true``: then_branch), before it is made unique against the model's names."""
    path = "/".join(level.prefix for level in levels[:-1])
    return f"{path}/{levels[-1].node} branch taken" if path else f"{levels[-1].node} branch taken"


def _label(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"#{index}"


def _body(node: onnx.NodeProto, attribute: str) -> onnx.GraphProto:
    for a in node.attribute:
        if a.name == attribute and a.type == onnx.AttributeProto.GRAPH:
            return a.g
    raise KeyError(attribute)


def _tappable_attributes(node: onnx.NodeProto) -> tuple[str, ...]:
    if node.domain not in ("", "ai.onnx"):
        return ()
    wanted = BODY_ATTRIBUTES.get(node.op_type, ())
    present = {a.name for a in node.attribute if a.type == onnx.AttributeProto.GRAPH}
    return tuple(a for a in wanted if a in present)


def body_tensors(model: Model) -> dict[str, BodyTensor]:
    """Every tappable body tensor of ``model``, qualified name -> BodyTensor, in graph
    order (a body's tensors before its holder's outputs, nested bodies likewise).
    Cached on the model."""
    cached = model.__dict__.get("_body_tensors")
    if cached is not None and cached[0] is model.proto.graph:
        return dict(cached[1])
    graph = model.proto.graph
    main_names = set(model.tensor_names()) | {o.name for o in graph.output}
    found: dict[str, BodyTensor] = {}
    markers: dict[tuple[BodyLevel, ...], str] = {}  # If path -> its marker's name
    taken = set(main_names)  # every name handed out, so none is given twice

    def unique(name: str) -> str:
        k, candidate = 2, name
        while candidate in taken:
            candidate, k = f"{name}#{k}", k + 1
        taken.add(candidate)
        return candidate

    def markers_of(levels: tuple[BodyLevel, ...]) -> tuple[str, ...]:
        out = []
        for i, level in enumerate(levels):
            if level.op == "If":
                path = levels[: i + 1]
                if path not in markers:
                    markers[path] = unique(marker_name(path))
                out.append(markers[path])
        return tuple(out)

    def visit(g: onnx.GraphProto, levels: tuple[BodyLevel, ...], scopes, holder: int) -> None:
        for i, node in enumerate(g.node):
            top = holder if levels else i
            for attribute in _tappable_attributes(node):
                level = BodyLevel(_label(node, i), i, node.op_type, attribute)
                body = _body(node, attribute)
                inner = (*levels, level)
                prefix = "/".join(x.prefix for x in inner)
                local = {v.name for v in body.input} | {t.name for t in body.initializer}
                local |= {o for n in body.node for o in n.output if o}
                visit(body, inner, [*scopes, (prefix, local)], top)
            if not levels:
                continue
            prefix = scopes[-1][0]
            for o in node.output:
                if not o:
                    continue
                # a holder also reads what its bodies read from outside (as in GraphFacts)
                reads = dict.fromkeys([*(x for x in node.input if x), *subgraph_reads(node)])
                inputs = tuple(_qualify(x, scopes) for x in reads)
                name = unique(f"{prefix}/{o}")
                label = f"{prefix}/{_label(node, i)}"
                found[name] = BodyTensor(
                    name, o, levels, label, node.op_type, inputs, holder, markers_of(levels)
                )

    visit(graph, (), [], -1)
    model.__dict__["_body_tensors"] = (graph, found)
    return dict(found)


def _qualify(name: str, scopes) -> str:
    """``name`` as read in the innermost scope: the qualified name in the nearest body
    that defines it, else the main-graph name."""
    for prefix, local in reversed(scopes):
        if name in local:
            return f"{prefix}/{name}"
    return name


def untappable_body_tensors(model: Model) -> dict[str, str]:
    """Tensors inside bodies of ops other than If/Loop/Scan (custom ops, SequenceMap...)
    -> the main-graph node that holds them: listed, never silently skipped."""
    from surgeon.protos import iter_graphs

    found: dict[str, str] = {}

    def visit(g: onnx.GraphProto, holder: str | None) -> None:
        for i, node in enumerate(g.node):
            tappable = set(_tappable_attributes(node))
            for a in node.attribute:
                subs = [a.g] if a.type == a.GRAPH else list(a.graphs)
                for sub in subs:
                    here = holder or _label(node, i)
                    if a.name in tappable and a.type == a.GRAPH:
                        visit(sub, here)
                        continue
                    for inner in iter_graphs(sub):
                        for n in inner.node:
                            for o in n.output:
                                if o:
                                    found.setdefault(o, here)

    visit(model.proto.graph, None)
    return found


def body_types(model: Model, taps: Iterable[BodyTensor]) -> dict[str, onnx.TypeProto]:
    """Tensor types of body taps (qualified name -> TypeProto), from ONNX shape inference
    of the model (which types body tensors too) and else the bodies' own declarations;
    taps whose dtype neither tells are left out."""
    from surgeon.graph_facts import inferred_graph

    inferred = inferred_graph(model)
    found: dict[str, onnx.TypeProto] = {}
    for t in taps:
        for graph in (inferred, model.proto.graph):
            if graph is None:
                continue
            try:
                body = _walk(graph, t.levels)
            except (IndexError, KeyError):
                continue  # inference's copy differs: use the declarations
            typed = {v.name: v.type for v in [*body.value_info, *body.output]}
            vi = typed.get(t.tensor)
            if vi is not None and vi.HasField("tensor_type") and vi.tensor_type.elem_type:
                found[t.name] = vi
                break
    return found


def _walk(graph: onnx.GraphProto, levels: Sequence[BodyLevel]) -> onnx.GraphProto:
    for level in levels:
        node = graph.node[level.index]
        if _label(node, level.index) != level.node or node.op_type != level.op:
            raise KeyError(level.node)
        graph = _body(node, level.attribute)
    return graph


class _Names:
    """Fresh, model-wide unique names for the nodes and tensors the exposure adds."""

    def __init__(self, proto: onnx.ModelProto):
        from surgeon.protos import iter_graphs

        used: set[str] = set()
        for g in iter_graphs(proto.graph):
            used.update(v.name for v in [*g.input, *g.output, *g.value_info])
            used.update(t.name for t in g.initializer)
            for n in g.node:
                used.update(n.output)
                used.add(n.name)
        self.used = used
        self.count = 0

    def fresh(self) -> str:
        while True:
            self.count += 1
            name = f"{FRESH_PREFIX}_{self.count}"
            if name not in self.used:
                self.used.add(name)
                return name


def _rank(t: onnx.TypeProto) -> int | None:
    tt = t.tensor_type
    return len(tt.shape.dim) if tt.HasField("shape") else None


def _typed(name: str, elem: int, shape: Sequence | None = None) -> onnx.ValueInfoProto:
    vi = onnx.ValueInfoProto(name=name)
    vi.type.tensor_type.elem_type = elem
    if shape is not None:
        vi.type.tensor_type.shape.SetInParent()
        for d in shape:
            dim = vi.type.tensor_type.shape.dim.add()
            if isinstance(d, int):
                dim.dim_value = d
    return vi


def _filler(elem: int, rank: int | None) -> onnx.TensorProto:
    """What the branch not taken yields: an empty tensor of the tapped tensor's rank (rank
    1 when unknown); for a scalar, which cannot be empty, a zero scalar, so both branches
    keep one rank (the checker wants it, and a Loop can stack it). Its value is never
    read: the branch marker says the branch did not run."""
    if rank == 0:
        zero = b"" if elem == onnx.TensorProto.STRING else 0
        return helper.make_tensor("not_run", elem, [], [zero])
    return helper.make_tensor("not_run", elem, [0] * (rank or 1), [])


def _lift(
    proto: onnx.ModelProto,
    levels: Sequence[BodyLevel],
    name: str,
    elem: int,
    rank: int | None,
    exposed: str,
    names: _Names,
    marker: bool = False,
) -> None:
    """Carry tensor ``name`` of the body at the end of ``levels`` out to the main graph
    as output ``exposed``, through every enclosing node (see the module docstring).

    ``marker``: instead of a tensor, the marker of the If at the end of
    ``levels``: constant ``true`` from its then_branch and ``false`` from its else_branch.
    """
    holders = []
    graph = proto.graph
    for level in levels:
        node = graph.node[level.index]
        holders.append((node, level))
        graph = _body(node, level.attribute)
    for depth in range(len(holders) - 1, -1, -1):
        node, level = holders[depth]
        out = exposed if depth == 0 else names.fresh()
        if marker:  # the marker: a constant from each branch
            for attribute, value in (("then_branch", True), ("else_branch", False)):
                body = _body(node, attribute)
                flag = names.fresh()
                body.node.append(
                    helper.make_node(
                        "Constant",
                        [],
                        [flag],
                        name=names.fresh(),
                        value=helper.make_tensor("marker", onnx.TensorProto.BOOL, [], [value]),
                    )
                )
                body.output.append(_typed(flag, onnx.TensorProto.BOOL, []))
            marker = False
        else:
            body = _body(node, level.attribute)
            inner = names.fresh()
            body.node.append(helper.make_node("Identity", [name], [inner], name=names.fresh()))
            # declared with its rank where known (dims unknown): the checker wants a shape
            body.output.append(_typed(inner, elem, None if rank is None else [None] * rank))
            if level.op == "If":
                other = "else_branch" if level.attribute == "then_branch" else "then_branch"
                empty = names.fresh()
                _body(node, other).node.append(
                    helper.make_node(
                        "Constant", [], [empty], name=names.fresh(), value=_filler(elem, rank)
                    )
                )
                shape = None if rank is None else [None] * rank
                _body(node, other).output.append(_typed(empty, elem, shape))
            elif level.op == "Scan":
                for a in node.attribute:
                    if a.name in ("scan_output_axes", "scan_output_directions"):
                        a.ints.append(0)  # stacked along axis 0, in iteration order
                rank = None if rank is None else rank + 1
            else:
                rank = None if rank is None else rank + 1
        node.output.append(out)
        name = out
    proto.graph.output.append(_typed(exposed, elem, None if rank is None else [None] * rank))


@dataclass(frozen=True)
class BodyPlan:
    """Which body tensors to expose and how they are typed.

    Attributes:
        taps: Qualified name -> BodyTensor, for every body tap that can be exposed.
        types: Qualified name -> its type inside the body.
        markers: The main-graph outputs saying which branch ran, one per If on some
            tap's way out (see :func:`marker_name`).
        untyped: Qualified names left out: not tensors, or their dtype is unknown.
    """

    taps: Mapping[str, BodyTensor]
    types: Mapping[str, onnx.TypeProto]
    markers: tuple[str, ...]
    untyped: tuple[str, ...]

    def expose(self, proto: onnx.ModelProto) -> None:
        """Expose every planned tap (and the markers) as main-graph outputs of ``proto``,
        in place (``proto`` is a copy of the model the plan was made for)."""
        names = _Names(proto)
        done: set[str] = set()
        for t in self.taps.values():
            for i, marker in zip(t.if_depths(), t.markers, strict=True):
                if marker in done:
                    continue
                done.add(marker)
                _lift(
                    proto,
                    t.levels[: i + 1],
                    "",
                    onnx.TensorProto.BOOL,
                    0,
                    marker,
                    names,
                    marker=True,
                )
            elem = self.types[t.name].tensor_type.elem_type
            _lift(proto, t.levels, t.tensor, elem, _rank(self.types[t.name]), t.name, names)

    def narrower(self) -> tuple[BodyPlan, list[str]] | None:
        """The next, smaller plan to retry with after onnxruntime could not stack the
        values of some Loop/Scan taps (a scan output must keep one shape over the
        iterations), and the taps it drops; None when no Loop/Scan tap is left to drop.

        Which tensor changed shape is not known, so the drop is staged, one retry each:
        first taps in a body inside a Loop/Scan body (an If taking another branch, an
        inner Loop running another number of times; scalars behind Ifs stack and stay),
        then Loop/Scan taps whose shape inference cannot fix, then all Loop/Scan taps.
        """
        looped = {n: t for n, t in self.taps.items() if t.iteration_axes}
        stages = (
            lambda n, t: _unstackable(t, _rank(self.types[n])),
            lambda n, t: not _static(self.types[n]),
            lambda n, t: True,
        )
        for drop in stages:
            dropped = [n for n, t in looped.items() if drop(n, t)]
            if dropped:
                kept = {n: t for n, t in self.taps.items() if n not in dropped}
                markers = tuple(dict.fromkeys(m for t in kept.values() for m in t.markers))
                types = {n: self.types[n] for n in kept}
                return BodyPlan(kept, types, markers, self.untyped), dropped
        return None

    def exposed(self, model: Model) -> Model:
        """A copy of ``model`` with the planned taps as outputs (not an edit)."""
        copy = model.copy()
        self.expose(copy.proto)
        return copy


def _static(t: onnx.TypeProto) -> bool:
    """True when inference fixed every dim of the type (a known rank, every dim a value)."""
    tt = t.tensor_type
    return tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim)


def _unstackable(t: BodyTensor, rank: int | None) -> bool:
    """True when ``t`` may change shape between the iterations of an enclosing Loop/Scan:
    it sits in a body inside that body, unless it is a scalar behind Ifs only (the
    branch not taken gives a scalar too)."""
    looped = False
    for level in t.levels:
        if looped and (level.op != "If" or rank != 0):
            return True
        looped = looped or level.op in ("Loop", "Scan")
    return False


def plan_body_taps(model: Model, names: Sequence[str]) -> BodyPlan:
    """The plan to expose the body tensors among ``names`` (qualified names; other names
    are ignored)."""
    table = body_tensors(model)
    chosen = {n: table[n] for n in dict.fromkeys(names) if n in table}
    types = body_types(model, chosen.values())
    untyped = tuple(n for n in chosen if n not in types)
    taps = {n: t for n, t in chosen.items() if n in types}
    markers = tuple(dict.fromkeys(m for t in taps.values() for m in t.markers))
    return BodyPlan(taps, {n: types[n] for n in taps}, markers, untyped)
