"""Compare a model layer by layer against a reference and name the root-cause node.

The reference is a second model given after the first (e.g. the float32 original of a
float16 conversion, or another export), or saved activations (`ref=acts.npz`, keyed by
tensor name, holding the inputs that produced them too), or the same model at another
onnxruntime optimisation level (`ref_optimization=all`). The root cause is the first node
whose output diverges while all its inputs still match.

    surgeon run compare_layers model_fp16.onnx model.onnx --param atol=1e-2 --param rtol=1e-2
    surgeon run compare_layers model.onnx --param ref=acts.npz
"""

from __future__ import annotations

import surgeon

MODELS = ("model", "reference?")
MODELS_HELP = "the model to check, then optionally the reference model to compare it with"
OUTPUTS = ()  # a report, no model
PARAMS = {
    "ref": (
        str,
        "",
        "an .npz of activations or a .onnx reference (default: the second model given)",
    ),
    "ref_optimization": (
        str,
        "",
        "compare against the same model at this onnxruntime level (disabled/basic/extended/all)",
    ),
    "atol": (float, 1e-4, "absolute tolerance"),
    "rtol": (float, 1e-4, "relative tolerance"),
    "taps": (str, "all", "comma-separated taps: tensor or node names, globs, or all"),
}


def recipe(
    models: list[surgeon.Model],
    ref: str = "",
    ref_optimization: str = "",
    atol: float = 1e-4,
    rtol: float = 1e-4,
    taps: str = "all",
):
    """Return the debug report of ``models[0]`` against the reference."""
    reference = ref or (models[1] if len(models) > 1 else None)
    if reference is None and not ref_optimization:
        raise surgeon.UsageError(
            "compare_layers needs a reference: a second model, ref=acts.npz or ref_optimization=LEVEL"
        )
    options = surgeon.DebugOptions(
        taps=tuple(t for t in taps.split(",") if t),
        reference=reference,
        reference_optimization=ref_optimization or None,
        tolerance=surgeon.Tolerance(atol=atol, rtol=rtol),
    )
    return surgeon.debug(models[0], options)
