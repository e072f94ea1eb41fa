"""`surgeon run`: run a recipe (a Python file or a built-in) on models, verifying each edit."""

from __future__ import annotations

HELP = "run a recipe (a .py file or a built-in) on models; every edit inside is verified"
DESCRIPTION = (
    HELP
    + """

A recipe is a Python module with a docstring, a PARAMS dict {name: (type, default, help)}
and `def recipe(models, **params)`. Parameters are given as --param key=value (or as
key=value arguments after the models) and are checked against PARAMS. The run ends with
a table of the steps; the first failed verification stops it with exit 1 and nothing is
written, unless --keep-going (then the outputs are written and the exit code is still 1).

examples:
  surgeon recipes
  surgeon run detector_nms sample_models/tiny_yolo.onnx -o deploy.onnx --param classes=3
  surgeon run my_recipe.py model.onnx -o out.onnx --param threshold=0.5
  surgeon run split_model model.onnx --param at=backbone/act2_out -o parts/"""
)


def add_arguments(parser) -> None:
    parser.add_argument("recipe", help="a recipe file (.py) or the name of a built-in recipe")
    parser.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="input model(s), then optional key=value parameters",
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
    parser.add_argument(
        "--keep-going", action="store_true", help="record failed verifications and go on"
    )
    parser.add_argument(
        "--inplace", action="store_true", help="allow the output to overwrite an input model"
    )
    parser.add_argument(
        "--external-data",
        choices=["auto", "always", "never"],
        default="auto",
        help="weights of outputs in side files",
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

    from surgeon.errors import OutputPathError, SurgeonError, UsageError, VerificationFailed
    from surgeon.loading import load
    from surgeon.recipe_runner import RunResult, load_recipe, parse_params, run_recipe
    from surgeon.saving import check_output_path, save

    model_paths, extra = _split(args.models)
    if not model_paths:
        raise UsageError("give at least one model after the recipe")
    label, module = load_recipe(args.recipe)
    params = parse_params(module, label, list(args.param) + extra)
    # A recipe that only reports (PRODUCES = "report") needs no -o; all others do, and
    # the path is checked before any work.
    if getattr(module, "PRODUCES", "model") != "report" and not args.output:
        raise UsageError(
            f"recipe {label} writes a model: give -o OUT.onnx (or -o FOLDER/ for several)"
        )
    if getattr(module, "PRODUCES", "model") == "report" and args.output:
        raise UsageError(
            f"recipe {label} produces a report, not a model: drop -o (use --json to keep the report)"
        )
    if args.output:
        out = Path(args.output)
        if not out.suffix == ".onnx" and not out.is_dir() and not out.parent.exists():
            raise OutputPathError(f"cannot write {out}: the folder {out.parent} does not exist")
        for p in model_paths:
            if out.suffix == ".onnx":
                check_output_path(out, [p], inplace=args.inplace)
    models = [load(p) for p in model_paths]
    failure = None
    try:
        # a spinner on a terminal while onnxruntime works; silent when piped or --json
        with ctx.status(f"recipe {label}: running"):
            result = run_recipe(label, module, models, params, keep_going=args.keep_going)
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
        external = {"auto": None, "always": True, "never": False}[args.external_data]
        out = Path(args.output)
        if len(result.outputs) == 1 and out.suffix == ".onnx":
            targets = {next(iter(result.outputs)): out}
        else:
            if out.suffix == ".onnx":
                raise OutputPathError(
                    f"recipe {label} produced {len(result.outputs)} models ({', '.join(result.outputs)}); "
                    "give a folder with -o, e.g. -o parts/"
                )
            if out.exists() and not out.is_dir():
                raise OutputPathError(
                    f"-o {out} is an existing file, not a folder: give OUT.onnx for one model "
                    "or a folder for several"
                )
            out.mkdir(parents=True, exist_ok=True)
            targets = {k: out / f"{k}.onnx" for k in result.outputs}
        for target in targets.values():
            check_output_path(target, models, inplace=args.inplace)
        for key, target in targets.items():
            written.append(
                str(save(result.outputs[key], target, external_data=external, inplace=args.inplace))
            )
    elif failure is None and result.outputs and not args.output:
        raise UsageError(
            f"recipe {label} produced a model but no -o was given; nothing was written"
        )
    if ctx.json:
        data = result.to_dict()
        data["written"] = written
        ctx.emit_json(data)
    else:
        from surgeon.report.run import render_run

        for report in result.reports:
            if hasattr(report, "stats"):  # a DebugReport
                from surgeon.report.debug import render_debug

                render_debug(ctx.console, report)
            elif hasattr(report, "pitfalls"):  # a PyTorch ExportCheck
                from surgeon.report.torch_export import render_export_check

                render_export_check(ctx.console, report)
            else:
                ctx.console.print(str(report.to_dict()))
        render_run(ctx.console, result)
        for w in written:
            ctx.console.print(f"wrote {w}")
    return 0 if result.passed and failure is None else 1
