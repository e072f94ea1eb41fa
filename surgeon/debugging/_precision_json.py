"""How the isolated errors of ``debug`` appear in ``--json``: per compared tensor, per
ranked node, per node not run on reference values (kept apart from the report classes so
that they import nothing of the precision engine)."""

from __future__ import annotations

from surgeon.compare import json_number


def isolated_dict(layer) -> dict | None:
    """A compared tensor's own error, for ``--json`` (None when its node was not run on
    the reference's values)."""
    d, s = getattr(layer, "isolated", None), getattr(layer, "severity", None)
    if d is None or s is None:
        return None
    return {
        "max_abs": json_number(d.max_abs) if d.max_abs is not None else None,
        "max_rel": json_number(d.max_rel) if d.max_rel is not None else None,
        "mismatches": d.mismatches,
        "size": d.size,
        "excess": json_number(s.excess),
        "tier": s.tier,
        "rank": getattr(layer, "rank", None),
    }


def ranking_entry(unit) -> dict:
    """One ranked node, compact: what ``--json``'s ``ranking`` lists (worst first)."""
    d, c, s = unit.isolated, unit.cumulative, unit.severity
    return {
        "rank": unit.rank,
        "node": unit.node,
        "op": unit.op,
        "tensor": d.name,
        "tier": s.tier,
        "excess": json_number(s.excess),
        "born_nonfinite": s.born_nonfinite,
        "isolated": {
            "max_abs": json_number(d.max_abs) if d.max_abs is not None else None,
            "max_rel": json_number(d.max_rel) if d.max_rel is not None else None,
            "mismatches": d.mismatches,
            "size": d.size,
        },
        "cumulative": None
        if c is None
        else {
            "max_abs": json_number(c.max_abs) if c.max_abs is not None else None,
            "max_rel": json_number(c.max_rel) if c.max_rel is not None else None,
            "mismatches": c.mismatches,
            "size": c.size,
        },
        "overflowed_inputs": list(unit.overflowed_inputs),
    }


def unpaired_entry(unit) -> dict:
    """A node not run on reference values, and why (inputs with no reference value, a
    subgraph, or onnxruntime refused it)."""
    return {"node": unit.node, "op": unit.op, "status": unit.status, "reason": unit.reason}
