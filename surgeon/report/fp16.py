"""Drawing a float16 plan: the block list, the rounds, the verification and the sizes."""

from __future__ import annotations

from rich.console import Console

from surgeon.report import SafeTable, shown


def render_fp16(console: Console, outcome) -> None:
    """The block list (node, op, why, PyTorch module), the rounds, both checks, sizes."""
    plan = outcome.plan
    table = SafeTable(title=f"kept in float32 ({len(plan.block_list)})", title_justify="left")
    for column in ("node", "op", "why", "module"):
        table.add_column(column)
    for kept in plan.block_list:
        table.add_row(shown(kept.node), kept.op, shown(kept.reason), shown(kept.module or ""))
    if plan.block_list:
        console.print(table)
    else:
        console.print(shown("kept in float32: none (every convertible node runs in float16)"))
    if plan.not_float16:
        shown_reasons = sorted(set(plan.not_float16.values()))
        console.print(
            shown(
                f"also float32 (converter): {len(plan.not_float16)} node(s): "
                + "; ".join(shown_reasons[:5])
            )
        )
    for step in plan.steps:
        worst = "n/a" if step.worst_abs is None else f"{step.worst_abs:.3g}"
        verdict = "pass" if step.passed else "miss"
        added = ", ".join(step.added[:6]) + (" ..." if len(step.added) > 6 else "")
        console.print(
            shown(
                f"round {step.round}: {step.action} [{added}] -> {step.kept} kept, max abs {worst}, {verdict}"
            )
        )
    console.print(shown(f"{plan.float16_nodes} node(s) in float16"))
    report = plan.edited.report
    if report is not None:
        console.print(shown(f"verification (seed {report.seed}): {report.summary()}"))
    if plan.second_check is not None:
        console.print(
            shown(f"second check (seed {plan.second_check.seed}): {plan.second_check.summary()}")
        )
    console.print(
        shown(f"size: {plan.size_before / 2**20:.2f} MiB -> {plan.size_after / 2**20:.2f} MiB")
    )
    if plan.failure:
        console.print(shown(f"target not met: {plan.failure}"))
    if outcome.written:
        console.print(shown(f"wrote {outcome.output}"))
    elif outcome.output:
        console.print(shown(f"not written: {outcome.output}"))
