"""One render dispatch: which function draws which result type for a person.

:data:`RENDERERS` is the whole table, written out here (no registry that imports fill).
It is keyed by the result class's full name and names its renderer as ``module:function``,
both resolved only when a result is drawn: drawing an ``inspect`` result must not import
onnxruntime just to name the DebugReport class. tests/test_output_edge.py checks that
every entry resolves. A subclass finds its base class's renderer (the type's MRO is
walked), so a renderer serves a family of results.

Each renderer takes ``(console, result)``; the small adapters below unpack the outcome
types of :mod:`surgeon.outcomes` for the renderers of the report modules.
"""

from __future__ import annotations

import importlib

from rich.console import Console

from surgeon.report import shown

RENDERERS: dict[str, str] = {
    "surgeon.compare.results.DiffReport": "surgeon.report:render_diff",
    "surgeon.dynamic.results.DynamicCheck": "surgeon.report.dispatch:render_dynamic_check",
    "surgeon.debugging.results.DebugReport": "surgeon.report.debug:render_debug",
    "surgeon.torch.results.ExportCheck": "surgeon.report.torch_export:render_export_check",
    "surgeon.outcomes.ExtractOutcome": "surgeon.report.dispatch:render_extract",
    "surgeon.outcomes.RenameOutcome": "surgeon.report.dispatch:render_rename",
    "surgeon.outcomes.ReshapeOutcome": "surgeon.report.dispatch:render_reshape",
    "surgeon.commands.edit.NodeEditOutcome": "surgeon.report.node_edits:render_node_edits",
    "surgeon.outcomes_surgery.FoldOutcome": "surgeon.report.surgery:render_fold",
    "surgeon.outcomes_surgery.ConvertOutcome": "surgeon.report.surgery:render_convert",
    "surgeon.outcomes.DebugOutcome": "surgeon.report.dispatch:render_debug_outcome",
    "surgeon.outcomes.InspectOutcome": "surgeon.report.dispatch:render_inspect",
    "surgeon.outcomes.NmsOutcome": "surgeon.report.dispatch:render_nms",
    "surgeon.outcomes.RecipeListing": "surgeon.report.dispatch:render_recipes",
    "surgeon.outcomes.MergeOutcome": "surgeon.report.dispatch:render_merge",
    "surgeon.outcomes.RunOutcome": "surgeon.report.dispatch:render_run",
    "surgeon.optimizer_blame.BlameReport": "surgeon.report.blame:render_blame",
    "surgeon.commands._exclude.SuggestExcludeOutcome": "surgeon.report.exclude:render_suggest_exclude_outcome",
    "surgeon.commands.fp16.Fp16Outcome": "surgeon.report.fp16:render_fp16",
    "surgeon.commands.rewrite.RewriteOutcome": "surgeon.report.rewrite:render_rewrite",
    "surgeon.commands.rewrite.RuleListing": "surgeon.report.rewrite:render_rules",
}


def _class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def renderer_for(result):
    """The function that draws ``result``, or None when the table has none for its type."""
    for cls in type(result).__mro__:
        target = RENDERERS.get(_class_name(cls))
        if target is not None:
            module, function = target.split(":")
            return getattr(importlib.import_module(module), function)
    return None


def render(console: Console, result) -> None:
    """Draw ``result`` on ``console`` with the renderer its type has in :data:`RENDERERS`.

    Raises:
        TypeError: The table has no renderer for it (a bug: every command's result type
            is listed).
    """
    renderer = renderer_for(result)
    if renderer is None:
        raise TypeError(f"no renderer for {_class_name(type(result))} in RENDERERS")
    renderer(console, result)


def _wrote(console: Console, written) -> None:
    for path in written:
        console.print(shown(f"wrote {path}"))


def render_dynamic_check(console: Console, check) -> None:
    from surgeon.report.edits import render_check_dynamic

    render_check_dynamic(console, check.to_dict())


def render_extract(console: Console, outcome) -> None:
    from surgeon.report.edits import render_extract

    render_extract(console, outcome.edited, outcome.output, outcome.written)


def render_rename(console: Console, outcome) -> None:
    from surgeon.report.edits import render_rename

    render_rename(console, outcome.edited, outcome.output, outcome.written)


def render_reshape(console: Console, outcome) -> None:
    from surgeon.report.edits import render_reshape_io

    render_reshape_io(console, outcome.edited, outcome.output, outcome.written)


def render_debug_outcome(console: Console, outcome) -> None:
    from surgeon.report.debug import render_debug

    render_debug(console, outcome.report, rows=outcome.rows)
    tapped = outcome.tapped
    if tapped is not None and not tapped.passed:
        console.print(
            shown(
                f"not written: the tapped model for -o failed its check: {tapped.report.summary()}"
            )
        )
    _wrote(console, outcome.written)


def render_inspect(console: Console, outcome) -> None:
    from surgeon.report.inspect import render_inspect, render_names

    if outcome.names_only:
        # Only the listing: the person asked for names, and the summary would push them away.
        render_names(console, outcome.info)
    else:
        render_inspect(console, outcome.info)


def render_nms(console: Console, outcome) -> None:
    from surgeon.report.merge import render_nms

    render_nms(console, outcome.to_dict())


def render_recipes(console: Console, listing) -> None:
    from surgeon.report.run import render_recipes

    render_recipes(console, listing.recipes)


def render_merge(console: Console, outcome) -> None:
    from surgeon.report.merge import render_merge

    render_merge(console, outcome.to_dict(), outcome.report)


def render_run(console: Console, outcome) -> None:
    """Each report the recipe returned (by its own renderer; one the table does not know
    as its dict), then the table of steps and the files written."""
    from surgeon.report.run import render_run

    for report in outcome.result.reports:
        renderer = renderer_for(report)
        if renderer is not None:
            renderer(console, report)
        else:
            console.print(shown(str(report.to_dict())))
    render_run(console, outcome.result)
    _wrote(console, outcome.written)
