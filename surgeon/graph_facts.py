"""Graph facts: what surgeon knows about a model's graph, computed once per model.

Several modules need the same facts about a graph: which node produces a tensor and
which nodes read it, a topological order of nodes and tensors, the outer-scope tensors
that If/Loop/Scan bodies read, what ONNX shape inference says about each tensor, and how
onnxruntime types a tensor when it builds a session. They are computed here, once:
:func:`graph_facts` caches a :class:`GraphFacts` on the Model (recomputed if the graph
visibly changed: edits make new Models, they do not edit a Model's graph in place).

Shape inference runs on a *skeleton* of the model (:func:`inference_skeleton`): large
initializers become typed graph inputs, because inference serialises the model, which
would copy every weight several times and fail above 2 GB.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import onnx

from surgeon.protos import TensorInfo, declared_nbytes, tensor_nbytes, value_info_to_tensor_info

if TYPE_CHECKING:  # the Model builds on this module (Model.producers), not the other way
    from surgeon.model import Model

# Initializers larger than this are replaced by typed graph inputs in the copy given to
# ONNX shape inference: big weights are never shape tensors whose values inference needs.
INFERENCE_WEIGHT_LIMIT = 1024


# ---------------------------------------------------------------------- scopes
def _bodies(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    bodies: list[onnx.GraphProto] = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            bodies.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            bodies.extend(attr.graphs)
    return bodies


def subgraph_reads(node: onnx.NodeProto) -> list[str]:
    """Outer-scope tensors the bodies (If/Loop/Scan subgraphs) of ``node`` read, in the
    order first read; empty for a node without bodies."""
    reads: dict[str, None] = {}  # an insertion-ordered set
    for body in _bodies(node):
        for name in outer_reads(body):
            reads.setdefault(name)
    return list(reads)


def outer_reads(graph: onnx.GraphProto) -> list[str]:
    """Names ``graph`` (a body) uses without defining them: the tensors it reads from an
    outer scope, nested bodies included, in the order first read. A name the body
    defines itself (input, initializer, node output) shadows the outer one."""
    local = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    local |= {s.values.name for s in graph.sparse_initializer}
    for n in graph.node:
        local.update(o for o in n.output if o)
    free: dict[str, None] = {}
    for n in graph.node:
        for name in [x for x in n.input if x] + subgraph_reads(n):
            if name not in local:
                free.setdefault(name)
    for o in graph.output:  # an output passed straight through from outside
        if o.name not in local:
            free.setdefault(o.name)
    return list(free)


# ---------------------------------------------------------------------- facts
class GraphFacts:
    """Facts about one graph (the main graph of a model unless told otherwise).

    Attributes:
        graph: The GraphProto the facts are about (read, never changed).
        producers: Tensor name -> index of the node that produces it.
        consumers: Tensor name -> indices of the nodes that read it (directly or from a
            body), in node order.
    """

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.key = _fingerprint(graph)
        nodes = graph.node
        self.producers: dict[str, int] = {}
        for i, n in enumerate(nodes):
            for o in n.output:
                if o:
                    self.producers[o] = i
        self._reads = [
            list(dict.fromkeys([x for x in n.input if x] + subgraph_reads(n))) for n in nodes
        ]
        self.consumers: dict[str, list[int]] = {}
        for i, reads in enumerate(self._reads):
            for name in reads:
                self.consumers.setdefault(name, []).append(i)
        self._order: list[int] | None = None
        self._inferred: dict[bool, onnx.GraphProto | None] = {}
        self._infos: dict[str, TensorInfo] | None = None

    def reads(self, index: int) -> list[str]:
        """Every tensor node ``index`` reads: its inputs, then its bodies' outer reads."""
        return self._reads[index]

    def producer_nodes(self) -> dict[str, onnx.NodeProto]:
        """Tensor name -> the node that produces it."""
        return {t: self.graph.node[i] for t, i in self.producers.items()}

    def node_order(self) -> list[int]:
        """Node indices in a topological order (a body's outer reads count as inputs):
        the node order itself when it is one, which ONNX requires, else a Kahn sort that
        keeps the node order wherever it can. Nodes on a cycle are left out."""
        if self._order is None:
            produced = self.producers
            deps = [{produced[x] for x in reads if x in produced} for reads in self._reads]
            if all(d < i for i, ds in enumerate(deps) for d in ds):
                self._order = list(range(len(deps)))
            else:
                self._order = _kahn(deps)
        return self._order

    def tensor_order(self) -> list[str]:
        """Node outputs in a topological order (see :meth:`node_order`)."""
        names: dict[str, None] = {}
        for i in self.node_order():
            for o in self.graph.node[i].output:
                if o:
                    names.setdefault(o)
        return list(names)


