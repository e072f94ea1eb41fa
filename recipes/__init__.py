"""surgeon's recipe cookbook, installed as ``surgeon.recipes``.

Each module here is a recipe: copy one to start your own. ``BUILTIN`` is the one list of
what ``surgeon recipes`` shows and ``surgeon run NAME`` accepts (no import-time
registration).
"""

BUILTIN = {
    "detector_nms": "a YOLO-style detector to a deployable model: NMS merged in, deployment I/O names",
    "find_first_nan": "the first NaN/Inf in topological order and the node that produced it",
    "compare_layers": "layer-by-layer comparison against a reference; names the root-cause node",
    "split_model": "cut a model at a tensor into the parts before and after it, chained back to the original",
    "cut_backbone": "extract a detector's backbone as its own verified model",
    "make_dynamic": "make batch and H, W dynamic, then prove the model runs at several sizes",
    "rename_for_deployment": "rename inputs and outputs to deployment names, verified",
    "torch_export_check": "re-export a model's PyTorch module with dynamic H, W; check, reproduce, compare layer by layer",
}
