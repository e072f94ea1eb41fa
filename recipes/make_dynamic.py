"""Make an exported image model's batch and/or height and width dynamic, and prove it.

The ``dynamic_axes`` of ``torch.onnx.export``, after the fact: every rank-4 input
``[N, C, H, W]`` gets symbolic dims ``batch`` (axis 0) and ``height``/``width`` (axes 2
and 3), the outputs' dims come from shape inference, and the model is run at several
sizes of each new dynamic dim. An export that baked a size into a Reshape or Expand
constant fails here, naming the node that holds it.

    surgeon run make_dynamic model.onnx spatial=false -o dynamic_batch.onnx
"""

from __future__ import annotations

import surgeon

MODELS = ("model",)
OUTPUTS = ("dynamic",)
PARAMS = {
    "batch": (bool, True, "make axis 0 of every image input dynamic (`batch`)"),
    "spatial": (bool, True, "make axes 2 and 3 of every image input dynamic (`height`, `width`)"),
    "sizes": (
        str,
        "",
        "sizes to try, e.g. height=320,640;width=320,640 (default: the rule of check-dynamic)",
    ),
}


def image_dims(info: surgeon.TensorInfo, batch: bool, spatial: bool) -> list:
    dims = list(info.shape)
    if batch:
        dims[0] = "batch"
    if spatial:
        dims[2], dims[3] = "height", "width"
    return dims


def parse_sizes(text: str) -> dict[str, list[int]]:
    sizes = {}
    for item in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, values = item.partition("=")
        try:
            sizes[name.strip()] = [int(v) for v in values.split(",")]
        except ValueError:
            sep = ""
        if not sep:
            raise surgeon.UsageError(f"cannot read `{item}` in sizes=: expected DIM=S1,S2")
    return sizes


def recipe(models: list[surgeon.Model], batch: bool = True, spatial: bool = True, sizes: str = ""):
    """Make the image inputs of ``models[0]`` dynamic; returns the checked Edited."""
    model = models[0]
    images = [i for i in model.inputs if i.shape is not None and len(i.shape) == 4]
    if not images:
        raise surgeon.UsageError(
            f"{model.name} has no rank-4 (N, C, H, W) input to make dynamic",
            hint="Use surgeon.reshape_io with explicit dims for other layouts.",
        )
    if not batch and not spatial:
        raise surgeon.UsageError("nothing to do: batch=false and spatial=false")
    specs = {i.name: image_dims(i, batch, spatial) for i in images}
    return surgeon.reshape_io(model, specs, sizes=parse_sizes(sizes))
