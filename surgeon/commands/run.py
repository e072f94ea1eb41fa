"""`surgeon run`: run a recipe (a Python file or a built-in) on models, verifying each edit."""

from __future__ import annotations

HELP = "run a recipe (a .py file or a built-in) on models; every edit inside is verified"
DESCRIPTION = (
    HELP
    + """

A recipe is a Python module with a docstring, a PARAMS dict {name: (type, default, help)},
MODELS (how many models it takes: a count or role names such as ("model", "reference?")),
OUTPUTS (the names of the models it writes; () when it only reports) and
`def recipe(models, **params)`. The number of models and -o are checked against MODELS
and OUTPUTS before any work; `surgeon recipes` shows them. Parameters are given as --param key=value (or as
key=value arguments after the models) and are checked against PARAMS. The run ends with
a table of the steps; the first failed verification stops it with exit 1 and nothing is
written, unless --keep-going (then the outputs are written and the exit code is still 1).

examples:
  surgeon recipes
  surgeon run detector_nms sample_models/tiny_yolo.onnx -o deploy.onnx --param classes=3
  surgeon run my_recipe.py model.onnx -o out.onnx --param threshold=0.5
  surgeon run split_model model.onnx --param at=backbone/act2_out -o parts/
      (writes parts/before.onnx and parts/after.onnx)"""
)


def add_arguments(parser) -> None:
    parser.add_argument("recipe", help="a recipe file (.py) or the name of a built-in recipe")
    parser.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help="input model(s), as many as the recipe takes (see `surgeon recipes`), "
        "then optional key=value parameters",
    )
    parser.add_argument(
        "-o", "--output", metavar="OUT", help="OUT.onnx for one result; a folder for several"
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a recipe parameter; repeatable",
    )
    from surgeon.commands._common import add_runtime_arguments

    # what the recipe's edits verify with, unless the recipe passes options of its own
    add_runtime_arguments(parser)
    parser.add_argument(
        "--keep-going", action="store_true", help="record failed verifications and go on"
    )
    parser.add_argument(
        "--inplace", action="store_true", help="allow the output to overwrite an input model"
    )
    from surgeon.commands._common import Given

    parser.add_argument(
        "--external-data",
        action=Given,
        choices=["auto", "always", "never"],
        default="auto",
        help="weights in OUT.onnx.data: auto (only above 2 GB), always, never (default auto)",
    )


def _split(values):
    """Model paths and trailing key=value parameters."""
    models, params = [], []
    for v in values:
        if "=" in v and not v.endswith(".onnx"):
            params.append(v)
        else:
            models.append(v)
    return models, params


def run(args, ctx) -> int:
    from pathlib import Path

    from surgeon.commands._common import refuse_output_flags_without_output, run_options
    from surgeon.errors import OutputPathError, SurgeonError, UsageError, VerificationFailed
    from surgeon.loading import load
    from surgeon.recipe_runner import (
        RunResult,
        check_model_count,
        load_recipe,
        parse_params,
        run_recipe,
    )

    model_paths, extra = _split(args.models)
    label, module = load_recipe(args.recipe)
    # What the recipe takes and writes (MODELS, OUTPUTS) is checked before any work.
    needs = check_model_count(module, label, len(model_paths))
    params = parse_params(module, label, list(args.param) + extra)
    # A recipe that only reports (OUTPUTS = ()) takes no -o; all others need one.
    if needs.outputs != () and not args.output:
        raise UsageError(f"recipe {label} writes {_writes(needs)}: give {_o_hint(needs)}")
    if needs.outputs == () and args.output:
        raise UsageError(
            f"recipe {label} produces a report, not a model: drop -o (use --json to keep the report)"
        )
    if args.output and needs.outputs and len(needs.outputs) > 1 and args.output.endswith(".onnx"):
        raise OutputPathError(
            f"recipe {label} writes {len(needs.outputs)} models ({', '.join(needs.outputs)}): "
            f"give a folder with -o, e.g. -o parts/ for {_folder_files(needs, 'parts')}"
        )
    refuse_output_flags_without_output(args)
    reads = [("the recipe file", args.recipe)] if Path(args.recipe).is_file() else []
    reads += [("the custom-op library", lib) for lib in args.custom_op_library]
    options = run_options(args)
    if args.output:
        _check_outputs(args, model_paths, reads, needs.outputs)
    models = [load(p) for p in model_paths]
    if args.output:
        # again, with the models' weights files
        _check_outputs(args, models, reads, needs.outputs)
    failure = None
    try:
        # a spinner on a terminal while onnxruntime works; silent when piped or --json
        with ctx.status(f"recipe {label}: running"):
            result = run_recipe(
                label, module, models, params, keep_going=args.keep_going, options=options
            )
    except VerificationFailed as e:
        failure = e
        result = getattr(e, "result", None)  # (not `or`: a failed RunResult is falsy)
        if result is None:
            result = RunResult(label, params, [])
        result.error = e.message
    except SurgeonError as e:
        result = getattr(e, "result", None)
        if result is not None and result.steps and not ctx.json:
            from surgeon.report.run import render_run

            render_run(ctx.console, result)
        raise
    written = []
    # Written only when every step passed, or when the user asked to keep going.
    if failure is None and args.output and (result.passed or args.keep_going):
        out = Path(args.output)
        if len(result.outputs) == 1 and out.suffix == ".onnx":
            targets = {next(iter(result.outputs)): out}
        else:
            if out.suffix == ".onnx":
                raise OutputPathError(
                    f"recipe {label} produced {len(result.outputs)} models ({', '.join(result.outputs)}); "
                    "give a folder with -o, e.g. -o parts/"
                )
            _check_output_names(label, result.outputs)
            targets = {k: out / f"{k}.onnx" for k in result.outputs}
        written = [str(p) for p in _write_all(args, result.outputs, targets, models, reads)]
    elif failure is None and result.outputs and not args.output:
        raise UsageError(
            f"recipe {label} produced a model but no -o was given; nothing was written"
        )
    from surgeon.outcomes import RunOutcome

    return ctx.finish(RunOutcome(result, tuple(written), failed=failure is not None))


