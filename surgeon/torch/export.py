"""Exporting a PyTorch module to ONNX (:func:`export`): argument and dynamic-axes checks,
the exporter run, and TorchScript node annotations; the check of the file it wrote is in
:mod:`surgeon.torch.check`."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from surgeon.compare import Tolerance
from surgeon.errors import SurgeonError, UsageError, did_you_mean
from surgeon.model import Model
from surgeon.saving import check_output_path, save
from surgeon.torch._support import (
    EXPORTERS,
    INSTALL_HINT,
    _describe_value,
    _flatten,
    _input_leaves,
    _Leaf,
    _onnx_name,
    _quiet,
    _run_module,
    _Signature,
    _torch,
    _torch_error_text,
)
from surgeon.torch.check import _check
from surgeon.torch.results import ExportCheck, Pitfall


# ---------------------------------------------------------------------- export
def _normalise_axes(
    dynamic_axes, input_names: list[str], output_names: list[str], ranks: dict[str, int]
) -> dict[str, dict[int, str]]:
    if not dynamic_axes:
        return {}
    if not isinstance(dynamic_axes, Mapping):
        raise UsageError(
            "dynamic_axes must map an input or output name to its dynamic axes, e.g. "
            "{'images': {0: 'N', 2: 'H', 3: 'W'}}"
        )
    problems = []
    out: dict[str, dict[int, str]] = {}
    names = input_names + output_names
    for name, axes in dynamic_axes.items():
        if name not in names:
            hint = did_you_mean(str(name), names)
            problems.append(
                f"dynamic_axes names `{name}`, which is neither an input ({', '.join(input_names) or 'none'}) "
                f"nor an output ({', '.join(output_names) or 'none'})"
                + (f"; {hint}" if hint else "")
            )
            continue
        if isinstance(axes, Mapping):
            items = [(int(a), str(d)) for a, d in axes.items()]
        elif isinstance(axes, (list, tuple)):
            items = [(int(a), f"{name}_dim{int(a)}") for a in axes]
        else:
            problems.append(
                f"dynamic_axes[`{name}`] must be a dict {{axis: name}} or a list of axes"
            )
            continue
        rank = ranks.get(name)
        fixed = {}
        for axis, dim in items:
            if rank is not None and not -rank <= axis < rank:
                problems.append(f"dynamic_axes gives `{name}` axis {axis}, but it has rank {rank}")
                continue
            fixed[axis % rank if rank else axis] = dim
        out[name] = fixed
    if problems:
        raise UsageError(
            f"{len(problems)} problem(s) with dynamic_axes" if len(problems) > 1 else problems[0],
            problems=problems if len(problems) > 1 else (),
        )
    return out


def export(
    module,
    args,
    path: str | os.PathLike | None = None,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: Mapping | None = None,
    exporter: str = "dynamo",
    opset: int | None = None,
    sizes: Mapping[str, Iterable[int]] | None = None,
    tolerance: Tolerance = Tolerance(),
    seed: int = 0,
    keep_failed: bool = False,
) -> ExportCheck:
    """Export ``module`` to ONNX and check the result against PyTorch straight away.

    The default exporter is ``dynamo``, as in ``torch.onnx.export`` since torch 2.9: the
    same call gives the same graph, the TorchScript exporter is deprecated, and dynamo
    traces shapes symbolically (``int(x.shape[2])`` stays dynamic instead of becoming a
    constant). It needs onnxscript and takes seconds where TorchScript takes tens of
    milliseconds; ``exporter="torchscript"`` selects the old one, whose node names carry
    the module path (``/conv0/Conv``).

    After exporting, onnxruntime runs the model at the export shape (on ``args``
    themselves) and at other sizes of every dynamic dim (one dim at a time, then all
    together), on seeded random inputs; each run is compared with the module's outputs.

    Args:
        module: The ``torch.nn.Module``. It is exported and checked in eval mode, and
            left in the mode it was in.
        args: Example positional inputs (a tensor or a tuple). Non-tensor arguments are
            baked into the graph, and reported.
        path: Where to write the model. Written only when the check passes (or
            ``keep_failed``); nothing is written when it is None.
        input_names: ONNX input names; default: ``forward``'s parameter names.
        output_names: ONNX output names; default: dict keys and namedtuple fields of the
            module's output, ``output`` for a single tensor, ``output0``... for tuples.
        dynamic_axes: ``{name: {axis: dim_name}}`` (or ``{name: [axes]}``) for inputs
            and outputs, as in ``torch.onnx.export``.
        exporter: ``dynamo`` (default) or ``torchscript``.
        opset: The default-domain opset (None: the exporter's choice).
        sizes: Sizes to try per dynamic dim name, e.g. ``{"H": [32, 48]}``; default: twice
            the export size.
        tolerance: When ONNX and PyTorch values count as equal.
        seed: Seed of the random inputs at other sizes.
        keep_failed: Write ``path`` even when the check fails.

    Returns:
        An :class:`ExportCheck`, truthy when no pitfall is an error.

    Raises:
        SurgeonError: torch (or onnxscript for dynamo) is missing, the arguments are
            inconsistent, or the exporter fails (with the pitfalls found beforehand).
        OutputPathError: ``path`` cannot be written.
    """
    torch = _torch()
    if exporter not in EXPORTERS:
        raise UsageError(f"unknown exporter `{exporter}`; use one of {', '.join(EXPORTERS)}")
    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"export needs a torch.nn.Module, got {type(module).__name__}")
    if path is not None:
        check_output_path(path, [])
    args = args if isinstance(args, tuple) else (args,)
    pitfalls: list[Pitfall] = []
    notes: list[str] = []
    with _eval_mode(module, pitfalls):
        sig = _signature(
            torch, module, args, input_names, output_names, dynamic_axes, exporter, pitfalls
        )
        model, export_seconds = _run_exporter(torch, module, args, sig, exporter, opset, pitfalls)
        started = time.perf_counter()
        runs, output_map = _check(torch, module, args, model, sig, sizes, tolerance, seed, pitfalls)
        check_seconds = time.perf_counter() - started

    passed = not any(p.severity == "error" for p in pitfalls)
    model = model.add_provenance(
        "torch.export",
        {
            "exporter": exporter,
            "torch": torch.__version__,
            "dynamic_axes": {k: {str(a): d for a, d in v.items()} for k, v in sig.axes.items()},
            "check": "passed" if passed else "failed",
        },
    )
    written = None
    if path is not None:
        if passed or keep_failed:
            written = save(model, path)
            model = Model(model.proto, written)
        else:
            notes.append(
                f"{path} was not written because the check failed "
                "(pass keep_failed=True to write it anyway)"
            )
    return ExportCheck(
        model=model,
        path=written,
        exporter=exporter,
        input_names=model.input_names,
        output_names=model.output_names,
        output_map=output_map,
        dynamic_axes=sig.axes,
        runs=runs,
        pitfalls=pitfalls,
        export_seconds=export_seconds,
        check_seconds=check_seconds,
        notes=notes,
    )


@contextlib.contextmanager
def _eval_mode(module, pitfalls: list[Pitfall]):
    """Eval mode for the export and the check (what the TorchScript exporter does too),
    then the module's own mode back."""
    was_training = module.training
    if was_training:
        pitfalls.append(
            Pitfall(
                "training-mode",
                "warning",
                "the module was in training mode; it is exported and checked in eval mode "
                "(Dropout off, BatchNorm on running statistics), then put back",
            )
        )
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _signature(torch, module, args, input_names, output_names, dynamic_axes, exporter, pitfalls):
    """Run the module once: the reference outputs, their structure, and the names."""
    reference = _run_module(
        torch, module, args, "the module fails on the example inputs before any export"
    )
    leaves = _flatten(reference, "")
    tensor_leaves = [leaf for leaf in leaves if isinstance(leaf.value, torch.Tensor)]
    arg_leaves = _input_leaves(module, args)
    in_tensors = [leaf for leaf in arg_leaves if isinstance(leaf.value, torch.Tensor)]
    for leaf in leaves:
        if not isinstance(leaf.value, torch.Tensor):
            pitfalls.append(
                Pitfall(
                    "lost-output",
                    "error",
                    f"PyTorch output `{leaf.path}` is {_describe_value(leaf.value)}: ONNX outputs "
                    "are tensors, so the exported model does not have it; return it from outside "
                    "the exported module, or as a tensor",
                )
            )
    if input_names is not None:
        in_names = list(input_names)
        if len(in_names) != len(in_tensors):
            raise UsageError(
                f"input_names gives {len(in_names)} name(s), but the arguments hold "
                f"{len(in_tensors)} tensor(s): "
                + ", ".join(f"`{leaf.path}`" for leaf in in_tensors)
            )
    else:
        in_names = [_onnx_name(leaf.path) for leaf in in_tensors]
    # The TorchScript exporter turns Python numbers (bool, int, float) among the arguments
    # into graph inputs, and applies input_names to them in argument order: each gets a
    # name. dynamo bakes them, like strings and None.
    tensor_name = dict(zip((id(leaf) for leaf in in_tensors), in_names, strict=True))
    numbers: dict[str, _Leaf] = {}
    others: list[_Leaf] = []
    export_names: list[str] = []
    for leaf in arg_leaves:
        if id(leaf) in tensor_name:
            export_names.append(tensor_name[id(leaf)])
        elif isinstance(leaf.value, (bool, int, float)):
            name = _onnx_name(leaf.path)
            numbers[name] = leaf
            if exporter == "torchscript":
                export_names.append(name)
        else:
            others.append(leaf)
    if output_names is not None:
        out_names = list(output_names)
    else:
        out_names = list(dict.fromkeys(_onnx_name(leaf.path) for leaf in tensor_leaves))
        if len(out_names) != len(tensor_leaves):  # two paths gave the same name
            out_names = [f"output{i}" for i in range(len(tensor_leaves))]
    ranks = {n: leaf.value.dim() for n, leaf in zip(in_names, in_tensors, strict=True)}
    ranks.update({n: leaf.value.dim() for n, leaf in zip(out_names, tensor_leaves, strict=False)})
    axes = _normalise_axes(dynamic_axes, in_names, out_names, ranks)
    return _Signature(
        in_names, in_tensors, numbers, others, export_names, leaves, tensor_leaves, out_names, axes
    )


def _run_exporter(torch, module, args, sig: _Signature, exporter, opset, pitfalls):
    """``torch.onnx.export`` into a scratch folder, quietly; (Model in memory, seconds)."""
    from surgeon.loading import load
    from surgeon.weights import inline_external_data

    kwargs = dict(
        input_names=sig.export_names,
        output_names=sig.out_names,
        dynamic_axes={k: dict(v) for k, v in sig.axes.items()} or None,
        opset_version=opset,
    )
    if exporter == "dynamo":
        try:
            import onnxscript  # noqa: F401
        except ImportError:
            raise SurgeonError(
                "the dynamo exporter needs onnxscript, which is not installed",
                hint=INSTALL_HINT + '; or pass exporter="torchscript"',
            ) from None
        kwargs.update(dynamo=True, external_data=False)
    else:
        # verbose=True keeps each node's Python stack in doc_string: the source line
        # surgeon moves into the node metadata (the graph dump it also logs is silenced).
        kwargs.update(dynamo=False, verbose=True)
    with tempfile.TemporaryDirectory(prefix="surgeon-export-") as tmp:
        target = Path(tmp) / "model.onnx"
        started = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with _quiet(fd_level=exporter == "torchscript"):
                    torch.onnx.export(module, args, str(target), **kwargs)
            except Exception as e:  # noqa: BLE001 - torch's exporters raise many types, the user's forward any
                errors = [p.message for p in pitfalls if p.severity == "error"]
                other = "torchscript" if exporter == "dynamo" else "dynamo"
                raise SurgeonError(
                    f"torch.onnx.export ({exporter}) failed on {type(module).__name__}: "
                    f"{_torch_error_text(e)}",
                    problems=errors,
                    hint="Fix the problems listed above first."
                    if errors
                    else f'Try exporter="{other}".',
                ) from None
        seconds = time.perf_counter() - started
        # Above 2 GB the exporter writes the weights beside the model, in this folder,
        # which goes away below: they are read into memory first (the model keeps no
        # folder).
        model = Model(inline_external_data(load(target)).proto)
    for w in caught:
        if issubclass(w.category, torch.jit.TracerWarning):
            where = f"{os.path.basename(w.filename)}:{w.lineno}: " if w.filename else ""
            text = str(w.message).splitlines()[0]
            pitfalls.append(Pitfall("tracer-warning", "warning", f"{where}{text}"))
    pitfalls[:] = _dedupe(pitfalls)
    if exporter == "torchscript":
        _annotate_torchscript(model, module)
    return model, seconds


def _dedupe(pitfalls: list[Pitfall]) -> list[Pitfall]:
    seen, out = set(), []
    for p in pitfalls:
        key = (p.kind, p.message, p.node)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _annotate_torchscript(model: Model, module) -> None:
    """Write each node's exact module path, class and source line into its metadata.

    TorchScript names lose containers that are never called (``enc.a.conv`` is
    ``/a/conv/Conv``) and say nothing of the class; the module tree resolves both here,
    and the metadata survives edits that drop ``doc_string``.
    """
    from surgeon.origin.activations import resolve_path
    from surgeon.origin.metadata import (
        SURGEON_CLASS,
        SURGEON_MODULE,
        SURGEON_SOURCE,
        join_levels,
        split_call,
        torchscript_levels,
        user_frame_torchscript,
    )

    modules = dict(module.named_modules())
    paths = set(modules) - {""}
    nodes = list(model.proto.graph.node)
    levels_of = [torchscript_levels(n) for n in nodes]
    known = {lv for levels in levels_of if levels for lv in levels}
    for node, levels in zip(nodes, levels_of, strict=True):
        if levels is None:
            continue
        joined = join_levels(split_call(lv, known)[0] for lv in levels)
        path = resolve_path(joined[-1], paths) if joined else ""
        if path is None:
            continue
        props = {p.key for p in node.metadata_props}
        if SURGEON_MODULE not in props:
            node.metadata_props.add(key=SURGEON_MODULE, value=path)
            node.metadata_props.add(key=SURGEON_CLASS, value=type(modules[path]).__name__)
            file, line = user_frame_torchscript(node.doc_string)
            if file:
                node.metadata_props.add(key=SURGEON_SOURCE, value=f"{file}:{line}")
        node.doc_string = ""  # the stack per node is bulky; its useful line is kept above
