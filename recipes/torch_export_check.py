"""Re-export an ONNX model's PyTorch module with dynamic H, W; check it, compare it layer by layer.

You give the ONNX model and the PyTorch module it was exported from (``module=``, a
``path.py:Class`` or ``path.py:factory`` loaded by file path and called with no
arguments). The module gets the model's weights when its state_dict names and shapes
match the model's initializers (otherwise it keeps its own, e.g. a factory that loads a
checkpoint). Then:

1. ``surgeon.torch.export`` exports it with the model's I/O names and dynamic H and W
   (axes 2 and 3 of the image input) and checks the file at once: onnxruntime against
   PyTorch at the export size and at every size in ``sizes``.
2. The new export must reproduce the given model (same inputs, same outputs within
   1e-5): proof the module is the model, so the export is a drop-in.
3. ``surgeon.torch.capture`` records each module's output with forward hooks, and
   ``surgeon.debug`` compares the export with them tensor by tensor, naming the first
   diverging node with its PyTorch module and source line.

The example input is the model's image input ``[N, C, H, W]``, with ``height``/``width``
where its dims are symbolic. Needs the [torch] extra (pip install torch==2.13.0 onnxscript).

    surgeon run torch_export_check sample_models/two_conv.onnx \\
        --param module=sample_models/two_conv.py:TwoConv -o two_conv_dynamic.onnx
    surgeon run torch_export_check model.onnx module=net.py:build exporter=torchscript \\
        acts=acts.npz -o model_dynamic.onnx
    surgeon debug model_dynamic.onnx --ref acts.npz     # the same comparison, later
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

import surgeon

MODELS = ("model",)
MODELS_HELP = (
    "the ONNX model exported from the PyTorch module given with "
    "--param module=path.py:Class; the new export must reproduce it"
)
OUTPUTS = ("exported",)
PARAMS = {
    "module": (
        str,
        ...,
        "the PyTorch module: path.py:Class or path.py:factory, called with no arguments",
    ),
    "exporter": (str, "dynamo", "dynamo (torch's default) or torchscript"),
    "height": (int, 32, "H of the example input, where the model's H is symbolic"),
    "width": (int, 48, "W of the example input, where the model's W is symbolic"),
    "sizes": (str, "17,64", "other sizes to check, for H and W alike (comma-separated)"),
    "acts": (str, "", "also save the captured activations to this .npz, for `surgeon debug --ref`"),
    "seed": (int, 0, "seed of the example input"),
}


def load_module(spec: str, torch):
    """Build the module named by ``path.py:callable`` (a class or a factory, called with
    no arguments). Loaded by file path, so the file need not be importable.

    Raises:
        UsageError: Not ``path.py:name``, no such file or name (with close matches), or
            the call does not give a ``torch.nn.Module``.
        SurgeonError: The file fails to import or the call raises.
    """
    path_text, sep, name = spec.rpartition(":")
    if not sep or not path_text.endswith(".py") or not name:
        raise surgeon.UsageError(
            f"module={spec} is not path.py:name",
            hint="Give the file and the class or factory, e.g. module=model.py:Net",
        )
    path = Path(path_text)
    if not path.is_file():
        raise surgeon.UsageError(f"module={spec}: the file {path} does not exist")
    module_name = f"surgeon_torch_module_{path.stem}"
    file_spec = importlib.util.spec_from_file_location(module_name, path)
    loaded = importlib.util.module_from_spec(file_spec)
    sys.modules[module_name] = loaded  # dataclasses and pickling look modules up here
    try:
        file_spec.loader.exec_module(loaded)
    except Exception as e:  # noqa: BLE001 - the user's file: any error is reported as its own
        raise surgeon.SurgeonError(f"module={spec}: {path} failed to import: {e!r}") from e
    factory = getattr(loaded, name, None)
    if not callable(factory):
        names = [n for n, v in vars(loaded).items() if callable(v) and not n.startswith("_")]
        from surgeon.errors import did_you_mean

        hint = did_you_mean(name, names)
        raise surgeon.UsageError(
            f"module={spec}: {path} defines no callable `{name}`" + (f"; {hint}" if hint else "")
        )
    try:
        built = factory()
    except Exception as e:  # noqa: BLE001 - the user's code may raise anything
        raise surgeon.SurgeonError(f"module={spec}: calling {name}() raised {e!r}") from e
    if not isinstance(built, torch.nn.Module):
        raise surgeon.UsageError(
            f"module={spec}: {name}() gave a {type(built).__name__}, not a torch.nn.Module"
        )
    return built


def load_weights(module, model: surgeon.Model, torch) -> bool:
    """Copy the model's initializers into the module when every state_dict entry has a
    same-named, same-shaped initializer; False (and nothing copied) otherwise."""
    weights = {t.name: model.tensor_array(t) for t in model.proto.graph.initializer}
    state = module.state_dict()
    if not all(
        k in weights and tuple(weights[k].shape) == tuple(v.shape) for k, v in state.items()
    ):
        return False
    module.load_state_dict({k: torch.from_numpy(np.array(weights[k])) for k in state})
    return True


def image_input(model: surgeon.Model, height: int, width: int) -> tuple[str, tuple[int, ...]]:
    """The model's one input, ``[N, C, H, W]``, and the example shape for it (symbolic N
    and C are 1, symbolic H and W are ``height`` and ``width``)."""
    inputs = model.inputs
    if len(inputs) != 1 or inputs[0].shape is None or len(inputs[0].shape) != 4:
        described = ", ".join(f"{i.name} {i.shape}" for i in inputs)
        raise surgeon.UsageError(
            f"torch_export_check re-exports models with one image input [N, C, H, W]; "
            f"{model.name} has {described}",
            hint="Call surgeon.torch.export from Python for other inputs.",
        )
    fallback = (1, 1, height, width)
    dims = tuple(d if isinstance(d, int) else fallback[i] for i, d in enumerate(inputs[0].shape))
    return inputs[0].name, dims


def recipe(
    models: list[surgeon.Model],
    module: str,
    exporter: str = "dynamo",
    height: int = 32,
    width: int = 48,
    sizes: str = "17,64",
    acts: str = "",
    seed: int = 0,
):
    """Re-export, check, reproduce and compare; returns the export and both reports."""
    try:
        import torch
    except ImportError:
        raise surgeon.SurgeonError(
            "recipe torch_export_check needs PyTorch, which is not installed",
            hint="install the [torch] extra: pip install torch==2.13.0 onnxscript",
        ) from None
    import surgeon.torch as surgeon_torch

    try:
        others = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise surgeon.UsageError(
            f"cannot read sizes={sizes}: expected integers like 17,64"
        ) from None
    given = models[0]
    input_name, shape = image_input(given, height, width)
    torch.manual_seed(seed)
    net = load_module(module, torch).eval()
    reused = load_weights(net, given, torch)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))

    # 1. Export + check, under the given model's I/O names: the export is a drop-in.
    spatial = {2: "H", 3: "W"}
    dynamic = {input_name: spatial}
    dynamic.update({o.name: spatial for o in given.outputs if o.shape and len(o.shape) == 4})
    check = surgeon_torch.export(
        net,
        (x,),
        input_names=[input_name],
        output_names=given.output_names,
        dynamic_axes=dynamic,
        exporter=exporter,
        sizes={"H": others, "W": others},
    )
    # The export's own check (onnxruntime vs PyTorch at every size) is its verification:
    # recorded as a step, so `surgeon run` shows it and saves only a checked model.
    exported = surgeon.record_edit(
        surgeon.Edited(check.model, check, "torch-export", {"exporter": exporter, "sizes": others})
    )
    if not check:
        raise surgeon.VerificationFailed(check.summary())
    # 2. The module must be the model: the new export reproduces the given one.
    same = surgeon.verify(check.model, given, tolerance=surgeon.Tolerance(atol=1e-5, rtol=1e-5))
    if not same:
        weights = (
            "with the model's weights"
            if reused
            else "with its own weights (its state_dict names or shapes are not the model's "
            "initializers, so none were copied)"
        )
        raise surgeon.VerificationFailed(
            f"the export of {module} {weights} does not reproduce {given.name}: {same.summary()}",
            report=same,
        )
    surgeon.record_check(same, f"reproduces {given.name}")  # shown as a step of its own

    # 3. Capture activations keyed by ONNX tensor name; compare layer by layer.
    captured = surgeon_torch.capture(net, (x,), onnx_model=check.model, path=acts or None)
    layers = surgeon.debug(check.model, surgeon.DebugOptions(reference=captured.arrays()))
    return {"exported": exported, "export_check": check, "layers": layers}
