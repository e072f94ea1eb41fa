"""Rendering of ``surgeon debug --suggest-exclude`` for a person: the list first, then the
output error before and after, the ranked Q/DQ pairs and the greedy steps."""

from __future__ import annotations

from rich.console import Console

from surgeon.report import SafeTable, diff_table, fmt, settings_text, shown

# The ranked table shows the worst pairs; --json lists every one.
SHOWN_SITES = 15


def _sites_table(suggestion) -> SafeTable:
    table = SafeTable(title="Q/DQ pairs by their own error, worst first", title_justify="left")
    table.add_column("#", no_wrap=True)
    table.add_column("Q/DQ pair", kind="name", ratio=2)
    table.add_column("kind", no_wrap=True)
    table.add_column("read by", kind="name", ratio=2)
    table.add_column("tier", no_wrap=True)
    table.add_column("x tol", no_wrap=True)
    table.add_column("max abs", no_wrap=True)
    chosen = set(suggestion.nodes_to_exclude)
    for site in suggestion.sites[:SHOWN_SITES]:
        sev, diff = site.unit.severity, site.unit.isolated
        readers = ", ".join(f"{n}*" if n in chosen else n for n in site.nodes) or "-"
        table.add_row(
            str(site.unit.rank),
            site.dequantize,
            site.kind,
            readers,
            sev.tier if sev else "-",
            fmt(sev.excess) if sev else "-",
            fmt(diff.max_abs) if diff is not None else "-",
        )
    return table


def render_suggestion(console: Console, suggestion, written=()) -> None:
    """The verdict and the list, the evidence, then what was written."""
    before, after = suggestion.before, suggestion.after
    if before.passed:
        console.print(
            shown("PASS: the int8 model already meets tolerance; nothing to exclude", "bold green")
        )
    elif suggestion.passed:
        console.print(
            shown(
                f"PASS: excluding {len(suggestion.nodes_to_exclude)} node(s) from quantization "
                "meets tolerance",
                "bold green",
            )
        )
    else:
        why = (
            f"no list of at most {suggestion.max_nodes} node(s) meets tolerance"
            if suggestion.limit_reached
            else "the list did not meet tolerance"
        )
        console.print(shown(f"FAIL: {why}", "bold red"))
    if suggestion.nodes_to_exclude:
        console.print(shown("nodes_to_exclude=" + repr(list(suggestion.nodes_to_exclude)), "bold"))
    console.print(diff_table(before, "before: the int8 model against the float model"))
    if after is not None:
        console.print(
            diff_table(after, f"after: stripped of {len(suggestion.nodes_to_exclude)} node(s)")
        )
    if suggestion.sites:
        console.print(_sites_table(suggestion))
        more = len(suggestion.sites) - SHOWN_SITES
        if more > 0:
            console.print(shown(f"... and {more} more Q/DQ pair(s) (--json lists them all)"))
    for k, step in enumerate(suggestion.steps, 1):
        console.print(
            shown(f"step {k}: + {', '.join(step.added)} (from {step.site.dequantize}): ")
            + shown(step.report.summary())
        )
    if suggestion.stripped is not None and suggestion.stripped.kept:
        for node, x, why in suggestion.stripped.kept:
            console.print(shown(f"kept quantized: `{x}` read by {node}: {why}", "yellow"))
    for note in suggestion.notes:
        console.print(shown(note))
    console.print(settings_text(before))
    for path in written:
        console.print(shown(f"wrote {path}"))


def render_suggest_exclude_outcome(console: Console, outcome) -> None:
    render_suggestion(console, outcome.suggestion, outcome.written)
