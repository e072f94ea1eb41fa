"""The check :func:`surgeon.torch.export` runs on the file it wrote: onnxruntime against
PyTorch at the export shape and at other sizes of every dynamic dim, with the pitfalls
found (a failing or wrong-shaped dynamic axis names the baked constant behind it)."""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from surgeon.baked import Factor, export_products, find_baked_constants
from surgeon.compare import DiffReport, TensorDiff, compare_arrays
from surgeon.errors import RuntimeFailure, SurgeonError, UsageError, did_you_mean
from surgeon.model import Model
from surgeon.torch._support import (
    _as_numpy,
    _describe_value,
    _flatten,
    _run_module,
    _Signature,
)
from surgeon.torch.results import Pitfall, ShapeRun


def _random_like(
    template: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator
) -> np.ndarray:
    """Seeded values of ``template``'s dtype and rough range, in a new shape."""
    if template.dtype == np.bool_:
        return rng.random(shape) < 0.5
    if template.dtype.kind in "iu":
        lo = int(template.min()) if template.size else 0
        hi = int(template.max()) if template.size else 1
        return rng.integers(lo, hi + 1, size=shape).astype(template.dtype)
    finite = template[np.isfinite(template)] if template.size else template
    mean = float(finite.mean()) if finite.size else 0.0
    std = float(finite.std()) if finite.size else 1.0
    return (rng.standard_normal(shape) * (std or 1.0) + mean).astype(template.dtype)


def _shape_plans(
    in_names: list[str], in_arrays: list[np.ndarray], axes, sizes
) -> tuple[list[tuple[str, dict[str, int]]], list[str], dict[str, int]]:
    """The dim values of each run: one dim at a time, then all together."""
    export_dims: dict[str, int] = {}
    for name, arr in zip(in_names, in_arrays, strict=True):
        for axis, dim in axes.get(name, {}).items():
            export_dims.setdefault(dim, int(arr.shape[axis]))
    problems = []
    sizes = dict(sizes or {})
    for dim in sizes:
        if dim not in export_dims:
            hint = did_you_mean(dim, list(export_dims))
            problems.append(
                f"sizes names dim `{dim}`, which no dynamic input axis uses"
                + (
                    f"; {hint}"
                    if hint
                    else f" (dynamic input dims: {', '.join(export_dims) or 'none'})"
                )
            )
    if problems:
        if len(problems) == 1:
            raise UsageError(problems[0])
        raise UsageError(f"{len(problems)} problems with sizes", problems=problems)
    alternatives: dict[str, list[int]] = {}
    for dim, size in export_dims.items():
        if dim in sizes:
            wanted = [int(s) for s in sizes[dim]]
        else:
            wanted = [max(2 * size, 2)]
        alternatives[dim] = [s for s in dict.fromkeys(wanted) if s != size and s > 0]
    plans = []
    for dim, values in alternatives.items():
        for v in values:
            plans.append((f"{dim}={v}", {dim: v}))
    if len(alternatives) > 1 and all(alternatives.values()):
        joint = {dim: values[0] for dim, values in alternatives.items()}
        plans.append((", ".join(f"{d}={v}" for d, v in joint.items()), joint))
    return plans, list(export_dims), export_dims


