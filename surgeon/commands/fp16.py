"""`surgeon fp16`: a float16 model that meets a tolerance, keeping few nodes float32."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

HELP = "convert to float16, keeping in float32 the nodes the outputs need; verified"
DESCRIPTION = (
    HELP + "\n\nStarts from the nodes whose float32 values exceed float16's range (and --keep),\n"
    "then blocks the float16 nodes with the worst isolated error (their own error, run on\n"
    "the float32 model's values) until the outputs meet --atol/--rtol against the float32\n"
    "model, bisecting the last batch. Inputs and outputs stay float32. The plan is checked\n"
    "again on the next seed.\n\n"
    "Exit 0 when the target was met (and -o written), 1 when it was not (nothing written;\n"
    "the best block list found is printed), 2 on bad input.\n\n"
    "JSON (--json): schema surgeon.fp16/1 with block_list [{node, op, reason, module}],\n"
    "not_float16, steps, size_before/size_after, verification and second_check.\n\n"
    "examples:\n  surgeon fp16 model.onnx -o model_fp16.onnx\n"
    "  surgeon fp16 model.onnx -o model_fp16.onnx --atol 1e-2 --rtol 1e-2 --keep /head/Softmax"
)


@dataclass(frozen=True)
class Fp16Outcome:
    """What ``surgeon fp16`` did: the plan, and whether -o was written."""

    plan: Any  # surgeon.precision.fp16.Fp16Plan
    model_path: str
    output: str | None
    written: bool

    @property
    def passed(self) -> bool:
        return self.plan.passed

    def to_dict(self) -> dict:
        data = self.plan.to_dict()
        data.update(model=str(self.model_path), output=self.output, written=self.written)
        return data


def add_arguments(parser) -> None:
    from surgeon.commands import _common

    parser.add_argument("model", help="the float32 .onnx file")
    parser.add_argument(
        "--keep",
        action="append",
        default=[],
        metavar="NODE",
        help="keep this node in float32 whatever the planner finds; repeatable",
    )
    _common.add_output_arguments(parser, what="the float16 model")
    _common.add_feed_arguments(parser)
    _common.add_tolerance_arguments(parser)
    _common.add_runtime_arguments(parser)


def run(args, ctx) -> int:
    from surgeon.commands import _common
    from surgeon.precision.fp16 import plan_fp16

    model, feeds, options, tol = _common.load_model_to_edit(args)
    with ctx.status("fp16: planning and verifying"):
        plan = plan_fp16(model, keep=args.keep, tolerance=tol, feed_options=feeds, options=options)
    written = False
    if plan.passed and args.output:
        _common.save_output(plan.edited.model, args)
        written = True
    return ctx.finish(Fp16Outcome(plan, args.model, args.output, written))
