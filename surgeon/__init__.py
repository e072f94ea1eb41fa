"""surgeon: ONNX graph surgery and debugging, every edit verified with onnxruntime.

The public API::

    import surgeon

    model = surgeon.load("model.onnx")
    report = surgeon.verify(edited, model)          # a DiffReport, truthy when it passed
    surgeon.save(edited, "edited.onnx")             # atomic; never overwrites the input

Names are imported on first use (PEP 562), so ``import surgeon`` stays cheap and never
imports onnxruntime until something runs a model.

The API is the CLI's twin: every user error is a :class:`SurgeonError`, never a
``TypeError``. Functions reached through ``surgeon.<name>`` check their arguments first
(see :mod:`surgeon.arguments`); wherever they take a model, they also take an
:class:`Edited` result (its ``.model``) or a path, which is loaded with :func:`load`
(``save`` alone wants a model it is given, not a path).
"""

from __future__ import annotations

import importlib

from surgeon._version import __version__
from surgeon.errors import (
    ModelLoadError,
    NameNotFoundError,
    OutputPathError,
    RuntimeFailure,
    SurgeonError,
    UnsafePathError,
    UsageError,
    VerificationFailed,
)

# Public name -> module that defines it. One explicit table, no import side effects.
_LAZY = {
    "Model": "surgeon.model",
    "TensorInfo": "surgeon.model",
    "load": "surgeon.loading",
    "save": "surgeon.saving",
    "verify": "surgeon.verification",
    "Chain": "surgeon.verification",
    "Tolerance": "surgeon.compare",
    "EXACT": "surgeon.compare",
    "DiffReport": "surgeon.compare",
    "TensorDiff": "surgeon.compare",
    "compare_arrays": "surgeon.compare",
    "FeedOptions": "surgeon.feeds",
    "make_feeds": "surgeon.feeds",
    "RunOptions": "surgeon.runner",
    "run": "surgeon.runner",
    "describe": "surgeon.inspection",
    "Edited": "surgeon.edits",
    "Built": "surgeon.edits",
    "tap": "surgeon.edits.tap",
    "debug": "surgeon.debugging",
    "DebugOptions": "surgeon.debugging",
    "DebugReport": "surgeon.debugging",
    "load_recipe": "surgeon.recipe_runner",
    "run_recipe": "surgeon.recipe_runner",
    "record_check": "surgeon.recipe_steps",
    "record_edit": "surgeon.recipe_steps",
    "build_nms": "surgeon.edits.nms",
    "merge": "surgeon.edits.merge",
    "extract": "surgeon.edits.extract",
    "rename": "surgeon.edits.rename",
    "reshape_io": "surgeon.edits.shapes",
    "fold": "surgeon.edits.fold",
    "convert": "surgeon.edits.convert",
    "edit_nodes": "surgeon.edits.node_edits",
    "SetAttribute": "surgeon.edits.node_edits_ops",
    "RemoveAttribute": "surgeon.edits.node_edits_ops",
    "ReplaceInitializer": "surgeon.edits.node_edits_ops",
    "BypassNode": "surgeon.edits.node_edits_ops",
    "DeleteNode": "surgeon.edits.node_edits_ops",
    "InsertNode": "surgeon.edits.node_edits_ops",
    "ChangeOpType": "surgeon.edits.node_edits_ops",
    "rewrite": "surgeon.rewrites.apply",
    "check_dynamic": "surgeon.dynamic",
    "declared_vs_actual": "surgeon.shapecheck",
    "node_origin": "surgeon.origin",
    "match_activations": "surgeon.origin",
    # the function; its module is surgeon.optimizer_blame, so that `import surgeon.blame`
    # can never replace this attribute with a module
    "blame": "surgeon.optimizer_blame",
    "plan_fp16": "surgeon.precision.fp16",
    "suggest_exclusions": "surgeon.precision.exclude",
}

__all__ = [
    "__version__",
    "SurgeonError",
    "ModelLoadError",
    "UnsafePathError",
    "NameNotFoundError",
    "UsageError",
    "OutputPathError",
    "RuntimeFailure",
    "VerificationFailed",
    *_LAZY,
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'surgeon' has no attribute {name!r}")
    # Imported here, not at the top: surgeon.arguments is small, but the names it wraps
    # are only known on first use.
    from surgeon.arguments import public

    value = public(name, getattr(importlib.import_module(module), name))
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
