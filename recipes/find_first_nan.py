"""Find the first NaN or Inf in a model, and the node that produced it.

Every intermediate tensor is tapped, but only a few statistics per tensor leave
onnxruntime, so this costs about one run even on a large model. The verdict names the
node where a NaN/Inf is born (its inputs finite, its output not); the exit code is 1 if
there is one. NaN/Inf in the inputs, or computed from constants only (attention masks),
are reported but do not fail. Give real inputs with `--param inputs=feeds.npz` when random ones do not trigger
the problem.

    surgeon run find_first_nan model.onnx --param inputs=feeds.npz
"""

from __future__ import annotations

import surgeon

MODELS = ("model",)
OUTPUTS = ()  # a report, no model
PARAMS = {
    "inputs": (str, "", ".npz with the model's inputs (default: seeded random inputs)"),
    "taps": (str, "all", "comma-separated taps: tensor or node names, globs, or all"),
    "seed": (int, 0, "seed of the random inputs"),
}


def recipe(models: list[surgeon.Model], inputs: str = "", taps: str = "all", seed: int = 0):
    """Tap ``taps`` of ``models[0]`` and return the debug report (first NaN/Inf first)."""
    options = surgeon.DebugOptions(
        taps=tuple(t for t in taps.split(",") if t),
        feed_options=surgeon.FeedOptions(seed=seed, npz=inputs or None),
    )
    return surgeon.debug(models[0], options)
