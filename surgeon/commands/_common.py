"""Argument groups shared by commands, and their conversion into library options.

One spelling, one default and one meaning per idea, whichever command takes it (the
README's "Shared options" table lists them; ``tests/test_shared_options.py`` walks every
parser to keep it so):

- input values: ``--feeds FEEDS.npz`` with ``--shape``, ``--seed``, ``--max-feed-size``;
- name pairs: ``--map LEFT=RIGHT``, the left side on the reference/original/upstream side;
- the written model: ``-o/--output``, ``--inplace``, ``--external-data``;
- tolerances: ``--atol``, ``--rtol``, ``--exact`` (default :data:`DEFAULT_ATOL` /
  :data:`DEFAULT_RTOL`);
- onnxruntime: ``--optimization`` (default ``disabled``), ``--custom-op-library``.

Every default is the one the parser holds, so ``--help`` shows what really runs. Old
spellings stay as hidden options that fail with the new name (:func:`add_renamed`).

Kept free of heavy imports: it runs while ``surgeon --help`` builds the parser.
"""

from __future__ import annotations

import argparse
import math

from surgeon.defaults import DEFAULT_ATOL, DEFAULT_OPTIMIZATION, DEFAULT_RTOL

# One default per idea, shared with the Python API (see surgeon.defaults).

OPTIMIZATION_LEVELS = ("disabled", "basic", "extended", "all")
EXTERNAL_CHOICES = {"auto": None, "always": True, "never": False}


class _Renamed(argparse.Action):
    """A hidden old spelling: using it is a usage error (exit 2) that names the new one."""

    def __init__(self, option_strings, dest, message: str = "", **kwargs):
        self.message = message
        kwargs.setdefault("help", argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} {self.message}")


class Given(argparse.Action):
    """Stores its value like ``store`` and notes that the user gave the option (in
    ``args.given``), so a default can be told from the same value given on purpose."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        given = set(getattr(namespace, "given", ()) or ())
        given.add(self.option_strings[-1])
        namespace.given = given


def refuse_output_flags_without_output(args) -> None:
    """--inplace and --external-data only say how -o is written: without -o they would
    be ignored in silence, so they are a usage error.

    Raises:
        UsageError: Either is given and -o is not.
    """
    from surgeon.errors import UsageError

    if getattr(args, "output", None):
        return
    flags = [f for f in ("--inplace",) if getattr(args, "inplace", False)]
    flags += [f for f in ("--external-data",) if f in (getattr(args, "given", None) or ())]
    if flags:
        raise UsageError(
            f"{' and '.join(flags)} {'say' if len(flags) > 1 else 'says'} how -o is written, "
            "but no -o was given: nothing would be written",
            hint="Give -o OUT.onnx, or drop " + " and ".join(flags) + ".",
        )


def add_renamed(parser, old: str, new: str, hint: str = "", nargs=None) -> None:
    """Keep ``old`` as a hidden option that fails with "was renamed to ``new``"."""
    parser.add_argument(
        old,
        action=_Renamed,
        dest=f"renamed_{old.lstrip('-').replace('-', '_')}",
        nargs=nargs,
        default=argparse.SUPPRESS,
        message=f"was renamed to {new}" + (f": {hint}" if hint else ""),
    )


# --------------------------------------------------------------------------- feeds
# What --help says the dynamic dims default to, without importing the libraries that hold
# them while the parser is built (tests/test_shared_options.py pins them to
# surgeon.feeds.DEFAULT_BATCH/DEFAULT_DIM and surgeon.dynamic.check.DEFAULT_SIZES).
FEED_DIMS = (1, 64)  # batch, every other dynamic dim: the feeds of a single run
FIRST_TRIED = {"batch": 1, "spatial": 64, "other": 16}  # check-dynamic / reshape-io


def add_feed_arguments(
    parser: argparse.ArgumentParser, *, old_inputs: bool = True, tries_sizes: bool = False
) -> None:
    """--feeds, --shape, --seed and --max-feed-size: the input values of every command
    that runs a model. ``old_inputs``: keep the old ``--inputs FEEDS.npz`` as a hidden
    option that names --feeds (extract's --inputs is its cut, so it passes False).
    ``tries_sizes``: the command runs each dynamic dim at several sizes (check-dynamic,
    reshape-io), whose first sizes, not the feeds' defaults, are what --shape replaces."""
    if tries_sizes:
        first = ", ".join(f"{kind} {size}" for kind, size in FIRST_TRIED.items())
        default = f"default: the first size each dim is tried at: {first}"
    else:
        default = f"default: batch {FEED_DIMS[0]}, other dynamic dims {FEED_DIMS[1]}"
    group = parser.add_argument_group("input values")
    group.add_argument(
        "--feeds",
        metavar="FEEDS.npz",
        help="input values from an .npz keyed by input name (the others are random)",
    )
    group.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="SPEC",
        help="resolve dynamic dims: INPUT:1x3x640x640 for an input, DIM=640 for a named "
        f"dim, INPUT[AXIS]=640 for an unnamed one; repeatable ({default})",
    )
    group.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    group.add_argument(
        "--max-feed-size",
        metavar="SIZE",
        default="4G",
        help="refuse inputs that would take more than SIZE together, e.g. 16G (default 4G)",
    )
    if old_inputs:
        add_renamed(group, "--inputs", "--feeds", "e.g. --feeds FEEDS.npz")