def _writes(needs) -> str:
    if needs.outputs is None:
        return "a model"
    if len(needs.outputs) == 1:
        return f"one model ({needs.outputs[0]})"
    return f"{len(needs.outputs)} models ({', '.join(needs.outputs)})"


def _folder_files(needs, folder: str) -> str:
    return " and ".join(f"{folder}/{o}.onnx" for o in needs.outputs)


def _o_hint(needs) -> str:
    if needs.outputs and len(needs.outputs) > 1:
        return f"-o FOLDER/ (it gets {_folder_files(needs, 'FOLDER')})"
    if needs.outputs:
        return "-o OUT.onnx"
    return "-o OUT.onnx (or -o FOLDER/ for several)"


def _check_outputs(args, models, reads, declared=None) -> None:
    """Before any work: -o OUT.onnx (and its weights file) must not hit a model, its
    weights or the recipe file; -o FOLDER/ must be a folder that can be written, and when
    the recipe declares its OUTPUTS, each FOLDER/<name>.onnx (and weights file) is
    checked like -o OUT.onnx is."""
    from pathlib import Path

    from surgeon.commands import _common
    from surgeon.errors import OutputPathError
    from surgeon.outputs import FilePlan, probe_folder

    out = Path(args.output)
    described = [(m, "an input model") for m in models]
    if out.suffix == ".onnx":
        _common.check_files(args, described, edited=len(described), reads=reads)
        return
    if out.exists() and not out.is_dir():
        raise OutputPathError(
            f"-o {out} is an existing file, not a folder: give OUT.onnx for one model "
            "or a folder for several"
        )
    problem = probe_folder(out)
    if problem:
        raise OutputPathError(problem)
    if declared:
        plan = FilePlan()
        groups = [plan.reads_model(m, what, replaceable=True) for m, what in described]
        for what, path in reads:
            plan.reads(path, what)
        for name in declared:
            plan.writes_model(
                out / f"{name}.onnx",
                f"-o {out / name}.onnx",
                external_data=_common.EXTERNAL_CHOICES[args.external_data],
                replaces=groups if args.inplace else (),
                inplace_flag=True,
            )
        # Each file is probed only in an existing folder: a missing one is made at write
        # time, and was probed above where it would be made.
        plan.check(probe=out.is_dir())


def _check_output_names(label, outputs) -> None:
    """Each result becomes FOLDER/<name>.onnx: a name with a path separator (or `..`)
    would land outside -o FOLDER/.

    Raises:
        UsageError: Every such name, before anything is written.
    """
    import os

    from surgeon.errors import UsageError

    bad = [k for k in outputs if os.path.basename(k) != k or k in ("", ".", "..") or "\\" in k]
    if bad:
        raise UsageError(
            f"recipe {label} returned results named "
            + ", ".join(f"`{k}`" for k in bad)
            + ": each becomes FOLDER/NAME.onnx, so a name must be a plain file name",
            hint="Return a dict keyed by plain names such as before and after.",
        )


def _write_all(args, outputs, targets, models, reads):
    """Write every result as one transaction (all files or none), after checking the
    exact files against everything read; a folder made for them is removed on failure."""
    import contextlib

    from surgeon.commands import _common
    from surgeon.outputs import FilePlan
    from surgeon.saving import save_models

    if not targets:
        return []
    plan = FilePlan()
    groups = [plan.reads_model(m, "an input model", replaceable=True) for m in models]
    for what, path in reads:
        plan.reads(path, what)
    folder = next(iter(targets.values())).parent
    made = []  # the folders created here, innermost last
    while not folder.exists():
        made.insert(0, folder)
        folder = folder.parent
    try:
        for f in made:
            f.mkdir()
        return save_models(
            [(outputs[k], t) for k, t in targets.items()],
            external_data=_common.EXTERNAL_CHOICES[args.external_data],
            inplace=args.inplace,
            plan=plan,
            replaces=groups,
        )
    except BaseException:
        for f in reversed(made):  # all or nothing: not even an empty folder stays
            with contextlib.suppress(OSError):
                f.rmdir()
        raise
