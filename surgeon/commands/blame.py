"""`surgeon blame`: which onnxruntime graph optimisation changed the model's outputs."""

from __future__ import annotations

from surgeon.commands import _common

HELP = "find the onnxruntime graph optimisation(s) that change a model's outputs"
DESCRIPTION = (
    HELP
    + "\n\nRuns the model with onnxruntime's optimisations disabled (the reference) and at --level.\n"
    "When the outputs differ beyond tolerance, bisects over onnxruntime's disabled_optimizers to\n"
    "name the smallest set of passes responsible and the nodes they fused, then verifies it: a\n"
    "fresh run at --level with exactly those passes disabled must match the reference.\n"
    "Exit 0 when the level's outputs match the reference (nothing to blame), 1 when they differ\n"
    "(the passes are named when found; the JSON says whether the verification held), 2 on bad\n"
    "input.\n\nexample:\n  surgeon blame model.onnx --exact\n  surgeon blame model.onnx --level basic --atol 1e-4 --rtol 1e-3 --json"
)


def add_arguments(parser) -> None:
    parser.add_argument("model", help="the model (.onnx)")
    parser.add_argument(
        "--level",
        choices=["basic", "extended", "all"],
        default="all",
        help="the optimisation level to examine against `disabled` (default all)",
    )
    _common.add_feed_arguments(parser)
    _common.add_tolerance_arguments(parser)
    # --level is the level examined; the reference is always `disabled`.
    _common.add_runtime_arguments(parser, optimization=False)


def run(args, ctx) -> int:
    from surgeon.loading import load
    from surgeon.optimizer_blame import blame
    from surgeon.runner import RunOptions

    # Arguments first, so a typo fails before the model is read or run.
    tolerance = _common.tolerance(args)
    feed_options = _common.feed_options(args)
    options = RunOptions(custom_op_libraries=tuple(args.custom_op_library))
    model = load(args.model)
    # a spinner with the current trial on a terminal; silent when piped or --json
    with ctx.status(f"blame {model.name}") as update:
        report = blame(
            model,
            args.level,
            feed_options=feed_options,
            tolerance=tolerance,
            options=options,
            progress=lambda text: update(f"blame {model.name}: {text}"),
        )
    return ctx.finish(report)
