"""The PyTorch bridge: export with dynamic axes and check the result, capture activations.

* :func:`export` wraps ``torch.onnx.export`` and immediately checks the file it wrote:
  onnxruntime runs it at the export shape and at other sizes of every dynamic axis, each
  run is compared with the PyTorch module on the same inputs, and the classic tracing
  pitfalls it can detect are reported (outputs that vanish, dict keys that are lost, a
  dynamic axis that breaks or gives wrong shapes, values that differ).
* :func:`capture` records every submodule's output with forward hooks and, given the
  exported model, keys them by the ONNX tensor holding the same value
  (:func:`surgeon.origin.match_activations`), ready for
  ``surgeon debug model.onnx --ref acts.npz``.

torch is imported inside the functions: ``import surgeon.torch`` works without it, and
every function raises a SurgeonError with the install command when it is missing.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import itertools
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from surgeon.compare import DiffReport, TensorDiff, Tolerance, compare_arrays
from surgeon.errors import OutputPathError, RuntimeFailure, SurgeonError, UsageError, did_you_mean
from surgeon.model import Model
from surgeon.saving import check_output_path, save

INSTALL_HINT = "install the [torch] extra: pip install torch==2.13.0 onnxscript"
EXPORTERS = ("dynamo", "torchscript")
# Ops whose integer inputs are shapes, sizes or positions: a constant there that equals an
# export-time size is the usual trace of `x.shape` arithmetic baked into the graph.
_SHAPE_INPUTS = {
    "Reshape": (1,),
    "Expand": (1,),
    "Tile": (1,),
    "ConstantOfShape": (0,),
    "Slice": (1, 2),
    "Resize": (3,),
    "Upsample": (1,),
    "Range": (0, 1),
    "Split": (1,),
    "Pad": (1,),
}


def _torch():
    try:
        import torch
    except ImportError:
        raise SurgeonError(
            "PyTorch is not installed, and surgeon.torch needs it", hint=INSTALL_HINT
        ) from None
    return torch


# ---------------------------------------------------------------------- results
@dataclass(frozen=True)
class Pitfall:
    """One problem the export check found.

    Attributes:
        kind: ``lost-output`` (a PyTorch output the ONNX model does not have), ``dict-output``
            (dict keys flattened away), ``nested-output``, ``baked-argument`` (a non-tensor
            argument frozen into the graph), ``output-count``, ``axis-static`` (a declared
            dynamic axis that is fixed in the file), ``axis-failed`` (onnxruntime fails at
            another size), ``axis-shape`` (wrong output shape at another size),
            ``mismatch`` (values differ), ``tracer-warning`` (a warning the exporter gave),
            ``training-mode``.
        severity: ``error`` (the check fails) or ``warning``.
        message: One sentence for the user.
        node: The ONNX node involved, when one can be named.
        origin: That node's PyTorch module and source line, when the model says.
    """

    kind: str
    severity: str
    message: str
    node: str | None = None
    origin: str | None = None

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "severity": self.severity,
            "message": self.message,
            "node": self.node,
            "origin": self.origin,
        }


@dataclass(frozen=True)
class ShapeRun:
    """One comparison of onnxruntime against PyTorch at one set of input shapes.

    ``report`` is None when the run could not compare (``error`` says why onnxruntime
    failed, ``skipped`` why the run was not attempted, e.g. PyTorch itself fails there).
    """

    label: str
    shapes: dict[str, list[int]]
    report: DiffReport | None = None
    error: str | None = None
    skipped: str | None = None

    @property
    def passed(self) -> bool:
        return self.skipped is not None or (self.error is None and bool(self.report))

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "shapes": self.shapes,
            "passed": self.passed,
            "error": self.error,
            "skipped": self.skipped,
            "report": self.report.to_dict() if self.report is not None else None,
        }


@dataclass(frozen=True)
class ExportCheck:
    """What :func:`export` produced and found. Truthy when no pitfall is an error.

    Attributes:
        model: The exported model (in memory, whether or not it was written).
        path: Where it was written, or None (no path given, or the check failed).
        exporter: ``dynamo`` or ``torchscript``.
        input_names, output_names: The ONNX model's inputs and outputs.
        output_map: ONNX output -> the PyTorch output it holds (``boxes``, ``output1.0``).
        dynamic_axes: The declared dynamic axes, normalised to ``{name: {axis: dim}}``.
        runs: One ShapeRun per set of input shapes tried, the export shape first.
        pitfalls: Everything found, errors and warnings.
        export_seconds: Time ``torch.onnx.export`` took.
        check_seconds: Time the checks took (PyTorch and onnxruntime runs).
    """

    model: Model
    path: Path | None
    exporter: str
    input_names: list[str]
    output_names: list[str]
    output_map: dict[str, str]
    dynamic_axes: dict[str, dict[int, str]]
    runs: list[ShapeRun]
    pitfalls: list[Pitfall]
    export_seconds: float
    check_seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Pitfall]:
        return [p for p in self.pitfalls if p.severity == "error"]

    @property
    def passed(self) -> bool:
        return not self.errors

    def __bool__(self) -> bool:
        return self.passed

    def summary(self) -> str:
        """One line: the verdict, the runs and the first problems."""
        tried = [r for r in self.runs if r.skipped is None]
        if self.passed:
            text = f"PASS: {self.exporter} export matches PyTorch at {len(tried)} input shape(s)"
            warn = [p for p in self.pitfalls if p.severity == "warning"]
            if warn:
                text += f" ({len(warn)} warning(s))"
            return text
        first = "; ".join(p.message for p in self.errors[:3])
        more = f" (and {len(self.errors) - 3} more)" if len(self.errors) > 3 else ""
        return f"FAIL: {len(self.errors)} problem(s) in the {self.exporter} export: {first}{more}"

    def to_dict(self) -> dict:
        return {
            "schema": "surgeon.torch_export/1",
            "passed": self.passed,
            "summary": self.summary(),
            "path": str(self.path) if self.path is not None else None,
            "exporter": self.exporter,
            "inputs": list(self.input_names),
            "outputs": list(self.output_names),
            "output_map": dict(self.output_map),
            "dynamic_axes": {
                k: {str(a): d for a, d in v.items()} for k, v in self.dynamic_axes.items()
            },
            "runs": [r.to_dict() for r in self.runs],
            "pitfalls": [p.to_dict() for p in self.pitfalls],
            "export_seconds": self.export_seconds,
            "check_seconds": self.check_seconds,
            "notes": list(self.notes),
        }


# ---------------------------------------------------------------------- structure
@dataclass(frozen=True)
class _Leaf:
    path: str
    value: object
    in_dict: bool
    depth: int


def _flatten(obj, prefix: str, depth: int = 0, in_dict: bool = False) -> list[_Leaf]:
    """Flatten a PyTorch output structure the way the exporters do (dicts in insertion
    order, sequences in order), keeping a readable path for every leaf."""
    torch = _torch()
    if isinstance(obj, torch.Tensor):
        return [_Leaf(prefix or "output", obj, in_dict, depth)]
    if isinstance(obj, Mapping):
        out = []
        for k, v in obj.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k), depth + 1, True)
        return out
    if isinstance(obj, (list, tuple)):
        fields = getattr(obj, "_fields", None)  # a namedtuple keeps its field names
        out = []
        for i, v in enumerate(obj):
            part = fields[i] if fields else str(i)
            if prefix:
                name = f"{prefix}.{part}"
            else:
                name = part if fields else f"output{i}"
            out += _flatten(v, name, depth + 1, in_dict)
        return out
    return [_Leaf(prefix or "output", obj, in_dict, depth)]


def _describe_value(value) -> str:
    if value is None:
        return "None"
    if isinstance(value, str):
        short = value if len(value) <= 20 else value[:17] + "..."
        return f"a str ({short!r})"
    if isinstance(value, bool):
        return f"a bool ({value})"
    if isinstance(value, (int, float)):
        return f"a Python number ({value})"
    if isinstance(value, np.ndarray) or type(value).__module__ == "numpy":
        return "a numpy value"
    return f"a {type(value).__name__}"


def _argument_names(module, count: int) -> list[str]:
    """Names for the positional arguments, from ``forward``'s signature."""
    try:
        params = [
            p.name
            for p in inspect.signature(module.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    star = None
    try:
        for p in inspect.signature(module.forward).parameters.values():
            if p.kind is p.VAR_POSITIONAL:
                star = p.name
    except (TypeError, ValueError):
        pass
    names = []
    for i in range(count):
        if i < len(params):
            names.append(params[i])
        else:
            names.append(f"{star or 'input'}{i}")
    return names


def _input_leaves(module, args: tuple) -> list[_Leaf]:
    """The leaves of the positional arguments, in order, named after forward's parameters
    (``images``; ``images.0`` for a list of tensors)."""
    leaves = []
    for name, arg in zip(_argument_names(module, len(args)), args, strict=True):
        leaves += _flatten(arg, name)
    return leaves


def _onnx_name(path: str) -> str:
    # ONNX accepts any string, but plain names are easier on every tool downstream.
    return re.sub(r"[^A-Za-z0-9_.:/-]", "_", path) or "output"


def _as_numpy(t) -> np.ndarray:
    torch = _torch()
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16
        t = t.float()
    return t.numpy().copy()


# ---------------------------------------------------------------------- quiet export
@contextlib.contextmanager
def _quiet(fd_level: bool):
    """Keep the exporters' progress prints and logs off the user's terminal (the library
    never prints). ``fd_level`` also silences file descriptors 1 and 2, where the
    TorchScript exporter's C++ logger writes its verbose graph dump."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    saved = []
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            if fd_level:
                try:
                    for fd in (1, 2):
                        for stream in (sys.__stdout__, sys.__stderr__):
                            if stream is not None:
                                stream.flush()
                        saved.append((fd, os.dup(fd)))
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    for fd, _ in saved:
                        os.dup2(devnull, fd)
                    os.close(devnull)
                except OSError:  # no real descriptors (embedded interpreters): log as is
                    for fd, copy in saved:
                        os.dup2(copy, fd)
                        os.close(copy)
                    saved = []
            yield
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _torch_error_text(e: BaseException) -> str:
    """The informative part of an exporter exception (torch wraps them in long notes)."""
    chain = []
    cur: BaseException | None = e
    while cur is not None and len(chain) < 5:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    # The innermost exception usually says what the model did wrong.
    for exc in reversed(chain):
        text = str(exc).strip()
        text = re.sub(r"\x1b\[[0-9;]*m", "", text)
        if text:
            line = text.splitlines()[0]
            return f"{type(exc).__name__}: {line}"
    return type(e).__name__


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
    tolerance: Tolerance = Tolerance(atol=1e-4, rtol=1e-4),
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
    model = model.with_provenance(
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


@dataclass(frozen=True)
class _Signature:
    """The module's inputs and outputs as PyTorch gives them, and their ONNX names."""

    in_names: list[str]  # one per tensor argument
    in_tensors: list[_Leaf]
    numbers: dict[str, _Leaf]  # Python numbers among the arguments, by name
    others: list[_Leaf]  # strings, None, other objects among the arguments
    export_names: list[str]  # input_names given to the exporter
    leaves: list[_Leaf]
    tensor_leaves: list[_Leaf]
    out_names: list[str]
    axes: dict[str, dict[int, str]]


def _signature(torch, module, args, input_names, output_names, dynamic_axes, exporter, pitfalls):
    """Run the module once: the reference outputs, their structure, and the names."""
    try:
        with torch.no_grad():
            reference = module(*args)
    except Exception as e:
        raise SurgeonError(
            f"the module fails on the example inputs before any export: {_torch_error_text(e)}"
        ) from None
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
            except Exception as e:
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
        model = Model(load(target).proto)
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
    from surgeon.origin import (
        SURGEON_CLASS,
        SURGEON_MODULE,
        SURGEON_SOURCE,
        _join_levels,
        _resolve_path,
        _split_call,
        _user_frame_torchscript,
        torchscript_levels,
    )

    modules = dict(module.named_modules())
    paths = set(modules) - {""}
    nodes = list(model.proto.graph.node)
    levels_of = [torchscript_levels(n) for n in nodes]
    known = {lv for levels in levels_of if levels for lv in levels}
    for node, levels in zip(nodes, levels_of, strict=True):
        if levels is None:
            continue
        joined = _join_levels(_split_call(lv, known)[0] for lv in levels)
        path = _resolve_path(joined[-1], paths) if joined else ""
        if path is None:
            continue
        props = {p.key for p in node.metadata_props}
        if SURGEON_MODULE not in props:
            node.metadata_props.add(key=SURGEON_MODULE, value=path)
            node.metadata_props.add(key=SURGEON_CLASS, value=type(modules[path]).__name__)
            file, line = _user_frame_torchscript(node.doc_string)
            if file:
                node.metadata_props.add(key=SURGEON_SOURCE, value=f"{file}:{line}")
        node.doc_string = ""  # the stack per node is bulky; its useful line is kept above


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
                with torch.no_grad():
                    ref = module(*torch_args)
            except Exception as e:
                runs.append(
                    ShapeRun(
                        label,
                        shapes,
                        skipped=f"PyTorch itself fails at {label}: {_torch_error_text(e)}",
                    )
                )
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
                        + "; compare layer by layer with surgeon.torch.capture and `surgeon debug --ref`",
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


def _argument_inputs(model: Model, sig: _Signature, pitfalls) -> dict[str, np.ndarray]:
    """Pair the ONNX inputs with the arguments; feeds for the numbers that became inputs."""
    declared = {i.name: i for i in model.inputs}
    feeds = {}
    for name, leaf in sig.numbers.items():
        info = declared.get(name)
        if info is None:
            pitfalls.append(
                Pitfall(
                    "baked-argument",
                    "warning",
                    f"argument `{leaf.path}` is {_describe_value(leaf.value)}: the exporter bakes "
                    "it into the graph, and the ONNX model always behaves as if it had this value",
                )
            )
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
    for leaf in sig.others:
        pitfalls.append(
            Pitfall(
                "baked-argument",
                "warning",
                f"argument `{leaf.path}` is {_describe_value(leaf.value)}: the exporter bakes it "
                "into the graph, and the ONNX model always behaves as if it had this value",
            )
        )
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


def _constant_values(model: Model) -> dict[str, tuple[str, np.ndarray]]:
    """Integer constants by tensor name: (holder, values); holder is the Constant node's
    name or the initializer's."""
    from onnx import numpy_helper

    out = {}
    for t in model.proto.graph.initializer:
        if t.data_type in (6, 7):  # int32, int64
            out[t.name] = (t.name, numpy_helper.to_array(t))
    for n in model.proto.graph.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value" and a.t.data_type in (6, 7):
                    out[n.output[0]] = (n.name or n.output[0], numpy_helper.to_array(a.t))
                elif a.name in ("value_ints", "value_int"):
                    vals = list(a.ints) if a.name == "value_ints" else [a.i]
                    out[n.output[0]] = (n.name or n.output[0], np.array(vals, dtype=np.int64))
    return out


def _baked_constants(model, in_names, in_arrays, axes, export_dims) -> list[tuple[str, str, str]]:
    """Nodes reading a constant shape that contains an export-time size.

    Returns (consumer node, holder of the constant, explanation) triples, in topological
    order. A value is suspicious when it equals the product of some dims of one input
    that includes at least one dynamic dim (``64`` = H*W for an 8x8 export).
    """
    candidates: dict[int, list[str]] = {}
    for name, arr in zip(in_names, in_arrays, strict=True):
        dyn = axes.get(name, {})
        if not dyn:
            continue
        # Static dims of size 1 add nothing to a product.
        dims = [(a, s) for a, s in enumerate(arr.shape) if s != 1 or a in dyn]
        for r in range(1, min(len(dims), 6) + 1):
            for combo in itertools.combinations(dims, r):
                if not any(axis in dyn for axis, _ in combo):
                    continue
                value = int(np.prod([s for _, s in combo]))
                if value > 1:
                    parts = [dyn.get(axis, str(s)) for axis, s in combo]
                    sizes = [str(s) for _, s in combo]
                    label = "*".join(parts)
                    label = label if len(combo) == 1 else f"{label} ({'*'.join(sizes)})"
                    if label not in candidates.setdefault(value, []):
                        candidates[value].append(label)
    constants = _constant_values(model)
    producers = model.producers()
    found = []
    for n in model.proto.graph.node:
        for pos in _SHAPE_INPUTS.get(n.op_type, ()):
            if pos >= len(n.input) or not n.input[pos]:
                continue
            hit = None
            for holder, values in _constant_sources(n.input[pos], producers, constants):
                hits = [int(v) for v in values.ravel() if int(v) in candidates]
                if hits:
                    hit = (holder, values, hits[0])
                    break
            if hit is None:
                continue
            holder, values, v = hit
            direct = n.input[pos] in constants
            found.append(
                (
                    n.name,
                    holder,
                    f"`{n.name}` ({n.op_type}) reads the constant {values.ravel().tolist()} "
                    + (f"from `{holder}`" if direct else f"(through `{holder}`)")
                    + f": {v} = {' or '.join(candidates[v][:3])} at export, baked in",
                )
            )
            break
    return found


# Ops that only assemble a shape vector from pieces: a baked size may sit a few of these
# upstream of the Reshape that reads it (`x.view(x.shape[0], 3, 64)` gives a Concat of a
# traced dim and constants).
_SHAPE_PLUMBING = {"Concat", "Unsqueeze", "Squeeze", "Cast", "Identity"}


def _constant_sources(tensor, producers, constants, depth: int = 6):
    """Integer constants that flow into ``tensor`` through shape plumbing only."""
    if tensor in constants:
        yield constants[tensor]
        return
    node = producers.get(tensor)
    if node is None or depth == 0 or node.op_type not in _SHAPE_PLUMBING:
        return
    for t in node.input:
        if t:
            yield from _constant_sources(t, producers, constants, depth - 1)


def _suspect_text(suspects, failing: str | None) -> str:
    if not suspects:
        return ""
    ordered = sorted(suspects, key=lambda s: s[0] != failing)
    return "; likely cause: " + "; ".join(s[2] for s in ordered[:3])


# ---------------------------------------------------------------------- capture
@dataclass(frozen=True)
class Capture:
    """Activations recorded by :func:`capture`.

    Attributes:
        activations: Module key -> output (``conv1``; ``act@1`` for a module's second call).
        classes: Module key -> class name.
        inputs: Input name -> the value fed (ONNX input names when a model was given).
        outputs: Output name -> the module's output (ONNX output names when a model was
            given, else paths such as ``output``, ``boxes``).
        skipped: Module key -> why no activation was recorded (tuple or dict outputs).
        matched: Module key -> ONNX tensor holding the same value (with a model).
        unmatched: Module key -> why it has no ONNX tensor (with a model).
        path: The ``.npz`` written, if any.
    """

    activations: dict[str, np.ndarray]
    classes: dict[str, str]
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    skipped: dict[str, str]
    matched: dict[str, str]
    unmatched: dict[str, str]
    path: Path | None = None
    keyed_by_onnx: bool = False

    def arrays(self) -> dict[str, np.ndarray]:
        """What the ``.npz`` holds: inputs, outputs and activations; keyed by ONNX tensor
        name when a model was given (unmatched modules left out), else by module key."""
        out = dict(self.inputs)
        out.update(self.outputs)
        if self.keyed_by_onnx:
            for key, tensor in self.matched.items():
                out.setdefault(tensor, self.activations[key])
        else:
            out.update(self.activations)
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`arrays` to an ``.npz`` atomically."""
        return _save_npz(self.arrays(), path)


def _save_npz(arrays: Mapping[str, np.ndarray], path) -> Path:
    out = Path(path)
    if out.suffix != ".npz":
        raise OutputPathError(
            f"activations go to an .npz file; got {out}", hint=f"Use {out.with_suffix('.npz')}."
        )
    check_output_path(out, [])
    from surgeon.fileio import save_npz

    return save_npz(out, dict(arrays))


@dataclass
class _DataFlow:
    """Which module call produced and read which tensor object (by id, during one run)."""

    inputs: dict[str, list[int]] = field(default_factory=dict)
    output: dict[str, int] = field(default_factory=dict)
    producer: dict[int, str] = field(default_factory=dict)
    passthrough: dict[str, bool] = field(default_factory=dict)


def _explain_no_nodes(model, kinds, matched, unmatched, flow: _DataFlow) -> None:
    """Refine the matching of modules that own no ONNX node, using the observed data flow.

    * Eval-mode Dropout and Identity return their input: nothing of their own to compare.
    * TorchScript folds a BatchNorm into the Conv before it and keeps the Conv's name: the
      Conv's tensor holds the BatchNorm's output, so it moves to the BatchNorm.
    * dynamo folds the same pair into a node named after the BatchNorm: the Conv's own
      output simply does not exist in the model.
    """
    from surgeon.origin import tensor_origin

    for key, kind in kinds.items():
        if kind != "no-nodes":
            continue
        if flow.passthrough.get(key):
            unmatched[key] = (
                "it returns its input unchanged (e.g. Dropout or Identity in eval mode): "
                "no ONNX node, nothing of its own to compare"
            )
            continue
        ids = flow.inputs.get(key, [])
        source = flow.producer.get(ids[0]) if len(ids) == 1 else None
        tensor = matched.get(source) if source else None
        origin = tensor_origin(model, tensor) if tensor else None
        if (
            origin is not None
            and origin.exporter != "dynamo"
            and (origin.module == source or source.endswith("." + origin.module))
        ):
            matched[key] = tensor
            del unmatched[key]
            del matched[source]
            unmatched[source] = (
                f"the exporter folded `{key}` into this module's node: `{tensor}` holds `{key}`'s "
                "output, and the ONNX model has no tensor for this module's own output"
            )
            continue
        out = flow.output.get(key)
        readers = [
            k for k, read in flow.inputs.items() if out in read and k != key and k in matched
        ]
        if out is not None and readers:
            unmatched[key] = (
                f"the exporter folded it into `{readers[0]}`'s node (`{matched[readers[0]]}` holds "
                f"`{readers[0]}`'s output): the ONNX model has no tensor for this module's own output"
            )


def capture(
    module,
    args,
    *,
    onnx_model=None,
    path: str | os.PathLike | None = None,
) -> Capture:
    """Run ``module`` once and record every submodule's output with forward hooks.

    Keys are module paths from ``named_modules()`` (``backbone.0.conv``); a module called
    again gets ``@1``, ``@2``... Only tensor outputs are recorded; a module returning a
    tuple or dict is listed in ``skipped``. The top-level module is not recorded: its
    outputs are the model outputs.

    With ``onnx_model`` (the exported Model, or its path) the activations are matched to
    ONNX tensors by :func:`surgeon.origin.match_activations`, and the ``.npz`` is keyed
    by ONNX tensor name, with the inputs and outputs under the model's input and output
    names: what ``surgeon debug model.onnx --ref acts.npz`` reads. Unmatched modules stay
    out of the file and are listed in ``unmatched`` with the reason.

    One correction uses what only PyTorch knows: the TorchScript exporter folds a
    BatchNorm into the Conv before it and keeps the Conv's name, so the Conv's tensor
    holds the BatchNorm's output. A module with no node whose input is another module's
    output, and whose value differs from it, takes that tensor over.

    Args:
        module: The ``torch.nn.Module`` (run in eval mode, then put back).
        args: The inputs, as for :func:`export`.
        onnx_model: The exported model, to key the file by ONNX tensor names.
        path: Where to write the ``.npz`` (optional).

    Returns:
        A :class:`Capture`.
    """
    torch = _torch()
    from surgeon.loading import load
    from surgeon.origin import match_activations

    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"capture needs a torch.nn.Module, got {type(module).__name__}")
    args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
    model = None
    if onnx_model is not None:
        model = load(onnx_model) if isinstance(onnx_model, (str, os.PathLike)) else onnx_model
    if path is not None:
        if Path(path).suffix != ".npz":
            raise OutputPathError(
                f"activations go to an .npz file; got {path}",
                hint=f"Use {Path(path).with_suffix('.npz')}.",
            )
        check_output_path(path, [model] if model is not None else [])

    activations: dict[str, np.ndarray] = {}
    classes: dict[str, str] = {}
    skipped: dict[str, str] = {}
    calls: dict[str, int] = {}
    flow = _DataFlow()
    alive: list = []  # keeps tensors alive during the run, so their ids stay unique

    def hook_for(name: str):
        def hook(mod, inputs, output):
            count = calls.get(name, 0)
            calls[name] = count + 1
            key = name if count == 0 else f"{name}@{count}"
            classes[key] = type(mod).__name__
            tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
            flow.inputs[key] = [id(t) for t in tensors]
            alive.extend(tensors)
            if isinstance(output, torch.Tensor):
                activations[key] = _as_numpy(output)
                flow.output[key] = id(output)
                flow.producer.setdefault(id(output), key)
                flow.passthrough[key] = bool(tensors) and (
                    output is tensors[0]
                    or (output.shape == tensors[0].shape and bool(torch.equal(output, tensors[0])))
                )
                alive.append(output)
            else:
                skipped[key] = f"its output is a {type(output).__name__}, not a tensor"

        return hook

    handles = [
        sub.register_forward_hook(hook_for(name)) for name, sub in module.named_modules() if name
    ]
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            result = module(*args)
    except Exception as e:
        raise SurgeonError(
            f"the module fails on the given inputs: {_torch_error_text(e)}"
        ) from None
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    alive.clear()

    in_tensors = [
        leaf for leaf in _input_leaves(module, args) if isinstance(leaf.value, torch.Tensor)
    ]
    out_leaves = [leaf for leaf in _flatten(result, "") if isinstance(leaf.value, torch.Tensor)]
    if model is None:
        inputs = {_onnx_name(leaf.path): _as_numpy(leaf.value) for leaf in in_tensors}
        outputs = {_onnx_name(leaf.path): _as_numpy(leaf.value) for leaf in out_leaves}
        captured = Capture(activations, classes, inputs, outputs, skipped, {}, {}, None, False)
    else:
        problems = []
        if len(model.input_names) != len(in_tensors):
            problems.append(
                f"the module takes {len(in_tensors)} tensor input(s) but {model.name} has "
                f"{len(model.input_names)} ({', '.join(model.input_names)})"
            )
        if len(model.output_names) != len(out_leaves):
            problems.append(
                f"the module returns {len(out_leaves)} tensor(s) but {model.name} has "
                f"{len(model.output_names)} output(s) ({', '.join(model.output_names)})"
            )
        if problems:
            raise SurgeonError(
                f"{model.name} does not look like an export of {type(module).__name__}",
                problems=problems,
                hint="Pass the ONNX model exported from this module with these arguments.",
            )
        inputs = {
            n: _as_numpy(leaf.value) for n, leaf in zip(model.input_names, in_tensors, strict=True)
        }
        outputs = {
            n: _as_numpy(leaf.value) for n, leaf in zip(model.output_names, out_leaves, strict=True)
        }
        match = match_activations(model, list(activations))
        matched = dict(match)
        unmatched = dict(match.unmatched)
        _explain_no_nodes(model, match.kinds, matched, unmatched, flow)
        captured = Capture(
            activations, classes, inputs, outputs, skipped, matched, unmatched, None, True
        )
    if path is not None:
        written = captured.save(path)
        captured = Capture(
            captured.activations,
            captured.classes,
            captured.inputs,
            captured.outputs,
            captured.skipped,
            captured.matched,
            captured.unmatched,
            written,
            captured.keyed_by_onnx,
        )
    return captured