def _check(torch, module, args, model, sig: _Signature, sizes, tolerance, seed, pitfalls):
    """Compare onnxruntime with PyTorch at the export shape and at other sizes of every
    dynamic dim; add what goes wrong to ``pitfalls``. Returns (runs, output map)."""
    from surgeon.origin import node_origin
    from surgeon.runner import run

    in_names, in_tensors, tensor_leaves, axes = (
        sig.in_names,
        sig.in_tensors,
        sig.tensor_leaves,
        sig.axes,
    )
    onnx_outputs = model.output_names
    output_map: dict[str, str] = {}
    aligned = len(onnx_outputs) == len(tensor_leaves)
    if aligned:
        output_map = {o: leaf.path for o, leaf in zip(onnx_outputs, tensor_leaves, strict=True)}
    else:
        pitfalls.append(
            Pitfall(
                "output-count",
                "error",
                f"the module returns {len(tensor_leaves)} tensor(s) "
                f"({', '.join(f'`{leaf.path}`' for leaf in tensor_leaves)}) but the ONNX model has "
                f"{len(onnx_outputs)} output(s) ({', '.join(f'`{o}`' for o in onnx_outputs)}); "
                "outputs cannot be paired, so their values are not compared",
            )
        )
    dict_leaves = [leaf for leaf in tensor_leaves if leaf.in_dict]
    if dict_leaves:
        pairs = [
            f"`{leaf.path}` -> `{o}`"
            for o, leaf in zip(onnx_outputs, tensor_leaves, strict=False)
            if leaf.in_dict
        ]
        pitfalls.append(
            Pitfall(
                "dict-output",
                "warning",
                "the module returns a dict, and ONNX has only a flat list of outputs: the keys are "
                "lost from the model's structure; by position: " + ", ".join(pairs),
            )
        )
    nested = [leaf for leaf in tensor_leaves if leaf.depth > 1 and not leaf.in_dict]
    if nested:
        pitfalls.append(
            Pitfall(
                "nested-output",
                "warning",
                "nested lists/tuples are flattened into plain outputs: "
                + ", ".join(
                    f"`{leaf.path}` -> `{o}`"
                    for o, leaf in zip(onnx_outputs, tensor_leaves, strict=False)
                    if leaf.depth > 1 and not leaf.in_dict
                ),
            )
        )

    number_feeds = _argument_inputs(model, sig, pitfalls)

    # Declared dynamic axes must be symbolic in the file.
    infos = {i.name: i for i in model.inputs + model.outputs}
    static_inputs = set()
    for name, dims in axes.items():
        info = infos.get(name)
        if info is None or info.shape is None:
            continue
        for axis, dim in dims.items():
            if axis < len(info.shape) and isinstance(info.shape[axis], int):
                is_input = name in in_names
                if is_input:
                    static_inputs.add(name)
                pitfalls.append(
                    Pitfall(
                        "axis-static",
                        "error" if is_input else "warning",
                        f"dynamic axis {axis} (`{dim}`) of {'input' if is_input else 'output'} `{name}` "
                        f"is fixed at {info.shape[axis]} in the ONNX model: the exporter did not honour it",
                    )
                )

    in_arrays = [_as_numpy(leaf.value) for leaf in in_tensors]
    plans, _, export_dims = _shape_plans(in_names, in_arrays, axes, sizes)
    rng = np.random.default_rng(seed)
    runs: list[ShapeRun] = []
    suspects_cache: list | None = None
    # (kind, failing node or output) -> [(run label, message)], reported once per key
    events: dict[tuple[str, str | None], list[tuple[str, str]]] = {}

    def origin_of(node):
        try:
            o = node_origin(model, node) if node else None
        except SurgeonError:
            return None
        return o.describe() if o else None

    for label, dims in [("export shape", {})] + plans:
        if dims:
            shapes = {}
            for name, arr in zip(in_names, in_arrays, strict=True):
                shape = list(arr.shape)
                for axis, dim in axes.get(name, {}).items():
                    if dim in dims:
                        shape[axis] = dims[dim]
                shapes[name] = shape
            feeds = {
                n: _random_like(a, tuple(shapes[n]), rng)
                for n, a in zip(in_names, in_arrays, strict=True)
            }
            feeds.update(number_feeds)
        else:
            feeds = dict(zip(in_names, in_arrays, strict=True))
            feeds.update(number_feeds)
            shapes = {n: list(a.shape) for n, a in feeds.items()}
        if dims and static_inputs & {
            n for n in in_names if set(axes.get(n, {}).values()) & set(dims)
        }:
            runs.append(
                ShapeRun(label, shapes, skipped="a declared dynamic axis is fixed in the model")
            )
            continue
        # PyTorch on the same values (non-tensor arguments stay as given).
        if dims:
            torch_args = _rebuild_args(torch, module, args, feeds, in_names)
            try:
                ref = _run_module(torch, module, torch_args, f"PyTorch itself fails at {label}")
            except SurgeonError as e:
                runs.append(ShapeRun(label, shapes, skipped=e.message))
                continue
            ref_leaves = [
                leaf for leaf in _flatten(ref, "") if isinstance(leaf.value, torch.Tensor)
            ]
        else:
            ref_leaves = tensor_leaves
        try:
            got = run(model, feeds)
        except RuntimeFailure as e:  # onnxruntime itself failed: a pitfall
            node = _failing_node(str(e))
            short = _short_failure(e.message)
            runs.append(ShapeRun(label, shapes, error=short))
            if not dims:
                pitfalls.append(
                    Pitfall(
                        "runtime",
                        "error",
                        f"onnxruntime fails at the export shape: {short}",
                        node,
                        origin_of(node),
                    )
                )
                continue
            if suspects_cache is None:
                suspects_cache = _baked_constants(model, in_names, in_arrays, axes, export_dims)
            events.setdefault(("axis-failed", node), []).append((label, short))
            continue
        except SurgeonError as e:  # the model cannot be fed (already reported)
            runs.append(ShapeRun(label, shapes, error=e.message))
            continue
        diffs: list[TensorDiff] = []
        if aligned:
            for o, leaf in zip(onnx_outputs, ref_leaves, strict=True):
                diffs.append(
                    compare_arrays(
                        got[o],
                        _as_numpy(leaf.value),
                        tolerance,
                        name=o,
                        reference=f"pytorch:{leaf.path}",
                    )
                )
        report = DiffReport(
            title=f"ONNX vs PyTorch at {label}",
            candidate="onnx",
            reference="pytorch",
            tensors=diffs,
            tolerance=tolerance,
            seed=seed if dims else None,
            feeds={n: {"shape": shapes[n], "dtype": str(feeds[n].dtype)} for n in in_names},
        )
        runs.append(ShapeRun(label, shapes, report=report))
        for d in report.failures:
            if not dims:
                pitfalls.append(
                    Pitfall(
                        "mismatch",
                        "error",
                        f"output `{d.name}` ({output_map.get(d.name, '?')}) differs from PyTorch at the export "
                        f"shape: {d.message}"
                        + (f", max abs {d.max_abs:.3g}" if d.max_abs is not None else "")
                        + "; compare layer by layer: capture the activations with surgeon.torch.capture "
                        "and give them to surgeon.debug as the reference (`surgeon debug --ref` on "
                        "the command line)",
                    )
                )
                continue
            if suspects_cache is None:
                suspects_cache = _baked_constants(model, in_names, in_arrays, axes, export_dims)
            if d.status == "shape":
                text = (
                    f"output `{d.name}` has shape {d.shape} where PyTorch gives {d.reference_shape}"
                )
                events.setdefault(("axis-shape", d.name), []).append((label, text))
            else:
                text = (
                    f"output `{d.name}` differs from PyTorch ({d.message}"
                    + (f", max abs {d.max_abs:.3g}" if d.max_abs is not None else "")
                    + ") although it matches at the export shape"
                )
                events.setdefault(("mismatch", d.name), []).append((label, text))
    # One pitfall per failing node or output, listing every size where it happens.
    for (kind, what), items in events.items():
        labels = "; ".join(label for label, _ in items)
        if kind == "axis-failed":
            node = what
            text = f"onnxruntime fails at {labels}: {items[0][1]} (at {items[0][0]})"
        else:
            node = suspects_cache[0][0] if suspects_cache else None
            text = f"at {labels}, {items[0][1]}" + (
                f" (at {items[0][0]})" if len(items) > 1 else ""
            )
        pitfalls.append(
            Pitfall(
                kind, "error", text + _suspect_text(suspects_cache, node), node, origin_of(node)
            )
        )
    return runs, output_map