def _kahn(deps: Sequence[set[int]]) -> list[int]:
    users: dict[int, list[int]] = {}
    indeg = [len(ds) for ds in deps]
    for i, ds in enumerate(deps):
        for d in ds:
            users.setdefault(d, []).append(i)
    # A heap of ready indices: the lowest first, so the node order survives where it can.
    import heapq

    ready = [i for i, d in enumerate(indeg) if d == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users.get(i, ()):
            indeg[u] -= 1
            if indeg[u] == 0:
                heapq.heappush(ready, u)
    return order


def _fingerprint(graph: onnx.GraphProto) -> tuple[int, ...]:
    """Cheap signs of an in-place change (a Model's graph is not meant to change, but a
    user may edit ``model.proto`` by hand): the counts, and a hash of every name the
    facts are built from, so renaming a tensor in place is seen too. About 1 ms per 500
    nodes, small beside anything the facts are used for."""
    names = (
        tuple(name for node in graph.node for name in (*node.input, *node.output)),
        tuple(v.name for v in graph.input),
        tuple(v.name for v in graph.output),
        tuple(t.name for t in graph.initializer),
    )
    return (
        len(graph.node),
        len(graph.input),
        len(graph.output),
        len(graph.initializer),
        len(graph.value_info),
        hash(names),
    )


def graph_facts(model: Model) -> GraphFacts:
    """The facts of ``model``'s main graph, computed on first use and cached on it."""
    cached = model.__dict__.get("_graph_facts")
    graph = model.proto.graph
    if cached is None or cached.graph is not graph or cached.key != _fingerprint(graph):
        cached = GraphFacts(graph)
        model.__dict__["_graph_facts"] = cached
    return cached


# ---------------------------------------------------------------------- shape inference
def inference_skeleton(model: Model) -> onnx.ModelProto:
    """A copy of ``model`` fit for ONNX shape inference at any size: large initializers
    become typed graph inputs (no weight bytes are copied)."""
    src = model.proto
    proto = onnx.ModelProto()
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(proto, field, getattr(src, field))
    proto.opset_import.extend(src.opset_import)
    proto.functions.extend(src.functions)
    g, sg = proto.graph, src.graph
    g.name = sg.name
    g.node.extend(sg.node)
    g.input.extend(sg.input)
    g.output.extend(sg.output)
    g.value_info.extend(sg.value_info)
    declared = {v.name for v in sg.input}
    for t in sg.initializer:
        if _small(t):
            g.initializer.append(t)
        elif t.name not in declared:
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return proto


def _small(t: onnx.TensorProto) -> bool:
    """Whether ``t`` holds at most INFERENCE_WEIGHT_LIMIT bytes.

    What its shape and type declare is tested first: that reads no data, while
    tensor_nbytes copies raw_data to measure it (13 MB on a YOLOv8n-size model, ~10 ms).
    The exact size still decides for the declared-small ones, so no initializer above
    the limit reaches inference, whatever its dims claim. A tensor kept in an external
    file is never small.
    """
    if t.data_location == onnx.TensorProto.EXTERNAL:
        # Never kept, whatever its size: the checker looks for its file from the current
        # folder, and inference cannot read its values.
        return False
    declared = declared_nbytes(t)
    if declared is not None and declared > INFERENCE_WEIGHT_LIMIT:
        return False
    return tensor_nbytes(t) <= INFERENCE_WEIGHT_LIMIT


def inferred_graph(model: Model, *, declarations: bool = True) -> onnx.GraphProto | None:
    """The main graph after ONNX shape inference of the skeleton, or None when inference
    gives up (it does on some real models). Cached per model.

    Args:
        declarations: Keep what the model declares (value_info, output shapes) as
            inference's starting point. False infers from the inputs alone: declarations
            may be stale (exporters and older edits leave wrong ones, and onnxruntime runs
            such models), and inference keeps a declared shape even when it is wrong.
    """
    facts = graph_facts(model)
    if declarations not in facts._inferred:
        skeleton = inference_skeleton(model)
        if not declarations:
            del skeleton.graph.value_info[:]
            for o in skeleton.graph.output:
                if o.type.HasField("tensor_type"):
                    o.type.tensor_type.ClearField("shape")
        try:
            inferred = onnx.shape_inference.infer_shapes(
                skeleton, check_type=False, strict_mode=False, data_prop=True
            ).graph
        except Exception:  # noqa: BLE001 - inference raises InferenceError, ValidationError, RuntimeError... on real models; callers fall back to other sources
            inferred = None
        facts._inferred[declarations] = inferred
    return facts._inferred[declarations]


def inferred_value_infos(model: Model) -> list[onnx.ValueInfoProto]:
    """What shape inference (with the declarations) says about the main graph's tensors,
    as value_infos: inferred tensors first, then the outputs; empty when it gives up."""
    graph = inferred_graph(model)
    return [] if graph is None else [*graph.value_info, *graph.output]


def inferred_infos(model: Model) -> dict[str, TensorInfo]:
    """Everything ONNX shape inference can say about the main graph's tensors (empty if
    inference gives up). Inferred from the inputs alone where that can tell, else with
    the declarations (which alone say what follows e.g. a custom op); inference's
    placeholder dims (``unk__3``) are left unnamed. Cached per model."""
    facts = graph_facts(model)
    if facts._infos is None:
        found: dict[str, TensorInfo] = {}
        for declarations in (False, True):
            g = inferred_graph(model, declarations=declarations)
            if g is None:
                continue
            for v in [*g.value_info, *g.input, *g.output]:
                info = clean_info(value_info_to_tensor_info(v))
                if not known_info(found.get(v.name)):
                    found[v.name] = info
        facts._infos = found
    return dict(facts._infos)


def known_info(info: TensorInfo | None) -> bool:
    """True when ``info`` says both the dtype and the shape (rank at least)."""
    return info is not None and info.dtype is not None and info.shape is not None


def clean_info(info: TensorInfo) -> TensorInfo:
    """Drop the placeholder symbols inference invents (``unk__3``): they name nothing."""
    if info.shape is None:
        return info
    shape = tuple(None if isinstance(d, str) and d.startswith("unk__") else d for d in info.shape)
    return TensorInfo(info.name, info.dtype, shape)
