"""Where an ONNX node came from in PyTorch, read from the ONNX file alone (no torch needed).

Exporters leave three kinds of traces, read in this order of preference:

* **surgeon's own node metadata** (``surgeon.torch.module``, ``surgeon.torch.class``,
  ``surgeon.torch.source``), written by :func:`surgeon.torch.export` for TorchScript
  exports, where it knows the real module tree.
* **The dynamo exporter's node metadata** (``torch.onnx.export(..., dynamo=True)``, the
  default since torch 2.9): ``pkg.torch.onnx.name_scopes`` is the list of module paths
  the node sits in, outermost first, ending with the FX node name
  (``['', 'backbone', 'backbone.0', 'conv2d']``); ``pkg.torch.onnx.class_hierarchy`` the
  matching classes, ending with the aten op; ``pkg.torch.onnx.stack_trace`` the Python
  stack, outermost frame first.
* **TorchScript-style node names** (``dynamo=False``): ``/backbone/backbone.0/conv/Conv``.
  Each ``/`` level is one module call, named by the module's attribute name with
  numeric atoms kept (``layers.0``); a module called again gets a ``_1`` suffix
  (``/act_1/Relu``). Containers that are never called (ModuleList, ModuleDict) leave no
  level, so their names are lost: ``enc.a.conv`` in the module tree is ``/a/conv/Conv``
  in the file. When the export ran with ``verbose=True``, ``doc_string`` holds the stack
  (innermost frame first), which gives the source line.

:func:`match_activations` maps PyTorch module paths (as recorded by forward hooks) to the
ONNX tensor holding that module's output. The rule, for a module ``M``:

1. ``M``'s nodes are the nodes whose scope is ``M`` or a module inside it.
2. Its output is the last tensor, in topological order, that one of those nodes
   produces and that is read outside them (by another node, or as a graph output).
3. A module called several times (keys ``act``, ``act@1``, ...) has one set of nodes
   per call: TorchScript names tell calls apart (``act``, ``act_1``); for dynamo exports
   the module's nodes are split into connected groups, and the calls are matched to the
   groups in order only when there are exactly as many groups as calls.

What cannot be matched, and is reported as such: modules with no node of their own
(folded into a neighbour, e.g. a BatchNorm folded into the Conv before it; Dropout and
Identity in eval mode; modules whose only work was constant-folded); modules called
several times whose calls the metadata cannot tell apart; modules absent from the
model's metadata altogether (a model exported by another tool, or edited by a tool that
dropped node metadata). Modules whose output is a tuple or dict are not captured at all
(see :func:`surgeon.torch.capture`). A folded module's node carries only one scope, so
the tensor it produces is matched to one module: with dynamo, the outer (e.g. the
BatchNorm); with TorchScript, the inner (the Conv), which
:func:`surgeon.torch.capture` corrects using the data flow it observed.

The package: :mod:`~surgeon.origin.metadata` (parsing the exporters' traces),
:mod:`~surgeon.origin.lookup` (per node and per tensor) and
:mod:`~surgeon.origin.activations` (:func:`match_activations`).
"""

from surgeon.origin.activations import ActivationMatch, match_activations, split_key
from surgeon.origin.lookup import node_origin, origins, tensor_origin
from surgeon.origin.metadata import (
    DYNAMO_CLASSES,
    DYNAMO_SCOPES,
    DYNAMO_STACK,
    SURGEON_CLASS,
    SURGEON_MODULE,
    SURGEON_SOURCE,
    Origin,
    torchscript_levels,
)

__all__ = [
    "DYNAMO_CLASSES",
    "DYNAMO_SCOPES",
    "DYNAMO_STACK",
    "SURGEON_CLASS",
    "SURGEON_MODULE",
    "SURGEON_SOURCE",
    "ActivationMatch",
    "Origin",
    "match_activations",
    "node_origin",
    "origins",
    "split_key",
    "tensor_origin",
    "torchscript_levels",
]
