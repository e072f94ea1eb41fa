"""Activation capture (:func:`capture`): forward hooks record every submodule's output,
keyed by the ONNX tensor holding the same value when the exported model is given."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from surgeon.errors import OutputPathError, SurgeonError, UsageError
from surgeon.saving import check_output_path
from surgeon.torch._support import (
    _as_numpy,
    _flatten,
    _input_leaves,
    _onnx_name,
    _run_module,
    _torch,
)


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
        result = _run_module(torch, module, args, "the module fails on the given inputs")
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
