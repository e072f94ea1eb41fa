"""`surgeon debug INT8.onnx --ref FP32.onnx --suggest-exclude`: the int8 exclusion list.

Kept apart from :mod:`surgeon.commands.debug` (which hands off to :func:`run_suggest_exclude`
at its start): the options it reads, the files it checks and writes, and its outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Debug options that mean nothing for the exclusion list: refused rather than ignored.
_NOT_WITH = (
    ("tap", "--tap"),
    ("op", "--op"),
    ("ref_optimization", "--ref-optimization"),
    ("save", "--save"),
    ("html", "--html"),
)


@dataclass(frozen=True)
class SuggestExcludeOutcome:
    """What ``surgeon debug --suggest-exclude`` found and wrote (``surgeon.suggest-exclude/1``,
    plus ``written``: the stripped model's path when -o wrote it)."""

    suggestion: Any  # surgeon.precision.exclude.ExclusionSuggestion
    written: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.suggestion.passed

    def to_dict(self) -> dict:
        data = self.suggestion.to_dict()
        data["written"] = list(self.written)
        return data


def run_suggest_exclude(args, ctx) -> int:
    """Rank the Q/DQ pairs, grow the exclusion list, verify it, write -o when it passes."""
    from pathlib import Path

    from surgeon.commands import _common
    from surgeon.errors import UsageError
    from surgeon.loading import load
    from surgeon.precision.exclude import suggest_exclusions

    given = [flag for attr, flag in _NOT_WITH if getattr(args, attr, None)]
    if given:
        raise UsageError(f"--suggest-exclude does not take {', '.join(given)}")
    if not args.ref or Path(args.ref).suffix == ".npz":
        raise UsageError(
            "--suggest-exclude needs --ref with the float .onnx model the int8 one was "
            "quantized from"
        )
    if args.exclude_max < 1:
        raise UsageError(f"--exclude-max must be at least 1, not {args.exclude_max}")
    name_map = dict(_common.parse_map(args.map, "REF", "MODEL"))
    tol = _common.tolerance(args)
    feeds = _common.feed_options(args)
    options = _common.run_options(args)
    reads = [("the --feeds file", args.feeds)]
    models = [(args.model, "the input model"), (args.ref, "the reference model")]
    _common.check_files(args, models, reads=reads)
    model = load(args.model)
    reference = load(args.ref)
    models = [(model, "the input model"), (reference, "the reference model")]
    _common.check_files(args, models, reads=reads)
    with ctx.status(f"suggest exclusions for {model.name}"):
        suggestion = suggest_exclusions(
            model,
            reference,
            feed_options=feeds,
            tolerance=tol,
            max_nodes=args.exclude_max,
            name_map=name_map,
            options=options,
        )
    written: tuple[str, ...] = ()
    if args.output and suggestion.passed and suggestion.stripped is not None:
        written = (str(_common.save_output(suggestion.stripped.model, args)),)
    return ctx.finish(SuggestExcludeOutcome(suggestion, written))