def max_feed_bytes(args) -> int:
    """The byte limit of --max-feed-size.

    Raises:
        UsageError: The size does not parse.
    """
    from surgeon.feeds import parse_size

    return parse_size(args.max_feed_size)


def feed_options(args):
    """The FeedOptions of --feeds, --shape, --seed and --max-feed-size.

    Raises:
        UsageError: A --shape or --max-feed-size that does not parse.
    """
    from surgeon.errors import UsageError
    from surgeon.feeds import FeedOptions, parse_shape_args

    if args.seed < 0:  # numpy's seed sequence takes non-negative integers only
        raise UsageError(f"--seed {args.seed} is negative; use a seed >= 0")
    try:
        shapes, dims = parse_shape_args(args.shape or [])
    except UsageError as e:  # the library quotes the value; the CLI names the option
        raise UsageError(f"--shape: {e.message}", problems=e.problems, hint=e.hint) from None
    return FeedOptions(
        seed=args.seed,
        shapes=shapes,
        dims=dims,
        npz=args.feeds,
        max_feed_bytes=max_feed_bytes(args),
    )


# ------------------------------------------------------------------------ name pairs
def add_map_argument(parser, left: str, right: str, meaning: str) -> None:
    """--map LEFT=RIGHT; ``left`` names the reference/original/upstream side."""
    parser.add_argument(
        "--map",
        action="append",
        default=[],
        metavar=f"{left}={right}",
        help=f"{meaning}; repeatable",
    )


def parse_map(
    items, left: str = "LEFT", right: str = "RIGHT", *, unique_left: bool = True
) -> list[tuple[str, str]]:
    """``A=B`` strings into (A, B) pairs, split at the first ``=`` (names may hold ``:``).

    Args:
        left, right: What each side names, for the messages (``REF``, ``CANDIDATE``).
        unique_left: Refuse a left name given twice (merge lets one output feed several
            inputs). A right name given twice is always refused.

    Raises:
        UsageError: An item without ``=`` or with an empty side (the old ``OUT:IN`` form
            included), or conflicting pairs (all of them at once).
    """
    from surgeon.errors import UsageError

    pairs: list[tuple[str, str]] = []
    problems = []
    for item in items:
        a, sep, b = item.partition("=")
        if not sep or not a or not b:
            example = item.replace(":", "=", 1) if ":" in item and not sep else f"{left}={right}"
            raise UsageError(
                f"cannot read `--map {item}`: expected {left}={right}, split at the first `=`",
                hint=f"e.g. --map {example}",
            )
        if (a, b) in pairs:  # an identical repeat says nothing new
            continue
        lefts = [x for x, _ in pairs]
        rights = [y for _, y in pairs]
        if unique_left and a in lefts:
            problems.append(f"`{a}` is mapped twice: to `{rights[lefts.index(a)]}` and to `{b}`")
            continue
        if b in rights:
            problems.append(f"`{b}` is the target of both `{lefts[rights.index(b)]}` and `{a}`")
            continue
        pairs.append((a, b))
    if problems:
        raise UsageError("conflicting --map entries", problems=problems)
    return pairs


