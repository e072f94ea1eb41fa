"""`surgeon diff`: run two models on the same inputs and compare their outputs."""

from __future__ import annotations

from surgeon.commands import _common

HELP = "run two models on the same inputs with onnxruntime and compare outputs tensor by tensor"
DESCRIPTION = (
    HELP
    + "\n\nThe first model is the reference. Outputs are paired by name; --map REF=CANDIDATE pairs a\n"
    "reference output REF with the candidate's CANDIDATE. Exit 0 when every output matches, 1 when\n"
    "any differs or nothing was compared (--common-only with no shared output), 2 on bad input.\n\nexample:\n  surgeon diff model.onnx model_fp16.onnx --cast --atol 1e-2 --rtol 1e-2"
)


def add_arguments(parser) -> None:
    parser.add_argument("reference", help="the reference model (.onnx)")
    parser.add_argument("candidate", help="the model to check against it (.onnx)")
    _common.add_map_argument(
        parser, "REF", "CANDIDATE", "pair reference tensor REF with candidate tensor CANDIDATE"
    )
    parser.add_argument(
        "--common-only",
        action="store_true",
        help="compare only the outputs both models have; list the others instead of failing",
    )
    parser.add_argument(
        "--cast",
        action="store_true",
        help="compare outputs of different numeric dtypes by value (e.g. float16 vs float32) instead of failing",
    )
    _common.add_feed_arguments(parser)
    _common.add_tolerance_arguments(parser)
    _common.add_runtime_arguments(parser)


def parse_map(items) -> dict[str, str]:
    """``REF=CANDIDATE`` strings into a dict (see :func:`surgeon.commands._common.parse_map`)."""
    return dict(_common.parse_map(items, "REF", "CANDIDATE"))


def unmatched_notes(reference_only: list[str], candidate_only: list[str]) -> list[str]:
    """Notes for a diff that paired nothing: each side's outputs, and the candidate
    outputs that look like each reference output (with the --map that pairs them)."""

    def names(items: list[str]) -> str:
        return ", ".join(f"`{n}`" for n in items) if items else "none"

    from surgeon.errors import close_matches

    notes = [
        "no output was compared: the models have no output in common "
        f"(the reference's: {names(reference_only)}; the candidate's: {names(candidate_only)})"
    ]
    if len(reference_only) == 1 and len(candidate_only) == 1:
        # One output on each side: a renamed output, whatever the names look like.
        ref, cand = reference_only[0], candidate_only[0]
        notes.append(f"pair the two outputs with --map {ref}={cand}")
        return notes
    for ref in reference_only:
        near = close_matches(ref, candidate_only)
        if near:
            notes.append(
                f"reference output `{ref}` looks like the candidate's {names(near)}; "
                f"pair them with --map {ref}={near[0]}"
            )
    return notes


def run(args, ctx) -> int:
    from surgeon.errors import NameNotFoundError, unknown_name
    from surgeon.loading import load
    from surgeon.verification import verify

    # Arguments first, so a typo fails before any model is read or run.
    name_map = parse_map(args.map)
    tol = _common.tolerance(args)
    if args.cast and not args.exact:
        import dataclasses

        tol = dataclasses.replace(tol, cast=True)
    feed_options = _common.feed_options(args)
    run_options = _common.run_options(args)
    # Each model runs in its own session: their weights can stay in their files.
    reference = load(args.reference, weights_on_disk=True)
    candidate = load(args.candidate, weights_on_disk=True)
    unknown = [
        unknown_name(
            "tensor",
            old,
            reference.tensor_names(),
            f"the reference {reference.name}",
            model_path=reference.path,
        )
        for old in name_map
        if old not in set(reference.tensor_names())
    ] + [
        unknown_name(
            "tensor",
            new,
            candidate.tensor_names(),
            f"the candidate {candidate.name}",
            model_path=candidate.path,
        )
        for new in name_map.values()
        if new not in set(candidate.tensor_names())
    ]
    if len(unknown) == 1:
        raise unknown[0]
    if unknown:  # every unknown name at once, each with its suggestions
        raise NameNotFoundError(
            f"{len(unknown)} unknown tensor names in --map",
            name=unknown[0].name,
            suggestions=unknown[0].suggestions,
            problems=[e.message for e in unknown],
        )
    pairs = None
    if name_map:
        pairs = [(name_map.get(o, o), o) for o in reference.output_names]
        # Mapped inputs only say which candidate input takes which feed (verify's
        # name_map); comparing a feed with itself would add a row that cannot fail.
        pairs += [
            (new, old)
            for old, new in name_map.items()
            if old not in reference.output_names and old not in reference.input_names
        ]
    # a spinner on a terminal while onnxruntime works; silent when piped or --json
    with ctx.status(f"diff: running {reference.name} and {candidate.name}"):
        report = verify(
            candidate,
            reference,
            pairs=pairs,
            name_map=name_map,
            feed_options=feed_options,
            tolerance=tol,
            options=run_options,
            title=f"diff {reference.name} -> {candidate.name}",
        )
    if pairs is not None:
        from surgeon.compare import extra

        paired = {c for c, _ in pairs}
        report.tensors += [extra(o) for o in candidate.output_names if o not in paired]
    one_sided = [t for t in report.tensors if t.status in ("missing", "extra")]
    if args.common_only:
        # Outputs only one side has are listed, not failed (e.g. a tapped model against
        # its original): only the outputs both models produce decide.
        report.tensors = [t for t in report.tensors if t.status not in ("missing", "extra")]
        for t in one_sided:
            side = "the reference" if t.status == "missing" else "the candidate"
            report.notes.append(f"`{t.name}` is only in {side}: not compared (--common-only)")
    if not [t for t in report.tensors if t.status not in ("missing", "extra")]:
        # Nothing compared fails (DiffReport's rule, which an empty --common-only report
        # meets); say what did not pair, and what looks alike.
        report.notes += unmatched_notes(
            [t.reference or t.name for t in one_sided if t.status == "missing"],
            [t.name for t in one_sided if t.status == "extra"],
        )
    return ctx.finish(report)