def _short_failure(message: str) -> str:
    """onnxruntime's failure without its C++ source location: the node and the reason."""
    m = re.search(r"running (\w+) node\. Name:'([^']*)' Status Message: (.*)", message, re.S)
    if not m:
        return message
    reason = m.group(3).strip()
    reason = re.sub(r"^\S+\.(h|cc|cpp):\d+\s+", "", reason)
    reason = re.sub(r"^.*? was false\.\s*", "", reason, flags=re.S)
    return f"{m.group(1)} node `{m.group(2)}`: {reason.splitlines()[0] if reason else 'failed'}"


def _baked_argument(leaf) -> Pitfall:
    """The warning for an argument the exporter baked into the graph as a constant."""
    return Pitfall(
        "baked-argument",
        "warning",
        f"argument `{leaf.path}` is {_describe_value(leaf.value)}: the exporter bakes it "
        "into the graph, and the ONNX model always behaves as if it had this value",
    )


def _argument_inputs(model: Model, sig: _Signature, pitfalls) -> dict[str, np.ndarray]:
    """Pair the ONNX inputs with the arguments; feeds for the numbers that became inputs."""
    declared = {i.name: i for i in model.inputs}
    feeds = {}
    for name, leaf in sig.numbers.items():
        info = declared.get(name)
        if info is None:
            pitfalls.append(_baked_argument(leaf))
            continue
        feeds[name] = np.asarray(leaf.value, dtype=info.dtype or None)
        pitfalls.append(
            Pitfall(
                "number-input",
                "warning",
                f"argument `{leaf.path}` is {_describe_value(leaf.value)}: the exporter made it the "
                f"ONNX input `{name}` ({info.dtype}), which callers must feed; the check feeds "
                f"{leaf.value!r}",
            )
        )
    pitfalls += [_baked_argument(leaf) for leaf in sig.others]
    for name in sig.in_names:
        if name not in declared:
            pitfalls.append(
                Pitfall(
                    "unused-input",
                    "warning",
                    f"tensor argument `{name}` is not an input of the ONNX model: the module does "
                    "not use it, and the exporter dropped it",
                )
            )
    unknown = [n for n in declared if n not in feeds and n not in sig.in_names]
    if unknown:
        pitfalls.append(
            Pitfall(
                "input-count",
                "error",
                f"the ONNX model has input(s) {', '.join(f'`{n}`' for n in unknown)} that match "
                "no argument of the module, so the check cannot feed them",
            )
        )
    return feeds