# ------------------------------------------------------------------------ tolerance
def add_tolerance_arguments(parser: argparse.ArgumentParser) -> None:
    """--atol, --rtol and --exact, with the one default of every command that compares."""
    group = parser.add_argument_group("tolerance")
    group.add_argument(
        "--atol",
        type=float,
        default=DEFAULT_ATOL,
        help=f"absolute tolerance (default {DEFAULT_ATOL:g})",
    )
    group.add_argument(
        "--rtol",
        type=float,
        default=DEFAULT_RTOL,
        help=f"relative tolerance (default {DEFAULT_RTOL:g})",
    )
    group.add_argument(
        "--exact",
        action="store_true",
        help="require bit-identical floats instead (--atol/--rtol are then ignored)",
    )


def tolerance(args):
    """The Tolerance of --atol, --rtol and --exact.

    Raises:
        UsageError: A negative or NaN tolerance.
    """
    from surgeon.compare import EXACT, Tolerance
    from surgeon.errors import UsageError

    if args.exact:
        return EXACT
    # NaN fails every comparison; inf would pass every value, a check that cannot fail
    bad = [
        f"--{flag} {value:g}"
        for flag, value in (("atol", args.atol), ("rtol", args.rtol))
        if not (0 <= value < math.inf)
    ]
    if bad:
        raise UsageError(
            f"{', '.join(bad)}: a tolerance must be a finite number >= 0, not negative, NaN "
            "or infinite (inf would let every value pass), e.g. --atol 1e-4"
        )
    return Tolerance(atol=args.atol, rtol=args.rtol)


# ------------------------------------------------------------------------ onnxruntime
def add_runtime_arguments(parser: argparse.ArgumentParser, *, optimization: bool = True):
    """--custom-op-library and --optimization (default ``disabled`` everywhere).
    ``optimization=False``: only the library, for a command that chooses the levels
    itself (blame). Returns the group."""
    group = parser.add_argument_group("onnxruntime")
    group.add_argument(
        "--custom-op-library",
        action="append",
        default=[],
        metavar="LIB.so",
        help="load custom operators from this shared library (only loaded when given)",
    )
    if not optimization:
        return group
    group.add_argument(
        "--optimization",
        choices=OPTIMIZATION_LEVELS,
        default=DEFAULT_OPTIMIZATION,
        help=f"onnxruntime graph optimisation level (default {DEFAULT_OPTIMIZATION})",
    )
    return group


def run_options(args):
    from surgeon.runner import RunOptions

    return RunOptions(
        optimization=args.optimization, custom_op_libraries=tuple(args.custom_op_library)
    )


# ------------------------------------------------------------------------ output model
def add_output_arguments(
    parser: argparse.ArgumentParser,
    *,
    required: bool = False,
    what: str = "the edited model",
    inplace_help: str | None = "allow -o to overwrite the input model",
) -> None:
    """-o/--output, --inplace and --external-data: every command that writes a model.
    ``inplace_help=None``: no --inplace (a command that reads no model: nms)."""
    group = parser.add_argument_group("output model")
    group.add_argument(
        "-o",
        "--output",
        required=required,
        metavar="OUT.onnx",
        help=f"where to write {what}",
    )
    if inplace_help is not None:
        group.add_argument("--inplace", action="store_true", help=inplace_help)
    group.add_argument(
        "--external-data",
        action=Given,
        choices=list(EXTERNAL_CHOICES),
        default="auto",
        help="weights in OUT.onnx.data: auto (only above 2 GB), always, never (default auto)",
    )


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

    refuse_output_flags_without_output(args)
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


def load_model_to_edit(args):
    """The model of a command that edits one (``args.model``), loaded only after every
    shared argument parsed and every file clash was refused: first by path, then again
    with the loaded model's weight files.

    Returns:
        (model, feed options, run options, tolerance).
    """
    from surgeon.loading import load

    tol = tolerance(args)
    feeds = feed_options(args)
    options = run_options(args)
    reads = [("the --feeds file", args.feeds)]
    check_files(args, [(args.model, "the input model")], reads=reads)
    model = load(args.model)
    check_files(args, [(model, "the input model")], reads=reads)
    return model, feeds, options, tol


def save_if_passed(edited, args) -> bool:
    """Write the edited model to -o when its verification passed; whether it was written."""
    if edited.passed and args.output:
        save_output(edited.model, args)
        return True
    return False


def save_output(model, args):
    """Save ``model`` to ``args.output`` atomically (with its weights file as one unit),
    honouring --inplace/--external-data. Call :func:`check_files` before the work."""
    from surgeon.saving import save

    return save(
        model,
        args.output,
        external_data=EXTERNAL_CHOICES[args.external_data],
        inplace=getattr(args, "inplace", False),
    )
