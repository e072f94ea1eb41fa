"""`surgeon recipes`: list the built-in recipes."""

from __future__ import annotations

HELP = "list the built-in recipes: the models each takes, what it writes, its parameters"
DESCRIPTION = (
    HELP
    + "\n\nRun one with `surgeon run NAME MODEL -o OUT`; copy its file from the recipes/ folder to make your own."
)


def add_arguments(parser) -> None:
    pass


def run(args, ctx) -> int:
    from surgeon.recipe_runner import REQUIRED, builtin_recipes, load_recipe, recipe_needs

    rows = []
    for name in builtin_recipes():
        label, module = load_recipe(name)
        needs = recipe_needs(module, label)
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
                # models: [{name, required}] (null: undeclared, one or more); outputs:
                # the models it writes (FOLDER/<name>.onnx when several; [] = a report)
                **needs.to_dict(),
                "takes": needs.describe_models(),
                "file": module.__file__,
            }
        )
    from surgeon.outcomes import RecipeListing

    return ctx.finish(RecipeListing(rows))
