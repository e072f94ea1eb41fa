"""The rewrite edit: rules applied one after the other, verified through the edit contract.

All the rewriting happens first, on a copy, so that every problem (an unknown rule, a
node no rule matches, a mode a rule refuses, a rule that matches nothing) is reported
at once before anything runs; :func:`surgeon.edits.contract.apply_edit` then records
provenance and verifies the result against the original: every output equal (bit-identical
for exact rules, else within the tolerance), at the caller's feeds and again at a second
size when the model has dynamic dims, or at a second seed when it has none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import onnx

from surgeon.compare import EXACT, DiffReport, Tolerance
from surgeon.edits import Edited
from surgeon.edits.contract import Check, Correspondence, apply_edit
from surgeon.edits.sizes import (
    join_second_run,
    other_shapes,
    runtime_correspondence,
    verify_other_size,
)
from surgeon.errors import SurgeonError, UsageError, raise_name_errors, unknown_name
from surgeon.feeds import FeedOptions, make_feeds
from surgeon.model import Model
from surgeon.protos import iter_graphs, op_histogram
from surgeon.rewrites.graph import Match, RewriteGraph
from surgeon.rewrites.rule import is_builtin, load_rule
from surgeon.runner import RunOptions


def _selected(graph: RewriteGraph, match: Match, wanted: set[str] | None) -> bool:
    if wanted is None:
        return True
    node = graph.node(match.node)
    return node.name in wanted or match.node in wanted


def _check_nodes(graph: RewriteGraph, nodes: Sequence[str], where: str, path) -> None:
    """Every ``--node`` must name a node (by name or first output) of the main graph."""
    known = {n.name for n in graph.nodes if n.name} | {graph.key(n) for n in graph.nodes}
    raise_name_errors(
        [
            unknown_name("node", n, sorted(known), where, model_path=path)
            for n in nodes
            if n not in known
        ],
        f"unknown nodes in {where}",
    )


def _apply_one(graph: RewriteGraph, rule, match: Match) -> list[dict]:
    """Replace the nodes of ``match`` by what ``rule.apply`` builds; the rewritten nodes."""
    g = graph.proto.graph
    if any(graph.producer(k) is None for k in match.nodes):
        return []  # an earlier match of the same rule already replaced one of its nodes
    removed = [graph.node(k) for k in match.nodes]
    removed_keys = set(match.nodes)
    graph.begin()
    try:
        rule.apply(graph, match)
    except SurgeonError:
        graph.end()
        raise
    except Exception as e:  # noqa: BLE001 - a user's rule may raise anything; ours are bugs
        graph.end()
        if is_builtin(rule):
            raise
        raise SurgeonError(
            f"rule {rule.name} failed on node {graph.label(graph.node(match.node))}: "
            f"{type(e).__name__}: {e}"
        ) from None
    new = graph.end()
    produced = {o for n in new for o in n.output}
    needed = []
    for node in removed:
        for out in node.output:
            if not out or out in produced:
                continue
            readers = [n for n in graph.consumers(out) if graph.key(n) not in removed_keys]
            if readers or graph.is_output(out):
                needed.append(out)
    if needed:
        raise SurgeonError(
            f"rule {rule.name} did not produce {', '.join(f'`{t}`' for t in needed)} when "
            f"rewriting {graph.label(graph.node(match.node))}, which the rest of the graph reads"
        )
    kept: list[onnx.NodeProto] = []
    position = 0
    for node in g.node:
        if graph.key(node) in removed_keys:
            position = len(kept)
            continue
        kept.append(node)
    gone = {o for n in removed for o in n.output} - produced
    if gone:  # declarations of tensors that no longer exist would only mislead
        infos = [v for v in g.value_info if v.name not in gone]
        del g.value_info[:]
        g.value_info.extend(infos)
    inputs_before = {i for n in removed for i in n.input if i}
    order = kept[:position] + new + kept[position:]
    del g.node[:]
    g.node.extend(order)
    _drop_unused(graph, inputs_before)
    graph.refresh()
    anchor = next(n for n in removed if graph.key(n) == match.node)
    return [
        {
            "rule": rule.name,
            "node": anchor.name,
            "op": anchor.op_type,
            "output": match.node,
            "what": match.what,
            "replaced": len(removed),
            "added": len(new),
        }
    ]


def _drop_unused(graph: RewriteGraph, candidates: set[str]) -> None:
    """Remove initializers and Constant nodes that fed only the replaced nodes."""
    g = graph.proto.graph
    # One pass is enough: a Constant node has no inputs, so removing it frees nothing else.
    if candidates:
        used = {i for sub in iter_graphs(g) for n in sub.node for i in n.input}
        used |= {o.name for o in g.output}
        dead = {c for c in candidates if c not in used}
        keep = [t for t in g.initializer if t.name not in dead]
        if len(keep) != len(g.initializer):
            del g.initializer[:]
            g.initializer.extend(keep)
        nodes = []
        for n in g.node:
            if n.op_type == "Constant" and n.output[0] in dead:
                continue
            nodes.append(n)
        if len(nodes) != len(g.node):
            del g.node[:]
            g.node.extend(nodes)


def plan_rewrite(
    model: Model, rules: Sequence, nodes: Sequence[str] | None = None
) -> tuple[onnx.ModelProto, list, list[dict]]:
    """Apply ``rules`` to a copy of ``model``: (rewritten proto, rules, rewritten nodes).

    Raises:
        UsageError: No rule given, a rule spec that names nothing, a node no rule
            rewrites, refused modes, a rule that matches no node (all problems at once).
        NameNotFoundError: ``nodes`` names something that is no node.
        SurgeonError: A user's rule fails to load or to build its replacement.
    """
    if isinstance(rules, str) or not isinstance(rules, Sequence):
        rules = [rules]
    if not rules:
        raise UsageError("no rewrite rule given", hint="Name one, e.g. rules=['einsum'].")
    loaded = [load_rule(r) for r in rules]
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    graph = RewriteGraph(proto)
    wanted = None
    if nodes:
        _check_nodes(graph, list(nodes), model.name, model.path)
        wanted = set(nodes)
    problems: list[str] = []
    refused = False
    done: list[dict] = []
    hit: set[str] = set()
    for rule in loaded:
        found = [m for m in rule.matches(graph) if _selected(graph, m, wanted)]
        for m in found:
            node = graph.node(m.node)
            hit.update(x for x in (node.name, m.node) if x)
            if m.refusal is not None:
                refused = True
                problems.append(f"{rule.name}: node `{graph.label(node)}`: {m.refusal}")
        if not found and wanted is None:
            problems.append(f"{rule.name} matches no node of {model.name} ({rule.summary})")
        if problems:
            continue  # keep collecting; nothing is applied once one problem is known
        for m in found:
            done.extend(_apply_one(graph, rule, m))
    if wanted is not None:
        for name in nodes:
            if name not in hit:
                problems.append(
                    f"node `{name}` is not rewritten by "
                    + ", ".join(r.name for r in loaded)
                    + " ("
                    + "; ".join(r.summary for r in loaded)
                    + ")"
                )
    if problems:
        hint = "Choose the nodes to rewrite with `nodes` (--node on the command line), or another rule."
        if refused:
            hint = (
                "Leave out the nodes a rule refuses: name the others in `nodes` (--node on the "
                "command line)."
            )
        raise UsageError(f"cannot rewrite {model.name}", problems=problems, hint=hint)
    return proto, loaded, done


def _second_seed(edited, model, report, feed_options, options, tolerance) -> None:
    """A static model is verified again on inputs of another seed (rows tagged)."""
    from surgeon.verification import verify

    seed = feed_options.seed + 1
    feeds = make_feeds(model, replace(feed_options, seed=seed, npz=None))
    second = verify(
        edited, model, feeds=feeds, tolerance=tolerance, options=options, title=report.title
    )
    join_second_run(
        report,
        second,
        lambda row: f"seed {seed}",
        f"verified at a second seed too ({seed}): the model has no dynamic dim",
    )


def rewrite(
    model: Model,
    rules: Sequence[object] | str,
    *,
    nodes: Sequence[str] | None = None,
    verify: bool = True,
    feed_options: FeedOptions = FeedOptions(),
    options: RunOptions | None = None,
    tolerance: Tolerance | None = None,
) -> Edited:
    """Rewrite nodes of ``model`` with ``rules``, then prove its outputs did not change.

    Args:
        model: The model (not modified).
        rules: Built-in rule names (``"gridsample"``, ``"einsum"``,
            ``"layernorm-decompose"``, ``"layernorm-fuse"``, ``"topk"``),
            ``"path/to/rule.py:Class"`` specs or rule objects, applied in order.
        nodes: Rewrite only these nodes (names or first output names); each must be
            rewritten by one of the rules. None: every node the rules match.
        verify: Run the comparison with the original.
        feed_options: The inputs for the comparison.
        options: onnxruntime settings of both sides (default: optimisations off).
        tolerance: When values count as equal; None: bit-identity when every rule is
            exact, else the default tolerance.

    Returns:
        Edited whose ``details`` hold ``rules`` (name, exact, summary), ``rewritten`` (one
        entry per rewritten node), ``op_types`` (before/after), ``nodes``,
        ``bit_identical`` and ``notes``.

    Raises:
        UsageError: See :func:`plan_rewrite`.
        NameNotFoundError: ``nodes`` names something that is no node.
        SurgeonError: A user's rule fails to load or to build its replacement.
    """
    rewritten, loaded, done = plan_rewrite(model, rules, nodes)
    exact = all(bool(r.exact) for r in loaded)
    tol = tolerance if tolerance is not None else (EXACT if exact else Tolerance())
    run_options = options or RunOptions(optimization="disabled")

    def change(proto: onnx.ModelProto) -> onnx.ModelProto:
        return rewritten

    def correspondence(edited: Model) -> Correspondence:
        title = f"rewrite {', '.join(r.name for r in loaded)}: outputs unchanged"
        feeds = make_feeds(model, feed_options)
        return runtime_correspondence(title, edited, model, feeds, run_options, tol)

    def finish(edited: Model, report: DiffReport, values) -> None:
        if not report.tensors:
            return
        if other_shapes(model, feed_options) is not None:
            verify_other_size(edited, model, report, feed_options, run_options, tol)
        else:
            _second_seed(edited, model, report, feed_options, run_options, tol)

    def details(edited: Model, report) -> dict:
        before = op_histogram(model.proto, include_subgraphs=True)
        after = op_histogram(edited.proto, include_subgraphs=True)
        identical = None
        if report is not None and report.tensors:
            identical = all(t.status == "ok" and not t.max_abs for t in report.tensors)
        notes = []
        if exact and identical is False:
            notes.append("every rule is exact, yet the outputs are not bit-identical")
        return {
            "rules": [
                {"name": r.name, "exact": bool(r.exact), "summary": str(r.summary)} for r in loaded
            ],
            "rewritten": done,
            "op_types": {
                op: {"before": before.get(op, 0), "after": after.get(op, 0)}
                for op in sorted(set(before) | set(after))
            },
            "nodes": {"before": sum(before.values()), "after": sum(after.values())},
            "bit_identical": identical,
            "notes": notes,
        }

    return apply_edit(
        model,
        "rewrite",
        {"rules": [r.name for r in loaded], "nodes": list(nodes or [])},
        change,
        correspondence,
        check=Check(verify, None, feed_options, run_options, tol),
        label="rewritten",
        copy=False,
        details=details,
        finish=finish,
    )
