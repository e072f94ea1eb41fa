"""`surgeon recipes`: list the built-in recipes."""

from __future__ import annotations

HELP = "list the built-in recipes and their parameters"
DESCRIPTION = (
    HELP
    + "\n\nRun one with `surgeon run NAME MODEL -o OUT`; copy its file from the recipes/ folder to make your own."
)


def add_arguments(parser) -> None:
    pass


def run(args, ctx) -> int:
    from surgeon.recipe_runner import REQUIRED, builtin_recipes, load_recipe

    rows = []
    for name in builtin_recipes():
        _, module = load_recipe(name)
        doc = (module.__doc__ or "").strip().splitlines()
        params = {
            k: {
                "type": getattr(t, "__name__", str(t)),
                "default": None if d is REQUIRED else d,
                "required": d is REQUIRED,
                "help": h,
            }
            for k, (t, d, h) in getattr(module, "PARAMS", {}).items()
        }
        rows.append(
            {
                "name": name,
                "summary": doc[0] if doc else "",
                "params": params,
                "file": module.__file__,
            }
        )
    if ctx.json:
        ctx.emit_json({"schema": "surgeon.recipes/1", "recipes": rows})
    else:
        from surgeon.report.run import render_recipes

        render_recipes(ctx.console, rows)
    return 0
