"""Export a PyTorch module with dynamic H, W, check it, and compare it layer by layer.

The whole PyTorch -> ONNX path on the mission's two-conv example (conv0 3->8 and conv1
8->4, 3x3 kernels, padding 1), defined below as a torch module:

1. ``surgeon.torch.export`` exports it with dynamic H and W and checks the file at once:
   onnxruntime against PyTorch at the export size and at every size in ``sizes``.
2. ``surgeon.torch.capture`` records each module's output with forward hooks and keys it
   by the ONNX tensor that holds the same value.
3. ``surgeon.debug`` compares the exported model with those activations, tensor by
   tensor, and names the first diverging node with its PyTorch module and source line.

The model given on the command line is used for its weights when its initializers are
named like the module's state_dict (``sample_models/two_conv.onnx`` is), and the new
export must then reproduce it. Needs the [torch] extra (pip install torch==2.13.0 onnxscript).

    surgeon run torch_export_check sample_models/two_conv.onnx -o two_conv_dynamic.onnx
    surgeon run torch_export_check sample_models/two_conv.onnx exporter=torchscript \\
        acts=acts.npz -o two_conv_dynamic.onnx
    surgeon debug two_conv_dynamic.onnx --ref acts.npz     # the same comparison, later
"""

from __future__ import annotations

import numpy as np

import surgeon

PARAMS = {
    "exporter": (str, "dynamo", "dynamo (torch's default) or torchscript"),
    "height": (int, 32, "H of the example input the export traces"),
    "width": (int, 48, "W of the example input"),
    "sizes": (str, "17,64", "other sizes to check, for H and W alike (comma-separated)"),
    "acts": (str, "", "also save the captured activations to this .npz, for `surgeon debug --ref`"),
    "seed": (int, 0, "seed of the example input"),
}


def two_conv_module(torch):
    """The mission's two-conv example as a torch module (no torch import at module level,
    so `surgeon recipes` lists this recipe without torch installed)."""

    class TwoConv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv0 = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.conv1 = torch.nn.Conv2d(8, 4, 3, padding=1)

        def forward(self, x):
            return self.conv1(self.conv0(x))

    return TwoConv()


def load_weights(module, model: surgeon.Model, torch) -> bool:
    """Copy the model's initializers into the module when every state_dict entry has a
    same-named, same-shaped initializer; False (and nothing copied) otherwise."""
    from onnx import numpy_helper

    weights = {t.name: numpy_helper.to_array(t) for t in model.proto.graph.initializer}
    state = module.state_dict()
    if not all(
        k in weights and tuple(weights[k].shape) == tuple(v.shape) for k, v in state.items()
    ):
        return False
    module.load_state_dict({k: torch.from_numpy(np.array(weights[k])) for k in state})
    return True


def recipe(
    models: list[surgeon.Model],
    exporter: str = "dynamo",
    height: int = 32,
    width: int = 48,
    sizes: str = "17,64",
    acts: str = "",
    seed: int = 0,
):
    """Export, check and compare; returns the exported model and both reports."""
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
    torch.manual_seed(seed)
    module = two_conv_module(torch).eval()
    given = models[0] if models else None
    reused = given is not None and load_weights(module, given, torch)
    x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(seed))

    # 1. Export + check. The I/O names follow the given model, so the export is a drop-in.
    names = (given.input_names[0], given.output_names[0]) if reused else ("x", "y")
    check = surgeon_torch.export(
        module,
        (x,),
        input_names=[names[0]],
        output_names=[names[1]],
        dynamic_axes={names[0]: {2: "H", 3: "W"}, names[1]: {2: "H", 3: "W"}},
        exporter=exporter,
        sizes={"H": others, "W": others},
    )
    # The export's own check (onnxruntime vs PyTorch at every size) is its verification:
    # recorded as a step, so `surgeon run` shows it and saves only a checked model.
    exported = surgeon.Edited(
        check.model, check, "torch-export", {"exporter": exporter, "sizes": others}
    )
    if not check:
        raise surgeon.VerificationFailed(check.summary())
    if reused:
        # Same weights, same maths: the new export must reproduce the given model.
        same = surgeon.verify(check.model, given, tolerance=surgeon.Tolerance(atol=1e-5, rtol=1e-5))
        if not same:
            raise surgeon.VerificationFailed(
                f"the export does not reproduce {given.name}: {same.summary()}", report=same
            )

    # 2. Capture activations keyed by ONNX tensor name; 3. compare layer by layer.
    captured = surgeon_torch.capture(module, (x,), onnx_model=check.model, path=acts or None)
    layers = surgeon.debug(check.model, surgeon.DebugOptions(reference=captured.arrays()))
    return {"two_conv": exported, "export_check": check, "layers": layers}
