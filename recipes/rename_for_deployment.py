"""Give a model's inputs and outputs the names a deployment expects.

Serving stacks (Triton configs, TensorRT bindings, C++ code generators) want plain names:
``images`` -> ``input``, ``output0`` -> ``preds``, and no ``/``, ``:`` or ``.`` from the
exporter. This renames the given pairs, then rewrites every other input and output name
to letters, digits and ``_``. The result is verified: the same values under the new
names, bit for bit (checked exactly: a rename changes no value).

    surgeon run rename_for_deployment model.onnx mapping=images=input,output0=preds -o out.onnx
"""

from __future__ import annotations

import surgeon

MODELS = ("model",)
OUTPUTS = ("renamed",)
PARAMS = {
    "mapping": (str, "", "comma-separated OLD=NEW pairs for inputs and outputs"),
    "sanitize": (bool, True, "replace characters other than letters, digits and _ with _"),
    "prefix": (str, "", "put in front of every input and output name not in mapping"),
}


def parse_mapping(text: str) -> dict[str, str]:
    pairs = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise surgeon.UsageError(f"cannot read `{item}` in mapping=: expected OLD=NEW")
        pairs[old] = new
    return pairs


def recipe(models: list[surgeon.Model], mapping: str = "", sanitize: bool = True, prefix: str = ""):
    """Rename the inputs and outputs of ``models[0]``; returns the verified Edited."""
    model = models[0]
    pairs = parse_mapping(mapping)
    names = [n for n in model.input_names + model.output_names if n not in pairs]
    needs_cleaning = sanitize and any(not n.replace("_", "").isalnum() for n in names)
    return surgeon.rename(
        model,
        pairs,
        regex=r"[^A-Za-z0-9_]=_" if needs_cleaning else None,
        prefix=prefix or None,
        tolerance=surgeon.EXACT,
    )