def _rebuild_args(torch, module, args, feeds, in_names):
    """The positional arguments with every tensor replaced by the feed of its input."""
    values = iter([torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in in_names])

    def rebuild(obj):
        if isinstance(obj, torch.Tensor):
            return next(values)
        if isinstance(obj, Mapping):
            return type(obj)((k, rebuild(v)) for k, v in obj.items())
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):
            return type(obj)(*[rebuild(v) for v in obj])
        if isinstance(obj, (list, tuple)):
            return type(obj)(rebuild(v) for v in obj)
        return obj

    return tuple(rebuild(a) for a in args)


def _failing_node(message: str) -> str | None:
    m = re.search(r"Name:'([^']*)'", message)
    return m.group(1) if m and m.group(1) else None


def _baked_constants(model, in_names, in_arrays, axes, export_dims) -> list[tuple[str, str, str]]:
    """Nodes reading a constant shape that contains an export-time size.

    Returns (consumer node, holder of the constant, explanation) triples, in node order,
    one per node (see :mod:`surgeon.baked`). A value is suspicious when it equals the
    product of some dims of one input that includes at least one dynamic dim (``64`` =
    H*W for an 8x8 export).
    """
    dims = []
    for name, arr in zip(in_names, in_arrays, strict=True):
        dyn = axes.get(name, {})
        if dyn:
            dims.append(
                [Factor(int(s), dyn.get(a, str(s)), a in dyn) for a, s in enumerate(arr.shape)]
            )
    candidates: dict[int, list[str]] = {}
    for value, combos in export_products(dims).items():
        for combo in combos:
            label = "*".join(f.label for f in combo)
            if len(combo) > 1:
                label += f" ({'*'.join(str(f.size) for f in combo)})"
            if label not in candidates.setdefault(value, []):
                candidates[value].append(label)
    found = []
    seen: set[str] = set()
    for b in find_baked_constants(model, candidates):
        n = b.node
        if n.name in seen:  # one explanation per node: its first baked input
            continue
        seen.add(n.name)
        found.append(
            (
                n.name,
                b.holder,
                f"`{n.name}` ({n.op_type}) reads the constant {b.values} "
                + (f"from `{b.holder}`" if b.direct else f"(through `{b.holder}`)")
                + f": {b.hit} = {' or '.join(candidates[b.hit][:3])} at export, baked in",
            )
        )
    return found


def _suspect_text(suspects, failing: str | None) -> str:
    if not suspects:
        return ""
    ordered = sorted(suspects, key=lambda s: s[0] != failing)
    return "; likely cause: " + "; ".join(s[2] for s in ordered[:3])
