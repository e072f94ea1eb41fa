"""Argument groups shared by commands, and their conversion into library options.

Kept free of heavy imports: it runs while ``surgeon --help`` builds the parser.
"""

from __future__ import annotations

import argparse


def add_feed_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("inputs")
    group.add_argument(
        "--inputs",
        metavar="FEEDS.npz",
        help="input values from an .npz keyed by input name (others are random)",
    )
    group.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="SPEC",
        help="resolve dynamic dims: INPUT:1x3x640x640 for an input, or DIM=640 for a named dim; repeatable "
        "(default: batch 1, other dynamic dims 64)",
    )
    group.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    add_max_feed_size_argument(group)


def add_max_feed_size_argument(group) -> None:
    """--max-feed-size, on its own: commands that build their feeds differently (extract,
    check-dynamic, reshape-io) take it too. Read it back with :func:`max_feed_bytes`."""
    group.add_argument(
        "--max-feed-size",
        metavar="SIZE",
        default="4G",
        help="refuse inputs that would take more than SIZE together, e.g. 16G (default 4G)",
    )


def max_feed_bytes(args) -> int:
    """The byte limit of --max-feed-size.

    Raises:
        UsageError: The size does not parse.
    """
    from surgeon.feeds import parse_size

    return parse_size(args.max_feed_size)


def add_tolerance_arguments(
    parser: argparse.ArgumentParser, atol: float = 1e-5, rtol: float = 1e-5
) -> None:
    group = parser.add_argument_group("tolerance")
    group.add_argument(
        "--atol", type=float, default=atol, help=f"absolute tolerance (default {atol:g})"
    )
    group.add_argument(
        "--rtol", type=float, default=rtol, help=f"relative tolerance (default {rtol:g})"
    )


def add_runtime_arguments(parser: argparse.ArgumentParser, optimization: str = "all") -> None:
    """--custom-op-library and --optimization (``optimization`` is the default level)."""
    group = parser.add_argument_group("onnxruntime")
    group.add_argument(
        "--custom-op-library",
        action="append",
        default=[],
        metavar="LIB.so",
        help="load custom operators from this shared library (only loaded when given)",
    )
    group.add_argument(
        "--optimization",
        choices=["disabled", "basic", "extended", "all"],
        default=optimization,
        help=f"onnxruntime graph optimisation level (default {optimization})",
    )


def add_output_arguments(parser: argparse.ArgumentParser, required: bool = False) -> None:
    group = parser.add_argument_group("output model")
    group.add_argument(
        "-o",
        "--output",
        required=required,
        metavar="OUT.onnx",
        help="where to write the edited model",
    )
    group.add_argument(
        "--inplace", action="store_true", help="allow the output to overwrite the input model"
    )
    group.add_argument(
        "--external-data",
        choices=["auto", "always", "never"],
        default="auto",
        help="write weights to OUT.onnx.data: auto (only above 2 GB), always, never",
    )


def feed_options(args):
    from surgeon.feeds import FeedOptions, parse_shape_args

    shapes, dims = parse_shape_args(args.shape or [])
    return FeedOptions(
        seed=args.seed,
        shapes=shapes,
        dims=dims,
        npz=args.inputs,
        max_feed_bytes=max_feed_bytes(args),
    )


def tolerance(args):
    from surgeon.compare import Tolerance
    from surgeon.errors import UsageError

    if args.atol < 0 or args.rtol < 0:
        raise UsageError("--atol and --rtol must not be negative")
    return Tolerance(atol=args.atol, rtol=args.rtol)


def run_options(args):
    from surgeon.runner import RunOptions

    return RunOptions(
        optimization=args.optimization, custom_op_libraries=tuple(args.custom_op_library)
    )


EXTERNAL_CHOICES = {"auto": None, "always": True, "never": False}


def check_files(args, models, *, edited: int = 1, reads=(), writes=()):
    """Refuse, before any work, every write that would land on a file the command reads
    or on another of its writes (see :class:`surgeon.outputs.FilePlan`).

    Args:
        models: (model or path, description) of every model read; a loaded Model brings
            its external-data files too. The first ``edited`` are the models -o may
            replace with --inplace.
        reads: (description, path) of other files read (feeds, references).
        writes: (flag, path) of files written besides -o (and its weights file).

    Raises:
        OutputPathError: Every clash in one message, or an output that cannot be written.
    """
    from surgeon.outputs import FilePlan

    plan = FilePlan()
    groups = []
    for i, (model, what) in enumerate(models):
        if model is None:
            continue
        group = plan.reads_model(model, what, replaceable=i < edited)
        if i < edited:
            groups.append(group)
    for what, path in reads:
        plan.reads(path, what)
    for lib in getattr(args, "custom_op_library", None) or ():
        plan.reads(lib, "the custom-op library")
    output = getattr(args, "output", None)
    if output:
        plan.writes_model(
            output,
            "-o",
            external_data=EXTERNAL_CHOICES[getattr(args, "external_data", "auto")],
            replaces=groups if getattr(args, "inplace", False) else (),
            inplace_flag=hasattr(args, "inplace"),
        )
    for flag, path in writes:
        plan.writes(path, flag)
    plan.check()
    return plan


def save_output(model, args):
    """Save ``model`` to ``args.output`` atomically (with its weights file as one unit),
    honouring --inplace/--external-data. Call :func:`check_files` before the work."""
    from surgeon.saving import save

    return save(
        model,
        args.output,
        external_data=EXTERNAL_CHOICES[args.external_data],
        inplace=args.inplace,
    )
